"""Convolutional inverted dot-product attention routing step as batched matmuls.

Private core of :func:`capsjax.routing.inverted_attention_conv`: computes
``sum_i r_ij v_ij`` (Tsai et al., 2020, Eqs. (1)-(4) before LayerNorm) for a
conv capsule layer without forming the votes, with a hand-written backward
pass and a ``jax.vmap`` rule.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import custom_batching

# The official code divides r by (sum_j r + 1e-10) after the softmax. It is a
# no-op in float32 but moves float64 results by ~1e-10, so it is kept to
# match the official function exactly where jax_enable_x64 is on.
RENORM_EPS = 1e-10

# Notation of the conv core: every (window offset o, input capsule i) routes
# on its own, so a step is k*k independent blocks, one per offset. In a block,
# poses are laid out so that the long axis (batch x output positions x pose
# rows) is the M dimension of every matmul:
#
#   P  [m, q]     window poses, m = (n, r), q = (i, c); n = (batch, H', W')
#   Q  [j, m, e]  poses of the layer above
#   Wp [j, q, e]  the block's weights W[i, j, c, e]
#   logits[j, n, i] = sum_{r, c, e} Q[j, n, r, e] W[i, j, c, e] P[n, r, i, c]
#                     / sqrt(r * e)                          (Eq. (2))
#   pose  [j, m, e] = (r[j, n, i] * P) @ Wp                  (Eq. (4))
#
# The votes P_i W_ij are never formed. For poses up to 64 (r, c, e) terms
# (4x4 matrices) the logits are one fused sum of r*c*e products per output,
# [j, n, i], 1/16 of the votes (_agreement); larger poses go through the
# votes-sized T = Q W^T (_times_weights). r * P is votes-sized, written once
# by one fused elementwise op and read once by the matmul; no votes-sized
# tensor is transposed.
#
# Under ``jax.vmap`` the batch would land between j and m and force
# votes-sized transposes, so the core is a ``custom_vmap`` that folds any
# mapped axis into n, inside a ``custom_vjp`` whose hand-written backward
# pass keeps the same layouts and saves only the inputs: it recomputes the
# logits, which costs less than storing them. The batch is processed in
# chunks of a few samples so that one step's votes-sized tensors (~8 MiB)
# stay in cache.
#
# XLA:CPU details that decide the speed here (each measured on the Tsai conv
# shape; see benchmarks/tsai_conv.py): contractions over 4 run fastest as
# unrolled elementwise sums, those over 128 as matmuls; a small transposed
# operand read inside a votes-sized fusion is read strided (3-4x slower) unless
# it crosses a loop boundary first, which makes XLA write it out; and a
# fused sum placed next to a reduction may be split and its broadcast
# operands written to memory. Hence the loops over offsets below.
# ----------------------------------------------------------------------------


def _route_probs(logits: jax.Array) -> jax.Array:
  """Eq. (3) over the output capsules (axis -3 of ``[..., j, n, i]``), with
  the official renorm."""
  r = jax.nn.softmax(logits, axis=-3)
  return r / (jnp.sum(r, axis=-3, keepdims=True) + RENORM_EPS)


def _windows(x: jax.Array, k: int, stride: int, h_out: int,
             w_out: int) -> jax.Array:
  """``[B, H, W, i, d]`` -> every window offset's block ``[k*k, B, H', W', i, d]``."""
  return jnp.stack([
      x[:, a:a + stride * (h_out - 1) + 1:stride,
        b:b + stride * (w_out - 1) + 1:stride]
      for a in range(k) for b in range(k)])


class _ConvGeometry(NamedTuple):
  """Static sizes of a conv routing step (``r = 1`` for vector poses)."""
  k: int
  stride: int
  rows: int        # r: pose rows (s for matrix poses, 1 for vectors)
  cols_inp: int    # c: s or d_inp
  cols_out: int    # e: s or d_out
  precision: Any
  compute_dtype: Any


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int],
         geo: _ConvGeometry) -> jax.Array:
  """Matmul batched over axis 0, float32 accumulation for low compute dtypes."""
  return jax.lax.dot_general(
      a, b, (((contract[0],), (contract[1],)), ((0,), (0,))),
      precision=geo.precision, preferred_element_type=_accum_dtype(a.dtype))


