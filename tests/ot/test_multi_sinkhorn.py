"""Tests of ``capsjax.ot.multi_sinkhorn`` against the float64 official algorithm."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.ot import multi_sinkhorn, multi_sk_assignment
from tests.ot import reference_ot as ref
from tests.testing_utils import assert_rel_close

B, K = 12, 6  # the shape of most tests, reused so that compiles stay few
# The authors' setting: a queue of 5500 plus a batch of 216 samples, 64
# anchors, eps 0.07, 20 iterations, half of the anchors required.
AUTHORS = dict(B=5500 + 216, K=64, eps=0.07, n_iters=20, fraction=0.5)

# multi_sinkhorn is jitted inside with only the shapes and n_iters static,
# so the tests call it directly and share compiles across eps, damping and
# prior (most tests use [12, 6] scores and 20 iterations).
_ms = multi_sinkhorn
_assign = multi_sk_assignment


def _scores(seed=0, b=B, k=K, scale=1.0):
  # Cosine-like similarities in [-scale, scale].
  rng = np.random.default_rng(seed)
  return (scale * rng.uniform(-1, 1, size=(b, k))).astype(np.float32)


# A prior with zeros and small values: scaled to sum B = 12 some entries fall
# below one sample and are clamped to 1 before the rescaling.
_CLASS_DIST = np.array([0.0, 3.0, 0.2, 1.0, 5.0, 0.5], np.float32)

_CASES = {
    # name: (eps, n_iters, required_properties, discrete, class_dist)
    "authors": (0.07, 20, 3, True, None),
    "continuous_damping": (0.5, 20, 3, False, None),
    # The prior only acts through the official "+ 1e-5" guards (a factor per
    # anchor cancels in the channel normalisation), so it shows at small eps.
    "class_dist": (0.01, 20, 3, True, _CLASS_DIST),
    "all_damped_one_iter": (0.07, 1, 0, True, None),
    "none_damped": (0.2, 20, K, True, None),
}


@pytest.mark.parametrize("name", list(_CASES))
def test_matches_reference(name):
  eps, n_iters, rp, discrete, class_dist = _CASES[name]
  s = _scores(seed=len(name))
  out = _ms(s, eps=eps, n_iters=n_iters, required_properties=rp,
            discrete=discrete, class_dist=class_dist)
  assert out.shape == (K, B, K) and out.dtype == jnp.float32
  want = ref.multi_sinkhorn_ref(s, eps, n_iters, rp, discrete, class_dist)
  assert_rel_close(out, want, name=name)
  # Each (channel, sample) row is a distribution over the anchors.
  np.testing.assert_allclose(np.sum(out, axis=2), 1.0, atol=1e-5)


def test_small_eps_where_float32_exp_overflows():
  # exp(1 / 0.01) = exp(100) overflows float32 (the official float32 code
  # patches the infs); the reference is the official algorithm in float64.
  s = _scores(seed=1)
  with np.errstate(over="ignore"):
    assert not np.all(np.isfinite(np.exp(s / np.float32(0.01))))
  out = _ms(s, eps=0.01, n_iters=20, required_properties=3)
  assert_rel_close(out, ref.multi_sinkhorn_ref(s, 0.01, 20, 3), name="eps=0.01")


def test_class_dist_changes_and_reorders_the_result():
  # The reference comparison of the "class_dist" case can tell a uniform,
  # an unsorted and a reordered prior apart, and a permuted prior gives the
  # same result (only its sorted values count).
  s = _scores(seed=len("class_dist"))
  out = np.asarray(_ms(s, eps=0.01, n_iters=20, required_properties=3,
                       class_dist=_CLASS_DIST))
  uniform = ref.multi_sinkhorn_ref(s, 0.01, 20, 3)
  unsorted = ref.multi_sinkhorn_ref(s, 0.01, 20, 3, class_dist=_CLASS_DIST,
                                    reorder=False)
  permuted = ref.multi_sinkhorn_ref(s, 0.01, 20, 3,
                                    class_dist=_CLASS_DIST[::-1].copy())
  assert np.max(np.abs(out - uniform)) > 1e-3
  assert np.max(np.abs(out - unsorted)) > 1e-3
  assert_rel_close(out, permuted)


def test_no_gradient():
  s = _scores(seed=2)
  g = np.random.default_rng(3).normal(size=(K, B, K))

  @jax.jit
  def grads(x):
    return (jax.grad(lambda y: jnp.sum(multi_sinkhorn(
        y, eps=0.07, n_iters=20, required_properties=3) * g))(x),
            jax.grad(lambda y: jnp.sum(multi_sk_assignment(
                y, eps=0.07, n_iters=20, required_fraction=0.5) * g[0]))(x))

  for grad in grads(s):
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("b,k", [(1, 4), (7, 1)])
def test_one_sample_and_one_anchor(b, k):
  s = _scores(seed=4, b=b, k=k)
  out = _ms(s, eps=0.07, n_iters=20, required_properties=k // 2)
  assert out.shape == (k, b, k)
  assert_rel_close(out, ref.multi_sinkhorn_ref(s, 0.07, 20, k // 2))
  if k == 1:
    np.testing.assert_array_equal(out, 1.0)


def test_large_scores_stay_finite():
  # Scores far outside the cosine range: exp(1000 / 0.07) overflows even in
  # float64, so only the invariants are checked.
  s = _scores(seed=5, scale=1000.0)
  out = np.asarray(_ms(s, eps=0.07, n_iters=20, required_properties=3),
                   np.float64)
  assert np.all(np.isfinite(out)) and np.all(out >= 0)
  np.testing.assert_allclose(out.sum(axis=2), 1.0, atol=1e-5)


class MultiSinkhornVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_match_reference(self):
    s = _scores(seed=6)
    fn = self.variant(functools.partial(
        multi_sinkhorn, eps=0.07, n_iters=20, required_properties=3))
    assert_rel_close(fn(s), ref.multi_sinkhorn_ref(s, 0.07, 20, 3))


def test_vmap_equals_loop():
  batch = np.stack([_scores(seed=10 + i) for i in range(3)])
  out = jax.jit(jax.vmap(functools.partial(
      multi_sinkhorn, eps=0.07, n_iters=20, required_properties=3)))(batch)
  for i, s in enumerate(batch):
    np.testing.assert_allclose(
        out[i], _ms(s, eps=0.07, n_iters=20, required_properties=3),
        rtol=1e-5, atol=1e-7)


def test_dtypes():
  s = _scores(seed=7)
  out = _ms(s.astype(jnp.bfloat16), eps=0.07, n_iters=20, required_properties=3)
  assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(out.astype(np.float32)))
  with jax.enable_x64(True):
    s64 = jnp.asarray(s, jnp.float64)
    out = jax.jit(functools.partial(
        multi_sinkhorn, eps=0.07, n_iters=20, required_properties=3))(s64)
    assert out.dtype == jnp.float64
    assert_rel_close(out, ref.multi_sinkhorn_ref(s, 0.07, 20, 3), tol=1e-10)


# ------------------------------------------------------ multi_sk_assignment


def test_assignment_matches_reference():
  s = _scores(seed=8)
  out = _assign(s, eps=0.07, n_iters=20, required_fraction=0.5)
  assert out.shape == (B, K) and out.dtype == jnp.float32
  assert_rel_close(out, ref.multi_sk_assignment_ref(s, 0.07, 20, 0.5))
  np.testing.assert_allclose(np.min(out, axis=1), 0.0, atol=1e-7)
  np.testing.assert_allclose(np.max(out, axis=1), 1.0, atol=1e-6)


def test_assignment_approach2_matches_reference():
  # Suppl. Table 7's "Approach 2": the graded channel weights.
  s = _scores(seed=8)
  out = _assign(s, eps=0.07, n_iters=20, required_fraction=0.5, discrete=False)
  assert_rel_close(out, ref.multi_sk_assignment_ref(s, 0.07, 20, 0.5,
                                                    discrete=False))
  assert not np.allclose(out, _assign(s, eps=0.07, n_iters=20,
                                      required_fraction=0.5))


def test_assignment_constant_rows_give_zero():
  # Equal scores everywhere (and a single anchor) make every row constant,
  # where the official min-max normalisation divides 0 by 0.
  s = np.full((B, K), 0.3, np.float32)
  np.testing.assert_array_equal(
      _assign(s, eps=0.07, n_iters=20, required_fraction=0.5), 0.0)
  np.testing.assert_array_equal(
      _assign(_scores(seed=9, b=7, k=1), eps=0.07, n_iters=20,
              required_fraction=1.0), 0.0)


def test_authors_shape_forward():
  b, k = AUTHORS["B"], AUTHORS["K"]
  rp = int(k * AUTHORS["fraction"])
  s = _scores(seed=11, b=b, k=k)
  # The suite compiles at XLA's lowest optimisation level (conftest), which
  # makes this [64, 5716, 64] computation several times slower to run than
  # it is to compile at the default level.
  fn = jax.jit(functools.partial(
      multi_sinkhorn, eps=AUTHORS["eps"], n_iters=AUTHORS["n_iters"],
      required_properties=rp),
      compiler_options={"xla_backend_optimization_level": 2,
                        "xla_llvm_disable_expensive_passes": False})
  out = np.asarray(fn(s), np.float64)
  assert out.shape == (k, b, k) and np.all(np.isfinite(out))
  # Exact: every (channel, sample) row sums to 1.
  np.testing.assert_allclose(out.sum(axis=2), 1.0, atol=1e-5)
  # The sample marginals approach the equal partition B/K after 20
  # iterations (0.2 % off here), the channel marginals 1 (6 % off).
  np.testing.assert_allclose(out.sum(axis=1), b / k, rtol=1e-2)
  np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=0.1)
  # The undamped channels carry each sample's required anchors.
  np.testing.assert_allclose(out[k - rp:].sum(axis=(0, 2)), rp, rtol=1e-5)


# -------------------------------------------------------------- arguments


@pytest.mark.parametrize("shape", [(B,), (2, B, K)])
def test_rejects_scores_not_2d(shape):
  with pytest.raises(ValueError, match=r"scores must have 2 axes \[B, K\]"):
    multi_sinkhorn(np.zeros(shape, np.float32), eps=0.07, n_iters=3,
                   required_properties=1)
  with pytest.raises(ValueError, match=r"similarity must have 2 axes \[B, K\]"):
    multi_sk_assignment(np.zeros(shape, np.float32), eps=0.07, n_iters=3,
                        required_fraction=0.5)


@pytest.mark.parametrize("rp", [-1, K + 1, 1.0, True, None])
def test_rejects_required_properties_out_of_range(rp):
  with pytest.raises(ValueError,
                     match=r"required_properties must be an int in \[0, K\] = \[0, 6\]"):
    multi_sinkhorn(_scores(), eps=0.07, n_iters=3, required_properties=rp)


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan"), float("inf"), None])
def test_rejects_bad_eps(eps):
  with pytest.raises(ValueError, match="eps must be a finite number > 0"):
    multi_sinkhorn(_scores(), eps=eps, n_iters=3, required_properties=1)


@pytest.mark.parametrize("n_iters", [0, -2, 1.5])
def test_rejects_bad_n_iters(n_iters):
  with pytest.raises(ValueError, match="n_iters must be a positive integer"):
    multi_sinkhorn(_scores(), eps=0.07, n_iters=n_iters, required_properties=1)


@pytest.mark.parametrize("shape", [(K - 1,), (K + 1,), (1, K)])
def test_rejects_class_dist_of_wrong_length(shape):
  with pytest.raises(ValueError, match=r"class_dist must have shape \[K\] = \[6\]"):
    multi_sinkhorn(_scores(), eps=0.07, n_iters=3, required_properties=1,
                   class_dist=np.ones(shape, np.float32))


@pytest.mark.parametrize("fraction,match", [
    (0.0, r"required_fraction must be a number in \(0, 1\]"),
    (1.5, r"required_fraction must be a number in \(0, 1\]"),
    (0.1, r"required_fraction=0.1 gives required_properties = .* = 0"),
])
def test_rejects_bad_required_fraction(fraction, match):
  with pytest.raises(ValueError, match=match):
    multi_sk_assignment(_scores(), eps=0.07, n_iters=3, required_fraction=fraction)
