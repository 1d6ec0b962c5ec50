"""Li et al. (2018) EncapNet and the ResNet of equal depth (CIFAR-10/100, SVHN).

Constructors (NHWC images, 32 x 32 by default):

* :func:`encapnet18`: the 18-layer EncapNet with one feedback agreement unit
  per module (Fig. 3(a); ``two_feedbacks=True`` adds the second one, along
  the skip path, of Table 3's final model);
* :func:`encapnet18_without_feedback`: the same network without the
  regulariser (Table 3, left);
* :func:`resnet18`: the standard CIFAR ResNet-18 (4 stages of 2 basic blocks,
  64-512 channels), 11,173,962 parameters for 10 classes;
* :func:`resnet18_with_feedback`: that ResNet with a feedback unit per stage
  ("ResNet * OT", Fig. 4 and Table 3, right).

Every model returns a :class:`Li2018Output`. The paper's loss is
``margin_loss(logits, labels) + lambda * aux_loss`` with ``lambda = 10`` for
EncapNet (Sec. 3.2, "Overall Loss Function"). In eval mode (``model.eval()``)
the feedback units are skipped and ``aux_loss`` is 0.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax.nn.encapnet import CapConv, CapFC, FeedbackAgreement, conv
from capsjax.nn.torch_init import torch_batch_norm

__all__ = [
    "EncapNet",
    "Li2018Output",
    "ResNet18",
    "encapnet18",
    "encapnet18_without_feedback",
    "resnet18",
    "resnet18_with_feedback",
]


class Li2018Output(NamedTuple):
  """What the models of Li et al. (2018) return.

  Attributes:
    logits: ``[B, n_classes]``; for EncapNet the class capsule lengths
      ``|v_j|`` in ``[0, 1)`` (the input of the margin loss), for the ResNet
      the class scores of its linear classifier (for softmax cross-entropy).
    aux_loss: scalar: the sum over feedback units of their Sinkhorn
      divergences (Eq. 11), to be weighted by ``lambda`` (paper: 10); 0 in
      eval mode and without feedback units.
    capsules: ``[B, n_classes, d]`` class capsules (EncapNet), ``None`` for the
      ResNet.
  """
  logits: jax.Array
  aux_loss: jax.Array
  capsules: jax.Array | None


def _feedback_kwargs(epsilon: float, n_sinkhorn_iters: int, debiased: bool,
                     detach_plan: bool) -> dict[str, Any]:
  return {"epsilon": epsilon, "n_iters": n_sinkhorn_iters, "debiased": debiased,
              "detach_plan": detach_plan}


def _check_image(x: ArrayLike, size: int, in_features: int) -> jax.Array:
  _shapes.check_shape("x", x, (None, size, size, in_features),
                      "[B, image_size, image_size, in_features]")
  return jnp.asarray(x)


# --------------------------------------------------------------------------
# EncapNet


class EncapModule(nnx.Module):
  """One encapsulated module (Fig. 3(a)): capConv type I, then type II x ``n_type2``.

  Every capConv has its skip connection (Table 3, case 7). Feedback units
  (training only): ``feedback`` maps the module output back to the module
  input (the connectivity of Fig. 3(a), stride ``stride``);
  ``skip_feedback`` maps it back to the type I output (the skip path, stride
  1), the second divergence of the paper's final model.
  """

  def __init__(self, n_caps: int, d_in: int, d_out: int, *, stride: int,
               n_type2: int, coefficients: str, feedback: bool,
               skip_feedback: bool, feedback_kwargs: dict[str, Any],
               dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = {"coefficients": coefficients, "residual": True, "dtype": dtype,
              "param_dtype": param_dtype, "rngs": rngs}
    self.type1 = CapConv(n_caps, d_in, d_out, kernel_size=3, stride=stride, **kw)
    self.type2 = nnx.List([CapConv(n_caps, d_out, d_out, kernel_size=1, **kw)
                           for _ in range(n_type2)])
    fkw = dict(n_caps=n_caps, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
               **feedback_kwargs)
    self.feedback = (FeedbackAgreement(n_caps * d_out, n_caps * d_in,
                                       stride=stride, **fkw)
                     if feedback else None)
    self.skip_feedback = (FeedbackAgreement(n_caps * d_out, n_caps * d_out,
                                            stride=1, **fkw)
                          if skip_feedback else None)

  def __call__(self, u: jax.Array, with_feedback: bool) -> tuple[jax.Array, jax.Array]:
    """``[B, H, W, n, d_in]`` -> (``[B, H / s, W / s, n, d_out]``, divergence)."""
    h = self.type1(u)
    v = h
    for layer in self.type2:
      v = layer(v)
    loss = jnp.zeros((), jnp.float32)
    if with_feedback:
      flat = lambda t: t.reshape(t.shape[:3] + (-1,))
      if self.feedback is not None:
        loss = loss + self.feedback(flat(v), flat(u))
      if self.skip_feedback is not None:
        loss = loss + self.skip_feedback(flat(v), flat(h))
    return v, loss


class EncapNet(nnx.Module):
  """EncapNet (Sec. 3, Table 2): stem conv, capsule modules, capFC.

  ``x [B, S, S, C]`` -> stem conv 3 x 3 (``C -> n_caps``), BN, ReLU, read as
  ``n_caps`` capsules of size 1 -> one :class:`EncapModule` per entry of
  ``cap_dims`` / ``strides`` -> the ``n_caps * S' * S'`` capsules of the last
  module, ordered (capsule, row, column) as the official code flattens them ->
  :class:`~capsjax.nn.encapnet.CapFC` -> class capsules; ``logits`` are their
  lengths. Depth: ``2 + sum_i (N_i + 1)`` (Table 2's formula).

  Attributes:
    deterministic: set by ``model.eval()`` / ``model.train()``; when True the
      feedback units are skipped.
  """

  def __init__(self, num_classes: int = 10, *, in_features: int = 3,
               image_size: int = 32, n_caps: int = 32,
               cap_dims: tuple[int, ...] = (2, 4, 8, 16),
               strides: tuple[int, ...] = (1, 2, 2, 2), n_type2: int = 3,
               coefficients: str = "both", feedback: bool = True,
               two_feedbacks: bool = False, epsilon: float = 1.0,
               n_sinkhorn_iters: int = 10, debiased: bool = True,
               detach_plan: bool = True, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    """Creates the network; see :func:`encapnet18` for the arguments."""
    for name, value in (("num_classes", num_classes), ("in_features", in_features),
                        ("image_size", image_size), ("n_caps", n_caps)):
      _shapes.check_positive_int(name, value)
    if isinstance(n_type2, bool) or not isinstance(n_type2, int) or n_type2 < 0:
      raise ValueError(f"n_type2 must be a non-negative integer, got {n_type2!r}.")
    if len(cap_dims) != len(strides) or not cap_dims:
      raise ValueError("cap_dims and strides must be non-empty and of equal "
                       f"length, got {cap_dims!r} and {strides!r}.")
    size = image_size
    for s in strides:
      if s not in (1, 2) or size % s:
        raise ValueError(f"strides must be 1 or 2 and divide the map size "
                         f"(image_size={image_size}), got {strides!r}.")
      size //= s
    self.num_classes, self.in_features, self.image_size = num_classes, in_features, image_size
    self.deterministic = False
    kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
    self.stem = conv(in_features, n_caps, 3, **kw)
    self.stem_bn = torch_batch_norm(n_caps, **kw)
    fkw = _feedback_kwargs(epsilon, n_sinkhorn_iters, debiased, detach_plan)
    modules, d_in = [], 1
    for d_out, stride in zip(cap_dims, strides):
      modules.append(EncapModule(
          n_caps, d_in, d_out, stride=stride, n_type2=n_type2,
          coefficients=coefficients, feedback=feedback,
          skip_feedback=feedback and two_feedbacks, feedback_kwargs=fkw, **kw))
      d_in = d_out
    self.capsule_modules = nnx.List(modules)
    self.cap_fc = CapFC(n_caps * size * size, num_classes, cap_dims[-1], **kw)

  def __call__(self, x: ArrayLike) -> Li2018Output:
    """Classifies ``x [B, image_size, image_size, in_features]``."""
    x = _check_image(x, self.image_size, self.in_features)
    u = nnx.relu(self.stem_bn(self.stem(x)))[..., None]   # [B, H, W, n_caps, 1]
    aux = jnp.zeros((), jnp.float32)
    for module in self.capsule_modules:
      u, loss = module(u, with_feedback=not self.deterministic)
      aux = aux + loss
    u = jnp.moveaxis(u, 3, 1)                              # [B, n, H, W, d]
    v = self.cap_fc(u.reshape(u.shape[0], -1, u.shape[-1]))
    return Li2018Output(logits=jnp.linalg.norm(v, axis=-1), aux_loss=aux, capsules=v)


def encapnet18(num_classes: int = 10, *, in_features: int = 3,
               image_size: int = 32, n_caps: int = 32,
               cap_dims: tuple[int, ...] = (2, 4, 8, 16),
               strides: tuple[int, ...] = (1, 2, 2, 2), n_type2: int = 3,
               coefficients: str = "both", feedback: bool = True,
               two_feedbacks: bool = False, epsilon: float = 1.0,
               n_sinkhorn_iters: int = 10, debiased: bool = True,
               detach_plan: bool = True, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> EncapNet:
  """The 18-layer EncapNet of Sec. 5.1 (CIFAR-10/100, SVHN), with feedback.

  Table 2 (the exact widths) is not in the paper's text. Its depth formula,
  ``2 + sum_i (N_i + 1) = 18``, with the ResNet's ``2 + sum_i 2 n_i = 18``
  (``N = 3, n = 2``), gives four modules of one type I and ``N = 3`` type II
  capConv layers each, plus the stem convolution and capFC. Widths, strides
  and the stem are those of the official code's EncapNet (``module0`` -
  ``module4``, ``final_cls``, hli2020/nn_encapsulation):

  * stem: conv 3 x 3, ``in_features -> 32``, BN, ReLU: 32 capsules of size 1
    on the 32 x 32 map;
  * module 1: capsules 32 x 1 -> 32 x 2, stride 1 (32 x 32);
  * module 2: 32 x 2 -> 32 x 4, stride 2 (16 x 16);
  * module 3: 32 x 4 -> 32 x 8, stride 2 (8 x 8);
  * module 4: 32 x 8 -> 32 x 16, stride 2 (4 x 4);
  * capFC: 32 * 4 * 4 = 512 capsules of 16 -> 10 class capsules of 16;

  each module being a type I capConv (master 3 x 3, aide 7 x 7) and three
  type II (master 1 x 1, aide 5 x 5), all with skip connections.
  36,791,756 parameters (36,544,064 without feedback) for 10 classes. One
  feedback unit per module maps the module's output back to its input
  (Fig. 3(a)); ``two_feedbacks=True`` adds one along the skip path (the
  paper's final "two OTs" model).

  Args:
    num_classes: class capsules (10 for CIFAR-10 / SVHN, 100 for CIFAR-100).
    in_features: image channels.
    image_size: image height = width.
    n_caps: capsules per position in every module.
    cap_dims: output capsule size of each module.
    strides: stride of each module's type I layer.
    n_type2: type II layers per module (``N``, >= 0).
    coefficients: capConv coefficient source (see
      :class:`~capsjax.nn.encapnet.CapConv`); ``"both"`` is master/aide v3.
    feedback: include the feedback agreement units.
    two_feedbacks: a second unit per module, along the skip path.
    epsilon, n_sinkhorn_iters, debiased, detach_plan: the feedback units'
      Sinkhorn options (see :class:`~capsjax.nn.encapnet.FeedbackAgreement`).
    dtype: compute dtype (e.g. ``jnp.bfloat16``); ``None`` keeps float32.
    param_dtype: parameter dtype.
    rngs: random keys for the initialisation.

  Returns:
    An :class:`EncapNet`.
  """
  return EncapNet(
      num_classes, in_features=in_features, image_size=image_size,
      n_caps=n_caps, cap_dims=cap_dims, strides=strides, n_type2=n_type2,
      coefficients=coefficients, feedback=feedback, two_feedbacks=two_feedbacks,
      epsilon=epsilon, n_sinkhorn_iters=n_sinkhorn_iters, debiased=debiased,
      detach_plan=detach_plan, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def encapnet18_without_feedback(num_classes: int = 10, **kwargs: Any) -> EncapNet:
  """:func:`encapnet18` without the feedback agreement units (same arguments)."""
  return encapnet18(num_classes, feedback=False, **kwargs)


# --------------------------------------------------------------------------
# ResNet-18


_linear_kernel_init = nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")


class BasicBlock(nnx.Module):
  """The ResNet basic block: two 3 x 3 convs with BN, identity or 1 x 1 shortcut."""

  def __init__(self, in_features: int, features: int, *, stride: int,
               dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    kw = {"use_bias": False, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
    bkw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
    self.conv1 = conv(in_features, features, 3, stride=stride, **kw)
    self.bn1 = torch_batch_norm(features, **bkw)
    self.conv2 = conv(features, features, 3, **kw)
    self.bn2 = torch_batch_norm(features, **bkw)
    if stride != 1 or in_features != features:
      self.shortcut = conv(in_features, features, 1, stride=stride, **kw)
      self.shortcut_bn = torch_batch_norm(features, **bkw)
    else:
      self.shortcut = self.shortcut_bn = None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = nnx.relu(self.bn1(self.conv1(x)))
    h = self.bn2(self.conv2(h))
    skip = x if self.shortcut is None else self.shortcut_bn(self.shortcut(x))
    return nnx.relu(h + skip)


class ResNet18(nnx.Module):
  """The CIFAR ResNet-18: conv 3 x 3 (64), 4 stages x 2 basic blocks, linear.

  Stages of 64, 128, 256, 512 channels with strides 1, 2, 2, 2, global average
  pooling, a linear classifier. Optional feedback units (one per stage,
  lower = stage input, higher = stage output, the plain generator of the
  official ``OptTrans``) make the paper's "ResNet * OT".

  Initialisation as the official code applies it to every network
  (``weights_init_cap``): Xavier-normal convolution and linear weights, a
  ``N(0, 1)`` linear bias (the convolutions have none), BN 1 / 0.

  Attributes:
    deterministic: set by ``model.eval()`` / ``model.train()``; when True the
      feedback units are skipped.
  """

  def __init__(self, num_classes: int = 10, *, in_features: int = 3,
               image_size: int = 32, feedback: bool = False,
               epsilon: float = 1.0, n_sinkhorn_iters: int = 10,
               debiased: bool = True, detach_plan: bool = True,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    """Creates the network; see :func:`resnet18` for the arguments."""
    for name, value in (("num_classes", num_classes), ("in_features", in_features),
                        ("image_size", image_size)):
      _shapes.check_positive_int(name, value)
    if image_size % 8:
      raise ValueError(f"image_size must be a multiple of 8, got {image_size}.")
    self.num_classes, self.in_features, self.image_size = num_classes, in_features, image_size
    self.deterministic = False
    kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
    self.stem = conv(in_features, 64, 3, use_bias=False, **kw)
    self.stem_bn = torch_batch_norm(64, **kw)
    stages, feedbacks, c_in = [], [], 64
    fkw = _feedback_kwargs(epsilon, n_sinkhorn_iters, debiased, detach_plan)
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
      stages.append(nnx.List([BasicBlock(c_in, c_out, stride=stride, **kw),
                              BasicBlock(c_out, c_out, stride=1, **kw)]))
      if feedback:
        feedbacks.append(FeedbackAgreement(c_out, c_in, stride=stride, **fkw, **kw))
      c_in = c_out
    self.stages = nnx.List(stages)
    self.feedbacks = nnx.List(feedbacks)
    self.fc = nnx.Linear(512, num_classes, kernel_init=_linear_kernel_init,
                         bias_init=nnx.initializers.normal(1.0), **kw)

  def __call__(self, x: ArrayLike) -> Li2018Output:
    """Classifies ``x [B, image_size, image_size, in_features]``."""
    x = _check_image(x, self.image_size, self.in_features)
    h = nnx.relu(self.stem_bn(self.stem(x)))
    aux = jnp.zeros((), jnp.float32)
    for k, stage in enumerate(self.stages):
      lower = h
      for block in stage:
        h = block(h)
      if self.feedbacks and not self.deterministic:
        aux = aux + self.feedbacks[k](h, lower)
    logits = self.fc(jnp.mean(h, axis=(1, 2)))
    return Li2018Output(logits=logits, aux_loss=aux, capsules=None)


def resnet18(num_classes: int = 10, *, in_features: int = 3,
             image_size: int = 32, feedback: bool = False,
             epsilon: float = 1.0, n_sinkhorn_iters: int = 10,
             debiased: bool = True, detach_plan: bool = True,
             dtype: Any = None, param_dtype: Any = jnp.float32,
             rngs: nnx.Rngs) -> ResNet18:
  """The ResNet of equal depth (18 layers) that Sec. 5.1 compares EncapNet with.

  The standard CIFAR/SVHN ResNet-18 (11,173,962 parameters for 10 classes);
  ``2 + sum_i 2 n_i = 18`` with ``n = 2`` blocks in each of 4 stages.

  Args:
    num_classes: classes.
    in_features: image channels.
    image_size: image height = width (a multiple of 8).
    feedback: add a feedback agreement unit per stage ("ResNet * OT").
    epsilon, n_sinkhorn_iters, debiased, detach_plan: the feedback units'
      Sinkhorn options (see :class:`~capsjax.nn.encapnet.FeedbackAgreement`).
    dtype: compute dtype; ``None`` keeps float32.
    param_dtype: parameter dtype.
    rngs: random keys for the initialisation.

  Returns:
    A :class:`ResNet18`.
  """
  return ResNet18(num_classes, in_features=in_features, image_size=image_size,
                  feedback=feedback, epsilon=epsilon,
                  n_sinkhorn_iters=n_sinkhorn_iters, debiased=debiased,
                  detach_plan=detach_plan, dtype=dtype,
                  param_dtype=param_dtype, rngs=rngs)


def resnet18_with_feedback(num_classes: int = 10, **kwargs: Any) -> ResNet18:
  """:func:`resnet18` with a feedback agreement unit per stage (same arguments)."""
  return resnet18(num_classes, feedback=True, **kwargs)
