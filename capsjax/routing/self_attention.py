"""Routing by self-attention (Duarte et al., 2021).

One routing step maps ``C`` primary capsules (poses ``[C, d1]``, activations
``[C]`` in [0, 1]) to ``C`` secondary capsules (poses ``[C, d2]``, activations
``[C]`` that sum to 1 over the capsules) with a post-norm Transformer-style
block. No official code has been released, so every choice the paper leaves
open is made here and documented in :func:`self_attention_routing`.

The attention over capsules is computed in blocks of queries (each block sees
all keys), so neither the forward nor the backward pass holds the whole
``[n_heads, C, C]`` score tensor: memory grows linearly in ``C``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from capsjax._numerics import layer_norm as _layer_norm, masked_softmax as _masked_softmax
from capsjax._shapes import check_ndim, check_positive_int, check_shape
from capsjax.routing._precision import Policy

# Queries per attention block when chunk_size is None. A block's scores,
# [n_heads, 64, C], are then at most the size of the MLP's [C, d_hidden]
# activations whenever n_heads * 64 <= d_hidden (the paper: 8 heads at most
# for d_hidden = 1024), so the attention never dominates the memory.
_AUTO_QUERY_BLOCK = 64


class SelfAttentionParams(NamedTuple):
  """The learned parameters of one self-attention routing step.

  Weights multiply from the right (``x @ w``, Flax ``Dense`` layout); a
  PyTorch ``nn.Linear`` weight ports as its transpose.

  Attributes:
    w_q, w_k, w_v: the first (or only) linear layer of the maps
      ``h_Q, h_K, h_V`` of Sec. 3.1: ``[d1, d2]`` when each ``h`` is one
      layer, ``[d1, d_qkv]`` when the second layer ``w_q2, ...`` is given.
    b_q, b_k, b_v: their biases, ``[d2]`` (one layer) or ``[d_qkv]``. With
      one layer, ``b_k`` adds ``q_i . b_k`` to every logit of query ``i`` and
      so cancels in the attention softmax: its gradient is exactly zero (kept
      as the paper's affine ``h_K``). The same holds for ``b_k2``, and for
      ``b_k`` too when the two layers have no nonlinearity between them.
    ln1_scale, ln1_bias: ``[d2]`` the first LayerNorm (on ``V'``, App. B).
    w_mlp1: ``[d2, d_hidden]`` first MLP layer (the paper: ``d_hidden = 1024``).
    b_mlp1: ``[d_hidden]``.
    w_mlp2: ``[d_hidden, d2]`` second MLP layer.
    b_mlp2: ``[d2]``.
    ln2_scale, ln2_bias: ``[d2]`` the LayerNorm after the residual (App. B).
    w_p: ``[d2, 1]`` and b_p: ``[1]``: the activation logit of Eq. (2). ``b_p``
      is shared by all capsules and cancels in the softmax over capsules, so
      its gradient is exactly zero; it is kept to match the paper.
    w_o: ``[d2, d2]`` or ``None``: an optional output projection of the
      concatenated heads. Eq. (6) has none, so ``None`` (the default) is the
      paper's function; pass one to port a standard multi-head attention
      layer (e.g. PyTorch ``nn.MultiheadAttention.out_proj``).
    b_o: ``[d2]`` or ``None``; given exactly when ``w_o`` is.
    w_q2, w_k2, w_v2: ``[d_qkv, d2]`` or ``None``: the second linear layer of
      ``h_Q, h_K, h_V`` (Sec. 3.1: "using two linear layers for all functions
      h"); ``None`` (all six fields) makes each ``h`` one affine map.
    b_q2, b_k2, b_v2: ``[d2]`` or ``None``; given exactly when the weights are.
  """

  w_q: jax.Array
  b_q: jax.Array
  w_k: jax.Array
  b_k: jax.Array
  w_v: jax.Array
  b_v: jax.Array
  ln1_scale: jax.Array
  ln1_bias: jax.Array
  w_mlp1: jax.Array
  b_mlp1: jax.Array
  w_mlp2: jax.Array
  b_mlp2: jax.Array
  ln2_scale: jax.Array
  ln2_bias: jax.Array
  w_p: jax.Array
  b_p: jax.Array
  w_o: jax.Array | None = None
  b_o: jax.Array | None = None
  w_q2: jax.Array | None = None
  b_q2: jax.Array | None = None
  w_k2: jax.Array | None = None
  b_k2: jax.Array | None = None
  w_v2: jax.Array | None = None
  b_v2: jax.Array | None = None


_SECOND_LAYER = ("w_q2", "b_q2", "w_k2", "b_k2", "w_v2", "b_v2")
# Nonlinearities allowed between the two layers of h_Q, h_K, h_V.
QKV_ACTIVATIONS = (None, "relu")


class SelfAttentionRouting(NamedTuple):
  """Output of :func:`self_attention_routing`.

  Attributes:
    poses: ``[C, d2]`` secondary capsule poses ``x̂_i`` (Eq. 1).
    activations: ``[C]`` existence probabilities ``p̂_i`` (Eq. 2): a softmax
      over the present capsules, exactly 0 for excluded ones.
  """

  poses: jax.Array
  activations: jax.Array


def _check_params(params: SelfAttentionParams, d1: int) -> tuple[int, int]:
  """Validates every parameter's shape; returns ``(d2, d_hidden)``."""
  given = [name for name in _SECOND_LAYER if getattr(params, name) is not None]
  if given and len(given) != len(_SECOND_LAYER):
    missing = [name for name in _SECOND_LAYER if name not in given]
    raise ValueError(
        "the second layer of h_Q, h_K, h_V needs all of params."
        f"{', params.'.join(_SECOND_LAYER)} (or none of them), got "
        f"{', '.join(given)} without {', '.join(missing)}.")
  two = bool(given)
  # The first layer's width: d2 with one layer, d_qkv with two.
  first = "[d1, d_qkv]" if two else "[d1, d2]"
  _, d_first = check_ndim("params.w_q", params.w_q, 2, first)
  check_shape("params.w_q", params.w_q, (d1, d_first), first)
  if two:
    _, d2 = check_ndim("params.w_q2", params.w_q2, 2, "[d_qkv, d2]")
  else:
    d2 = d_first
  _, d_hidden = check_ndim("params.w_mlp1", params.w_mlp1, 2, "[d2, d_hidden]")
  vec_d2 = ("ln1_scale", "ln1_bias", "b_mlp2", "ln2_scale", "ln2_bias")
  letters = "[d_qkv]" if two else "[d2]"
  expected = {
      "w_k": ((d1, d_first), first),
      "w_v": ((d1, d_first), first),
      **{name: ((d_first,), letters) for name in ("b_q", "b_k", "b_v")},
      **{name: ((d2,), "[d2]") for name in vec_d2},
      "w_mlp1": ((d2, d_hidden), "[d2, d_hidden]"),
      "b_mlp1": ((d_hidden,), "[d_hidden]"),
      "w_mlp2": ((d_hidden, d2), "[d_hidden, d2]"),
      "w_p": ((d2, 1), "[d2, 1]"),
      "b_p": ((1,), "[1]"),
  }
  for name, (shape, letters) in expected.items():
    check_shape(f"params.{name}", getattr(params, name), shape, letters)
  if (params.w_o is None) != (params.b_o is None):
    raise ValueError(
        "params.w_o and params.b_o must be given together (or both None), "
        f"got w_o={'None' if params.w_o is None else 'an array'} and "
        f"b_o={'None' if params.b_o is None else 'an array'}.")
  if params.w_o is not None:
    check_shape("params.w_o", params.w_o, (d2, d2), "[d2, d2]")
    check_shape("params.b_o", params.b_o, (d2,), "[d2]")
  if two:
    for name in ("w_q2", "w_k2", "w_v2"):
      check_shape(f"params.{name}", getattr(params, name), (d_first, d2),
                  "[d_qkv, d2]")
    for name in ("b_q2", "b_k2", "b_v2"):
      check_shape(f"params.{name}", getattr(params, name), (d2,), "[d2]")
  return d2, d_hidden


def self_attention_routing(
    poses: jax.typing.ArrayLike,
    activations: jax.typing.ArrayLike,
    params: SelfAttentionParams,
    *,
    n_heads: int,
    mask: jax.typing.ArrayLike | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    qk_scale: float | None = None,
    ln_eps: float = 1e-5,
    chunk_size: int | None = None,
    compute_dtype: jax.typing.DTypeLike | None = None,
    qkv_activation: str | None = None,
) -> SelfAttentionRouting:
  """Routes ``C`` capsules by multi-head self-attention (Duarte et al., 2021).

  For one sample, with ``u_i = p_i x_i`` (Sec. 3.1):

  1. ``Q, K, V = h_Q(u), h_K(u), h_V(u)`` ``[C, d2]``. Sec. 3.1 learns them
     "using two linear layers for all functions h, h_K, h_Q, h_V: R^d1 ->
     R^d2"; App. B says "we first use linear projections to generate the
     query-key-value". Two forms:

     * one layer (``params.w_q2`` etc. ``None``): ``h(u) = u W + b``, one
       ``[d1, d2]`` weight and a bias;
     * two layers (``params.w_q2, b_q2, ...`` given):
       ``h(u) = a(u W + b) W2 + b2`` with ``W [d1, d_qkv]``,
       ``W2 [d_qkv, d2]`` and ``a`` set by ``qkv_activation``: ``None`` (the
       identity: two stacked linear layers, the literal text; as a function
       the same class as one affine map of rank ``<= min(d1, d_qkv, d2)``,
       but factorised, so it trains differently) or ``"relu"`` (each ``h``
       a two-layer MLP; then ``V' = softmax(QK^T) V`` is, for near-uniform
       attention, a nonlinear set feature ``mean_j h_V(p_j x_j)`` rather
       than one linear map of ``mean_j p_j x_j``).

     :class:`capsjax.nn.SelfAttentionRoutingLayer` builds two layers with no
     nonlinearity by default (the literal reading). One affine map ports as
     two layers of width ``d2`` with ``W2 = I``, ``b2 = 0``; two linear
     layers fold into one as ``W = W1 @ W2``, ``b = b1 @ W2 + b2``.
  2. Multi-head attention (Eq. 6): ``d2`` is split into ``n_heads``
     contiguous chunks of ``d_head = d2 / n_heads``; each head computes
     ``softmax_j(q_i . k_j * qk_scale) v_j`` and the heads are concatenated
     back to ``V' [C, d2]``. ``qk_scale=None`` means ``1 / sqrt(d_head)``: Eq. 6
     writes ``1/sqrt(d2)`` for ``Q, K`` of width ``d2``, i.e. the width of the
     dot product, which per head is ``d_head``; pass ``1/sqrt(d2)`` for the
     literal reading (the two agree for ``n_heads = 1``). Eq. 6 has no output
     projection; ``params.w_o`` adds one (default ``None``: none).
  3. ``g`` of Eq. (1), in App. B's order: ``y = LN1(V')``;
     ``z = relu(y W_1 + b_1) W_2 + b_2`` (the paper only says "nonlinear
     MLP"; ReLU is chosen), with inverted dropout on the hidden activations;
     ``x̂ = LN2(V' + z)``. The residual starts at ``V'``, which is already
     ``d2``-wide, so ``d1 != d2`` needs no extra projection.
  4. ``p̂ = softmax_i(x̂_i W_p + b_p)`` over the capsules (Eq. 2; its ``x_i``
     is a typo for ``x̂_i``, as the sentence before it says).

  Masking: capsule ``i`` is *excluded* where ``mask[i]`` is False **or**
  ``activations[i] == 0``. ``p_i x_i = 0`` alone would still give a key and
  value ``h_K(0), h_V(0)`` (``b_K, b_V`` with one layer), so an absent
  entity would change the others; excluded capsules are therefore removed
  from every attention's keys and from the softmax of Eq. (2). The present capsules' outputs equal those of the same
  call with the excluded capsules deleted. An excluded capsule still gets a
  finite pose (its query attends to the present capsules) and activation
  exactly 0. If every capsule is excluded, ``V'`` is 0 (or ``b_o``), poses
  are ``LN2(MLP(LN1(V')) + V')`` (finite) and all activations are 0.

  Args:
    poses: ``[C, d1]`` primary capsule poses ``x_i``.
    activations: ``[C]`` activations ``p_i`` in [0, 1].
    params: a :class:`SelfAttentionParams` (shapes there).
    n_heads: number of attention heads; must divide ``d2``. The paper does not
      state it.
    mask: ``[C]`` bool, True where the capsule is present; ``None``: all.
    dropout_rate: MLP dropout probability in [0, 1). Applied only when it is
      positive, and then ``dropout_rng`` is required; the keep mask is
      ``jax.random.bernoulli(dropout_rng, 1 - dropout_rate, [C, d_hidden])``.
    dropout_rng: a PRNG key for dropout; ignored when ``dropout_rate == 0``.
    qk_scale: the attention logit scale; ``None`` means ``1/sqrt(d_head)``.
    ln_eps: LayerNorm epsilon (added to the biased variance); PyTorch's
      default ``1e-5``.
    chunk_size: queries per attention block. Queries are processed in
      ``ceil(C / chunk_size)`` equal blocks (the last padded), each attending
      to all ``C`` keys with an exact softmax, in a ``lax.map`` whose body is
      rematerialised on the backward pass: forward and backward hold
      ``[n_heads, block, C]`` scores instead of ``[n_heads, C, C]``, so memory
      is linear in ``C``. The result is the same function (each query's
      softmax is computed whole). ``None`` (default): blocks of at most 64
      queries (``C <= 64`` is one block, no loop). ``chunk_size >= C``: one
      block.
    compute_dtype: ``None`` (default): every operation in the dtype the
      inputs promote to, as before. A dtype such as ``jnp.bfloat16`` turns on
      mixed precision: the matmuls (the ``Q, K, V`` maps, the scores
      ``q . k``, the attention-weighted sum of ``V``, ``w_o``, both MLP
      layers) take operands rounded to ``compute_dtype`` (``Q, K, V``, the
      attention probabilities and the MLP hidden activations are stored in
      it) and accumulate in float32. In float32 (the input dtype promoted to
      at least float32): ``p_i x_i``, the attention softmax, the biases, the
      nonlinearity between the two layers of ``h`` (the hidden ``[C, d_qkv]``
      is then stored in ``compute_dtype`` for the second matmul), both
      LayerNorms (statistics and output), the ReLU and dropout, the residual,
      the activation logits ``x̂_i W_p + b_p`` (a dot of length ``d2`` per
      capsule) and their softmax. Outputs are in the input dtype.
    qkv_activation: the nonlinearity between the two layers of ``h_Q,
      h_K, h_V``: ``None`` (default, none) or ``"relu"``. Only with the
      second layer (``params.w_q2`` etc.); ``"relu"`` without it raises.

  Returns:
    A :class:`SelfAttentionRouting` ``(poses [C, d2], activations [C])``.

  Raises:
    ValueError: on a wrong shape (naming the argument and the expected
      shape), ``n_heads`` not dividing ``d2``, a bad ``dropout_rate`` or
      ``ln_eps``, ``chunk_size``, ``compute_dtype`` or ``qkv_activation``
      (or ``"relu"`` without the second layer of ``h``), an incomplete
      second layer, or ``dropout_rate > 0`` without ``dropout_rng``.

  References:
    K. Duarte, B. Chen, N. Shvetsova, A. Rouditchenko, S. Thomas, A. Liu,
    D. Harwath, J. Glass, H. Kuehne, M. Shah. "Routing with Self-Attention
    for Multimodal Capsule Networks", 2021. Sec. 3.1, Eqs. (1), (2), (6) and
    Appendix B.
  """
  n_caps, d1 = check_ndim("poses", poses, 2, "[C, d1]")
  if n_caps < 1:
    raise ValueError(f"poses must hold at least one capsule, got shape {(n_caps, d1)}.")
  check_shape("activations", activations, (n_caps,), "[C]")
  d2, d_hidden = _check_params(params, d1)
  check_positive_int("n_heads", n_heads)
  if d2 % n_heads:
    raise ValueError(f"n_heads must divide d2 = {d2}, got n_heads={n_heads}.")
  if mask is not None:
    check_shape("mask", mask, (n_caps,), "[C]")
    if jnp.result_type(mask) != jnp.bool_:
      raise ValueError(f"mask must be boolean, got dtype {jnp.result_type(mask)}.")
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")
  if dropout_rate > 0 and dropout_rng is None:
    raise ValueError("dropout_rate > 0 needs a dropout_rng, got dropout_rng=None.")
  if not ln_eps > 0:
    raise ValueError(f"ln_eps must be positive, got {ln_eps!r}.")
  if chunk_size is not None:
    check_positive_int("chunk_size", chunk_size)
  if qkv_activation not in QKV_ACTIVATIONS:
    raise ValueError(f"qkv_activation must be one of {QKV_ACTIVATIONS}, got "
                     f"{qkv_activation!r}.")
  two_layer_h = params.w_q2 is not None
  if qkv_activation is not None and not two_layer_h:
    raise ValueError(
        f"qkv_activation={qkv_activation!r} acts between the two layers of "
        "h_Q, h_K, h_V, but params has one layer (params.w_q2 etc. are None).")

  poses = jnp.asarray(poses)
  activations = jnp.asarray(activations)
  d_head = d2 // n_heads
  scale = 1.0 / math.sqrt(d_head) if qk_scale is None else qk_scale
  if compute_dtype is None:
    policy = Policy(jnp.result_type(poses, activations), None)
  else:
    out_dtype = jnp.result_type(poses, activations, *(
        p for p in params if p is not None))
    if not jnp.issubdtype(out_dtype, jnp.floating):
      out_dtype = jnp.result_type(out_dtype, jnp.float32)
    policy = Policy(out_dtype, compute_dtype)
    acc = policy.accum
    poses, activations = poses.astype(acc), activations.astype(acc)
    params = SelfAttentionParams(*(None if p is None else jnp.asarray(p, acc)
                                   for p in params))

  present = activations != 0
  if mask is not None:
    present = present & jnp.asarray(mask)

  weighted = activations[:, None] * poses  # p_i x_i, Sec. 3.1

  def h(w, b, w2, b2):  # h_Q, h_K or h_V: one or two linear layers
    out = policy.matmul(weighted, w) + b
    if not two_layer_h:
      return out
    if qkv_activation == "relu":
      out = jax.nn.relu(out)
    return policy.matmul(policy.store(out), w2) + b2

  q = h(params.w_q, params.b_q, params.w_q2, params.b_q2)
  k = h(params.w_k, params.b_k, params.w_k2, params.b_k2)
  v = h(params.w_v, params.b_v, params.w_v2, params.b_v2)
  split = lambda t: policy.store(t.reshape(n_caps, n_heads, d_head))  # [C, head, d_head]
  v_att = _attention(split(q), split(k), split(v), present, scale, policy,
                     _AUTO_QUERY_BLOCK if chunk_size is None else chunk_size)
  v_att = v_att.reshape(n_caps, d2)
  if params.w_o is not None:
    v_att = policy.matmul(v_att, params.w_o) + params.b_o

  # App. B: "We then apply normalization across the columns (i.e. capsule
  # feature dimension) as well as two fully connected linear layers, and
  # dropout, with hidden dimension 1024 and output dimension d2. A residual
  # connection from V' to the output capsule features, followed by
  # normalization across the capsule feature dimensions."
  hidden = jax.nn.relu(policy.matmul(
      _layer_norm(v_att, params.ln1_scale, params.ln1_bias, ln_eps), params.w_mlp1)
      + params.b_mlp1)
  if dropout_rate > 0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, (n_caps, d_hidden))
    hidden = jnp.where(keep, hidden / (1.0 - dropout_rate), 0)
  mlp_out = policy.matmul(hidden, params.w_mlp2) + params.b_mlp2
  new_poses = _layer_norm(v_att + mlp_out, params.ln2_scale, params.ln2_bias, ln_eps)

  act_logits = (new_poses @ params.w_p + params.b_p)[:, 0]  # Eq. (2)
  new_acts = _masked_softmax(act_logits, present, axis=0)
  return SelfAttentionRouting(poses=policy.output(new_poses),
                              activations=policy.output(new_acts))


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, present: jax.Array,
               scale: float, policy: Policy, block: int) -> jax.Array:
  """Multi-head attention of every query over the present keys (Eq. 6).

  Args:
    q, k, v: ``[C, n_heads, d_head]``.
    present: ``[C]`` bool, the keys that take part.
    scale: the logit scale.
    policy: the precision policy (scores and softmax in its ``accum`` dtype).
    block: queries per block.

  Returns:
    ``[C, n_heads, d_head]`` the attention output ``V'`` per head.
  """
  n_caps = q.shape[0]

  def attend(q_blk):  # [b, h, e] -> [b, h, e]
    logits = policy.einsum("ihe,jhe->hij", q_blk, k) * scale
    attn = _masked_softmax(logits, present[None, None, :], axis=-1)  # [h, i, j]
    return policy.einsum("hij,jhe->ihe", policy.store(attn), v)

  n_blocks = -(-n_caps // block)
  if n_blocks == 1:
    return attend(q)
  # Equal blocks, padding as little as possible; padded queries are zeros
  # and their outputs are dropped. The body is rematerialised on the
  # backward pass, so only one block's [h, b, C] scores live at a time.
  size = -(-n_caps // n_blocks)
  q_blocks = jnp.pad(q, [(0, n_blocks * size - n_caps), (0, 0), (0, 0)])
  out = jax.lax.map(jax.checkpoint(attend), q_blocks.reshape((n_blocks, size) + q.shape[1:]))
  return out.reshape((n_blocks * size,) + q.shape[1:])[:n_caps]
