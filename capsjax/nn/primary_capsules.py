"""Primary capsules of Tsai et al. (2020): a bias-free conv, then LayerNorm.

Procedure 2, line 3: ``P1 = LayerNorm(convolution(F))``. The convolution's
``n_caps * caps_dim`` output channels are split into ``n_caps`` capsules of
``caps_dim`` consecutive channels (channel ``c = type * caps_dim + k``, as the
authors' ``view(b, H, W, num_caps, caps_dim)``), and an affine LayerNorm
(eps 1e-5, shared by all capsules) normalises each capsule's pose.

References:
  Tsai, Srivastava, Goh, Salakhutdinov, "Capsules with Inverted Dot-Product
  Attention Routing", ICLR 2020 (Procedure 2; Tables 8-11). Official code:
  ``CapsModel.pc_layer`` / ``nonlinear_act`` in
  apple/ml-capsules-inverted-attention-routing, ``src/capsule_model.py``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax import _shapes
from capsjax.nn.torch_init import torch_conv

__all__ = ["PrimaryCapsules"]


class PrimaryCapsules(nnx.Module):
  """``[b, H, W, C]`` features → ``[b, H', W', n_caps, caps_dim]`` poses.

  Parameters: the conv kernel ``conv.kernel [k, k, in_features, n_caps *
  caps_dim]`` (no bias; PyTorch's default init, ``U(±1/sqrt(fan_in))``) and
  the LayerNorm ``norm.scale``, ``norm.bias [caps_dim]`` (1 and 0).

  Attributes:
    in_features, n_caps, caps_dim, layer_norm: the constructor arguments.
  """

  def __init__(self, in_features: int, n_caps: int, caps_dim: int,
               kernel_size: int = 1, stride: int = 1, padding: int = 0, *,
               layer_norm: bool = True, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    """Creates the layer.

    Args:
      in_features: channels of the backbone feature map.
      n_caps: capsule types per position.
      caps_dim: pose size of a capsule (``s*s`` for matrix poses).
      kernel_size, stride, padding: of the convolution, as in ``nn.Conv2d``
        (CIFAR: 1, 1, 0; DiverseMultiMNIST: 3, 2, 0).
      layer_norm: apply the affine LayerNorm (the paper always does; False
        leaves raw conv outputs and creates no LayerNorm parameters).
      dtype: computation dtype; ``None`` infers it.
      param_dtype: parameter dtype.
      rngs: random streams (``params``).

    Raises:
      ValueError: on a non-positive size.
    """
    for name, value in (("in_features", in_features), ("n_caps", n_caps),
                        ("caps_dim", caps_dim), ("kernel_size", kernel_size),
                        ("stride", stride)):
      _shapes.check_positive_int(name, value)
    self.in_features, self.n_caps, self.caps_dim = in_features, n_caps, caps_dim
    self.layer_norm = layer_norm
    self.conv = torch_conv(in_features, n_caps * caps_dim, kernel_size,
                           stride=stride, padding=padding, use_bias=False,
                           dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm = (nnx.LayerNorm(caps_dim, epsilon=1e-5, use_fast_variance=False,
                               dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                 if layer_norm else None)

  def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
    """Computes the primary capsules.

    Args:
      x: backbone features ``[b, H, W, in_features]``.

    Returns:
      Poses ``[b, H', W', n_caps, caps_dim]``.
    """
    shape = _shapes.check_ndim("x", x, 4, "[b, H, W, in_features]")
    if shape[-1] != self.in_features:
      raise ValueError(
          f"x must have shape [b, H, W, in_features] = [*, *, *, "
          f"{self.in_features}], got {shape}.")
    u = self.conv(x)
    u = u.reshape(*u.shape[:3], self.n_caps, self.caps_dim)
    return self.norm(u) if self.norm is not None else u
