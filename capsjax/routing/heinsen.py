"""Heinsen (2019) routing: EM routing with a D-step (use / ignore shares).

The function computes, per sample, the routing of ``n_inp`` input capsules of
shape ``[d_cov, d_inp]`` to ``n_out`` output capsules of shape
``[d_cov, d_out]`` of Heinsen, "An Algorithm for Routing Capsules in All
Domains" (2019, arXiv:1911.00792), Algorithm 1, exactly as the official
``Routing`` module of glassroom/heinsen_routing (2019-2020 release) computes
it, forward and backward.

The default algorithm materialises the votes ``V [n_inp, n_out, d_cov,
d_out]``; with weights shared over inputs it can route from input moments
instead (``_heinsen_moments.py``). ``compute_dtype`` selects mixed precision
(``_precision.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax.routing._heinsen_moments import heinsen_routing_moments
from capsjax.routing._loops import check_remat, iteration_body
from capsjax.routing._precision import Policy

__all__ = ["HeinsenRouting", "heinsen_routing"]

_P_MODELS = ("gaussian", "skm")
_ALGORITHMS = ("auto", "votes", "moments")


class HeinsenRouting(NamedTuple):
  """The output of :func:`heinsen_routing`.

  Attributes:
    a_out: ``[n_out]`` output scores (pre-activation; ``sigmoid(a_out)`` is the
      activation, ``softmax(a_out)`` the usual class prediction).
    mu_out: ``[n_out, d_cov, d_out]`` output capsules (the means of each output
      capsule's Gaussian model).
    sig2_out: ``[n_out, d_cov, d_out]`` variances of each output capsule's
      Gaussian model (``eps`` included).
    R: ``[n_inp, n_out]`` routing probabilities of the last iteration (the
      constant ``1 / n_out`` when ``n_iters == 1``); each row sums to 1.
  """
  a_out: jax.Array
  mu_out: jax.Array
  sig2_out: jax.Array
  R: jax.Array


def _one_or(n: int) -> int | tuple[int, ...]:
  """The sizes a broadcastable axis may have: ``n`` or 1."""
  return 1 if n == 1 else (n, 1)


def _validate(a_inp, mu_inp, W, B, beta_use, beta_ign, n_iters, p_model,
              n_out, B_brk) -> int:
  """Checks every argument at trace time; returns ``n_out``."""
  n_inp, = _shapes.check_ndim("a_inp", a_inp, 1, "[n_inp]")
  _, d_cov, d_inp = _shapes.check_ndim("mu_inp", mu_inp, 3,
                                       "[n_inp, d_cov, d_inp]")
  _shapes.check_shape("mu_inp", mu_inp, (n_inp, None, None),
                      "[n_inp, d_cov, d_inp]")
  w_shape = _shapes.check_ndim("W", W, 4, "[n_inp | 1, n_out | 1, d_inp, d_out]")
  d_out = w_shape[3]
  i_dim = _one_or(n_inp)
  if n_out is None:
    # Fixed number of outputs, taken from W (a single output stays
    # expressible as an n_out axis of 1 with no n_out argument). B and the
    # betas may broadcast over j.
    n_out_ = w_shape[1]
    w_j, j_dim, j_letters = n_out_, _one_or(n_out_), "n_out | 1"
    if B_brk is not None:
      raise ValueError(
          "B_brk is only used with a variable number of outputs (n_out given); "
          f"got B_brk of shape {tuple(np.shape(B_brk))} and n_out=None.")
  else:
    _shapes.check_positive_int("n_out", n_out)
    n_out_ = int(n_out)
    w_j, j_dim, j_letters = 1, 1, "1"
    if w_shape[1] != 1:
      raise ValueError(
          "W must have an output axis of 1 when n_out is given (a variable "
          "number of outputs): W must have shape [n_inp | 1, 1, d_inp, d_out], "
          f"got {w_shape} with n_out={n_out}. Leave n_out=None for a fixed "
          "number of outputs.")
  _shapes.check_shape("W", W, (i_dim, w_j, d_inp, d_out),
                      f"[n_inp | 1, {'n_out' if n_out is None else '1'}, d_inp, d_out]")
  _shapes.check_shape("B", B, (i_dim, j_dim, d_cov, d_out),
                      f"[n_inp | 1, {j_letters}, d_cov, d_out]")
  _shapes.check_shape("beta_use", beta_use, (i_dim, j_dim),
                      f"[n_inp | 1, {j_letters}]")
  _shapes.check_shape("beta_ign", beta_ign, (i_dim, j_dim),
                      f"[n_inp | 1, {j_letters}]")
  if B_brk is not None:
    _shapes.check_shape("B_brk", B_brk, (1, d_cov, d_out), "[1, d_cov, d_out]")
  _shapes.check_positive_int("n_iters", n_iters)
  if p_model not in _P_MODELS:
    raise ValueError(f"p_model must be one of {_P_MODELS}, got {p_model!r}.")
  return n_out_


def _use_moments(algorithm: str, W, B, n_out: int, chunk_size: int) -> bool:
  """Whether to route from input moments (see ``algorithm``)."""
  if algorithm not in _ALGORITHMS:
    raise ValueError(f"algorithm must be one of {_ALGORITHMS}, got {algorithm!r}.")
  _shapes.check_positive_int("chunk_size", chunk_size)
  shared = W.shape[0] == 1 and B.shape[0] == 1
  if algorithm == "moments" and not shared:
    raise ValueError(
        "algorithm='moments' needs W and B shared over inputs (leading axis 1, "
        f"a variable number of inputs), got W {W.shape} and B {B.shape}.")
  d_inp, d_out = W.shape[2], W.shape[3]
  return algorithm == "moments" or (
      algorithm == "auto" and shared and d_inp * d_inp < n_out * d_out)


def heinsen_routing(
    a_inp: ArrayLike,
    mu_inp: ArrayLike,
    W: ArrayLike,
    B: ArrayLike,
    beta_use: ArrayLike,
    beta_ign: ArrayLike,
    *,
    n_iters: int = 3,
    p_model: str = "gaussian",
    eps: float = 1e-5,
    n_out: int | None = None,
    B_brk: ArrayLike | None = None,
    precision: jax.lax.PrecisionLike = "highest",
    algorithm: str = "auto",
    chunk_size: int = 512,
    compute_dtype: jax.typing.DTypeLike | None = None,
    remat: bool = False,
) -> HeinsenRouting:
  r"""Routes input capsules to output capsules with Heinsen's EM routing.

  One sample, no batch axis (``jax.vmap`` adds it). With ``V`` the votes,
  ``f`` the logistic function and ``R`` the routing probabilities:

  * votes (Alg. 1 line 1): ``V[i,j,c,h] = sum_d mu_inp[i,c,d] W[i,j,d,h] +
    B[i,j,c,h]``;
  * E-step (eqs. 2-3): ``R = 1 / n_out`` on the first iteration, then
    ``R = softmax_j(log f(a_out)[j] + log p[i,j])`` with, for
    ``p_model="gaussian"``, ``log p = -sum_ch (V - mu_out)^2 / (2 sig2_out) -
    sum_ch log sqrt(sig2_out)`` and, for ``"skm"`` (soft k-means),
    ``log p = log_softmax_j(-sum_ch (V - mu_out)^2)``;
  * D-step (eqs. 4, 6): ``D_use = f(a_inp)[:, None] R``,
    ``D_ign = f(a_inp)[:, None] - D_use``;
  * M-step (eq. 8, Alg. 1 lines 16-18): ``a_out = sum_i beta_use D_use -
    sum_i beta_ign D_ign``; ``mu_out`` and ``sig2_out`` are the
    ``D_use``-weighted mean and variance of the votes.

  Where this follows the official code rather than the paper: the E-step
  works in the log domain and drops the ``2 pi`` term of the Gaussian density
  (it cancels in the softmax over ``j``; the paper mentions this in Sec. 3.3);
  ``eps`` is added to ``sum_i D_use`` before dividing and to ``sig2_out``
  (the paper's Alg. 1 has no ``eps``); the ``"skm"`` model and the
  symmetry-breaking bias ``B_brk`` of the variable-output mode exist only in
  the official code. Nothing is detached: gradients flow through every
  iteration, as in the official code.

  Args:
    a_inp: ``[n_inp]`` pre-activation input scores. ``-inf`` marks padding:
      that input is ignored completely: ``a_out``, ``mu_out``, ``sig2_out``,
      the other rows of ``R`` and all gradients are those of the same call
      without it (only its own row of ``R`` depends on its capsule, as in the
      official code; non-finite values in a padded capsule are read as 0).
      ``+inf`` marks a fully present input (``f = 1``).
    mu_inp: ``[n_inp, d_cov, d_inp]`` input capsules.
    W: ``[n_inp | 1, n_out | 1, d_inp, d_out]`` vote transforms. A leading
      axis of 1 means a variable number of inputs (``W``, ``B`` and the betas
      shared over ``i``); an output axis of 1 together with ``n_out`` means a
      variable number of outputs.
    B: ``[n_inp | 1, n_out | 1, d_cov, d_out]`` vote biases.
      ``B``, ``beta_use`` and ``beta_ign`` may also broadcast (axis of 1)
      where ``W`` does not, e.g. one bias shared over the fixed outputs; the
      official code always gives them ``W``'s leading axes.
    beta_use: ``[n_inp | 1, n_out | 1]`` net benefit to use each input.
    beta_ign: ``[n_inp | 1, n_out | 1]`` net cost to ignore each input. Pass
      the same array as ``beta_use`` for the official ``single_beta=True``:
      its gradient is then the sum of both uses.
    n_iters: number of routing iterations (>= 1).
    p_model: ``"gaussian"`` (Gaussian mixture) or ``"skm"`` (soft k-means).
    eps: small positive constant added to ``sum_i D_use`` and to
      ``sig2_out``.
    n_out: the number of outputs in variable-output mode, which is on exactly
      when ``n_out`` is given; ``W``, ``B`` and the betas must then have an
      output axis of 1. ``None`` (default): a fixed number of outputs, the
      size of ``W``'s output axis.
    B_brk: ``[1, d_cov, d_out]`` symmetry-breaking bias of the
      variable-output mode: ``B + B_brk * linspace(-1, 1, n_out)[:, None,
      None]`` is the bias of the ``n_out`` outputs. ``None`` means zeros (all
      outputs then receive identical votes). Only valid with ``n_out``.
    precision: the ``precision`` of every einsum. The default, ``"highest"``,
      is true float32 arithmetic, as the official PyTorch code computes by
      default; ``None`` takes JAX's default, which on recent GPUs (TF32) and
      TPUs (bfloat16 passes) trades accuracy (~1e-3) for speed.
    algorithm: how to compute the same function. ``"votes"`` materialises
      the votes ``[n_inp, n_out, d_cov, d_out]`` as the official code does.
      ``"moments"`` needs ``W`` and ``B`` shared over inputs (leading axis 1)
      and never forms the votes: it routes from per-output moments of the
      inputs, streamed over chunks of ``chunk_size`` inputs (see
      ``capsjax/routing/_heinsen_moments.py``), so memory grows with
      ``chunk_size * n_out`` rather than with the vote tensor. ``"auto"``
      (default) takes ``"moments"`` where it applies and a per-input moment
      (``d_inp**2`` values per row) is smaller than the per-input votes
      (``n_out * d_out``), e.g. Heinsen's smallNORB layer 1, and ``"votes"``
      otherwise.
    chunk_size: inputs per chunk for ``algorithm="moments"``.
    compute_dtype: ``None`` (default): everything in the inputs' promoted
      dtype, as before. A dtype such as ``jnp.bfloat16`` turns on mixed
      precision. With ``algorithm="votes"``: the votes ``V`` are computed
      (a contraction over ``d_inp`` only) and stored in ``compute_dtype``
      (a ``B`` shared over inputs is left out of them and added to
      ``mu_out`` in float32, which keeps its gradient accurate); the squared
      deviations ``(V - mu_out)^2`` for ``sig2_out`` are formed in float32
      and stored in ``compute_dtype``; the ``D_use``-weighted sums over
      inputs (``mu_out``, ``sig2_out``) take ``compute_dtype`` operands
      (``D_use`` rounded too) and accumulate in float32; the E-step distance
      (``d_cov * d_out`` terms per input and output) is one float32 reduction
      over the stored votes. With ``algorithm="moments"``: the
      per-chunk contractions (distances from the input outer products, first
      and second moments) take ``compute_dtype`` operands and accumulate in
      float32 (the inputs are centred first, so rounding them loses no more
      than ``compute_dtype``'s precision). Always in float32 (the input dtype
      promoted to at least float32): the routing logits, ``log_sigmoid``,
      softmax and log-softmax, ``sum_i D_use``, ``a_out``, ``mu_out`` and
      ``sig2_out`` (the loop state), the log-variances, ``R``, and the small
      per-output algebra of the moments form. Outputs are in the input dtype.
    remat: rematerialise the routing iterations on the backward pass
      (``jax.checkpoint`` on the body of the loop over iterations): reverse
      mode then keeps only each iteration's state ``(a_out, mu_out, sig2_out, R)`` instead of its
      intermediates (among them the votes-sized ``(V - mu_out)^2``), for one more forward pass of the iterations. Same
      results (tested); memory by ``n_iters`` in ``benchmarks/kernels.py
      --iters``. ``algorithm="moments"`` always rematerialises its chunked
      iterations, so there ``remat`` changes nothing.

  Returns:
    A :class:`HeinsenRouting` ``(a_out [n_out], mu_out [n_out, d_cov, d_out],
    sig2_out [n_out, d_cov, d_out], R [n_inp, n_out])``.

  Raises:
    ValueError: at trace time, on a shape that does not fit the others (the
      message names the argument, the shape it got and the shape expected),
      on ``n_out`` given while ``W``'s output axis is not 1, on ``B_brk``
      without ``n_out``, or on an invalid ``n_iters``, ``n_out``,
      ``p_model``, ``compute_dtype`` or ``remat``.

  References:
    F. A. Heinsen, "An Algorithm for Routing Capsules in All Domains", 2019,
    https://arxiv.org/abs/1911.00792 (Algorithm 1, eqs. 2-8). Official code:
    https://github.com/glassroom/heinsen_routing (``Routing``, 2019-2020).
  """
  n_out = _validate(a_inp, mu_inp, W, B, beta_use, beta_ign, n_iters,
                       p_model, n_out, B_brk)
  check_remat(remat)
  dtype = jnp.result_type(a_inp, mu_inp, W, B, beta_use, beta_ign,
                          *(() if B_brk is None else (B_brk,)))
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(dtype, jnp.float32)
  a_inp, mu_inp, W, B, beta_use, beta_ign = (
      jnp.asarray(x, dtype) for x in (a_inp, mu_inp, W, B, beta_use, beta_ign))
  n_inp = a_inp.shape[0]
  policy = Policy(dtype, compute_dtype)

  # A padded input (f(a_inp) = 0) has D_use = D_ign = 0: its capsule reaches
  # only its own row of R (as in the official code). Non-finite values there
  # (padding filled with NaN) are replaced by 0 so that they cannot turn
  # 0 * NaN into NaN; finite inputs are left untouched.
  mu_inp = jnp.where(jnp.isneginf(a_inp)[:, None, None] & ~jnp.isfinite(mu_inp),
                     0, mu_inp)

  if B_brk is not None:
    # Variable number of outputs: break the symmetry of identical votes.
    lin = jnp.linspace(-1, 1, n_out, dtype=dtype)
    B = B + jnp.asarray(B_brk, dtype) * lin[:, None, None]  # [1|i, j, c, h]

  if _use_moments(algorithm, W, B, n_out, chunk_size):
    n_cov, d_inp, d_out = mu_inp.shape[1], W.shape[2], W.shape[3]
    return HeinsenRouting(*heinsen_routing_moments(
        a_inp, mu_inp, jnp.broadcast_to(W[0], (n_out, d_inp, d_out)),
        jnp.broadcast_to(B[0], (n_out, n_cov, d_out)), beta_use, beta_ign,
        n_iters=n_iters, p_model=p_model, eps=eps, chunk_size=chunk_size,
        precision=precision, compute_dtype=compute_dtype))

  # Votes (Alg. 1 line 1), stored in the compute dtype. A shared W (leading
  # axis 1) is contracted without being tiled over i.
  mu_c, W_c = policy.store(mu_inp), policy.store(W)
  if W.shape[0] == 1:
    V = jnp.einsum("icd,jdh->ijch", mu_c, W_c[0], precision=precision)
  else:
    V = jnp.einsum("icd,ijdh->ijch", mu_c, W_c, precision=precision)
  # In mixed precision a bias shared over inputs is kept out of the stored
  # votes and added to mu_out in acc (mean(V + B) = mean(V) + s B with
  # s = sum_i D_use / (sum_i D_use + eps)); deviations are taken from
  # mu_out - B. Otherwise B's gradient would be the small residual of
  # sum_i dL/dV_i, whose terms cancel after being rounded to compute_dtype.
  hoist_B = policy.mixed and B.shape[0] == 1
  if not hoist_B:
    V = policy.store(V.astype(policy.accum) + B)
  V = jnp.broadcast_to(V, (n_inp, n_out) + V.shape[2:])  # [i, j, c, h]
  B_out = (jnp.broadcast_to(B[0].astype(policy.accum), (n_out,) + B.shape[2:])
           if hoist_B else None)  # [j, c, h]

  # From here on the routing state is in the accumulation dtype (the input
  # dtype unless compute_dtype is given).
  acc = policy.accum
  a_inp, beta_use, beta_ign = (x.astype(acc) for x in (a_inp, beta_use, beta_ign))
  f_a_inp = jax.nn.sigmoid(a_inp)[:, None]  # [i, 1]

  def weighted_sum(D_use, T, over_D_use_sum):
    """``sum_i D_use[i, j] T[i, j, c, h] / (sum_i D_use + eps)`` ``[j, c, h]``."""
    if policy.mixed:  # compute-dtype operands, accumulated in acc
      return (policy.einsum("ij,ijch->jch", D_use, T, precision=precision)
              * over_D_use_sum[:, None, None])
    return jnp.einsum("ij,ijch,j->jch", D_use, T, over_D_use_sum, precision=precision)

  def deviation(mu_out):
    """``V + B - mu_out`` ``[i, j, c, h]`` in acc (fused into its consumer)."""
    return V.astype(acc) - (mu_out if B_out is None else mu_out - B_out)

  def m_step(R):
    """D-step and M-step (eqs. 4, 6, 8; Alg. 1 lines 11-19)."""
    D_use = f_a_inp * R  # [i, j]
    D_ign = f_a_inp - D_use
    a_out = (beta_use * D_use).sum(0) - (beta_ign * D_ign).sum(0)  # [j]
    over_D_use_sum = 1.0 / (D_use.sum(0) + eps)  # [j]
    mu_out = weighted_sum(D_use, V, over_D_use_sum)  # [j, c, h]
    if B_out is not None:
      mu_out = mu_out + (D_use.sum(0) * over_D_use_sum)[:, None, None] * B_out
    # (V - mu_out)^2 is stored in the compute dtype for the contraction.
    sig2_out = weighted_sum(D_use, policy.store(deviation(mu_out) ** 2),
                            over_D_use_sum) + eps
    return a_out, mu_out, sig2_out

  def e_step(a_out, mu_out, sig2_out):
    """E-step after the first iteration (eqs. 2-3, in the log domain)."""
    # The distance sums only d_cov * d_out terms per (i, j): in mixed
    # precision it is one fused reduction in acc over the stored votes.
    V_less_mu_out_2 = deviation(mu_out) ** 2  # [i, j, c, h]
    if p_model == "gaussian":
      if policy.mixed:
        dist = jnp.sum(V_less_mu_out_2 / (2.0 * sig2_out), axis=(2, 3))
      else:
        dist = jnp.einsum("ijch,jch->ij", V_less_mu_out_2, 1.0 / (2.0 * sig2_out),
                          precision=precision)
      log_p = -dist - 0.5 * jnp.log(sig2_out).sum((1, 2))  # sum_ch log sqrt(sig2)
    else:  # soft k-means
      log_p = jax.nn.log_softmax(-V_less_mu_out_2.sum((2, 3)), axis=1)
    return jax.nn.softmax(jax.nn.log_sigmoid(a_out) + log_p, axis=1)  # [i, j]

  def iteration(carry, _):
    a_out, mu_out, sig2_out, _ = carry
    R = e_step(a_out, mu_out, sig2_out)
    return (*m_step(R), R), None

  # The first iteration is unrolled: its E-step is the constant R = 1/n_out,
  # so putting it in the scan would mean computing and discarding a full
  # E-step over V (or a cond in the body); iterations 2..n_iters are a scan.
  R = jnp.full((n_inp, n_out), 1.0 / n_out, acc)
  carry = (*m_step(R), R)
  carry, _ = jax.lax.scan(iteration_body(iteration, remat), carry, None,
                          length=n_iters - 1)
  return HeinsenRouting(*(policy.output(x) for x in carry))
