"""capsjax: capsule-network routing, layers and paper reproductions in JAX/Flax.

The layers, bottom to top (see ARCHITECTURE.md): kernels (``routing``, ``ot``,
``losses``) -> layers (``nn``) -> models -> data -> training -> experiments.
"""

from capsjax import losses, ot, routing

__version__ = "0.1.0"

__all__ = ["losses", "ot", "routing", "__version__"]
