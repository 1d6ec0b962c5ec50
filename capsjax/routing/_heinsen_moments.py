"""Heinsen routing without the vote tensor, for weights shared over inputs.

When ``W`` and ``B`` are shared over the inputs (a variable number of inputs,
Heinsen 2019 Sec. 3.1), the votes ``V_ij = x_i W_j + B_j`` are an affine map of
the input capsules ``x_i``. Every quantity routing needs is then a function of
the per-output moments of the inputs under the routing weights
``D_ij = sigmoid(a_i) R_ij``::

  S_j  = sum_i D_ij                              [n_out]
  X1_j = sum_i D_ij x_i / (S_j + eps)            [n_out, d_cov, d_inp]
  X2_j = sum_i D_ij x_i x_i^T / (S_j + eps)      [n_out, d_cov, d_inp, d_inp]

(the outer product taken per covector row ``c``). With ``s = S / (S + eps)``,
``E = (1 - s) B`` and ``C = X2 - (2 - s) X1 X1^T``:

  mu_out_j   = X1_j W_j + s_j B_j
  sig2_out_j = diag_h(W_j^T C_j W_j) + 2 (1 - s_j) E_j * (X1_j W_j) + s_j E_j^2 + eps

and the E-step's squared distance is a quadratic form in ``x_i``::

  sum_ch (V_ij - mu_j)^2 P_j = <x_i x_i^T, A_j> + 2 <x_i, b_j> + g_j,
  A_j = W_j diag(P_j) W_j^T,  b_j = W_j (P_j * (B_j - mu_j)),  g_j = sum P_j (B_j - mu_j)^2

with ``P = 1 / (2 sig2)`` (gaussian) or ``1`` (soft k-means). These are the same
equations as the vote form, rearranged; they hold exactly (float64 agreement to
round-off), and cost ``O(n_inp n_out d_cov d_inp^2)`` matmul work with no
``[n_inp, n_out, d_cov, d_out]`` tensor.

Two things keep this accurate and small:

* The inputs are centred first (``x_i - x̄``, with ``x̄ W_j`` folded into
  ``B_j``), an exact reparametrisation that keeps the raw second moments from
  cancelling catastrophically in float32. The centre is held constant under
  differentiation (any centre gives the same function, so gradients are exact).
* Each iteration streams over chunks of inputs in a ``lax.scan``, accumulating
  the moments, with the chunk body rematerialised on the backward pass: peak
  memory holds ``[chunk, n_out]`` tensors instead of ``[n_inp, n_out]`` ones.

Moments and the softmax are computed in at least float32 whatever the input
dtype, since raw second moments lose everything in bfloat16. With a
``compute_dtype`` (mixed precision), only the four per-chunk contractions over
``[chunk, n_out]`` (the distances from ``x x^T`` and ``x``, the first and second
moments) take ``compute_dtype`` operands, the centred inputs, their outer
products and ``D_use`` rounded to it, and they accumulate in float32; the
moments themselves, the softmax and the per-output algebra stay in float32.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from capsjax.routing._precision import Policy


class _Moments(NamedTuple):
  """Sums over inputs accumulated chunk by chunk (before dividing by S + eps)."""
  s_use: jax.Array     # [n_out]                sum_i D_use_ij
  x1: jax.Array        # [n_out, c, d]          sum_i D_use_ij x_i
  x2: jax.Array        # [n_out, c, d, d]       sum_i D_use_ij x_i x_i^T
  a_out: jax.Array     # [n_out]                sum_i beta_use D_use - beta_ign D_ign


class _State(NamedTuple):
  """What one iteration hands to the next E-step."""
  a_out: jax.Array     # [n_out]
  mu_out: jax.Array    # [n_out, d_cov, d_out]
  sig2_out: jax.Array  # [n_out, d_cov, d_out]


def _chunking(n_inp: int, chunk_size: int) -> tuple[int, int]:
  """Number of chunks and their size, padding as little as possible."""
  n_chunks = -(-n_inp // max(1, chunk_size))
  return n_chunks, -(-n_inp // n_chunks)


def heinsen_routing_moments(a_inp, mu_inp, W, B, beta_use, beta_ign, *, n_iters: int,
                            p_model: str, eps: float, chunk_size: int = 512,
                            precision: jax.lax.PrecisionLike = "highest",
                            compute_dtype=None):
  """Heinsen routing for ``W``, ``B`` shared over inputs, from input moments.

  Args:
    a_inp: ``[n_inp]`` input scores (``-inf`` padding, ``+inf`` present).
    mu_inp: ``[n_inp, d_cov, d_inp]`` input capsules.
    W: ``[n_out, d_inp, d_out]`` (already broadcast over outputs).
    B: ``[n_out, d_cov, d_out]`` (symmetry-breaking bias already added).
    beta_use, beta_ign: ``[n_inp | 1, n_out]``.
    n_iters, p_model, eps: as in ``heinsen_routing``.
    chunk_size: inputs processed at once; memory scales with it, not n_inp.
    precision: of every contraction; keep ``"highest"`` on accelerators, where
      the default (TF32 / bfloat16 passes) would spoil the raw moments.
    compute_dtype: ``None``, or the operand dtype of the per-chunk
      contractions (module docstring).

  Returns:
    ``(a_out [n_out], mu_out [n_out, d_cov, d_out], sig2_out [n_out, d_cov,
    d_out], R [n_inp, n_out])``, in the promoted dtype of the inputs.
  """
  einsum = functools.partial(jnp.einsum, precision=precision)
  out_dtype = jnp.result_type(mu_inp, W, B)
  dtype = jnp.promote_types(out_dtype, jnp.float32)
  # The big per-chunk contractions: plain einsums, or compute-dtype operands
  # accumulated in dtype.
  big = functools.partial(Policy(dtype, compute_dtype).einsum, precision=precision)
  n_inp, d_cov, d_inp = mu_inp.shape
  n_out = W.shape[0]
  W, B = W.astype(dtype), B.astype(dtype)
  x = mu_inp.astype(dtype)
  f = jax.nn.sigmoid(jnp.asarray(a_inp, dtype))                      # [i]
  beta_use = jnp.broadcast_to(beta_use.astype(dtype), (n_inp, n_out))
  beta_ign = jnp.broadcast_to(beta_ign.astype(dtype), (n_inp, n_out))

  # Centre the inputs (exact reparametrisation, see the module docstring).
  centre = jax.lax.stop_gradient(
      einsum("i,icd->cd", f, x) / jnp.maximum(jnp.sum(f), 1e-6))
  x = x - centre
  B = B + einsum("cd,jdh->jch", centre, W)

  # Pad to whole chunks with absent inputs (f = 0 contributes nothing).
  n_chunks, size = _chunking(n_inp, chunk_size)
  pad = n_chunks * size - n_inp

  def chunked(v):
    v = jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1))
    return v.reshape((n_chunks, size) + v.shape[1:])

  xs = (chunked(x), chunked(f), chunked(beta_use), chunked(beta_ign))
  weights = _distance_weights(p_model)

  def e_step(state: _State | None, x_c, xx_c):
    """Routing probabilities ``R [chunk, n_out]`` of one chunk of inputs."""
    if state is None:
      return jnp.full((x_c.shape[0], n_out), 1.0 / n_out, dtype)
    P = weights(state.sig2_out)                                      # [j, c, h]
    G = B - state.mu_out                                             # [j, c, h]
    A = einsum("jdh,jeh,jch->jcde", W, W, P)
    b = einsum("jdh,jch->jcd", W, G * P)
    g = jnp.sum(G * G * P, axis=(1, 2))
    dist = (big("icde,jcde->ij", xx_c, A) + 2.0 * big("icd,jcd->ij", x_c, b)
            + g[None, :])                                            # [i, j]
    if p_model == "gaussian":
      log_p = -dist - 0.5 * jnp.sum(jnp.log(state.sig2_out), axis=(1, 2))[None, :]
    else:
      log_p = jax.nn.log_softmax(-dist, axis=-1)
    return jax.nn.softmax(jax.nn.log_sigmoid(state.a_out)[None, :] + log_p, axis=-1)

  def iteration(state: _State | None, keep_r: bool):
    @jax.checkpoint
    def chunk_body(acc: _Moments, chunk):
      x_c, f_c, bu_c, bi_c = chunk
      xx_c = x_c[..., :, None] * x_c[..., None, :]                  # [i, c, d, e]
      R = e_step(state, x_c, xx_c)
      d_use = f_c[:, None] * R
      d_ign = f_c[:, None] - d_use
      acc = _Moments(
          acc.s_use + jnp.sum(d_use, axis=0),
          acc.x1 + big("ij,icd->jcd", d_use, x_c),
          acc.x2 + big("ij,icde->jcde", d_use, xx_c),
          acc.a_out + jnp.sum(bu_c * d_use - bi_c * d_ign, axis=0))
      return acc, (R if keep_r else None)

    zeros = _Moments(jnp.zeros((n_out,), dtype), jnp.zeros((n_out, d_cov, d_inp), dtype),
                     jnp.zeros((n_out, d_cov, d_inp, d_inp), dtype), jnp.zeros((n_out,), dtype))
    acc, R = jax.lax.scan(chunk_body, zeros, xs)
    return _m_step(acc, W, B, eps, einsum), R

  # Iteration 1 routes uniformly; 2..n-1 only pass the state on; the last
  # also returns R, so only it keeps [n_inp, n_out] memory.
  state, R = iteration(None, keep_r=n_iters == 1)
  if n_iters > 2:
    state, _ = jax.lax.scan(lambda s, _: (iteration(s, keep_r=False)[0], None), state,
                            None, length=n_iters - 2)
  if n_iters > 1:
    state, R = iteration(state, keep_r=True)
  R = R.reshape((n_chunks * size, n_out))[:n_inp]
  return (state.a_out.astype(out_dtype), state.mu_out.astype(out_dtype),
          state.sig2_out.astype(out_dtype), R.astype(out_dtype))


def _distance_weights(p_model: str):
  """The per-component weight of the squared distance in the E-step."""
  if p_model == "gaussian":
    return lambda sig2: 0.5 / sig2
  return jnp.ones_like


def _m_step(acc: _Moments, W, B, eps, einsum) -> _State:
  """Output capsules from the accumulated moments (module docstring)."""
  over = 1.0 / (acc.s_use + eps)                                     # [j]
  s = acc.s_use * over
  x1 = acc.x1 * over[:, None, None]
  x2 = acc.x2 * over[:, None, None, None]
  cov = x2 - (2.0 - s)[:, None, None, None] * einsum("jcd,jce->jcde", x1, x1)
  x1w = einsum("jcd,jdh->jch", x1, W)
  err = (1.0 - s)[:, None, None] * B
  mu_out = x1w + s[:, None, None] * B
  sig2_out = (einsum("jdh,jeh,jcde->jch", W, W, cov)
              + 2.0 * (1.0 - s)[:, None, None] * err * x1w + s[:, None, None] * err * err + eps)
  return _State(acc.a_out, mu_out, sig2_out)