def _accum_dtype(dtype) -> Any:
  return jnp.promote_types(dtype, jnp.float32)


# XLA:CPU runs a matmul with a contraction of 4, and a reduction over
# non-adjacent axes, several times slower than an elementwise pass over the
# same bytes; up to this many terms, such sums are written out as one fused
# elementwise sum of slices instead (measured 2-5x faster on the Tsai conv
# shape).
_MAX_UNROLL = 64


def _times_weights(A: jax.Array, Wj: jax.Array, geo: _ConvGeometry) -> jax.Array:
  """``A [j, m, e] @ Wj [j, e, q]`` -> ``[j, m, q]`` in the compute dtype."""
  e = A.shape[-1]
  if e > 8:
    return _dot(A, Wj, (2, 1), geo).astype(A.dtype)
  acc = _accum_dtype(A.dtype)
  out = sum(A[:, :, t, None].astype(acc) * Wj[:, None, t, :].astype(acc)
            for t in range(e))
  return out.astype(A.dtype)


def _sum_rc(X: jax.Array, P5: jax.Array) -> jax.Array:
  """``sum_{r, c} X[j, n, r, i, c] * P5[n, r, i, c]`` -> ``[j, n, i]``."""
  _, _, r, _, c = X.shape
  if r * c > _MAX_UNROLL:
    return jnp.sum(X * P5, axis=(2, 4))
  return sum(X[:, :, a, :, b] * P5[None, :, a, :, b]
             for a in range(r) for b in range(c))


# Up to this many (r, c, e) terms, the agreement sums of Eq. (2) and of its
# backward pass are one fused elementwise sum over [j, n, i] (below) instead
# of a votes-sized product T followed by a reduction: 4.6x faster on the Tsai
# conv shape (4x4 poses, 64 terms), because nothing votes-sized is written.
_MAX_AGREEMENT_TERMS = 64


def _direct_agreement(geo: _ConvGeometry) -> bool:
  return geo.rows * geo.cols_inp * geo.cols_out <= _MAX_AGREEMENT_TERMS


def _agreement(At: jax.Array, Wt: jax.Array, Pt: jax.Array) -> jax.Array:
  """``sum_{r, c, e} A[j, n, r, e] W[o, i, j, c, e] P[o, n, r, i, c]`` -> ``[o, j, n, i]``.

  From operands in the layouts ``At [r, e, j, n]``, ``Wt [o, e, c, j, i]``,
  ``Pt [o, r, c, n, i]`` (every slice contiguous along ``i``), summed in
  float32 as ``sum_{r, e} A * (sum_c W * P)``: ``r * c * e`` multiply-adds
  per output in one fusion, nothing votes-sized in memory. One offset per
  step of a loop, on purpose: the loop makes XLA write the transposed
  operands out (instead of reading them strided inside the sum), and keeps
  the sum away from the softmax's reduction (next to it, XLA:CPU splits
  the sum and writes its broadcast operands to memory); each was 3-4x
  slower, measured on the Tsai conv shape.
  """
  acc = _accum_dtype(At.dtype)
  At = At.astype(acc)
  r, e = At.shape[:2]
  c = Wt.shape[2]

  def one_offset(wp):
    wt, pt = (a.astype(acc) for a in wp)
    return sum(At[a, t][:, :, None]
               * sum(wt[t, b][:, None, :] * pt[a, b][None] for b in range(c))
               for a in range(r) for t in range(e))
  return jax.lax.map(one_offset, (Wt, Pt))


