"""EM routing of matrix capsules (Hinton, Sabour & Frosst, 2018).

The second baseline of seeds 000 and 003. The paper leaves several choices
open; :func:`em_routing` makes the ones shared by the widely used
reimplementations and documents each. One sample per call; ``jax.vmap`` adds
the batch axis.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from capsjax import _shapes
from capsjax.routing._loops import check_remat, iteration_body
from capsjax.routing._precision import Policy


class EMRouting(NamedTuple):
  """Output of :func:`em_routing`.

  Attributes:
    a_out: ``[n_out]`` output activations in ``[0, 1]`` (last M-step).
    mu: ``[n_out, d]`` output poses, the Gaussian means (last M-step).
    sigma2: ``[n_out, d]`` per-component variances, ``eps`` included.
    R: ``[n_inp, n_out]`` assignment probabilities used by the last M-step;
      each row sums to 1. With ``n_iters=1`` it is the constant ``1 / n_out``.
  """
  a_out: jax.Array
  mu: jax.Array
  sigma2: jax.Array
  R: jax.Array


def inverse_temperatures(n_iters: int, final_lambda: float) -> np.ndarray:
  """The schedule ``lambda_t = final_lambda * (1 - 0.95 ** (t + 1))``.

  ``t = 0, ..., n_iters - 1`` (float64 NumPy; the kernel casts it).
  """
  t = np.arange(n_iters, dtype=np.float64)
  return final_lambda * (1.0 - 0.95 ** (t + 1.0))


class _MStep(NamedTuple):
  a_out: jax.Array    # [j]
  logit: jax.Array    # [j], a_out = sigmoid(logit)
  mu: jax.Array       # [j, h]
  sigma2: jax.Array   # [j, h]


def em_routing(
    a_inp: jax.typing.ArrayLike,
    votes: jax.typing.ArrayLike,
    beta_u: jax.typing.ArrayLike,
    beta_a: jax.typing.ArrayLike,
    *,
    n_iters: int = 3,
    final_lambda: float = 0.01,
    eps: float = 1e-8,
    compute_dtype: jax.typing.DTypeLike | None = None,
    remat: bool = False,
) -> EMRouting:
  """Procedure 1 (EM routing) of Hinton et al. (2018).

  Starting from ``R_ij = 1 / n_out``, iteration ``t = 0, ..., n_iters - 1``
  runs an M-step at inverse temperature ``lambda_t`` and then, except on the
  last iteration (its result would be unused), an E-step:

  M-step (per output ``j`` and pose component ``h``)::

    R'_ij     = R_ij * a_inp_i
    m_j       = sum_i R'_ij
    mu_jh     = sum_i R'_ij V_ijh / m_j
    sigma2_jh = sum_i R'_ij (V_ijh - mu_jh)^2 / m_j + eps
    cost_jh   = (beta_u_j + log sigma_jh) * m_j,   log sigma = 0.5 log sigma2
    a_out_j   = sigmoid(lambda_t * (beta_a_j - sum_h cost_jh))

  E-step::

    log p_ij = -sum_h (V_ijh - mu_jh)^2 / (2 sigma2_jh) - sum_h log sigma_jh
    R_ij     = softmax_j(log a_out_j + log p_ij)

  Choices, each the one of the common reimplementations (Gritzman's
  IBM/matrix-capsules-with-em-routing, www0wwwjs1/Matrix-Capsules-EM-Tensorflow,
  yl-1993/Matrix-Capsules-EM-PyTorch) unless said otherwise:

  - Schedule: ``lambda_t = final_lambda * (1 - 0.95 ** (t + 1))``, the
    geometric warm-up the authors gave on OpenReview, used by Gritzman and
    www0wwwjs1 (yl-1993 keeps a fixed 1e-3). It rises towards
    ``final_lambda`` without reaching it (0.05, 0.0975, 0.143 of it for 3
    iterations); we keep it because it is the authors' stated schedule, so
    what models in those codebases were trained with.
  - ``R`` starts uniform, ``1 / n_out``, and the last iteration has no
    E-step; the returned ``R`` is the one its M-step used.
  - ``beta_u``, ``beta_a`` are per output capsule, shared over ``h``. The
    cost uses ``log sigma`` (computed as ``0.5 log sigma2``, identical) and
    is **not** normalised over outputs (the paper does not; some
    reimplementations standardise the cost across ``j``).
  - ``eps`` is added to the variance only. Where ``m_j = 0`` (every input
    absent, ``a_inp = 0``) the weighted sums are 0 and we divide by 1, so
    ``mu_j = 0`` and ``sigma2_j = eps``, exactly and with finite gradients;
    elsewhere the division is exact (yl-1993 divides by ``m_j + eps``; we do
    not), so inputs with ``a_inp = 0`` change nothing at all, even when every
    ``a_inp`` is tiny.
  - The E-step is in the log domain with ``log a_out = log_sigmoid(logit)``,
    so nothing underflows. The Gaussian's ``-(d/2) log 2 pi`` is constant over
    ``j`` and cancels in the softmax; it is left out.
  - Nothing is detached (gradients flow through every iteration); ``a_inp``
    is used as given (the caller keeps it in ``[0, 1]``).

  Args:
    a_inp: ``[n_inp]`` input activations in ``[0, 1]``; 0 marks an absent
      input (no influence on any output).
    votes: ``[n_inp, n_out, d]`` votes ``V_ij = M_i W_ij``, flattened poses
      (``d = 16`` for 4x4 matrices).
    beta_u: ``[n_out]`` the learned cost per unit of data, ``beta_u``.
    beta_a: ``[n_out]`` the learned activation offset, ``beta_a``.
    n_iters: number of EM iterations (>= 1; the paper uses 3).
    final_lambda: scale of the inverse-temperature schedule (see above).
    eps: added to every variance, so ``sigma2 >= eps`` (> 0).
    compute_dtype: ``None`` (default): everything in the inputs' promoted
      dtype. A dtype such as ``jnp.bfloat16`` turns on mixed precision: the
      votes and the squared deviations ``(V - mu)^2`` (formed in float32) are
      stored in it, and the weighted sums over inputs giving ``mu`` and
      ``sigma2`` take operands rounded to it (the weights ``R' / m`` too) and
      accumulate in float32. In float32 (the inputs' dtype promoted to at
      least float32): ``R``, the masses ``m``, ``cost``, the activations,
      the E-step's log-likelihood (one fused reduction over ``h`` of the
      stored votes) and its softmax. Outputs are in the inputs' dtype.
    remat: rematerialise the routing iterations on the backward pass
      (``jax.checkpoint`` on the body of the loop over iterations): reverse
      mode then keeps only each iteration's assignments ``R [n_inp, n_out]`` instead of its
      intermediates (among them the votes-sized squared deviations ``[n_inp, n_out, d]``), for one more forward pass of the iterations. Same
      results (tested); memory by ``n_iters`` in ``benchmarks/kernels.py
      --iters``.

  Returns:
    An :class:`EMRouting` ``(a_out [n_out], mu [n_out, d], sigma2 [n_out, d],
    R [n_inp, n_out])`` in the inputs' (promoted) floating dtype.

  Raises:
    ValueError: on a wrong shape (naming the argument), ``n_iters < 1``, a
      non-positive ``eps``, a non-floating ``compute_dtype`` or a non-bool
      ``remat``.

  References:
    G. E. Hinton, S. Sabour, N. Frosst. Matrix Capsules with EM Routing.
    ICLR 2018, Procedure 1 (EM routing, M-step, E-step).
  """
  n_inp, n_out, _ = _shapes.check_ndim("votes", votes, 3, "[n_inp, n_out, d]")
  _shapes.check_shape("a_inp", a_inp, (n_inp,), "[n_inp]")
  _shapes.check_shape("beta_u", beta_u, (n_out,), "[n_out]")
  _shapes.check_shape("beta_a", beta_a, (n_out,), "[n_out]")
  _shapes.check_positive_int("n_iters", n_iters)
  check_remat(remat)
  if not isinstance(eps, jax.core.Tracer) and not np.all(np.asarray(eps) > 0):
    raise ValueError(f"eps must be positive, got {eps!r}.")

  dtype = jnp.result_type(a_inp, votes, beta_u, beta_a)
  if not jnp.issubdtype(dtype, jnp.floating):
    dtype = jnp.result_type(float)
  policy = Policy(dtype, compute_dtype)
  acc = policy.accum  # the dtype of everything but the stored votes
  a_inp, beta_u, beta_a = (jnp.asarray(x, acc) for x in (a_inp, beta_u, beta_a))
  votes = policy.store(jnp.asarray(votes, dtype))
  # Cast the options too, so that NumPy float64 scalars leak no float64.
  lambdas = (jnp.asarray(inverse_temperatures(n_iters, 1.0), acc)
             * jnp.asarray(final_lambda, acc))
  eps = jnp.asarray(eps, acc)

  def m_step(R: jax.Array, lam: jax.Array) -> _MStep:
    R_used = R * a_inp[:, None]                             # [i, j]
    mass = jnp.sum(R_used, axis=0)                          # [j]
    # An output with no data gets weights 0 / 1 = 0: finite, and its
    # gradient does not pass through a 1 / 0.
    coef = R_used / jnp.where(mass > 0, mass, 1)            # [i, j]
    mu = policy.einsum("ij,ijh->jh", coef, votes)
    sq_dev = policy.store(jnp.square(votes.astype(acc) - mu))  # [i, j, h]
    sigma2 = policy.einsum("ij,ijh->jh", coef, sq_dev) + eps
    cost = (beta_u[:, None] + 0.5 * jnp.log(sigma2)) * mass[:, None]
    logit = lam * (beta_a - jnp.sum(cost, axis=1))
    return _MStep(jax.nn.sigmoid(logit), logit, mu, sigma2)

  def e_step(m: _MStep) -> jax.Array:
    log_p = (-jnp.sum(jnp.square(votes.astype(acc) - m.mu) / (2 * m.sigma2), axis=2)
             - 0.5 * jnp.sum(jnp.log(m.sigma2), axis=1))    # [i, j]
    return jax.nn.softmax(jax.nn.log_sigmoid(m.logit) + log_p, axis=1)

  def iteration(R: jax.Array, lam: jax.Array) -> tuple[jax.Array, None]:
    return e_step(m_step(R, lam)), None

  R = jnp.full((n_inp, n_out), 1 / n_out, acc)
  if n_iters > 1:
    R, _ = jax.lax.scan(iteration_body(iteration, remat), R, lambdas[:-1])
  m = m_step(R, lambdas[-1])
  return EMRouting(*(policy.output(x) for x in (m.a_out, m.mu, m.sigma2, R)))
