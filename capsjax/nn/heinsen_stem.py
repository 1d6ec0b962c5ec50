"""The convolutional stem of Heinsen's (2019) smallNORB model.

The stem is Fig. 3(c) of the paper: six 3x3 convolutions without padding,
64 channels, strides 1, 2, 1, 2, 1, 2, each *preceded* by BatchNorm and
followed by Swish (``x * sigmoid(x)``). Images are NHWC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax.nn.torch_init import kaiming_normal, torch_batch_norm

__all__ = ["SmallNORBStem"]


class SmallNORBStem(nnx.Module):
  """BatchNorm → 3x3 VALID conv → Swish, six times (paper Fig. 3(c)).

  Convolution weights are Kaiming normal and biases zero (paper Sec. 4.1;
  official code). BatchNorm scale 1, bias 0. Parameters: for ``in_features=4``
  and 64 channels, 187,008 in the convolutions and 648 in the BatchNorms.

  Porting PyTorch weights: conv ``weight [out, in, kh, kw]`` becomes
  ``kernel = weight.transpose(2, 3, 1, 0)``.

  Attributes:
    in_features, features, strides: the constructor arguments.
    norms: the BatchNorm before each convolution.
    convs: the convolutions.
  """

  def __init__(
      self,
      in_features: int = 4,
      features: int = 64,
      strides: Sequence[int] = (1, 2, 1, 2, 1, 2),
      *,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Creates the stem.

    Args:
      in_features: input channels (4: stereo pair + two coordinate channels).
      features: channels of every convolution.
      strides: one stride per convolution.
      dtype: computation dtype; ``None`` infers it from inputs and params.
      param_dtype: parameter dtype.
      rngs: random streams.
    """
    _shapes.check_positive_int("in_features", in_features)
    _shapes.check_positive_int("features", features)
    for s in strides:
      _shapes.check_positive_int("strides", s)
    self.in_features, self.features = in_features, features
    self.strides = tuple(strides)
    chans = [in_features] + [features] * len(self.strides)
    self.norms = nnx.List([
        torch_batch_norm(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        for c in chans[:-1]])
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, (3, 3), strides=s, padding="VALID",
                 kernel_init=kaiming_normal(),
                 bias_init=jax.nn.initializers.zeros, dtype=dtype,
                 param_dtype=param_dtype, rngs=rngs)
        for c_in, c_out, s in zip(chans[:-1], chans[1:], self.strides)])

  def min_size(self) -> int:
    """The smallest image side for which the output is at least 1x1."""
    size = 1
    for s in reversed(self.strides):
      size = (size - 1) * s + 3
    return size

  def __call__(self, x: ArrayLike) -> jax.Array:
    """Applies the stem.

    Args:
      x: ``[b, H, W, in_features]`` images, ``H, W >= min_size()`` (29 for
        the default strides).

    Returns:
      ``[b, H', W', features]`` (``9 x 9`` for ``96 x 96`` inputs).
    """
    shape = _shapes.check_ndim("x", x, 4, "[b, H, W, in_features]")
    _shapes.check_shape("x", x, (None, None, None, self.in_features),
                        "[b, H, W, in_features]")
    if min(shape[1:3]) < self.min_size():
      raise ValueError(
          f"x must be at least {self.min_size()}x{self.min_size()} pixels "
          f"(six unpadded 3x3 convolutions with strides {self.strides}), got "
          f"shape {shape}.")
    for norm, conv in zip(self.norms, self.convs):
      x = jax.nn.silu(conv(norm(x)))
    return x
