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
# on its own, so a step is k*k independent blocks, one per offset (a scan).
# In a block, poses are laid out so that the long axis (batch x output
# positions x pose rows) is the M dimension of every matmul:
#
#   P  [m, q]     window poses, m = (n, r), q = (i, c); n = (batch, H', W')
#   Q  [j, m, e]  poses of the layer above
#   Wj [j, e, q]  and Wp [j, q, e]: the block's weights W[i, j, c, e]
#   T  = Q Wj     [j, m, q]: T[j, n, r, i, c] = (Q_nj W_ij^T)[r, c]
#   logits[j, n, i] = sum_{r, c} T * P / sqrt(r * e)        (Eq. (2))
#   pose  [j, m, e] = (r[j, n, i] * P) @ Wp                  (Eq. (4))
#
# The votes P_i W_ij are never formed. T and r * P are votes-sized; each is
# written once by one fused elementwise op and read once, and no votes-sized
# tensor is transposed. XLA:CPU runs the contractions over 4 (T, the sum over
# (r, c)) fastest as unrolled elementwise sums, the ones over 128 as matmuls.
# Under ``jax.vmap`` the batch would land between j and m and force
# votes-sized transposes, so the core is a ``custom_vmap`` that folds any
# mapped axis into n, inside a ``custom_vjp`` whose hand-written backward
# pass keeps the same layouts and stores only the logits (1/16 of the votes
# for 4x4 poses). The batch is processed in chunks of a few samples so that
# one step's votes-sized tensors (~8 MiB) stay in cache.
# ----------------------------------------------------------------------------


def _route_probs(logits: jax.Array) -> jax.Array:
  """Eq. (3) over the output capsules (axis 0), with the official renorm."""
  r = jax.nn.softmax(logits, axis=0)
  return r / (jnp.sum(r, axis=0, keepdims=True) + RENORM_EPS)


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


