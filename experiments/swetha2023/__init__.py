"""Swetha et al. (ICCV 2023): Multi-SK anchors and the SSPC loss on EAO."""
