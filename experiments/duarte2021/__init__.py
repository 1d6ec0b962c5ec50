"""Duarte et al. (2021): routing with self-attention for multimodal capsules."""