def _dot_per_sample(a: jax.Array, b: jax.Array, geo: _ConvGeometry) -> jax.Array:
  """``[j, B, t, e]^T [j, B, t, q]`` -> ``[j, B, e, q]``, contracting ``t``."""
  return jax.lax.dot_general(
      a, b, (((2,), (2,)), ((0, 1), (0, 1))),
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


def _block_probs(T: jax.Array, P: jax.Array, geo: _ConvGeometry, n_inp: int):
  """Logits (float32) and routing probabilities ``[j, n, i]`` of one block."""
  n_out = T.shape[0]
  r, c = geo.rows, geo.cols_inp
  acc = _accum_dtype(T.dtype)
  P5 = P.reshape(-1, r, n_inp, c).astype(acc)
  logits = _sum_rc(T.reshape(n_out, -1, r, n_inp, c).astype(acc),
                   P5) / np.sqrt(r * geo.cols_out).astype(acc)
  return logits, _route_probs(logits)


def _weighted(prob: jax.Array, P: jax.Array, n_inp: int,
              geo: _ConvGeometry) -> jax.Array:
  """``prob[j, n, i] * P[n, r, i, c]`` as ``[j, m, q]`` in the compute dtype."""
  n_out = prob.shape[0]
  r, c = geo.rows, geo.cols_inp
  out = prob[:, :, None, :, None].astype(P.dtype) * P.reshape(-1, r, n_inp, c)
  return out.reshape(n_out, -1, n_inp * c)


def _conv_core_fwd_chunk(x_inp, W, x_out, geo: _ConvGeometry, with_logits: bool):
  """``sum_i r_ij v_ij`` ``[B, H', W', j, d_out]`` from ``[B, ...]`` inputs.

  With ``with_logits``, also every offset's logits ``[B, k*k, j, H', W', i]``
  (float32), the backward pass's residual: 1/16 of the votes for 4x4 poses.
  """
  P, Q, Wj, Wp = _conv_operands(x_inp, W, x_out, geo)
  n_inp = x_inp.shape[3]

  def add_offset(acc, blk):
    p, wj, wp = blk
    logits, prob = _block_probs(_times_weights(Q, wj, geo), p, geo, n_inp)
    acc = acc + _dot(_weighted(prob, p, n_inp, geo), wp, (2, 1), geo)
    return acc, logits if with_logits else None

  acc = jnp.zeros(Q.shape, _accum_dtype(Q.dtype))
  pose, logits = jax.lax.scan(add_offset, acc, (P, Wj, Wp))       # [j, (n r), e]
  n_out, (n_batch, h_out, w_out) = Q.shape[0], x_out.shape[:3]
  pose = pose.reshape(n_out, n_batch, h_out, w_out, geo.rows, geo.cols_out)
  pose = pose.transpose(1, 2, 3, 0, 4, 5).reshape(x_out.shape)
  pose = pose.astype(jnp.result_type(x_inp, W))
  if not with_logits:
    return pose
  logits = logits.reshape(P.shape[0], n_out, n_batch, h_out, w_out, n_inp)
  return pose, logits.transpose(2, 0, 1, 3, 4, 5)


def _conv_core_bwd_chunk(x_inp, W, x_out, logits, g, geo: _ConvGeometry):
  """Gradients of ``sum(g * pose)`` for ``pose, logits = _conv_core_fwd(...)``.

  Per offset, from the stored logits: ``dRP = G Wj``, ``dr`` from ``dRP``
  and the softmax's backward pass on the small ``[j, n, i]`` logits, then
  ``dP`` as one matmul per input capsule, ``dQ += (dl P) @ Wp`` and ``dW =
  G^T (r P) + Q^T (dl P)`` per sample: ``dW`` is ``[B, *W.shape]``, because
  ``vmap`` of a gradient needs each sample's (the caller sums it).
  """
  P, Q, Wj, Wp = _conv_operands(x_inp, W, x_out, geo)
  n_inp, k2 = x_inp.shape[3], P.shape[0]
  n_out, m, e = Q.shape
  G = g.reshape(-1, n_out, geo.rows, e).transpose(1, 0, 2, 3).reshape(n_out, m, e)
  G = G.astype(Q.dtype)
  n_batch, h_out, w_out = x_out.shape[:3]
  per_sample = lambda a: a.reshape((a.shape[0], n_batch, -1) + a.shape[2:])
  r, c = geo.rows, geo.cols_inp
  logits = logits.transpose(1, 2, 0, 3, 4, 5).reshape(k2, n_out, -1, n_inp)
  Wi = W.reshape(k2, n_inp, n_out, c, e).transpose(0, 1, 2, 4, 3)
  Wi = Wi.reshape(k2, n_inp, n_out * e, c).astype(Q.dtype)           # [o, i, (j e), c]
  Q4 = Q.reshape(n_out, -1, r, e).transpose(1, 2, 0, 3)              # [n, r, j, e]
  G4 = G.reshape(n_out, -1, r, e).transpose(1, 2, 0, 3)

  def offset_grads(dQ, blk):
    p, wj, wp, wi, lg = blk
    dRP = _times_weights(G, wj, geo)                               # [j, m, q]
    prob, probs_vjp = jax.vjp(_route_probs, lg)
    acc = lg.dtype
    P5 = p.reshape(-1, r, n_inp, c).astype(acc)
    d_prob = _sum_rc(dRP.reshape(n_out, -1, r, n_inp, c).astype(acc), P5)
    d_logits = probs_vjp(d_prob)[0] / np.sqrt(r * e).astype(acc)
    # dP = sum_j (r dRP + dl T) = sum_{j, e} (r G + dl Q)[i, n, r, j, e] W[i, j, c, e]:
    # one matmul per input capsule with a contraction of j * e.
    X = (prob.transpose(2, 1, 0)[:, :, None, :, None] * G4[None].astype(acc)
         + d_logits.transpose(2, 1, 0)[:, :, None, :, None] * Q4[None].astype(acc))
    dP = _dot(X.reshape(n_inp, m, n_out * e).astype(p.dtype), wi, (2, 1), geo)  # [i, m, c]
    dP = dP.reshape(n_inp, -1, r, c).transpose(1, 2, 0, 3)         # [n, r, i, c]
    dT = _weighted(d_logits, p, n_inp, geo)                        # [j, m, q]
    RP = _weighted(prob, p, n_inp, geo)
    # G and Q as the left operands: XLA:CPU runs [e, t] @ [t, q] far faster
    # than the [q, t] @ [t, e] order.
    dW = (_dot_per_sample(per_sample(G), per_sample(RP), geo)
          + _dot_per_sample(per_sample(Q), per_sample(dT), geo))   # [j, B, e, q]
    return dQ + _dot(dT, wp, (2, 1), geo), (dP.reshape(-1, n_inp * c), dW)

  dQ0 = jnp.zeros(Q.shape, _accum_dtype(Q.dtype))
  dQ, (dP, dW) = jax.lax.scan(offset_grads, dQ0, (P, Wj, Wp, Wi, logits))
  dx_out = dQ.reshape(n_out, n_batch, h_out, w_out, r, e).transpose(1, 2, 3, 0, 4, 5)
  dP = dP.reshape(k2, n_batch, h_out, w_out, r, n_inp, c).transpose(0, 1, 2, 3, 5, 4, 6)
  _, scatter = jax.vjp(lambda x: _windows(x, geo.k, geo.stride, h_out, w_out),
                       jnp.zeros(x_inp.shape, dP.dtype))
  dx_inp = scatter(dP.reshape(k2, n_batch, h_out, w_out, n_inp, r * c))[0]
  dW = dW.reshape(geo.k, geo.k, n_out, n_batch, e, n_inp, c)
  dW = dW.transpose(3, 0, 1, 5, 2, 6, 4)                           # [B, k, k, i, j, c, e]
  return (dx_inp.astype(x_inp.dtype),
          dW.reshape((n_batch,) + W.shape).astype(W.dtype),
          dx_out.reshape(x_out.shape).astype(x_out.dtype))


# Samples per step of the loop over the batch: the votes-sized intermediates
# of one (offset, chunk) step stay near this many bytes, so they stay in cache
# (measured on the Tsai conv shape: 2x slower per sample without chunking at
# batch 32 than at batch 4).
_CHUNK_BYTES = 8 * 2**20


def _batch_chunks(x_inp, W, x_out, geo: _ConvGeometry) -> int:
  """The number of equal batch chunks (a divisor of the batch)."""
  n_batch, h_out, w_out, n_out, _ = x_out.shape
  n_inp = x_inp.shape[3]
  per_sample = (h_out * w_out * geo.rows * n_out * n_inp * geo.cols_inp
                * jnp.dtype(geo.compute_dtype).itemsize)
  per_chunk = max(1, _CHUNK_BYTES // per_sample)
  samples = max(d for d in range(1, n_batch + 1)
                if n_batch % d == 0 and d <= per_chunk)
  return n_batch // samples


def _split(a: jax.Array, n_chunks: int) -> jax.Array:
  return a.reshape((n_chunks, -1) + a.shape[1:])


def _merge(a: jax.Array) -> jax.Array:
  return a.reshape((-1,) + a.shape[2:])


def _conv_core_fwd(x_inp, W, x_out, geo: _ConvGeometry, with_logits: bool):
  """:func:`_conv_core_fwd_chunk` looped over cache-sized batch chunks."""
  n_chunks = _batch_chunks(x_inp, W, x_out, geo)
  if n_chunks == 1:
    return _conv_core_fwd_chunk(x_inp, W, x_out, geo, with_logits)
  out = jax.lax.map(
      lambda xs: _conv_core_fwd_chunk(xs[0], W, xs[1], geo, with_logits),
      (_split(x_inp, n_chunks), _split(x_out, n_chunks)))
  return jax.tree.map(_merge, out)


def _conv_core_bwd(x_inp, W, x_out, logits, g, geo: _ConvGeometry):
  """:func:`_conv_core_bwd_chunk` looped over cache-sized batch chunks."""
  n_chunks = _batch_chunks(x_inp, W, x_out, geo)
  if n_chunks == 1:
    return _conv_core_bwd_chunk(x_inp, W, x_out, logits, g, geo)

  out = jax.lax.map(lambda xs: _conv_core_bwd_chunk(xs[0], W, *xs[1:], geo),
                    tuple(_split(a, n_chunks) for a in (x_inp, x_out, logits, g)))
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
    # fn(x_inp, W, x_out, *extra): activations, extra (residual logits,
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

  primal = vmappable(lambda x, w, xo: _conv_core_fwd(x, w, xo, geo, False))
  fwd = vmappable(lambda x, w, xo: _conv_core_fwd(x, w, xo, geo, True))
  bwd = vmappable(lambda x, w, xo, lg, g: _conv_core_bwd(x, w, xo, lg, g, geo))

  @jax.custom_vjp
  def core(x_inp, W, x_out):
    return primal(x_inp, W, x_out)

  def core_fwd(x_inp, W, x_out):
    pose, logits = fwd(x_inp, W, x_out)
    return pose, (x_inp, W, x_out, logits)

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
