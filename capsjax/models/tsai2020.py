"""Capsule networks with inverted dot-product attention routing (Tsai et al., 2020).

:class:`CapsNet` is the paper's network (Fig. 1, Procedure 2): a backbone, a
primary capsule layer, convolutional and fully connected capsule layers
routed by inverted dot-product attention, and one linear classifier ``d → 1``
shared by all class capsules. The constructors build the configurations of
the paper and the authors' code:

* :func:`cifar10_resnet`, :func:`cifar100_resnet`: the authors'
  ``configs/resnet_backbone_CIFAR10/100.json`` (Sec. A.1);
* :func:`cifar10_simple`, :func:`cifar100_simple`: Tables 8 and 9;
* :func:`multimnist_matrix`, :func:`multimnist_vector`: Tables 10 and 11;
* :func:`cifar10_baseline_cnn`, :func:`cifar100_baseline_cnn`,
  :func:`multimnist_baseline_cnn`: the baseline CNNs of Tables 2, 3 and 12.

Parameter counts (PyTorch's convention: BatchNorm scale/bias are parameters,
running statistics are not): CIFAR-10 ResNet 1,828,817, CIFAR-100 ResNet
2,799,629 (the authors' code; paper 1.83M / 2.80M), CIFAR-10 simple 561,297,
CIFAR-100 simple 1,462,989 (paper 0.56M / 1.46M), DiverseMultiMNIST matrix
9,963,969 and vector 42,478,017 (paper 9.96M / 42.48M), baseline CNNs
18,919,434 / 19,011,684 (paper 18.92M / 19.01M) and 19,553,162 (19.55M).

References:
  Tsai, Srivastava, Goh, Salakhutdinov, "Capsules with Inverted Dot-Product
  Attention Routing", ICLR 2020. Official code:
  apple/ml-capsules-inverted-attention-routing (``src/capsule_model.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax import _shapes
from capsjax.nn.backbones import (BaselineCNN, MultiMNISTBaselineCNN,
                                  ResNetBackbone, SimpleBackbone)
from capsjax.nn.torch_init import torch_conv, torch_linear
from capsjax.nn.inverted_attention import (InvertedAttentionConv,
                                           InvertedAttentionFC, RoutedCapsules)
from capsjax.nn.primary_capsules import PrimaryCapsules

__all__ = [
    "CapsNet",
    "CapsNetOutput",
    "CapsuleLayerSpec",
    "PrimaryCapsuleSpec",
    "cifar100_baseline_cnn",
    "cifar100_resnet",
    "cifar100_simple",
    "cifar10_baseline_cnn",
    "cifar10_resnet",
    "cifar10_simple",
    "multimnist_baseline_cnn",
    "multimnist_matrix",
    "multimnist_vector",
]


class PrimaryCapsuleSpec(NamedTuple):
  """The primary capsule layer: a bias-free conv to ``n_caps * caps_dim``."""
  n_caps: int
  caps_dim: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0


class CapsuleLayerSpec(NamedTuple):
  """One routed capsule layer: ``kind`` is ``"conv"`` or ``"fc"``."""
  kind: str
  n_caps: int
  caps_dim: int
  kernel_size: int = 1
  stride: int = 1
  matrix_pose: bool = True


class CapsNetOutput(NamedTuple):
  """What :class:`CapsNet` returns.

  Attributes:
    logits: class logits ``[b, n_classes]`` (cross-entropy for CIFAR;
      sigmoid / binary cross-entropy for DiverseMultiMNIST).
    poses: every capsule layer's final poses, primary first, class capsules
      last: ``[b, H, W, n, d]`` for convolutional layers, ``[b, n, d]`` for
      FC layers.
    activations: with ``activations=True`` (ablation C), the matching
      activations (``[b, H, W, n]`` / ``[b, n]``); otherwise ``None``.
  """
  logits: jax.Array
  poses: tuple[jax.Array, ...]
  activations: tuple[jax.Array, ...] | None


def _flatten_grid(x: jax.Array | None, grid_ndim: int) -> jax.Array | None:
  """``[b, H, W, n, ...]`` → ``[b, n*H*W, ...]``, (type, row, column) order.

  Only arrays with ``grid_ndim`` axes are grids (5 for poses, 4 for
  activations); others pass through. The authors' FC layer flattens a
  ``[b, n, H, W, d]`` grid with the type slowest; using the same order lets
  their weights port.
  """
  if x is None or x.ndim != grid_ndim:
    return x
  b, h, w, n = x.shape[:4]
  moved = jnp.moveaxis(x, 3, 1)                     # [b, n, H, W, ...]
  return moved.reshape(b, n * h * w, *x.shape[4:])


class CapsNet(nnx.Module):
  """The network of Procedure 2 with concurrent (or sequential) routing.

  ``images → backbone → primary capsules (conv, LayerNorm) → routed capsule
  layers → class capsules → shared linear classifier → logits``.

  Routing (Procedure 2): the non-primary capsules start empty; iteration 1
  routes layer by layer with uniform coefficients (each layer sees the new
  poses of the layer below); iterations ``2..n_iters`` update every layer at
  once from the previous iteration's poses (concurrent routing, the paper's
  method and the authors' default). ``concurrent=False`` is ablation B of
  Fig. 4 (sequential routing: each layer runs all its iterations before the
  next layer starts, the authors' ``--sequential_routing``);
  ``layer_norm=False`` is ablation A (no LayerNorm in the routing layers;
  the primary capsules keep theirs); ``activations=True`` is ablation C
  (capsule activations as in EM routing: primary activations from a sigmoid
  conv, routed activations from :class:`InvertedAttentionFC`'s EM-style
  cost; no official code exists for A's and C's exact form, see the layer).

  The iterations are unrolled in Python (the papers use at most 5; see the
  comment in ``__call__`` for why not a loop), so compile time grows with
  ``n_iters``. Dropout (``dropout_rate``) acts on the
  routed poses before their LayerNorm in training mode; BatchNorm layers of
  the backbone use batch statistics in training mode and running averages
  after ``model.eval()``.
  """

  def __init__(self, backbone: nnx.Module, *, feature_channels: int,
               feature_size: int, primary: PrimaryCapsuleSpec,
               capsules: Sequence[CapsuleLayerSpec], n_iters: int = 2,
               concurrent: bool = True, layer_norm: bool = True,
               activations: bool = False, dropout_rate: float = 0.0,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    """Creates the network.

    Args:
      backbone: a module mapping ``[b, H, W, C]`` images to ``[b,
        feature_size, feature_size, feature_channels]`` features.
      feature_channels, feature_size: the backbone's output.
      primary: the primary capsule layer.
      capsules: the routed layers, class capsules last (an ``"fc"`` layer
        with one capsule per class).
      n_iters: routing iterations (the authors' ``num_routing``, >= 1;
        their README recommends 2).
      concurrent, layer_norm, activations, dropout_rate: see the class
        docstring.
      dtype, param_dtype: computation and parameter dtypes.
      rngs: random streams (``params``; ``dropout`` when dropout is used).

    Raises:
      ValueError: on an empty or ill-formed layer list, or ``n_iters < 1``.
    """
    _shapes.check_positive_int("n_iters", n_iters)
    if not capsules or capsules[-1].kind != "fc":
      raise ValueError(
          "capsules must end with the class capsules, an 'fc' layer; got "
          f"{[c.kind for c in capsules]}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.n_iters, self.concurrent = n_iters, concurrent
    self.activations = activations
    self.backbone = backbone
    self.primary = PrimaryCapsules(
        feature_channels, primary.n_caps, primary.caps_dim, primary.kernel_size,
        primary.stride, primary.padding, **kw)
    # Ablation C's primary activations: one sigmoid unit per capsule, from a
    # conv shaped like the pose conv (Tables 6/7's EM-routing design).
    self.primary_act = (torch_conv(
        feature_channels, primary.n_caps, primary.kernel_size,
        stride=primary.stride, padding=primary.padding, **kw)
                        if activations else None)

    size = (feature_size + 2 * primary.padding - primary.kernel_size
            ) // primary.stride + 1
    n, d, grid = primary.n_caps, primary.caps_dim, True
    layers = []
    for spec in capsules:
      opts = dict(matrix_pose=spec.matrix_pose, dropout_rate=dropout_rate,
                  layer_norm=layer_norm, activations=activations, **kw)
      if spec.kind == "conv":
        if not grid:
          raise ValueError("a 'conv' capsule layer cannot follow an 'fc' one.")
        layer = InvertedAttentionConv(n, d, spec.n_caps, spec.caps_dim,
                                      spec.kernel_size, spec.stride, **opts)
        size = layer.output_size(size)
        if size < 1:
          raise ValueError(
              f"the capsule grid vanishes at layer {len(layers)}: the input "
              "images are too small for this configuration.")
      elif spec.kind == "fc":
        n_inp = n * size * size if grid else n
        layer = InvertedAttentionFC(n_inp, d, spec.n_caps, spec.caps_dim, **opts)
        grid = False
      else:
        raise ValueError(f"capsule layer kind must be 'conv' or 'fc', got "
                         f"{spec.kind!r}.")
      layers.append(layer)
      n, d = spec.n_caps, spec.caps_dim
    self.layers = nnx.List(layers)
    self.n_classes = n
    # One classifier shared by all class capsules (the authors' final_fc).
    self.classifier = torch_linear(d, 1, **kw)

  def _route(self, index: int, below, current):
    """One routing step of layer ``index``: ``(poses, acts)`` pairs in and out."""
    layer = self.layers[index]
    x, a = below
    if isinstance(layer, InvertedAttentionFC):
      x, a = _flatten_grid(x, 5), _flatten_grid(a, 4)
    x_out = None if current is None else current[0]
    if self.activations:
      out: RoutedCapsules = layer(x, x_out, a_inp=a)
      return out.poses, out.activations
    return layer(x, x_out), None

  def __call__(self, images: jax.typing.ArrayLike, *,
               n_iters: int | None = None) -> CapsNetOutput:
    """Classifies a batch of images.

    Args:
      images: ``[b, H, W, C]`` (NHWC).
      n_iters: routing iterations for this call; defaults to the model's.

    Returns:
      :class:`CapsNetOutput`.
    """
    n_iters = self.n_iters if n_iters is None else n_iters
    _shapes.check_positive_int("n_iters", n_iters)
    features = self.backbone(images)
    primary = (self.primary(features),
               jax.nn.sigmoid(self.primary_act(features))
               if self.activations else None)
    n_layers = len(self.layers)

    if self.concurrent:
      # Iteration 1: sequential, uniform routing (Procedure 2, lines 5-6).
      states, below = [], primary
      for i in range(n_layers):
        below = self._route(i, below, None)
        states.append(below)

      # Iterations 2..t: every layer from the previous iteration's poses.
      def concurrent_step(states):
        full = (primary, *states)
        return tuple(self._route(i, full[i], full[i + 1]) for i in range(n_layers))

      states = tuple(states)
      # Unrolled: the papers use at most 5 iterations, and XLA:CPU runs the
      # routing kernels inside a while loop ~3x slower (forward) and ~1.4x
      # slower (forward+backward) than unrolled, and compiles them slower
      # too (cifar10_simple, 3 iterations, batch 8, measured side by side).
      # A Python loop rather than an unrolled scan: under reverse-mode AD, a
      # scan around the conv routing kernel made JAX keep the kernel's
      # per-chunk forward intermediates (cifar10_simple train step, batch
      # 32, peak memory with 2 / 5 iterations: 1211 / 1537 MiB in a scan,
      # 226 / 559 MiB here; benchmarks/resources.py).
      for _ in range(n_iters - 1):
        states = concurrent_step(states)
    else:
      states, below = [], primary
      for i in range(n_layers):
        state = self._route(i, below, None)
        for _ in range(n_iters - 1):   # unrolled, as the concurrent loop
          state = self._route(i, below, state)
        states.append(state)
        below = state
      states = tuple(states)

    full = (primary, *states)
    logits = self.classifier(full[-1][0])[..., 0]
    poses = tuple(s[0] for s in full)
    acts = tuple(s[1] for s in full) if self.activations else None
    return CapsNetOutput(logits, poses, acts)


# ----------------------------------------------------------------------------
# Constructors.
# ----------------------------------------------------------------------------


def _cifar_capsules(caps_dim: int, n_classes: int,
                    extra_fc: int | None) -> list[CapsuleLayerSpec]:
  layers = [CapsuleLayerSpec("conv", 32, caps_dim, 3, 2),
            CapsuleLayerSpec("conv", 32, caps_dim, 3, 1)]
  if extra_fc:
    layers.append(CapsuleLayerSpec("fc", extra_fc, caps_dim))
  layers.append(CapsuleLayerSpec("fc", n_classes, caps_dim))
  return layers


def _cifar_feature_size(image_size: int) -> int:
  # A 3x3 conv / residual stage with stride 2 and padding 1.
  return (image_size - 1) // 2 + 1


def cifar10_resnet(*, image_size: int = 32, rngs: nnx.Rngs,
                   **options) -> CapsNet:
  """CIFAR-10, ResNet backbone (the authors' ``resnet_backbone_CIFAR10.json``).

  ResNet backbone 3 → 16x16x128; primary 1x1 conv → 32 capsules of 4x4;
  conv capsules 32 x 4x4 (3x3, stride 2 → 7x7, stride 1 → 5x5); 10 class
  capsules of 4x4 from the 800 flattened capsules; 1,828,817 parameters
  (paper Table 1: 1.83M; 95.14% with 2 iterations).

  Args:
    image_size: input side (32 for CIFAR; smaller for quick tests).
    rngs: random streams.
    **options: :class:`CapsNet` options (``n_iters``, ``concurrent``,
      ``layer_norm``, ``activations``, ``dropout_rate``, ``dtype``,
      ``param_dtype``).
  """
  return _cifar(ResNetBackbone(3, 128, 2, **_dtypes(options), rngs=rngs), 128,
                image_size, 16, 10, None, rngs, options)


def cifar100_resnet(*, image_size: int = 32, rngs: nnx.Rngs,
                    **options) -> CapsNet:
  """CIFAR-100, ResNet backbone (``resnet_backbone_CIFAR100.json``).

  As :func:`cifar10_resnet` with 6x6 poses and an extra FC capsule layer of
  20 capsules before the 100 class capsules; 2,799,629 parameters (paper
  Table 1: 2.80M; 78.02%).
  """
  return _cifar(ResNetBackbone(3, 128, 2, **_dtypes(options), rngs=rngs), 128,
                image_size, 36, 100, 20, rngs, options)


def cifar10_simple(*, image_size: int = 32, rngs: nnx.Rngs,
                   **options) -> CapsNet:
  """CIFAR-10, simple backbone (Table 8): 561,297 parameters (paper 0.56M).

  Backbone 3x3 conv 3 → 256 (stride 2, padding 1, ReLU); primary 1x1 conv →
  32 capsules of 4x4; conv capsules as :func:`cifar10_resnet`. This is the
  model of Fig. 4's convergence study and ablations.
  """
  backbone = SimpleBackbone(3, 256, 3, 2, 1, **_dtypes(options), rngs=rngs)
  return _cifar(backbone, 256, image_size, 16, 10, None, rngs, options)


def cifar100_simple(*, image_size: int = 32, rngs: nnx.Rngs,
                    **options) -> CapsNet:
  """CIFAR-100, simple backbone (Table 9): 1,462,989 parameters (paper 1.46M).

  Backbone 3 → 128; 6x6 poses; FC capsule layers 800 → 20 → 100.
  """
  backbone = SimpleBackbone(3, 128, 3, 2, 1, **_dtypes(options), rngs=rngs)
  return _cifar(backbone, 128, image_size, 36, 100, 20, rngs, options)


def _dtypes(options: dict) -> dict:
  return {k: options[k] for k in ("dtype", "param_dtype") if k in options}


def _cifar(backbone, channels, image_size, caps_dim, n_classes, extra_fc,
           rngs, options) -> CapsNet:
  return CapsNet(backbone, feature_channels=channels,
                 feature_size=_cifar_feature_size(image_size),
                 primary=PrimaryCapsuleSpec(32, caps_dim),
                 capsules=_cifar_capsules(caps_dim, n_classes, extra_fc),
                 rngs=rngs, **options)


def _multimnist(matrix_pose: bool, image_size: int, in_channels: int, rngs,
                options) -> CapsNet:
  backbone = SimpleBackbone(in_channels, 1024, 3, 2, 1, **_dtypes(options),
                            rngs=rngs)
  return CapsNet(backbone, feature_channels=1024,
                 feature_size=(image_size - 1) // 2 + 1,
                 primary=PrimaryCapsuleSpec(16, 64, kernel_size=3, stride=2),
                 capsules=[CapsuleLayerSpec("conv", 16, 64, 3, 1, matrix_pose),
                           CapsuleLayerSpec("fc", 10, 64, 1, 1, matrix_pose)],
                 rngs=rngs, **options)


def multimnist_matrix(*, image_size: int = 36, in_channels: int = 1,
                      rngs: nnx.Rngs, **options) -> CapsNet:
  """DiverseMultiMNIST, matrix poses (Table 10): 9,963,969 parameters.

  36x36 → 3x3 conv 1024, stride 2, padding 1 (ReLU) → 18x18 → primary 3x3
  conv stride 2 → 8x8 x 16 capsules of 8x8 → conv capsules 3x3 stride 1 →
  6x6 x 16 → 576 capsules → 10 class capsules of 8x8 → logits (the table's
  sigmoid belongs to the binary cross-entropy). Paper (Fig. 5): 9.96M, which
  needs ``in_channels=1`` (Table 10 says ``input dim=3``).
  """
  return _multimnist(True, image_size, in_channels, rngs, options)


def multimnist_vector(*, image_size: int = 36, in_channels: int = 1,
                      rngs: nnx.Rngs, **options) -> CapsNet:
  """DiverseMultiMNIST, vector poses (Table 11): 42,478,017 parameters.

  As :func:`multimnist_matrix` with 64-d vector poses (``W`` is 64x64 per
  capsule pair). Paper (Fig. 5): 42.48M.
  """
  return _multimnist(False, image_size, in_channels, rngs, options)


def cifar10_baseline_cnn(*, rngs: nnx.Rngs, **options) -> BaselineCNN:
  """Baseline CNN for CIFAR-10 (Table 2): 18,919,434 parameters (18.92M).

  Returns a module mapping ``[b, 32, 32, 3]`` to logits ``[b, 10]``.
  """
  return BaselineCNN(10, rngs=rngs, **options)


def cifar100_baseline_cnn(*, rngs: nnx.Rngs, **options) -> BaselineCNN:
  """Baseline CNN for CIFAR-100 (Table 3): 19,011,684 parameters (19.01M)."""
  return BaselineCNN(100, rngs=rngs, **options)


def multimnist_baseline_cnn(*, learned_pooling: bool = False,
                            rngs: nnx.Rngs, **options) -> MultiMNISTBaselineCNN:
  """Baseline CNN for DiverseMultiMNIST (Table 12): 19,553,162 parameters.

  Paper (Fig. 5): 19.55M. ``learned_pooling=True`` is Sec. 6's variant with
  a learned map in place of the average pooling: 42,490,762 (42.49M).
  Returns a module mapping ``[b, 36, 36, 1]`` to logits ``[b, 10]``.
  """
  return MultiMNISTBaselineCNN(10, learned_pooling=learned_pooling,
                               rngs=rngs, **options)
