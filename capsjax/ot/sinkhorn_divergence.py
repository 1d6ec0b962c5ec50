"""The Sinkhorn divergence of EncapNet's feedback agreement (Li et al., 2018).

EncapNet regularises each capsule module by asking a small generator to
reconstruct the lower layer's features from the higher layer's, and measures
the gap between the two batches with a debiased optimal-transport loss whose
plan comes from a fixed number of Sinkhorn iterations (Sec. 3.2, Eqs. 8-11).
The Sinkhorn iterations are ott-jax's (log domain, unrolled so that gradients
flow through them exactly as through the official loop).
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
from ott.geometry import costs, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from capsjax import _shapes


@jax.tree_util.register_pytree_node_class
class _Cosine(costs.CostFn):
  """``1 - <x / |x|, y / |y|>``, where a zero vector has direction 0.

  The official code normalises by ``|x| + 1e-20``; ott's ``Cosine`` divides
  the dot product by ``|x| |y| + 1e-8`` (a relative change of 1e-8) and its
  gradient at a zero vector is NaN. Here the norm is taken with the
  double-``where`` trick, so a zero vector (a dead ReLU feature row) costs 1
  to everything, with a zero gradient.
  """

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    return 1.0 - jnp.vdot(_direction(x), _direction(y))


def _direction(x: jax.Array) -> jax.Array:
  sq_norm = jnp.sum(x * x)
  nonzero = sq_norm > 0
  return jnp.where(nonzero, x / jnp.sqrt(jnp.where(nonzero, sq_norm, 1)), 0)


_COSTS = {"cosine": _Cosine, "sqeuclidean": costs.SqEuclidean}


def _transport_cost(x: jax.Array, y: jax.Array, *, epsilon: jax.Array,
                    n_iters: int, cost: str, stop_gradient_plan: bool) -> jax.Array:
  """``W_Q(x, y) = <Q, P>`` (Eq. 8) with ``P`` from ``n_iters`` iterations."""
  # ott's iteration updates the column potential g, then the row potential
  # f, from f = g = 0 (constant scalings). The official loop updates the
  # x-side scaling first, so x goes on ott's columns: geometry [m, n].
  geom = pointcloud.PointCloud(y, x, cost_fn=_COSTS[cost](), epsilon=epsilon)
  problem = linear_problem.LinearProblem(
      geom,
      a=jnp.full((y.shape[0],), 1.0 / y.shape[0], x.dtype),
      b=jnp.full((x.shape[0],), 1.0 / x.shape[0], x.dtype))
  # Exactly n_iters iterations: min = max makes ott's loop a scan (the
  # threshold is never consulted), in one block of inner_iterations =
  # n_iters, so the marginal error is computed only once. implicit_diff=None
  # unrolls the loop for the gradient, which is what autograd through the
  # official loop computes (the default implicit differentiation would give
  # the gradient of the converged plan). The single block matters: with
  # min = max and several blocks, ott 0.6.0's backward scan replays the
  # checkpoints out of order and returns a wrong gradient.
  solver = sinkhorn.Sinkhorn(
      lse_mode=True, min_iterations=n_iters, max_iterations=n_iters,
      inner_iterations=n_iters, implicit_diff=None)
  plan = solver(problem).matrix  # [m, n]
  if stop_gradient_plan:
    plan = jax.lax.stop_gradient(plan)
  return jnp.sum(plan * geom.cost_matrix)


# Jitted inside, so that an eager call compiles one program instead of
# dispatching ott's many small operations one by one; under an outer jit it
# is inlined. epsilon is an array argument: changing it does not recompile.
@functools.partial(jax.jit, static_argnames=(
    "n_iters", "debiased", "stop_gradient_plan", "cost"))
def _sinkhorn_divergence(x: jax.Array, y: jax.Array, epsilon: jax.Array, *,
                         n_iters: int, debiased: bool, stop_gradient_plan: bool,
                         cost: str) -> jax.Array:
  """:func:`sinkhorn_divergence` on validated arguments."""
  out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  dtype = jnp.promote_types(jnp.promote_types(x.dtype, y.dtype), jnp.float32)
  x = x.astype(dtype)
  y = y.astype(dtype)
  options = dict(epsilon=epsilon.astype(dtype), n_iters=n_iters, cost=cost,
                 stop_gradient_plan=stop_gradient_plan)
  if not debiased:
    return _transport_cost(x, y, **options).astype(out_dtype)
  if x.shape[0] == y.shape[0]:
    # Equal batch sizes (always so in EncapNet): the three problems share a
    # shape and run as one batched solve, a third of the trace and compile
    # time of three solver instances.
    w_xy, w_xx, w_yy = jax.vmap(functools.partial(_transport_cost, **options))(
        jnp.stack([x, x, y]), jnp.stack([y, x, y]))
  else:
    w_xy = _transport_cost(x, y, **options)
    w_xx = _transport_cost(x, x, **options)
    w_yy = _transport_cost(y, y, **options)
  return (2 * w_xy - w_xx - w_yy).astype(out_dtype)


def sinkhorn_divergence(x: jax.typing.ArrayLike, y: jax.typing.ArrayLike, *,
                        epsilon: float, n_iters: int = 10, debiased: bool = True,
                        stop_gradient_plan: bool = False,
                        cost: str = "cosine") -> jax.Array:
  """EncapNet's Sinkhorn divergence between two batches (Eqs. 8-11).

  With the ground cost ``Q[i, j] = cost(x_i, y_j)``, the Gibbs kernel
  ``K = exp(-Q / epsilon)`` (``epsilon`` absolute, not relative to the
  costs) and uniform marginals ``1/n`` and ``1/m``, ``n_iters`` Sinkhorn
  iterations (Eq. 9) starting from a constant ``y``-side scaling give the
  plan ``P = diag(a) K diag(b)`` (Eq. 10), and

  ``W_Q(x, y) = <Q, P>``  (Eq. 8, the transport cost without entropy).

  The loss is ``2 W_Q(x, y) - W_Q(x, x) - W_Q(y, y)`` (Eq. 11, the bias fix)
  when ``debiased``, else ``W_Q(x, y)``.

  Following the official code (``OptTrans`` in hli2020/nn_encapsulation)
  where the paper is ambiguous: each iteration updates the ``x``-side (row)
  scaling ``a = (1/n) / (K b)`` first and then the ``y``-side scaling
  ``b = (1/m) / (K^T a)`` (Eq. 9 as printed starts with the other side), so
  the plan's ``y`` marginal is exact and its ``x`` marginal approximate;
  ``x`` is the generated (reconstructed) batch and ``y`` the target batch.
  The official division guard ``+ 1e-20`` is not needed in the log domain
  and is left out; the official code also requires ``n == m``, which this
  function does not.

  Gradients flow through the Sinkhorn iterations (unrolled), as in the
  official default. ``stop_gradient_plan=True`` holds ``P`` fixed, so the
  gradient is ``<dQ, P>`` ("ignore the gradient flow through the Sinkhorn
  iterates", Sec. 3.2; the official ``no_bp_P_L``).

  Costs: ``"cosine"`` is ``1 - x.y / (|x| |y|)`` (official ``C_form =
  'cosine'``; a zero vector has cost 1 to everything and a zero gradient,
  where the official ``x / (|x| + 1e-20)`` has a 1e20-sized one);
  ``"sqeuclidean"`` is ``|x - y|^2`` (ott's ``SqEuclidean``). The official
  code's other option, the unsquared ``l2`` norm, has no gradient at
  ``x_i = y_j`` (every diagonal entry of ``W(x, x)``) and is not offered.

  On ott-jax 0.6.0: ``PointCloud(y, x, epsilon=epsilon)`` (an absolute
  epsilon: ``relative_epsilon=None``, ``scale_cost=1``) with uniform
  marginals, solved by ``Sinkhorn(lse_mode=True, min_iterations=n_iters,
  max_iterations=n_iters, inner_iterations=n_iters, implicit_diff=None)``.
  One ott iteration updates the column potential, then the row potential,
  from zero potentials, so with ``x`` on the columns it is exactly one
  iteration of the official loop. With ``n == m`` the three problems of
  Eq. (11) are solved as one batch.

  Args:
    x: ``[n, d]`` batch of (flattened) features, one sample per row; the
      generated side.
    y: ``[m, d]`` batch of features; the target side.
    epsilon: the entropic regularisation ``epsilon`` of ``K``, an absolute
      number > 0 (official default 1).
    n_iters: ``L``, the number of Sinkhorn iterations, >= 1 (official
      default 10).
    debiased: ``True`` for Eq. (11), ``False`` for ``W_Q(x, y)`` alone
      (the official ``remove_bias=True``).
    stop_gradient_plan: hold the plans fixed in the gradient.
    cost: ``"cosine"`` (default) or ``"sqeuclidean"``.

  Returns:
    The scalar divergence, in the dtype of ``x`` (half-precision inputs are
    computed in float32).

  Raises:
    ValueError: if ``x`` or ``y`` is not 2-D, their feature sizes differ, or
      an option is invalid.

  References:
    H. Li, X. Guo, B. Dai, W. Ouyang, X. Wang. Neural Network Encapsulation.
    ECCV 2018, Sec. 3.2, Eqs. (8)-(11); official code ``OptTrans`` in
    hli2020/nn_encapsulation (``layers/OT_module.py``).
  """
  _, d = _shapes.check_ndim("x", x, 2, "[n, d]")
  _shapes.check_shape("y", y, (None, d), "[m, d]")
  if (isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real)
      or not math.isfinite(epsilon) or epsilon <= 0):
    raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}.")
  _shapes.check_positive_int("n_iters", n_iters)
  if cost not in _COSTS:
    raise ValueError(f"cost must be one of {sorted(_COSTS)}, got {cost!r}.")

  return _sinkhorn_divergence(jnp.asarray(x), jnp.asarray(y),
                              jnp.asarray(epsilon), n_iters=n_iters,
                              debiased=bool(debiased),
                              stop_gradient_plan=bool(stop_gradient_plan),
                              cost=cost)
