"""Tsai et al. (ICLR 2020): inverted dot-product attention routing."""
