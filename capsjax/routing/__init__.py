"""Routing algorithms: pure per-sample functions (see KERNELS.md).

Each kernel takes one sample (no batch axis); ``jax.vmap`` adds the batch.
"""

from capsjax.routing.dynamic import DynamicRouting, dynamic_routing, squash
from capsjax.routing.em import EMRouting, em_routing
from capsjax.routing.heinsen import HeinsenRouting, heinsen_routing
from capsjax.routing.inverted_attention import inverted_attention_conv, inverted_attention_fc
from capsjax.routing.self_attention import (
    SelfAttentionParams,
    SelfAttentionRouting,
    self_attention_routing,
)

__all__ = [
    "DynamicRouting",
    "EMRouting",
    "HeinsenRouting",
    "SelfAttentionParams",
    "SelfAttentionRouting",
    "dynamic_routing",
    "em_routing",
    "heinsen_routing",
    "inverted_attention_conv",
    "inverted_attention_fc",
    "self_attention_routing",
    "squash",
]
