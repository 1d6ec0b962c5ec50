"""Inverted dot-product attention routing layers (Tsai et al., 2020).

:class:`InvertedAttentionFC` and :class:`InvertedAttentionConv` own one
capsule layer's parameters (the transformation matrices ``W`` and the
LayerNorm scale/bias), initialised as the authors do, and ``jax.vmap`` the
per-sample kernels :func:`capsjax.routing.inverted_attention_fc` /
:func:`~capsjax.routing.inverted_attention_conv` over the batch. A call is one
routing step (Procedure 1): ``x_out=None`` on the first iteration (uniform
routing), then the layer's previous poses. Models string the steps together
(Procedure 2: see :mod:`capsjax.models.tsai2020`).

Two things the kernels do not expose are done here, on the pose *before*
LayerNorm: dropout (the authors' order is dropout, then LayerNorm) and the
ablations of Fig. 4 (no LayerNorm, "A"; capsule activations, "C"). When the
layer is in eval mode (or has no dropout) and uses neither ablation, the call
is exactly the kernel; otherwise it runs this module's own routing step (same
math, the pre-LayerNorm pose kept), checked against the kernel in the tests.

Parameters port from the official PyTorch layers with
:func:`capsjax.routing.inverted_attention.fc_weight_from_official` /
``conv_weight_from_official`` (``w`` → ``W``) and ``nonlinear_act.weight`` /
``.bias`` → ``ln_scale`` / ``ln_bias``.

References:
  Tsai, Srivastava, Goh, Salakhutdinov, "Capsules with Inverted Dot-Product
  Attention Routing", ICLR 2020 (Procedure 1, Eqs. (1)-(4); Fig. 4).
  Official code: ``CapsuleFC``, ``CapsuleCONV`` in
  apple/ml-capsules-inverted-attention-routing, ``src/layers.py``.
  Hinton, Sabour, Frosst, "Matrix capsules with EM routing", ICLR 2018
  (the activation cost used by ablation C).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax import _shapes
from capsjax._numerics import layer_norm as _layer_norm
from capsjax.routing.inverted_attention import (inverted_attention_conv,
                                                inverted_attention_fc)

__all__ = [
    "InvertedAttentionConv",
    "InvertedAttentionFC",
    "RoutedCapsules",
    "tsai_weight_init",
]

_ACT_EPS = 1e-6     # keeps ablation C's variances and mass ratios finite.


class RoutedCapsules(NamedTuple):
  """Output of a layer built with ``activations=True`` (ablation C).

  Attributes:
    poses: the new poses, ``[b, n_out, d_out]`` (FC) or
      ``[b, H', W', n_out, d_out]`` (conv).
    activations: the new activations in (0, 1), ``[b, n_out]`` or
      ``[b, H', W', n_out]``.
  """
  poses: jax.Array
  activations: jax.Array


def tsai_weight_init(n_inp: int, n_out: int, d_inp: int, kernel_size: int = 1,
                     *, matrix_pose: bool) -> Callable[..., jax.Array]:
  """The authors' init ``W ~ N(0, 1) * sqrt(n_out / (s * n_inp * k^2))``.

  ``s = sqrt(d_inp)`` for matrix poses and ``s = d_inp`` for vector poses;
  ``k = 1`` for FC layers. (The official ``weight_init_const``.)
  """
  s = math.isqrt(d_inp) if matrix_pose else d_inp
  const = math.sqrt(n_out / (s * n_inp * kernel_size * kernel_size))

  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * jnp.asarray(const, dtype)

  return init


def _route_pre_norm(votes, x_out, a_inp, beta_a, beta_u):
  """Eqs. (2)-(4) without the LayerNorm; optional EM-style activations.

  Args:
    votes: ``[..., I, n_out, d_out]``; leading axes are independent routing
      problems (conv output positions), ``I`` the inputs of each.
    x_out: ``[..., n_out, d_out]`` or None (uniform routing, ``r = 1/n_out``).
    a_inp: ``[..., I]`` input activations, or None.
    beta_a, beta_u: ``[n_out]``, used only with ``a_inp``.

  Returns:
    ``(pose [..., n_out, d_out], a_out [..., n_out] or None)``.
  """
  n_out, d_out = votes.shape[-2:]
  if x_out is None:
    r = jnp.full(votes.shape[:-1], 1.0 / n_out, votes.dtype)
  else:
    # The official code scales the agreement by 1/sqrt(d_out) (Eq. (2) does
    # not) and renormalises r by sum_j r + 1e-10, a no-op in float32.
    logits = jnp.einsum("...ijh,...jh->...ij", votes, x_out) / math.sqrt(d_out)
    r = jax.nn.softmax(logits, axis=-1)
  if a_inp is None:
    return jnp.einsum("...ij,...ijh->...jh", r, votes), None
  # Ablation C: as in EM routing's M-step, each input's routing weights are
  # scaled by its activation, and a capsule's activation is
  # sigmoid(beta_a - cost) with cost = sum_h (beta_u + log sigma_h) times the
  # share of the active input mass routed to it (EM's sum_i r_ij a_i, made
  # independent of the layer's size).
  r = r * a_inp[..., None]
  pose = jnp.einsum("...ij,...ijh->...jh", r, votes)
  mass = jnp.sum(r, axis=-2)                                   # [..., n_out]
  mean = pose / (mass[..., None] + _ACT_EPS)
  dev2 = jnp.square(votes - mean[..., None, :, :])
  var = jnp.einsum("...ij,...ijh->...jh", r, dev2) / (mass[..., None] + _ACT_EPS)
  share = mass / (jnp.sum(a_inp, axis=-1, keepdims=True) + _ACT_EPS)
  cost = jnp.sum(beta_u[:, None] + 0.5 * jnp.log(var + _ACT_EPS), axis=-1) * share
  return pose, jax.nn.sigmoid(beta_a - cost)


def _fc_votes(x, W, matrix_pose):
  """``[n_inp, d_inp]`` poses → votes ``[n_inp, n_out, d_out]`` (Eq. (1))."""
  if matrix_pose:
    n_inp, n_out, s, _ = W.shape
    votes = jnp.einsum("iab,ijbc->ijac", x.reshape(n_inp, s, s), W)
    return votes.reshape(n_inp, n_out, s * s)
  return jnp.einsum("ia,ijah->ijh", x, W)


def _window_stack(x, k, stride):
  """``[H, W, ...]`` → ``[H', W', k*k, ...]``, window entries row-offset first."""
  h_out = (x.shape[0] - k) // stride + 1
  w_out = (x.shape[1] - k) // stride + 1
  taps = [x[dr:dr + stride * (h_out - 1) + 1:stride,
            dc:dc + stride * (w_out - 1) + 1:stride]
          for dr in range(k) for dc in range(k)]
  return jnp.stack(taps, axis=2)


def _conv_votes(x, W, stride, matrix_pose):
  """``[H, W, n_inp, d_inp]`` → votes ``[H', W', k*k*n_inp, n_out, d_out]``."""
  k, _, n_inp, n_out = W.shape[:4]
  patches = _window_stack(x, k, stride)          # [h, w, k*k, i, d]
  h_out, w_out = patches.shape[:2]
  W = W.reshape(k * k, *W.shape[2:])
  if matrix_pose:
    s = W.shape[-1]
    p = patches.reshape(h_out, w_out, k * k, n_inp, s, s)
    votes = jnp.einsum("hwtiab,tijbc->hwtijac", p, W)
  else:
    votes = jnp.einsum("hwtia,tijao->hwtijo", patches, W)
  return votes.reshape(h_out, w_out, k * k * n_inp, n_out, -1)


class _InvertedAttentionBase(nnx.Module):
  """Parameters and the dropout/LayerNorm/activation shell of both layers."""

  def _setup(self, n_inp, d_inp, n_out, d_out, kernel_size, w_lead, *,
             matrix_pose, dropout_rate, layer_norm, activations, dtype,
             param_dtype, compute_dtype, rngs):
    if compute_dtype is not None and activations:
      raise ValueError(
          "compute_dtype (the routing kernel's mixed precision) applies to "
          "the kernel path; it is not available with activations=True "
          "(ablation C), which routes outside the kernel. Use dtype= there.")
    self.compute_dtype = compute_dtype
    for name, value in (("n_inp", n_inp), ("d_inp", d_inp), ("n_out", n_out),
                        ("d_out", d_out)):
      _shapes.check_positive_int(name, value)
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")
    if matrix_pose:
      s = math.isqrt(d_inp)
      if s * s != d_inp or d_out != d_inp:
        raise ValueError(
            f"matrix_pose=True needs d_inp = d_out = s*s, got d_inp={d_inp}, "
            f"d_out={d_out}.")
      w_shape = (*w_lead, n_inp, n_out, s, s)
    else:
      w_shape = (*w_lead, n_inp, n_out, d_inp, d_out)
    self.n_inp, self.d_inp, self.n_out, self.d_out = n_inp, d_inp, n_out, d_out
    self.matrix_pose, self.dropout_rate = matrix_pose, dropout_rate
    self.layer_norm, self.activations = layer_norm, activations
    self.dtype, self.param_dtype = dtype, param_dtype
    init = tsai_weight_init(n_inp, n_out, d_inp, kernel_size,
                            matrix_pose=matrix_pose)
    self.W = nnx.Param(init(rngs.params(), w_shape, param_dtype))
    if layer_norm:
      self.ln_scale = nnx.Param(jnp.ones((d_out,), param_dtype))
      self.ln_bias = nnx.Param(jnp.zeros((d_out,), param_dtype))
    else:
      self.ln_scale = self.ln_bias = None
    if activations:
      self.beta_a = nnx.Param(jnp.zeros((n_out,), param_dtype))
      self.beta_u = nnx.Param(jnp.zeros((n_out,), param_dtype))
    else:
      self.beta_a = self.beta_u = None
    # Without dropout no random stream is needed (e.g. under to_linen, whose
    # Rngs hold only 'params').
    self.dropout = nnx.Dropout(dropout_rate,
                               rngs=rngs if dropout_rate > 0 else None)

  def _dtype(self, *arrays):
    return self.dtype or jnp.result_type(*arrays, self.W[...])

  def _ln_params(self, dtype):
    if self.ln_scale is None:
      return None, None
    return (jnp.asarray(self.ln_scale[...], dtype),
            jnp.asarray(self.ln_bias[...], dtype))

  def _betas(self, dtype):
    if self.beta_a is None:
      return None, None
    return (jnp.asarray(self.beta_a[...], dtype),
            jnp.asarray(self.beta_u[...], dtype))

  def _uses_kernel(self) -> bool:
    dropout_off = self.dropout_rate == 0.0 or bool(self.dropout.deterministic)
    return dropout_off and self.layer_norm and not self.activations

  def _finish(self, pose, a_out, dtype):
    """Dropout, then LayerNorm (skipped for 1-d poses, as the official code)."""
    pose = self.dropout(pose)
    if self.layer_norm and self.d_out > 1:
      scale, bias = self._ln_params(dtype)
      pose = _layer_norm(pose, scale, bias)
    return pose if a_out is None else RoutedCapsules(pose, a_out)

  def _check_activations(self, a_inp, expected, letters):
    if self.activations:
      if a_inp is None:
        raise ValueError(
            "a_inp is required: this layer was built with activations=True.")
      _shapes.check_shape("a_inp", a_inp, expected, letters)
    elif a_inp is not None:
      raise ValueError(
          "a_inp was given, but this layer was built with activations=False.")


class InvertedAttentionFC(_InvertedAttentionBase):
  """A fully connected capsule layer with inverted dot-product attention.

  Poses ``[b, n_inp, d_inp]`` in, ``[b, n_out, d_out]`` out; a conv capsule
  grid feeding this layer must be flattened (type, row, column), type
  slowest, for the authors' weights to port (the models do this).

  Parameters (the authors' initialisation):

  * ``W``: ``[n_inp, n_out, s, s]`` for matrix poses, ``[n_inp, n_out, d_inp,
    d_out]`` for vector poses, ``~ N(0, 1) * sqrt(n_out / (s * n_inp))``
    (:func:`tsai_weight_init`; ``s = d_inp`` for vector poses).
  * ``ln_scale``, ``ln_bias [d_out]``: the LayerNorm's, 1 and 0 (absent with
    ``layer_norm=False``).
  * ``beta_a``, ``beta_u [n_out]``: 0, only with ``activations=True``.

  Options: ``dropout_rate`` (dropout on the pose before LayerNorm, training
  mode only; switched off by ``model.eval()``), ``layer_norm=False``
  (ablation A), ``activations=True`` (ablation C: capsules carry activations
  in (0, 1); the call then takes ``a_inp`` and returns
  :class:`RoutedCapsules`), ``dtype`` (computation, e.g. ``jnp.bfloat16``),
  ``param_dtype``, and ``compute_dtype`` (the routing kernel's mixed
  precision: bf16 contractions with float32 softmax and LayerNorm
  statistics; see :func:`capsjax.routing.inverted_attention_fc`).
  """

  def __init__(self, n_inp: int, d_inp: int, n_out: int, d_out: int, *,
               matrix_pose: bool = True, dropout_rate: float = 0.0,
               layer_norm: bool = True, activations: bool = False,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               compute_dtype: Any = None, rngs: nnx.Rngs):
    """Creates the layer (see the class docstring).

    Raises:
      ValueError: on a non-positive size, a dropout rate outside [0, 1), or
        matrix poses whose sizes are not ``d_inp = d_out = s*s``.
    """
    self._setup(n_inp, d_inp, n_out, d_out, 1, (), matrix_pose=matrix_pose,
                dropout_rate=dropout_rate, layer_norm=layer_norm,
                activations=activations, dtype=dtype, param_dtype=param_dtype,
                compute_dtype=compute_dtype, rngs=rngs)

  def __call__(self, x_inp: jax.typing.ArrayLike,
               x_out: jax.typing.ArrayLike | None = None, *,
               a_inp: jax.typing.ArrayLike | None = None,
               mask: jax.typing.ArrayLike | None = None,
               ) -> jax.Array | RoutedCapsules:
    """One routing step (Procedure 1).

    Args:
      x_inp: input poses ``[b, n_inp, d_inp]``.
      x_out: this layer's current poses ``[b, n_out, d_out]``, or ``None`` on
        the first iteration (uniform routing).
      a_inp: input activations ``[b, n_inp]``, only (and always) for a layer
        built with ``activations=True``.
      mask: optional boolean ``[b, n_inp]``, False for padding. A padded
        capsule's pose is zeroed, so its votes are zero and it changes no
        output.

    Returns:
      The new poses ``[b, n_out, d_out]``, or :class:`RoutedCapsules` with
      ``activations=True``.
    """
    _shapes.check_shape("x_inp", x_inp, (None, self.n_inp, self.d_inp),
                        "[b, n_inp, d_inp]")
    b = jnp.shape(x_inp)[0]
    if x_out is not None:
      _shapes.check_shape("x_out", x_out, (b, self.n_out, self.d_out),
                          "[b, n_out, d_out]")
    self._check_activations(a_inp, (b, self.n_inp), "[b, n_inp]")
    dtype = self._dtype(x_inp)
    x_inp = jnp.asarray(x_inp, dtype)
    W = jnp.asarray(self.W[...], dtype)
    x_out = None if x_out is None else jnp.asarray(x_out, dtype)
    a_inp = None if a_inp is None else jnp.asarray(a_inp, dtype)
    if mask is not None:
      _shapes.check_shape("mask", mask, (b, self.n_inp), "[b, n_inp]")
      if jnp.asarray(mask).dtype != jnp.bool_:
        raise ValueError(f"mask must be boolean, got {jnp.asarray(mask).dtype}.")
      x_inp = jnp.where(mask[..., None], x_inp, 0)
      if a_inp is not None:
        a_inp = jnp.where(mask, a_inp, 0)

    if self._uses_kernel():
      scale, bias = self._ln_params(dtype)
      route = lambda x, xo: inverted_attention_fc(
          x, W, xo, matrix_pose=self.matrix_pose, ln_scale=scale, ln_bias=bias,
          compute_dtype=self.compute_dtype)
      if x_out is None:
        return jax.vmap(lambda x: route(x, None))(x_inp)
      return jax.vmap(route)(x_inp, x_out)

    betas = self._betas(dtype)

    def step(x, xo, a):
      return _route_pre_norm(_fc_votes(x, W, self.matrix_pose), xo, a, *betas)

    pose, a_out = jax.vmap(step, in_axes=(0, None if x_out is None else 0,
                                          None if a_inp is None else 0))(
                                              x_inp, x_out, a_inp)
    return self._finish(pose, a_out, dtype)

class InvertedAttentionConv(_InvertedAttentionBase):
  """A convolutional capsule layer with inverted dot-product attention.

  Channels-last: poses ``[b, H, W, n_inp, d_inp]`` in, ``[b, H', W', n_out,
  d_out]`` out, VALID ``k x k`` windows with stride ``stride`` (a true
  sliding window, the authors' fix). Each input capsule at each window offset
  routes on its own (softmax over ``n_out``).

  Parameters (the authors' initialisation):

  * ``W``: ``[k, k, n_inp, n_out, s, s]`` for matrix poses, ``[k, k, n_inp,
    n_out, d_inp, d_out]`` for vector poses, ``~ N(0, 1) * sqrt(n_out / (s *
    n_inp * k^2))`` (:func:`tsai_weight_init`; ``s = d_inp`` for vector
    poses); ``W[dr, dc]`` weighs the window entry at row offset ``dr``.
  * ``ln_scale``, ``ln_bias [d_out]``; ``beta_a``, ``beta_u [n_out]``: as in
    :class:`InvertedAttentionFC`, with the same options.
  """

  def __init__(self, n_inp: int, d_inp: int, n_out: int, d_out: int,
               kernel_size: int, stride: int = 1, *, matrix_pose: bool = True,
               dropout_rate: float = 0.0, layer_norm: bool = True,
               activations: bool = False, dtype: Any = None,
               param_dtype: Any = jnp.float32, compute_dtype: Any = None,
               rngs: nnx.Rngs):
    """Creates the layer (see the class docstring).

    Raises:
      ValueError: on a non-positive size, kernel size or stride, a dropout
        rate outside [0, 1), or matrix poses whose sizes are not ``d_inp =
        d_out = s*s``.
    """
    _shapes.check_positive_int("kernel_size", kernel_size)
    _shapes.check_positive_int("stride", stride)
    self.kernel_size, self.stride = kernel_size, stride
    self._setup(n_inp, d_inp, n_out, d_out, kernel_size,
                (kernel_size, kernel_size), matrix_pose=matrix_pose,
                dropout_rate=dropout_rate, layer_norm=layer_norm,
                activations=activations, dtype=dtype, param_dtype=param_dtype,
                compute_dtype=compute_dtype, rngs=rngs)

  def output_size(self, size: int) -> int:
    """Output grid side for an input grid side ``size`` (VALID windows)."""
    return (size - self.kernel_size) // self.stride + 1

  def __call__(self, x_inp: jax.typing.ArrayLike,
               x_out: jax.typing.ArrayLike | None = None, *,
               a_inp: jax.typing.ArrayLike | None = None,
               ) -> jax.Array | RoutedCapsules:
    """One routing step (Procedure 1) at every output position.

    Args:
      x_inp: input poses ``[b, H, W, n_inp, d_inp]``, ``H, W >= k``.
      x_out: this layer's current poses ``[b, H', W', n_out, d_out]`` with
        ``H' = (H - k) // stride + 1``, or ``None`` on the first iteration.
      a_inp: input activations ``[b, H, W, n_inp]``, only (and always) for a
        layer built with ``activations=True``.

    Returns:
      The new poses ``[b, H', W', n_out, d_out]``, or :class:`RoutedCapsules`
      with ``activations=True``.
    """
    _shapes.check_shape("x_inp", x_inp, (None, None, None, self.n_inp, self.d_inp),
                        "[b, H, W, n_inp, d_inp]")
    b, h, w = jnp.shape(x_inp)[:3]
    k = self.kernel_size
    if h < k or w < k:
      raise ValueError(
          f"x_inp's grid (H, W) = ({h}, {w}) must be at least the kernel size "
          f"{k}.")
    h_out, w_out = self.output_size(h), self.output_size(w)
    if x_out is not None:
      _shapes.check_shape("x_out", x_out, (b, h_out, w_out, self.n_out, self.d_out),
                          "[b, H', W', n_out, d_out]")
    self._check_activations(a_inp, (b, h, w, self.n_inp), "[b, H, W, n_inp]")
    dtype = self._dtype(x_inp)
    x_inp = jnp.asarray(x_inp, dtype)
    W = jnp.asarray(self.W[...], dtype)
    x_out = None if x_out is None else jnp.asarray(x_out, dtype)
    a_inp = None if a_inp is None else jnp.asarray(a_inp, dtype)

    if self._uses_kernel():
      scale, bias = self._ln_params(dtype)
      route = lambda x, xo: inverted_attention_conv(
          x, W, xo, stride=self.stride, matrix_pose=self.matrix_pose,
          ln_scale=scale, ln_bias=bias, compute_dtype=self.compute_dtype)
      if x_out is None:
        return jax.vmap(lambda x: route(x, None))(x_inp)
      return jax.vmap(route)(x_inp, x_out)

    betas = self._betas(dtype)

    def step(x, xo, a):
      votes = _conv_votes(x, W, self.stride, self.matrix_pose)
      if a is not None:
        a = _window_stack(a, k, self.stride).reshape(h_out, w_out, -1)
      return _route_pre_norm(votes, xo, a, *betas)

    pose, a_out = jax.vmap(step, in_axes=(0, None if x_out is None else 0,
                                          None if a_inp is None else 0))(
                                              x_inp, x_out, a_inp)
    return self._finish(pose, a_out, dtype)
