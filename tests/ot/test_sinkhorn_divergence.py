"""Tests of ``capsjax.ot.sinkhorn_divergence`` against a float64 NumPy reference.

The reference (``reference_ot``) runs the paper's Sinkhorn iterations (Eqs.
8-11) in the scaling domain with the official update order; the kernel runs
ott-jax in the log domain. ``sinkhorn_divergence`` is jitted inside with
``epsilon`` traced, so the tests call it directly and compiles are shared
across ``epsilon``; the gradient programs (ott's unrolled backward pass) are
the expensive ones and are kept to two.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from capsjax.ot import sinkhorn_divergence
from tests.ot import reference_ot as ref
from tests.testing_utils import assert_rel_close

N, M, D = 5, 4, 3  # unequal batches: three separate solves
L = 10             # the official default number of iterations


def _points(seed, n, d=D, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.normal(size=(n, d))).astype(np.float32)


def _ref(x, y, epsilon, n_iters=L, debiased=True, cost="cosine", plans=None):
  return ref.sinkhorn_divergence_ref(x, y, epsilon, n_iters, debiased, cost, plans)


_CASES = {
    # name: (n, m, epsilon, n_iters, debiased, cost)
    "equal_batches_batched_solve": (M, M, 0.1, L, True, "cosine"),
    "unequal_batches": (N, M, 0.1, L, True, "cosine"),
    "small_epsilon": (N, M, 0.01, L, True, "cosine"),
    "biased": (N, M, 0.5, L, False, "cosine"),
    "sqeuclidean": (N, M, 2.0, L, True, "sqeuclidean"),
    "one_iteration": (N, M, 0.2, 1, True, "cosine"),
    "one_sample_each": (1, 1, 0.1, L, True, "cosine"),
}


@pytest.mark.parametrize("name", list(_CASES))
def test_matches_reference(name):
  n, m, epsilon, n_iters, debiased, cost = _CASES[name]
  x, y = _points(1, n), _points(2, m)
  out = sinkhorn_divergence(x, y, epsilon=epsilon, n_iters=n_iters,
                            debiased=debiased, cost=cost)
  assert out.shape == () and out.dtype == jnp.float32
  assert_rel_close(out, _ref(x, y, epsilon, n_iters, debiased, cost), name=name)


def test_update_order_and_marginals_are_the_officials():
  # With few iterations the plan depends on which side is scaled first and
  # on the 1/n, 1/m marginals; the reference comparison above can tell.
  x, y = _points(1, N), _points(2, M)
  c = ref.cost_matrix_ref(x, y, "cosine")
  ours = ref.sinkhorn_plan_ref(c, 0.2, 1)
  other_side_first = ref.sinkhorn_plan_ref(c.T, 0.2, 1).T
  assert np.max(np.abs(ours - other_side_first)) > 1e-3
  np.testing.assert_allclose(ours.sum(axis=0), 1.0 / M)  # y side exact
  out = sinkhorn_divergence(x, y, epsilon=0.2, n_iters=1)
  swapped = (2 * float((c * other_side_first).sum())
             - ref.transport_cost_ref(x, x, 0.2, 1, "cosine")
             - ref.transport_cost_ref(y, y, 0.2, 1, "cosine"))
  assert abs(float(out) - swapped) > 1e-3 * abs(swapped)


def test_one_sample_each_is_twice_the_cost():
  # n = m = 1: the plan is 1, the self terms vanish: 2 (1 - cos(x, y)).
  x, y = _points(3, 1), _points(4, 1)
  cos = float(x[0] @ y[0] / np.linalg.norm(x[0]) / np.linalg.norm(y[0]))
  np.testing.assert_allclose(
      sinkhorn_divergence(x, y, epsilon=0.1), 2 * (1 - cos), rtol=1e-5)


def test_identical_batches_give_zero_and_random_draws_are_positive():
  x = _points(5, M)
  w_xx = ref.transport_cost_ref(x, x, 0.1, L, "cosine")
  assert abs(float(sinkhorn_divergence(x, x, epsilon=0.1))) <= 1e-6 * w_xx
  for seed in range(5):
    x, y = _points(10 + seed, M), _points(20 + seed, M)
    assert float(sinkhorn_divergence(x, y, epsilon=0.1)) > 0


def test_far_apart_points_stay_finite():
  # Squared distances ~1e4 against epsilon 2: every kernel entry underflows
  # (exp(-5000)), where the official scaling-domain loop divides by its
  # 1e-20 guard; the log domain is unaffected.
  x, y = _points(1, N, scale=100.0), _points(2, M, scale=100.0)
  out = sinkhorn_divergence(x, y, epsilon=2.0, cost="sqeuclidean")
  assert np.isfinite(float(out)) and float(out) > 0


@functools.cache
def _grad(stop_gradient_plan):
  """The jitted gradient of the divergence (one compile per flag)."""
  return jax.jit(jax.grad(functools.partial(
      sinkhorn_divergence, epsilon=0.1, n_iters=L,
      stop_gradient_plan=stop_gradient_plan), argnums=(0, 1)))


def test_gradient_through_the_iterations_matches_finite_differences():
  # Equal batches (the EncapNet setting, the batched solve).
  x, y = _points(6, M), _points(7, M)
  gx, gy = _grad(False)(x, y)
  want = ref.finite_difference_grad(lambda a, b: _ref(a, b, 0.1), [x, y])
  assert gx.dtype == jnp.float32
  assert_rel_close(gx, want[0], name="d/dx")
  assert_rel_close(gy, want[1], name="d/dy")


def test_stopped_gradient_is_cost_gradient_at_fixed_plans():
  x, y = _points(6, M), _points(7, M)
  gx, gy = _grad(True)(x, y)
  plans = ref.sinkhorn_plans_ref(x, y, 0.1, L, "cosine")
  want = ref.finite_difference_grad(
      lambda a, b: _ref(a, b, 0.1, plans=plans), [x, y])
  assert_rel_close(gx, want[0], name="d/dx, P fixed")
  assert_rel_close(gy, want[1], name="d/dy, P fixed")
  # ... which is not the full gradient.
  full = ref.finite_difference_grad(lambda a, b: _ref(a, b, 0.1), [x, y])
  assert np.max(np.abs(want[0] - full[0])) > 1e-3 * np.max(np.abs(full[0]))


def test_float64_matches_reference_and_check_grads():
  # One solve (debiased=False): ott's unrolled backward pass is slow to
  # trace, and the debiased gradient is checked above.
  x, y = _points(8, 3), _points(9, 3)
  with jax.enable_x64(True):
    fn = jax.jit(functools.partial(sinkhorn_divergence, epsilon=0.2, n_iters=5,
                                   debiased=False))
    x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
    out = fn(x64, y64)
    assert out.dtype == jnp.float64
    assert_rel_close(out, _ref(x, y, 0.2, 5, debiased=False), tol=1e-10)
    # ott's unrolled backward pass is a custom VJP: reverse mode only.
    check_grads(fn, (x64, y64), order=1, modes=("rev",))


class SinkhornDivergenceVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_match_reference(self):
    x, y = _points(1, N), _points(2, M)
    fn = self.variant(functools.partial(sinkhorn_divergence, epsilon=0.3))
    assert_rel_close(fn(x, y), _ref(x, y, 0.3))


def test_vmap_equals_loop():
  xs = np.stack([_points(30 + k, M) for k in range(3)])
  ys = np.stack([_points(40 + k, M) for k in range(3)])
  out = jax.jit(jax.vmap(functools.partial(sinkhorn_divergence, epsilon=0.1)))(xs, ys)
  loop = [sinkhorn_divergence(x, y, epsilon=0.1) for x, y in zip(xs, ys)]
  np.testing.assert_allclose(out, loop, rtol=1e-5)


def test_half_precision_runs():
  x, y = _points(1, M), _points(2, M)
  out = sinkhorn_divergence(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                            epsilon=0.1)
  assert out.dtype == jnp.bfloat16 and np.isfinite(float(out))
  np.testing.assert_allclose(float(out), _ref(x, y, 0.1), rtol=5e-2)


# -------------------------------------------------------------- arguments


@pytest.mark.parametrize("xs,ys,match", [
    ((N,), (M, D), r"x must have 2 axes \[n, d\]"),
    ((N, D, 1), (M, D), r"x must have 2 axes \[n, d\]"),
    ((N, D), (M,), r"y must have shape \[m, d\] = \[\*, 3\]"),
    ((N, D), (M, D + 1), r"y must have shape \[m, d\] = \[\*, 3\], got \(4, 4\)"),
])
def test_rejects_bad_shapes(xs, ys, match):
  with pytest.raises(ValueError, match=match):
    sinkhorn_divergence(np.zeros(xs, np.float32), np.zeros(ys, np.float32),
                        epsilon=0.1)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, float("nan"), float("inf"), None, True])
def test_rejects_bad_epsilon(epsilon):
  with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
    sinkhorn_divergence(_points(1, N), _points(2, M), epsilon=epsilon)


@pytest.mark.parametrize("n_iters", [0, -1, 2.0])
def test_rejects_bad_n_iters(n_iters):
  with pytest.raises(ValueError, match="n_iters must be a positive integer"):
    sinkhorn_divergence(_points(1, N), _points(2, M), epsilon=0.1, n_iters=n_iters)


def test_rejects_unknown_cost():
  with pytest.raises(ValueError, match=r"cost must be one of \['cosine', 'sqeuclidean'\]"):
    sinkhorn_divergence(_points(1, N), _points(2, M), epsilon=0.1, cost="l2")


def test_zero_feature_vector_is_finite():
  # A dead ReLU feature row: cosine cost 1 to everything, no NaN anywhere.
  x, y = _points(6, M), _points(7, M)
  x[1] = 0.0
  assert_rel_close(sinkhorn_divergence(x, y, epsilon=0.1), _ref(x, y, 0.1))
  gx, gy = _grad(False)(x, y)
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
  np.testing.assert_array_equal(gx[1], 0.0)