def _agreement_operands(P: jax.Array, W: jax.Array, geo: _ConvGeometry,
                        n_inp: int, n_out: int):
  """``Pt [k*k, r, c, n, i]`` and ``Wt [k*k, e, c, j, i]`` for :func:`_agreement`."""
  k2 = P.shape[0]
  r, c, e = geo.rows, geo.cols_inp, geo.cols_out
  Pt = P.reshape(k2, -1, r, n_inp, c).transpose(0, 2, 4, 1, 3)
  Wt = W.reshape(k2, n_inp, n_out, c, e).transpose(0, 4, 3, 2, 1)
  return Pt, Wt.astype(P.dtype)


def _rows_first(A: jax.Array, geo: _ConvGeometry) -> jax.Array:
  """``[j, (n r), e]`` -> ``[r, e, j, n]``."""
  n_out = A.shape[0]
  return A.reshape(n_out, -1, geo.rows, geo.cols_out).transpose(2, 3, 0, 1)


def _conv_operands(x_inp, W, x_out, geo: _ConvGeometry):
  """Rearranges ``[B, H, W, i, d]``, the kernel and ``[B, H', W', j, d]``.

  Returns ``P [k*k, m, q]``, ``Q [j, m, e]``, ``Wj [k*k, j, e, q]``, ``Wp
  [k*k, j, q, e]`` in the compute dtype (all input-sized or smaller).
  """
  cd = geo.compute_dtype
  n_batch, h_out, w_out, n_out, _ = x_out.shape
  k, r, c, e = geo.k, geo.rows, geo.cols_inp, geo.cols_out
  n_inp = x_inp.shape[3]
  n = n_batch * h_out * w_out
  P = _windows(x_inp, k, geo.stride, h_out, w_out).reshape(k * k, n, n_inp, r, c)
  P = P.transpose(0, 1, 3, 2, 4).reshape(k * k, n * r, n_inp * c)  # [o, (n r), (i c)]
  Q = x_out.reshape(n, n_out, r, e).transpose(1, 0, 2, 3).reshape(n_out, n * r, e)
  W = W.reshape(k * k, n_inp, n_out, c, e)
  Wj = W.transpose(0, 2, 4, 1, 3).reshape(k * k, n_out, e, n_inp * c)
  Wp = W.transpose(0, 2, 1, 3, 4).reshape(k * k, n_out, n_inp * c, e)
  return tuple(t.astype(cd) for t in (P, Q, Wj, Wp))


def _block_agreement(A: jax.Array, P: jax.Array, Wj: jax.Array,
                     geo: _ConvGeometry, n_inp: int) -> jax.Array:
  """``sum_{r, c} (A Wj)[j, n, r, i, c] P[n, r, i, c]``, float32 ``[j, n, i]``.

  One block through the votes-sized ``T = A Wj``: the path for poses with
  more than ``_MAX_AGREEMENT_TERMS`` terms.
  """
  r, c = geo.rows, geo.cols_inp
  acc = _accum_dtype(A.dtype)
  T = _times_weights(A, Wj, geo).reshape(A.shape[0], -1, r, n_inp, c)
  return _sum_rc(T.astype(acc), P.reshape(-1, r, n_inp, c).astype(acc))


def _weighted(prob: jax.Array, P: jax.Array, n_inp: int,
              geo: _ConvGeometry) -> jax.Array:
  """``prob[j, n, i] * P[n, r, i, c]`` as ``[j, m, q]`` in the compute dtype."""
  n_out = prob.shape[0]
  r, c = geo.rows, geo.cols_inp
  out = prob[:, :, None, :, None].astype(P.dtype) * P.reshape(-1, r, n_inp, c)
  return out.reshape(n_out, -1, n_inp * c)


