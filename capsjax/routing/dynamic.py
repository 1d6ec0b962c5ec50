"""Dynamic routing between capsules (Sabour, Frosst & Hinton, 2017).

The baseline that seeds 000, 003 and 004 compare with: vector capsules whose
length is their probability of presence, routed by agreement. One sample per
call; ``jax.vmap`` adds the batch axis.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from capsjax import _shapes
from capsjax.routing._loops import check_remat, iteration_body
from capsjax.routing._precision import Policy


class DynamicRouting(NamedTuple):
  """Output of :func:`dynamic_routing`.

  Attributes:
    v: ``[n_out, d_out]`` output capsules ``v_j = squash(s_j)`` (Eq. 1).
    c: ``[n_inp, n_out]`` coupling coefficients ``c_ij = softmax_j(b_ij)``
      (Eq. 3) as used in the last iteration; each row sums to 1. With
      ``n_iters=1`` it is the constant ``1 / n_out``.
  """
  v: jax.Array
  c: jax.Array


def squash(s: jax.typing.ArrayLike, axis: int = -1) -> jax.Array:
  """The squashing non-linearity, Eq. (1) of Sabour et al. (2017).

  ``squash(s) = |s|^2 / (1 + |s|^2) * s / |s|``, evaluated as the equal
  ``s * |s| / (1 + |s|^2)``, which has no ``0 / 0`` at ``s = 0``. The norm is
  taken with the double-``where`` trick so that the gradient at ``s = 0`` is
  the true one (zero) instead of the ``NaN`` that ``d|s|/ds = s / |s|`` would
  give.

  Args:
    s: array of any shape with at least one axis; the vectors lie along
      ``axis``.
    axis: the axis holding the vector components.

  Returns:
    An array of the shape and dtype of ``s`` whose vectors along ``axis`` have
    length ``|s|^2 / (1 + |s|^2) < 1`` and the direction of ``s``.

  References:
    S. Sabour, N. Frosst, G. E. Hinton. Dynamic Routing Between Capsules.
    NeurIPS 2017, Eq. (1).
  """
  s = jnp.asarray(s)
  if s.ndim < 1:
    raise ValueError(f"s must have at least one axis, got shape {s.shape}.")
  if not -s.ndim <= axis < s.ndim:
    raise ValueError(f"axis {axis} is out of range for s of shape {s.shape}.")
  sq_norm = jnp.sum(s * s, axis=axis, keepdims=True)
  is_zero = sq_norm == 0
  # sqrt is only ever evaluated (and differentiated) at positive values.
  norm = jnp.where(is_zero, 0, jnp.sqrt(jnp.where(is_zero, 1, sq_norm)))
  return s * (norm / (1 + sq_norm))


def dynamic_routing(u_hat: jax.typing.ArrayLike, *, n_iters: int = 3,
                    compute_dtype: jax.typing.DTypeLike | None = None,
                    remat: bool = False) -> DynamicRouting:
  """Routing by agreement, Procedure 1 of Sabour et al. (2017).

  With logits ``b_ij = 0`` at the start, each iteration computes

  - ``c_ij = softmax_j(b_ij)`` (Eq. 3, a softmax over the output capsules),
  - ``s_j = sum_i c_ij u_hat_ij`` (Eq. 2),
  - ``v_j = squash(s_j)`` (Eq. 1),

  and, between iterations only (not after the last, whose update would be
  unused), ``b_ij += u_hat_ij . v_j``.

  Choices where the paper leaves room, made as in the official code
  (Sarasra/models, ``research/capsules``) unless noted:

  - Nothing is detached: gradients flow through every iteration, including
    through the agreement updates of ``b``.
  - The official layer adds a learned bias to ``s_j``; here (KERNELS.md) the
    kernel is the bare Procedure 1 and a bias, if wanted, belongs to the
    caller's vote computation.
  - ``squash`` uses a form that is finite, with finite gradients, at
    ``s_j = 0`` (the official code divides by ``|s_j|``).

  Args:
    u_hat: ``[n_inp, n_out, d_out]`` prediction vectors
      ``u_hat_{j|i} = W_ij u_i`` (Eq. 2).
    n_iters: number of routing iterations ``r >= 1`` (the paper uses 3).
    compute_dtype: ``None`` (default): everything in ``u_hat``'s dtype. A
      dtype such as ``jnp.bfloat16`` turns on mixed precision: ``u_hat`` is
      stored in it, and the two contractions with it (``s_j = sum_i c_ij
      u_hat_ij`` and the agreement ``u_hat_ij . v_j``) take operands rounded
      to it (``c`` and ``v`` too) and accumulate in float32; the logits
      ``b``, the softmax and ``squash`` are in float32 (``u_hat``'s dtype
      promoted to at least float32). Outputs are in ``u_hat``'s dtype.
    remat: rematerialise the routing iterations on the backward pass
      (``jax.checkpoint`` on the body of the loop over iterations): reverse
      mode then keeps only each iteration's logits ``b [n_inp, n_out]`` instead of its
      intermediates (the softmax and the agreement, each ``[n_inp, n_out]``), for one more forward pass of the iterations. Same
      results (tested); memory by ``n_iters`` in ``benchmarks/kernels.py
      --iters``.

  Returns:
    A :class:`DynamicRouting` ``(v [n_out, d_out], c [n_inp, n_out])`` in the
    dtype of ``u_hat``.

  Raises:
    ValueError: if ``u_hat`` is not 3-D, ``n_iters`` is not a positive int,
      ``compute_dtype`` is not a floating dtype or ``remat`` is not a bool.

  References:
    S. Sabour, N. Frosst, G. E. Hinton. Dynamic Routing Between Capsules.
    NeurIPS 2017, Procedure 1 and Eqs. (1)-(3).
  """
  _shapes.check_ndim("u_hat", u_hat, 3, "[n_inp, n_out, d_out]")
  _shapes.check_positive_int("n_iters", n_iters)
  check_remat(remat)
  u_hat = jnp.asarray(u_hat)
  if not jnp.issubdtype(u_hat.dtype, jnp.floating):
    u_hat = u_hat.astype(jnp.result_type(float))
  policy = Policy(u_hat.dtype, compute_dtype)
  u_hat = policy.store(u_hat)

  def route(b: jax.Array) -> tuple[jax.Array, jax.Array]:
    c = jax.nn.softmax(b, axis=1)                      # [i, j]
    v = squash(policy.einsum("ij,ijh->jh", c, u_hat))  # [j, h]
    return v, c

  def iteration(b: jax.Array, _) -> tuple[jax.Array, None]:
    v, _ = route(b)
    return b + policy.einsum("ijh,jh->ij", u_hat, v), None

  b = jnp.zeros(u_hat.shape[:2], policy.accum)
  if n_iters > 1:
    b, _ = jax.lax.scan(iteration_body(iteration, remat), b, None,
                        length=n_iters - 1)
  v, c = route(b)
  return DynamicRouting(v=policy.output(v), c=policy.output(c))
