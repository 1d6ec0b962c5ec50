"""Routing by self-attention (Duarte et al., 2021) as a Flax NNX layer.

:class:`SelfAttentionRoutingLayer` owns the parameters of one routing step
(the fields of :class:`~capsjax.routing.SelfAttentionParams`) and
``jax.vmap``\\ s the per-sample kernel
:func:`capsjax.routing.self_attention_routing` over the batch, with MLP
dropout in training mode.

Every routing layer of the Duarte et al. model family (this one and the
baselines of ``capsjax.nn.routing_baselines``) maps primary capsules
``(poses [b, C, d_in], activations [b, C])`` to a :class:`Capsules`
``(poses [b, n_out, d_out], activations [b, n_out])`` and exposes ``n_out``
and ``d_out``, so that a model can swap one for another.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax.nn.torch_init import torch_bias_init, torch_kernel_init
from capsjax.routing.self_attention import (
    QKV_ACTIVATIONS,
    SelfAttentionParams,
    self_attention_routing,
)

__all__ = ["Capsules", "SelfAttentionRoutingLayer", "check_capsules", "linear_params"]


class Capsules(NamedTuple):
  """Secondary capsules, the common output of the Duarte et al. routing layers.

  Attributes:
    poses: ``[b, n_out, d_out]`` capsule poses.
    activations: ``[b, n_out]`` capsule activations (existence probabilities;
      for the self-attention layer a softmax over the capsules, Eq. 2).
  """

  poses: jax.Array
  activations: jax.Array


def linear_params(key: jax.Array, d_in: int, d_out: int,
                  param_dtype: Any) -> tuple[nnx.Param, nnx.Param]:
  """A ``[d_in, d_out]`` weight and ``[d_out]`` bias with ``torch.nn.Linear``'s init.

  Both ``U(-1/sqrt(d_in), 1/sqrt(d_in))`` (Kaiming-uniform with ``a = sqrt(5)``
  for the weight), as PyTorch initialises a ``Linear(d_in, d_out)``.
  """
  k_w, k_b = jax.random.split(key)
  return (nnx.Param(torch_kernel_init(k_w, (d_in, d_out), param_dtype)),
          nnx.Param(torch_bias_init(d_in)(k_b, (d_out,), param_dtype)))


def check_capsules(poses: ArrayLike, activations: ArrayLike,
                   mask: ArrayLike | None, d_in: int,
                   n_inp: int | None = None) -> tuple[int, int]:
  """Validates a routing layer's inputs; returns ``(b, C)``.

  Args:
    poses: must be ``[b, C, d_in]`` (``C = n_inp`` when given).
    activations: must be ``[b, C]``.
    mask: ``None`` or boolean ``[b, C]``.
    d_in: the layer's input pose size.
    n_inp: the layer's fixed number of input capsules, or ``None``.
  """
  _shapes.check_shape("poses", poses, (None, n_inp, d_in), "[b, C, d_in]")
  b, c, _ = jnp.shape(poses)
  _shapes.check_shape("activations", activations, (b, c), "[b, C]")
  if mask is not None:
    _shapes.check_shape("mask", mask, (b, c), "[b, C]")
    if jnp.result_type(mask) != jnp.bool_:
      raise ValueError(
          f"mask must be boolean (True for a capsule, False for padding), got "
          f"dtype {jnp.result_type(mask)}.")
  return b, c


class SelfAttentionRoutingLayer(nnx.Module):
  """Routing by multi-head self-attention, Sec. 3.1 and App. B of Duarte et al.

  ``C`` primary capsules (poses ``[b, C, d1]``, activations ``[b, C]``) in,
  ``C`` secondary capsules (poses ``[b, C, d2]``, activations ``[b, C]``, a
  softmax over the capsules) out; ``C`` may differ from call to call. The
  kernel's docstring lists every modelling choice the paper leaves open
  (one or two linear layers per ``h``, per-head scaling ``1/sqrt(d_head)``,
  ReLU MLP, post-norm order, masking).

  Parameters, named as the fields of :class:`~capsjax.routing.SelfAttentionParams`
  (``x @ w`` layout). No official code is public and the paper gives no
  initialisation, so every linear map has ``torch.nn.Linear``'s default
  (weight and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``) and the LayerNorms
  PyTorch's scale 1, bias 0 — what a PyTorch implementation built from
  ``nn.Linear``/``nn.LayerNorm`` would start from:

  * ``w_q``, ``w_k``, ``w_v [d1, d2]``, ``b_q``, ``b_k``, ``b_v [d2]``: fan-in
    ``d1`` (with ``qkv_layers=2``: ``[d1, qkv_hidden]``, ``[qkv_hidden]``);
  * with ``qkv_layers=2``, ``w_q2``, ``w_k2``, ``w_v2 [qkv_hidden, d2]``,
    ``b_q2``, ``b_k2``, ``b_v2 [d2]``: fan-in ``qkv_hidden``;
  * ``ln1_scale``, ``ln1_bias``, ``ln2_scale``, ``ln2_bias [d2]``: 1, 0;
  * ``w_mlp1 [d2, d_hidden]``, ``b_mlp1``: fan-in ``d2``;
    ``w_mlp2 [d_hidden, d2]``, ``b_mlp2``: fan-in ``d_hidden``;
  * ``w_p [d2, 1]``, ``b_p [1]``: fan-in ``d2`` (Eq. 2; absent with
    ``activation_head=False``);
  * ``w_o [d2, d2]``, ``b_o [d2]``: fan-in ``d2``, only with ``out_proj=True``.

  Dropout (on the MLP's hidden units) is active in training mode
  (``model.train()``, the default) and off after ``model.eval()``; its keys
  come from ``rngs.dropout`` (one split per sample of the batch).

  Attributes:
    d1, d2, n_heads, d_hidden, dropout_rate, out_proj, activation_head,
    qk_scale, ln_eps, dtype, param_dtype, qkv_layers, qkv_activation: the
    constructor arguments; qkv_hidden: the hidden width of ``h`` (``d2`` when
    not given; ``None`` with ``qkv_layers=1``).
    d_out: ``d2``, the output pose size; n_inp, n_out: ``None`` (any number of
      capsules, as many out as in) — the common routing-layer interface.
  """

  def __init__(
      self,
      d1: int,
      d2: int,
      *,
      n_heads: int = 4,
      d_hidden: int = 1024,
      dropout_rate: float = 0.1,
      out_proj: bool = False,
      activation_head: bool = True,
      qk_scale: float | None = None,
      ln_eps: float = 1e-5,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      chunk_size: int | None = None,
      compute_dtype: Any = None,
      qkv_layers: int = 2,
      qkv_hidden: int | None = None,
      qkv_activation: str | None = None,
      rngs: nnx.Rngs,
  ):
    """Creates the layer.

    Args:
      d1: primary (input) pose size.
      d2: secondary (output) pose size (paper: 256; 16 in Table 3).
      n_heads: attention heads; must divide ``d2``. Not given in the paper:
        4 divides both of its ``d2`` (16 and 256).
      d_hidden: MLP hidden width (App. B: 1024).
      dropout_rate: MLP dropout in training mode. The paper applies dropout
        but gives no rate; 0.1 is PyTorch's Transformer default.
      out_proj: add an output projection ``w_o, b_o`` of the concatenated
        heads (Eq. 6 has none; default False).
      activation_head: if False the layer has no ``w_p, b_p`` and returns
        uniform activations ``1/C`` over the present capsules: the attention
        block alone, for Table 5's "self-attention without capsule
        structures" baseline.
      qk_scale: attention logit scale; ``None`` means ``1/sqrt(d2/n_heads)``.
      ln_eps: LayerNorm epsilon.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``None`` means the
        result type of the inputs and the parameters.
      param_dtype: dtype of the parameters.
      chunk_size: queries per attention block of the kernel (``None``:
        automatic; see :func:`capsjax.routing.self_attention_routing`).
      compute_dtype: the kernel's mixed-precision dtype (e.g.
        ``jnp.bfloat16``: matmuls in it, softmax and LayerNorm in float32);
        ``None``: off.
      qkv_layers: linear layers per map ``h_Q, h_K, h_V``: 2 (default;
        Sec. 3.1: "using two linear layers for all functions h") or 1 (one
        affine map: the same function class as two layers without a
        nonlinearity, but trained differently; capsjax's default before).
      qkv_hidden: with ``qkv_layers=2``, the width between the two layers;
        ``None``: ``d2`` (the paper gives none; ``d2`` is the width ``h``
        maps to, so neither layer narrows the map below ``min(d1, d2)``).
        Must be ``None`` with ``qkv_layers=1``.
      qkv_activation: with ``qkv_layers=2``, the nonlinearity between the
        two layers: ``None`` (default: none; the paper calls them "two
        linear layers" and App. B "linear projections", and names no
        nonlinearity, where it does for ``g``: "a two-layer nonlinear MLP")
        or ``"relu"`` (each ``h`` a two-layer MLP). Must be ``None`` with
        ``qkv_layers=1``.
      rngs: random streams; ``params`` draws the weights, ``dropout`` (only
        read when ``dropout_rate > 0``) the dropout masks.

    Raises:
      ValueError: on a non-positive size, ``n_heads`` not dividing ``d2``, a
        dropout rate outside [0, 1), ``qkv_layers`` not 1 or 2, an unknown
        ``qkv_activation``, or ``qkv_hidden`` / ``qkv_activation`` given with
        ``qkv_layers=1``.
    """
    for name, value in (("d1", d1), ("d2", d2), ("n_heads", n_heads),
                        ("d_hidden", d_hidden)):
      _shapes.check_positive_int(name, value)
    if qkv_layers not in (1, 2):
      raise ValueError(f"qkv_layers must be 1 or 2, got {qkv_layers!r}.")
    if qkv_activation not in QKV_ACTIVATIONS:
      raise ValueError(f"qkv_activation must be one of {QKV_ACTIVATIONS}, got "
                       f"{qkv_activation!r}.")
    if qkv_layers == 1 and (qkv_hidden is not None or qkv_activation is not None):
      raise ValueError(
          "qkv_hidden and qkv_activation describe the second layer of h_Q, "
          f"h_K, h_V and need qkv_layers=2, got qkv_layers=1 with "
          f"qkv_hidden={qkv_hidden!r}, qkv_activation={qkv_activation!r}.")
    if qkv_layers == 2:
      qkv_hidden = d2 if qkv_hidden is None else qkv_hidden
      _shapes.check_positive_int("qkv_hidden", qkv_hidden)
    if d2 % n_heads:
      raise ValueError(f"n_heads must divide d2 = {d2}, got n_heads={n_heads}.")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")
    self.d1, self.d2, self.n_heads, self.d_hidden = d1, d2, n_heads, d_hidden
    self.d_out, self.n_inp, self.n_out = d2, None, None
    self.dropout_rate, self.out_proj = dropout_rate, out_proj
    self.qk_scale, self.ln_eps = qk_scale, ln_eps
    self.dtype, self.param_dtype = dtype, param_dtype
    self.chunk_size, self.compute_dtype = chunk_size, compute_dtype
    self.qkv_layers, self.qkv_hidden = qkv_layers, qkv_hidden
    self.qkv_activation = qkv_activation

    keys = iter(jax.random.split(rngs.params(), 6))
    d_first = d2 if qkv_layers == 1 else qkv_hidden
    self.w_q, self.b_q = linear_params(next(keys), d1, d_first, param_dtype)
    self.w_k, self.b_k = linear_params(next(keys), d1, d_first, param_dtype)
    self.w_v, self.b_v = linear_params(next(keys), d1, d_first, param_dtype)
    self.ln1_scale = nnx.Param(jnp.ones((d2,), param_dtype))
    self.ln1_bias = nnx.Param(jnp.zeros((d2,), param_dtype))
    self.w_mlp1, self.b_mlp1 = linear_params(next(keys), d2, d_hidden, param_dtype)
    self.w_mlp2, self.b_mlp2 = linear_params(next(keys), d_hidden, d2, param_dtype)
    self.ln2_scale = nnx.Param(jnp.ones((d2,), param_dtype))
    self.ln2_bias = nnx.Param(jnp.zeros((d2,), param_dtype))
    if activation_head:
      self.w_p, self.b_p = linear_params(next(keys), d2, 1, param_dtype)
    else:
      # Zero w_p, b_p make Eq. (2) the uniform softmax; they are constants,
      # not parameters.
      self.w_p = self.b_p = None
    self.activation_head = activation_head
    if out_proj:
      self.w_o, self.b_o = linear_params(rngs.params(), d2, d2, param_dtype)
    else:
      self.w_o = self.b_o = None
    if qkv_layers == 2:
      # Drawn after every other parameter, so that qkv_layers=1 keeps its
      # initial values.
      keys2 = iter(jax.random.split(rngs.params(), 3))
      self.w_q2, self.b_q2 = linear_params(next(keys2), qkv_hidden, d2, param_dtype)
      self.w_k2, self.b_k2 = linear_params(next(keys2), qkv_hidden, d2, param_dtype)
      self.w_v2, self.b_v2 = linear_params(next(keys2), qkv_hidden, d2, param_dtype)
    else:
      self.w_q2 = self.b_q2 = self.w_k2 = self.b_k2 = self.w_v2 = self.b_v2 = None
    # The Dropout module only holds the train/eval flag and the key stream
    # (the kernel applies the mask); without dropout no stream is needed,
    # e.g. under to_linen, whose Rngs may hold only 'params'.
    self.dropout = nnx.Dropout(dropout_rate,
                               rngs=rngs if dropout_rate > 0 else None)

  def kernel_params(self, dtype: Any) -> SelfAttentionParams:
    """The kernel's parameters, cast to ``dtype``."""
    fields = {}
    for name in SelfAttentionParams._fields:
      p = getattr(self, name)
      fields[name] = None if p is None else jnp.asarray(p[...], dtype)
    if not self.activation_head:
      fields["w_p"] = jnp.zeros((self.d2, 1), dtype)
      fields["b_p"] = jnp.zeros((1,), dtype)
    return SelfAttentionParams(**fields)

  def __call__(self, poses: ArrayLike, activations: ArrayLike, *,
               mask: ArrayLike | None = None) -> Capsules:
    """Routes a batch of capsules (Eqs. 1, 2, 6).

    Args:
      poses: ``[b, C, d1]`` primary poses ``x_i``.
      activations: ``[b, C]`` primary activations ``p_i`` in [0, 1].
      mask: optional boolean ``[b, C]``, False for padding. A padded capsule
        (or one with ``p_i = 0``) changes no other capsule's output: the
        present capsules' outputs equal those of the batch with it removed;
        its own activation is exactly 0.

    Returns:
      :class:`Capsules` ``(poses [b, C, d2], activations [b, C])``.

    Raises:
      ValueError: on a wrong shape (naming the argument) or a non-boolean
        mask.
    """
    b, _ = check_capsules(poses, activations, mask, self.d1)
    dtype = self.dtype or jnp.result_type(poses, activations, self.w_q[...])
    params = self.kernel_params(dtype)
    poses = jnp.asarray(poses, dtype)
    activations = jnp.asarray(activations, dtype)
    train = self.dropout_rate > 0 and not self.dropout.deterministic
    rate = self.dropout_rate if train else 0.0
    keys = jax.random.split(self.dropout.rngs(), b) if train else None

    def route(x, p, m, key):
      out = self_attention_routing(
          x, p, params, n_heads=self.n_heads, mask=m, dropout_rate=rate,
          dropout_rng=key, qk_scale=self.qk_scale, ln_eps=self.ln_eps,
          chunk_size=self.chunk_size, compute_dtype=self.compute_dtype,
          qkv_activation=self.qkv_activation)
      return Capsules(out.poses, out.activations)

    return jax.vmap(route, in_axes=(0, 0, None if mask is None else 0,
                                    None if keys is None else 0))(
                                        poses, activations, mask, keys)