def _votes_dot(A, P, Wj, W, geo: _ConvGeometry, n_inp: int):
  """``A . v`` for every offset: ``sum_{r, e} A[j, n, r, e] v[n, r, i, j, e]``.

  Float32 ``[k*k, j, n, i]``. With ``A = Q`` these are the routing logits of
  Eq. (2) times ``sqrt(r * e)``; with ``A = G``, the pose cotangent, they are
  ``d loss / d r`` (``r`` enters the pose as ``sum_i r v``).
  """
  if _direct_agreement(geo):
    Pt, Wt = _agreement_operands(P, W, geo, n_inp, A.shape[0])
    return _agreement(_rows_first(A, geo), Wt, Pt)
  return jax.lax.map(lambda pw: _block_agreement(A, pw[0], pw[1], geo, n_inp),
                     (P, Wj))


def _all_logits(P, Q, Wj, W, geo: _ConvGeometry, n_inp: int):
  """Every offset's routing logits (Eq. (2)), float32 ``[k*k, j, n, i]``."""
  scale = np.sqrt(geo.rows * geo.cols_out).astype(_accum_dtype(Q.dtype))
  return _votes_dot(Q, P, Wj, W, geo, n_inp) / scale


def _conv_core_fwd_chunk(x_inp, W, x_out, geo: _ConvGeometry):
  """``sum_i r_ij v_ij`` ``[B, H', W', j, d_out]`` from ``[B, ...]`` inputs."""
  P, Q, Wj, Wp = _conv_operands(x_inp, W, x_out, geo)
  n_inp = x_inp.shape[3]
  probs = _route_probs(_all_logits(P, Q, Wj, W, geo, n_inp))      # [o, j, n, i]

  def add_offset(acc, blk):
    p, wp, prob = blk
    weighted = _weighted(prob, p, n_inp, geo)                     # [j, m, q]
    return acc + _dot(weighted, wp, (2, 1), geo), None

  acc = jnp.zeros(Q.shape, _accum_dtype(Q.dtype))
  pose, _ = jax.lax.scan(add_offset, acc, (P, Wp, probs))        # [j, (n r), e]
  n_out, (n_batch, h_out, w_out) = Q.shape[0], x_out.shape[:3]
  pose = pose.reshape(n_out, n_batch, h_out, w_out, geo.rows, geo.cols_out)
  pose = pose.transpose(1, 2, 3, 0, 4, 5).reshape(x_out.shape)
  return pose.astype(jnp.result_type(x_inp, W))


