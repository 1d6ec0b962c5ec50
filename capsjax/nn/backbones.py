"""Convolutional backbones and baseline CNNs with PyTorch's default init.

The feature extractors Tsai et al. (2020) put before their capsule layers
(:class:`SimpleBackbone`, :class:`ResNetBackbone`, as in the authors'
``src/layers.py``) and the baseline CNNs they compare with (Tables 2, 3 and
12: :class:`BaselineCNN`, :class:`MultiMNISTBaselineCNN`). Images are NHWC.

The authors keep PyTorch's default initialisation, which is not Flax's:
``nn.Conv2d`` / ``nn.Linear`` weights are Kaiming-uniform with ``a = sqrt(5)``,
i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, biases ``U(-1/sqrt(fan_in),
1/sqrt(fan_in))``, and ``nn.BatchNorm2d`` has scale 1, bias 0, eps 1e-5 and a
running-average momentum of 0.1 (Flax's ``momentum=0.9``): the layers here
are built with ``capsjax.nn.torch_init``.

References:
  Tsai, Srivastava, Goh, Salakhutdinov, "Capsules with Inverted Dot-Product
  Attention Routing", ICLR 2020 (Sec. A.1, Tables 2, 3, 8-12).
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR
  2016 (the basic residual block).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax import _shapes
from capsjax.nn.torch_init import torch_batch_norm, torch_conv, torch_linear

__all__ = [
    "BasicBlock",
    "BaselineCNN",
    "MultiMNISTBaselineCNN",
    "ResNetBackbone",
    "SimpleBackbone",
]


def _check_image(x, channels: int) -> None:
  shape = _shapes.check_ndim("x", x, 4, "[b, H, W, C]")
  if shape[-1] != channels:
    raise ValueError(
        f"x must have shape [b, H, W, C] = [*, *, *, {channels}], got {shape}.")


# ----------------------------------------------------------------------------
# Backbones of the capsule networks.
# ----------------------------------------------------------------------------


class SimpleBackbone(nnx.Module):
  """One convolution (with bias) and a ReLU: the authors' ``simple_backbone``.

  CIFAR-10 (Table 8): 3 → 256, 3x3, stride 2, padding 1; CIFAR-100
  (Table 9): 3 → 128; DiverseMultiMNIST (Tables 10, 11): 1 → 1024.
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
               stride: int = 2, padding: int = 1, *, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    """See the class docstring; arguments as in ``nn.Conv2d``."""
    self.in_channels = in_channels
    self.conv = torch_conv(in_channels, out_channels, kernel_size,
                           stride=stride, padding=padding, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
    """``[b, H, W, in_channels]`` images → ``[b, H', W', out_channels]``."""
    _check_image(x, self.in_channels)
    return jax.nn.relu(self.conv(x))


class BasicBlock(nnx.Module):
  """The two-convolution residual block of He et al. (2016), bias-free convs.

  ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is a
  1x1 strided conv + BatchNorm when the stride or the width changes, else the
  identity.
  """

  def __init__(self, in_planes: int, planes: int, stride: int = 1, *,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = torch_conv(in_planes, planes, 3, stride=stride, padding=1,
                            use_bias=False, **kw)
    self.bn1 = torch_batch_norm(planes, **kw)
    self.conv2 = torch_conv(planes, planes, 3, padding=1, use_bias=False, **kw)
    self.bn2 = torch_batch_norm(planes, **kw)
    if stride != 1 or in_planes != planes:
      self.shortcut_conv = torch_conv(in_planes, planes, 1, stride=stride,
                                      use_bias=False, **kw)
      self.shortcut_bn = torch_batch_norm(planes, **kw)
    else:
      self.shortcut_conv = None
      self.shortcut_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.shortcut_conv is not None:
      x = self.shortcut_bn(self.shortcut_conv(x))
    return jax.nn.relu(out + x)


class ResNetBackbone(nnx.Module):
  """The authors' ``resnet_backbone`` (Sec. A.1).

  A 3x3 conv to 64 channels (no bias) + BatchNorm + ReLU, three 64-channel
  basic blocks with stride 1, then four ``out_channels`` blocks, the first
  with stride ``stride``. CIFAR (``out_channels=128``, ``stride=2``): 32x32x3
  → 16x16x128.
  """

  def __init__(self, in_channels: int = 3, out_channels: int = 128,
               stride: int = 2, *, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.in_channels = in_channels
    self.conv = torch_conv(in_channels, 64, 3, padding=1, use_bias=False, **kw)
    self.bn = torch_batch_norm(64, **kw)
    blocks = [BasicBlock(64, 64, 1, **kw) for _ in range(3)]
    blocks.append(BasicBlock(64, out_channels, stride, **kw))
    blocks += [BasicBlock(out_channels, out_channels, 1, **kw) for _ in range(3)]
    self.blocks = nnx.List(blocks)

  def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
    """``[b, H, W, in_channels]`` → ``[b, H/stride, W/stride, out_channels]``."""
    _check_image(x, self.in_channels)
    out = jax.nn.relu(self.bn(self.conv(x)))
    for block in self.blocks:
      out = block(out)
    return out


# ----------------------------------------------------------------------------
# Baseline CNNs.
# ----------------------------------------------------------------------------


class BaselineCNN(nnx.Module):
  """The baseline CNN for CIFAR-10/100 (Tables 2 and 3).

  Three 3x3 stride-2 convolutions (padding 1) with 1024 channels, each
  followed by ReLU (the second and third then by BatchNorm, in the order the
  tables list), 2x2 average pooling after the second and the third, and a
  linear classifier: 32x32 → 16 → 8 → 4 → 2 → 1. 18.92M (CIFAR-10) / 19.01M
  (CIFAR-100) parameters (Table 1).
  """

  def __init__(self, n_classes: int, in_channels: int = 3, width: int = 1024,
               *, dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.in_channels = in_channels
    self.conv1 = torch_conv(in_channels, width, 3, stride=2, padding=1, **kw)
    self.conv2 = torch_conv(width, width, 3, stride=2, padding=1, **kw)
    self.bn2 = torch_batch_norm(width, **kw)
    self.conv3 = torch_conv(width, width, 3, stride=2, padding=1, **kw)
    self.bn3 = torch_batch_norm(width, **kw)
    self.fc = torch_linear(width, n_classes, **kw)

  def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
    """``[b, 32, 32, in_channels]`` images → class logits ``[b, n_classes]``."""
    _check_image(x, self.in_channels)
    out = jax.nn.relu(self.conv1(x))
    out = self.bn2(jax.nn.relu(self.conv2(out)))
    out = nnx.avg_pool(out, (2, 2), strides=(2, 2))
    out = self.bn3(jax.nn.relu(self.conv3(out)))
    out = nnx.avg_pool(out, (2, 2), strides=(2, 2))
    return self.fc(out.reshape(out.shape[0], -1))


class MultiMNISTBaselineCNN(nnx.Module):
  """The baseline CNN for DiverseMultiMNIST (Table 12, Fig. 5).

  36x36 → 3x3 conv stride 2, padding 1 (ReLU) → 18x18x1024 → 3x3 conv stride
  2 (ReLU, BatchNorm) → 8x8x1024 → 3x3 conv stride 1 (ReLU, BatchNorm) →
  6x6x1024 → a position-wise linear map to 640 → 6x6 average pooling → a
  linear map to the class logits. Table 12 ends with a sigmoid; this module
  returns the logits (the multilabel binary cross-entropy takes logits).
  19.55M parameters (Fig. 5).

  ``learned_pooling=True`` is the variant of Sec. 6 that replaces the pooling
  by a learned linear map from the whole 6x6x1024 map to 640 units (42.49M
  parameters); the map flattens (row, column, channel).

  Table 12 lists ``input dim=3``; DiverseMultiMNIST images have one channel
  and the 19.55M count needs ``in_channels=1``.
  """

  def __init__(self, n_classes: int = 10, in_channels: int = 1,
               width: int = 1024, hidden: int = 640, *,
               learned_pooling: bool = False, image_size: int = 36,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.in_channels = in_channels
    self.learned_pooling = learned_pooling
    self.conv1 = torch_conv(in_channels, width, 3, stride=2, padding=1, **kw)
    self.conv2 = torch_conv(width, width, 3, stride=2, **kw)
    self.bn2 = torch_batch_norm(width, **kw)
    self.conv3 = torch_conv(width, width, 3, stride=1, **kw)
    self.bn3 = torch_batch_norm(width, **kw)
    size = (image_size - 1) // 2 + 1   # 36 → 18 (padding 1)
    size = (size - 3) // 2 + 1 - 2     # → 8 → 6 (no padding)
    self.grid = size
    n_in = width * size * size if learned_pooling else width
    self.fc1 = torch_linear(n_in, hidden, **kw)
    self.fc2 = torch_linear(hidden, n_classes, **kw)

  def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
    """``[b, 36, 36, in_channels]`` images → class logits ``[b, n_classes]``."""
    _check_image(x, self.in_channels)
    out = jax.nn.relu(self.conv1(x))
    out = self.bn2(jax.nn.relu(self.conv2(out)))
    out = self.bn3(jax.nn.relu(self.conv3(out)))
    if self.learned_pooling:
      out = self.fc1(out.reshape(out.shape[0], -1))
    else:
      out = jnp.mean(self.fc1(out), axis=(1, 2))
    return self.fc2(out)
