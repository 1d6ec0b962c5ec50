"""capsjax.nn: Flax NNX layers, one per routing family, plus the papers' backbones.

Each layer owns its parameters with the paper's (or the authors' code's)
initialisation and ``jax.vmap``s its per-sample kernel over the batch.
"""

from capsjax.nn.heinsen import HeinsenRoutingLayer
from capsjax.nn.heinsen_stem import SmallNORBStem

__all__ = [
    "HeinsenRoutingLayer",
    "SmallNORBStem",
]