def _conv_core_bwd_chunk(x_inp, W, x_out, g, geo: _ConvGeometry):
  """Gradients of ``sum(g * pose)`` for ``pose = _conv_core_fwd_chunk(...)``.

  Recomputes every offset's logits (cheaper than storing them) and ``dr =
  G . v``, and runs the softmax's backward pass on these small ``[k*k, j, n,
  i]`` arrays; then per offset: the votes' cotangent ``X = r G + dl Q``
  (``[i, m, (j e)]``), ``dP = X W^T`` and ``dW = P^T X`` as matmuls per
  input capsule, and ``dQ += (dl P) @ Wp``. ``dW`` is per sample, ``[B,
  *W.shape]``, because ``vmap`` of a gradient needs each sample's (the
  caller sums it).
  """
  P, Q, Wj, Wp = _conv_operands(x_inp, W, x_out, geo)
  n_inp, k2 = x_inp.shape[3], P.shape[0]
  n_out, m, e = Q.shape
  G = g.reshape(-1, n_out, geo.rows, e).transpose(1, 0, 2, 3).reshape(n_out, m, e)
  G = G.astype(Q.dtype)
  n_batch, h_out, w_out = x_out.shape[:3]
  r, c = geo.rows, geo.cols_inp
  logits = _all_logits(P, Q, Wj, W, geo, n_inp)                   # [o, j, n, i]
  probs, probs_vjp = jax.vjp(_route_probs, logits)
  d_logits = probs_vjp(_votes_dot(G, P, Wj, W, geo, n_inp))[0]
  d_logits = d_logits / np.sqrt(r * e).astype(d_logits.dtype)
  # Also as [o, i, n, j] for X: passed into the loop, so written out once
  # instead of read strided inside X's votes-sized fusion.
  probs_t, d_logits_t = (a.transpose(0, 3, 2, 1) for a in (probs, d_logits))
  Wi = W.reshape(k2, n_inp, n_out, c, e).transpose(0, 1, 2, 4, 3)
  Wi = Wi.reshape(k2, n_inp, n_out * e, c).astype(Q.dtype)           # [o, i, (j e), c]
  Q4 = Q.reshape(n_out, -1, r, e).transpose(1, 2, 0, 3)              # [n, r, j, e]
  G4 = G.reshape(n_out, -1, r, e).transpose(1, 2, 0, 3)

  def offset_grads(dQ, blk):
    p, wp, wi, d_logit, prob_t, d_logit_t = blk
    acc = prob_t.dtype
    # The votes' cotangent X[i, n, r, j, e] = r G + dl Q (the votes v = P W
    # enter the pose as r v and the logits as Q . v): dP = X W^T and dW =
    # P^T X per input capsule (and per sample), each one matmul.
    X = (prob_t[:, :, None, :, None] * G4[None].astype(acc)
         + d_logit_t[:, :, None, :, None] * Q4[None].astype(acc))
    # One [i, B, t, (j e)] layout (t = (H' W' r)) for both matmuls, so that
    # XLA writes X once instead of once per consumer.
    X = X.reshape(n_inp, n_batch, -1, n_out * e).astype(p.dtype)
    wib = jnp.broadcast_to(wi[:, None], (n_inp, n_batch) + wi.shape[1:])
    dP = jax.lax.dot_general(
        X, wib, (((3,), (2,)), ((0, 1), (0, 1))), precision=geo.precision,
        preferred_element_type=_accum_dtype(p.dtype))               # [i, B, t, c]
    dP = dP.reshape(n_inp, -1, r, c).transpose(1, 2, 0, 3)         # [n, r, i, c]
    Pi = p.reshape(n_batch, -1, n_inp, c).transpose(2, 0, 1, 3)    # [i, B, t, c]
    dW = jax.lax.dot_general(
        Pi, X, (((2,), (2,)), ((0, 1), (0, 1))), precision=geo.precision,
        preferred_element_type=_accum_dtype(p.dtype))               # [i, B, c, (j e)]
    dT = _weighted(d_logit, p, n_inp, geo)                         # [j, m, q]
    return dQ + _dot(dT, wp, (2, 1), geo), (dP.reshape(-1, n_inp * c), dW)

  dQ0 = jnp.zeros(Q.shape, _accum_dtype(Q.dtype))
  dQ, (dP, dW) = jax.lax.scan(offset_grads, dQ0,
                              (P, Wp, Wi, d_logits, probs_t, d_logits_t))
  dx_out = dQ.reshape(n_out, n_batch, h_out, w_out, r, e).transpose(1, 2, 3, 0, 4, 5)
  dP = dP.reshape(k2, n_batch, h_out, w_out, r, n_inp, c).transpose(0, 1, 2, 3, 5, 4, 6)
  _, scatter = jax.vjp(lambda x: _windows(x, geo.k, geo.stride, h_out, w_out),
                       jnp.zeros(x_inp.shape, dP.dtype))
  dx_inp = scatter(dP.reshape(k2, n_batch, h_out, w_out, n_inp, r * c))[0]
  dW = dW.reshape(geo.k, geo.k, n_inp, n_batch, c, n_out, e)
  dW = dW.transpose(3, 0, 1, 2, 5, 4, 6)                           # [B, k, k, i, j, c, e]
  return (dx_inp.astype(x_inp.dtype),
          dW.reshape((n_batch,) + W.shape).astype(W.dtype),
          dx_out.reshape(x_out.shape).astype(x_out.dtype))


# Samples per step of the loop over the batch: the votes-sized intermediates
# of one (offset, chunk) step stay near this many bytes, so they stay in cache
# (measured on the Tsai conv shape: 2x slower per sample without chunking at
# batch 32 than at batch 4).
_CHUNK_BYTES = 8 * 2**20
# On GPUs and TPUs the chunks only bound memory (a loop of cache-sized steps
# would leave the device idle between small kernels): ~64 samples of the Tsai
# conv shape per step. Not measured: no accelerator was available.
_ACCELERATOR_CHUNK_BYTES = 256 * 2**20


