"""Optimal-transport kernels: Multi-SK (Swetha et al.) and Sinkhorn divergence (Li et al.)."""

from capsjax.ot.multi_sinkhorn import multi_sinkhorn, multi_sk_assignment
from capsjax.ot.sinkhorn_divergence import sinkhorn_divergence

__all__ = ["multi_sinkhorn", "multi_sk_assignment", "sinkhorn_divergence"]
