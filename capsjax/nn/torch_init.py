"""Layers that initialise and behave like their PyTorch counterparts.

The authors' code of every paper here is PyTorch; where it keeps PyTorch's
defaults (Kaiming-uniform with ``a = sqrt(5)`` weights, ``U(±1/sqrt(fan_in))``
biases, ``BatchNorm2d`` constants), so must we, and Flax's defaults differ.
Kernels follow Flax's layout (``[in, out]``, ``[kh, kw, in, out]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Initializer = Callable[..., jax.Array]


def _uniform(key, shape, dtype, bound: float) -> jax.Array:
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_kernel_init(key: jax.Array, shape: tuple[int, ...],
                      dtype: Any = jnp.float32) -> jax.Array:
  """``kaiming_uniform_(a=sqrt(5))`` of a Flax kernel, fan-in ``prod(shape[:-1])``.

  With ``a = sqrt(5)`` the gain is ``sqrt(1/3)`` and the bound
  ``gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)``. Flax kernels are
  ``[in, out]`` (Linear) and ``[kh, kw, in, out]`` (Conv), so the fan-in is
  the product of all axes but the last.
  """
  fan_in = int(np.prod(shape[:-1]))
  return _uniform(key, shape, dtype, 1.0 / math.sqrt(fan_in))


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return _uniform(key, shape, dtype, bound)

  return init


def torch_conv(in_channels: int, out_channels: int, kernel_size: int, *,
               stride: int = 1, padding: int = 0, use_bias: bool = True,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs) -> nnx.Conv:
  """An ``nnx.Conv`` that behaves and initialises like ``torch.nn.Conv2d``.

  Args:
    in_channels, out_channels, kernel_size, stride: as in ``nn.Conv2d``.
    padding: symmetric zero padding in pixels (PyTorch's ``padding=p``).
    use_bias: whether the convolution has a bias.
    dtype: computation dtype; ``None`` infers it from inputs and parameters.
    param_dtype: parameter dtype.
    rngs: random streams (``params``).

  Returns:
    The convolution, NHWC.
  """
  fan_in = in_channels * kernel_size * kernel_size
  return nnx.Conv(
      in_channels, out_channels, (kernel_size, kernel_size),
      strides=(stride, stride), padding=((padding, padding), (padding, padding)),
      use_bias=use_bias, kernel_init=torch_kernel_init,
      bias_init=torch_bias_init(fan_in), dtype=dtype, param_dtype=param_dtype,
      rngs=rngs)


def torch_linear(in_features: int, out_features: int, *, use_bias: bool = True,
                 dtype: Any = None, param_dtype: Any = jnp.float32,
                 rngs: nnx.Rngs) -> nnx.Linear:
  """An ``nnx.Linear`` initialised like ``torch.nn.Linear``."""
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias,
      kernel_init=torch_kernel_init, bias_init=torch_bias_init(in_features),
      dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def torch_batch_norm(num_features: int, *, dtype: Any = None,
                     param_dtype: Any = jnp.float32,
                     rngs: nnx.Rngs) -> nnx.BatchNorm:
  """An ``nnx.BatchNorm`` with ``nn.BatchNorm2d``'s defaults.

  Scale 1, bias 0, eps 1e-5, running averages updated with PyTorch's momentum
  0.1 (Flax's ``momentum=0.9``). Training mode by default; ``model.eval()``
  switches to the running averages.
  """
  return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5,
                       use_fast_variance=False, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)


def kaiming_normal() -> Initializer:
  """``torch.nn.init.kaiming_normal_`` with its defaults.

  ``N(0, 2 / fan_in)``, untruncated (fan_in mode, ReLU gain ``sqrt(2)``);
  fan_in is the product of every kernel axis but the last.
  """
  return jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")