def _batch_chunks(x_inp, W, x_out, geo: _ConvGeometry) -> int:
  """The number of equal batch chunks (a divisor of the batch)."""
  n_batch, h_out, w_out, n_out, _ = x_out.shape
  n_inp = x_inp.shape[3]
  per_sample = (h_out * w_out * geo.rows * n_out * n_inp * geo.cols_inp
                * jnp.dtype(geo.compute_dtype).itemsize)
  budget = (_CHUNK_BYTES if jax.default_backend() == "cpu"
            else _ACCELERATOR_CHUNK_BYTES)
  per_chunk = max(1, budget // per_sample)
  samples = max(d for d in range(1, n_batch + 1)
                if n_batch % d == 0 and d <= per_chunk)
  return n_batch // samples


def _split(a: jax.Array, n_chunks: int) -> jax.Array:
  return a.reshape((n_chunks, -1) + a.shape[1:])


def _merge(a: jax.Array) -> jax.Array:
  return a.reshape((-1,) + a.shape[2:])


def _conv_core_fwd(x_inp, W, x_out, geo: _ConvGeometry):
  """:func:`_conv_core_fwd_chunk` looped over cache-sized batch chunks."""
  n_chunks = _batch_chunks(x_inp, W, x_out, geo)
  if n_chunks == 1:
    return _conv_core_fwd_chunk(x_inp, W, x_out, geo)
  out = jax.lax.map(
      lambda xs: _conv_core_fwd_chunk(xs[0], W, xs[1], geo),
      (_split(x_inp, n_chunks), _split(x_out, n_chunks)))
  return _merge(out)


def _conv_core_bwd(x_inp, W, x_out, g, geo: _ConvGeometry):
  """:func:`_conv_core_bwd_chunk` looped over cache-sized batch chunks."""
  n_chunks = _batch_chunks(x_inp, W, x_out, geo)
  if n_chunks == 1:
    return _conv_core_bwd_chunk(x_inp, W, x_out, g, geo)

  out = jax.lax.map(lambda xs: _conv_core_bwd_chunk(xs[0], W, *xs[1:], geo),
                    tuple(_split(a, n_chunks) for a in (x_inp, x_out, g)))
  return jax.tree.map(_merge, out)


def _fold_batch(in_batched, axis_size, args):
  """Broadcasts unbatched activations so every one has the leading batch."""
  return [a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
          for a, b in zip(args, in_batched)]


@functools.cache
def _conv_core(geo: _ConvGeometry):
  """``(x_inp, W, x_out) -> sum_i r_ij v_ij`` for ``[B, ...]`` activations.

  A ``custom_vjp`` over ``custom_vmap`` functions: under ``jax.vmap`` (with
  ``W`` unbatched) the vmapped axis is folded into ``B``, so the batched
  program has the layouts of the unbatched one.
  """
  def vmappable(fn):
    # fn(x_inp, W, x_out, *extra): activations, extra (the backward pass's
    # cotangent) and every output are [B, ...] (dW per sample).
    core = custom_batching.custom_vmap(fn)

    @core.def_vmap
    def _(axis_size, in_batched, x_inp, W, x_out, *extra):
      if in_batched[1]:  # per-example kernels: no shared matmul operand
        args = _fold_batch(in_batched, axis_size, (x_inp, W, x_out, *extra))
        out = jax.vmap(fn)(*args)
        return out, jax.tree.map(lambda _: True, out)
      acts = _fold_batch([in_batched[0], in_batched[2], *in_batched[3:]],
                         axis_size, (x_inp, x_out, *extra))
      flat = [a.reshape((-1,) + a.shape[2:]) for a in acts]
      out = fn(flat[0], W, flat[1], *flat[2:])
      unflat = lambda a: a.reshape((axis_size, -1) + a.shape[1:])
      return jax.tree.map(unflat, out), jax.tree.map(lambda _: True, out)
    return core

  primal = vmappable(lambda x, w, xo: _conv_core_fwd(x, w, xo, geo))
  bwd = vmappable(lambda x, w, xo, g: _conv_core_bwd(x, w, xo, g, geo))

  @jax.custom_vjp
  def core(x_inp, W, x_out):
    return primal(x_inp, W, x_out)

  def core_fwd(x_inp, W, x_out):
    # Only the inputs are saved: the backward pass recomputes the logits.
    return primal(x_inp, W, x_out), (x_inp, W, x_out)

  def core_bwd(res, g):
    dx_inp, dW, dx_out = bwd(*res, g)
    return dx_inp, jnp.sum(dW, axis=0), dx_out

  core.defvjp(core_fwd, core_bwd)
  return core


def conv_pose_sum(x_inp: jax.Array, W: jax.Array, x_out: jax.Array | None,
                  stride: int, matrix_pose: bool, precision,
                  compute_dtype) -> jax.Array:
  """``sum_i r_ij v_ij`` over all window entries, before LayerNorm.

  Args:
    x_inp: input poses ``[H, W, n_inp, d_inp]``.
    W: kernel ``[k, k, n_inp, n_out, d_inp, d_out]`` or ``[k, k, n_inp,
      n_out, s, s]``.
    x_out: poses of the layer above ``[H', W', n_out, d_out]``, or ``None``
      (uniform routing, ``r = 1/n_out``).
    stride: window stride.
    matrix_pose: whether poses are flattened ``s x s`` matrices.
    precision: of the matmuls.
    compute_dtype: dtype of the matmul operands and votes-sized
      intermediates, or ``None`` for the inputs' dtype; accumulation, logits
      and softmax are at least float32.

  Returns:
    ``[H', W', n_out, d_out]`` in the inputs' dtype.
  """
  k, n_out = W.shape[0], W.shape[3]
  h_out = (x_inp.shape[0] - k) // stride + 1
  w_out = (x_inp.shape[1] - k) // stride + 1
  if matrix_pose:
    s = W.shape[-1]
    rows, cols_inp, cols_out = s, s, s
  else:
    rows, cols_inp, cols_out = 1, W.shape[-2], W.shape[-1]
  dtype = jnp.result_type(x_inp, W)
  cd = jnp.dtype(dtype if compute_dtype is None else compute_dtype)
  geo = _ConvGeometry(k, stride, rows, cols_inp, cols_out,
                      _hashable_precision(precision), cd)
  if x_out is None:
    # First iteration, r = 1/n_out: one matmul over every window entry,
    # [(H' W' r), (o i c)] @ [(o i c), (j e)].
    n_inp = x_inp.shape[2]
    P = _windows(x_inp[None], k, stride, h_out, w_out)[:, 0]   # [o, H', W', i, d]
    P = P.reshape(k * k, h_out, w_out, n_inp, rows, cols_inp)
    P = P.transpose(1, 2, 4, 0, 3, 5).reshape(h_out * w_out * rows, -1)
    Wm = W.reshape(k * k * n_inp, n_out, cols_inp, cols_out)
    Wm = Wm.transpose(0, 2, 1, 3).reshape(-1, n_out * cols_out)
    out = jax.lax.dot_general(P.astype(cd), Wm.astype(cd), (((1,), (0,)), ((), ())),
                              precision=precision,
                              preferred_element_type=_accum_dtype(cd)) / n_out
    out = out.reshape(h_out, w_out, rows, n_out, cols_out).transpose(0, 1, 3, 2, 4)
    return out.reshape(h_out, w_out, n_out, rows * cols_out).astype(dtype)
  return _conv_core(geo)(x_inp[None], W, x_out[None])[0]


def _hashable_precision(precision):
  if isinstance(precision, (list, tuple)):
    return tuple(precision)
  return precision
