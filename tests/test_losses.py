"""Tests of ``capsjax.losses`` against the float64 NumPy references."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from capsjax.losses import margin_loss, mms_loss
from tests import reference_losses as ref
from tests.testing_utils import assert_rel_close

B = 5          # batch of the similarity matrix
N_CLASSES = 6  # class capsules

# Few jitted functions, reused (compile time dominates).
_mms = jax.jit(mms_loss, static_argnames="margin")
_mms_grad = jax.jit(jax.grad(mms_loss), static_argnames="margin")
_margin = jax.jit(margin_loss, static_argnames=("m_plus", "m_minus", "lam"))
_margin_grad = jax.jit(jax.grad(margin_loss),
                       static_argnames=("m_plus", "m_minus", "lam"))


def _similarity(seed=0, n=B, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.uniform(-1, 1, size=(n, n))).astype(np.float32)


def _lengths(seed=0, n=N_CLASSES):
  # Kept away from the kinks at m_minus = 0.1 and m_plus = 0.9, where the
  # finite differences of the reference would straddle the hinge.
  rng = np.random.default_rng(seed)
  v = rng.uniform(0.0, 1.0, size=n)
  v = np.where(np.abs(v - 0.1) < 0.02, v + 0.05, v)
  v = np.where(np.abs(v - 0.9) < 0.02, v - 0.05, v)
  return v.astype(np.float32)


def _labels(hot, n=N_CLASSES):
  t = np.zeros(n, np.float32)
  t[list(hot)] = 1.0
  return t


# ---------------------------------------------------------------- mms_loss


@pytest.mark.parametrize("margin", [0.001, 0.0, 0.5])
def test_mms_matches_reference(margin):
  S = _similarity(seed=1, scale=3.0)
  out = _mms(S, margin=margin)
  assert out.shape == () and out.dtype == jnp.float32
  assert_rel_close(out, ref.mms_loss_ref(S, margin), name=f"margin={margin}")


def test_mms_margin_increases_loss_and_rows_differ_from_columns():
  # On this asymmetric S the row and column terms differ, so dropping or
  # doubling one direction would fail test_mms_matches_reference.
  S = _similarity(seed=1, scale=3.0)  # as in test_mms_matches_reference
  logits = S.astype(np.float64)
  rows = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(1)))
  cols = -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(0)))
  assert abs(rows - cols) > 1e-2
  assert float(_mms(S, margin=0.5)) > float(_mms(S, margin=0.0))


def test_mms_gradient_matches_finite_differences():
  S = _similarity(seed=3)
  want = ref.finite_difference_grad(lambda s: ref.mms_loss_ref(s, 0.001), S)
  got = _mms_grad(S, margin=0.001)
  assert got.dtype == jnp.float32
  assert_rel_close(got, want, name="dL/dS")


def test_mms_check_grads():
  S = _similarity(seed=4, n=3).astype(np.float64)
  with jax.enable_x64(True):
    check_grads(jax.jit(functools.partial(mms_loss, margin=0.001)),
                (jnp.asarray(S),), order=1, modes=("fwd", "rev"))


def test_mms_single_pair_and_large_logits():
  # B = 1: the positive is the only candidate, the loss is exactly 0.
  np.testing.assert_array_equal(
      _mms(np.array([[0.3]], np.float32), margin=0.001), 0.0)
  S = _similarity(seed=5, scale=500.0)
  out = _mms(S, margin=0.001)
  grad = _mms_grad(S, margin=0.001)
  assert np.isfinite(out) and np.all(np.isfinite(grad))
  # The reference in float64 is finite here (max logit ~ 500 < 709).
  assert_rel_close(out, ref.mms_loss_ref(S, 0.001))


class MmsVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_match_reference(self):
    S = _similarity(seed=6)
    fn = self.variant(functools.partial(mms_loss, margin=0.001))
    assert_rel_close(fn(S), ref.mms_loss_ref(S, 0.001))


def test_mms_vmap_equals_loop():
  batch = np.stack([_similarity(seed=10 + k) for k in range(3)])
  out = jax.jit(jax.vmap(functools.partial(mms_loss, margin=0.001)))(batch)
  loop = [_mms(s, margin=0.001) for s in batch]
  np.testing.assert_allclose(out, loop, rtol=1e-6)


def test_mms_dtypes():
  S = _similarity(seed=7)
  assert _mms(S.astype(jnp.bfloat16), margin=0.001).dtype == jnp.bfloat16
  with jax.enable_x64(True):
    fn = jax.jit(functools.partial(mms_loss, margin=0.001))
    out = fn(jnp.asarray(S, jnp.float64))
    assert out.dtype == jnp.float64
    assert_rel_close(out, ref.mms_loss_ref(S, 0.001), tol=1e-10)
    # No float64 leak from the margin or the identity for float32 inputs.
    assert fn(jnp.asarray(S)).dtype == jnp.float32


@pytest.mark.parametrize("shape", [(B,), (B, B - 1), (2, B, B)])
def test_mms_rejects_bad_shapes(shape):
  with pytest.raises(ValueError, match=r"S must have"):
    mms_loss(np.zeros(shape, np.float32))


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), None, True])
def test_mms_rejects_bad_margin(margin):
  with pytest.raises(ValueError, match="margin must be a finite number"):
    mms_loss(_similarity(), margin=margin)


# ------------------------------------------------------------- margin_loss


@pytest.mark.parametrize("hot", [(2,), (0, 4), ()])
def test_margin_matches_reference(hot):
  v, t = _lengths(seed=len(hot)), _labels(hot)
  out = _margin(v, t)
  assert out.shape == () and out.dtype == jnp.float32
  assert_rel_close(out, ref.margin_loss_ref(v, t), name=f"labels {hot}")


def test_margin_hyperparameters():
  v, t = _lengths(seed=3), _labels((1,))
  kw = dict(m_plus=0.8, m_minus=0.2, lam=0.25)
  assert_rel_close(_margin(v, t, **kw), ref.margin_loss_ref(v, t, 0.8, 0.2, 0.25))


def test_margin_perfect_prediction_is_zero():
  v = np.array([0.05, 0.95, 0.0, 0.1, 1.0, 0.02], np.float32)
  t = _labels((1, 4))
  np.testing.assert_array_equal(_margin(v, t), 0.0)


def test_margin_gradient_matches_finite_differences():
  v, t = _lengths(seed=4), _labels((0, 3))
  want = ref.finite_difference_grad(lambda x: ref.margin_loss_ref(x, t), v)
  got = _margin_grad(v, t)
  assert np.any(want != 0)
  assert_rel_close(got, want, name="dL/dlengths")


def test_margin_check_grads():
  v, t = _lengths(seed=5), _labels((2,))
  with jax.enable_x64(True):
    check_grads(jax.jit(lambda x: margin_loss(x, jnp.asarray(t, jnp.float64))),
                (jnp.asarray(v, jnp.float64),), order=1, modes=("fwd", "rev"),
                eps=1e-4)


class MarginVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_match_reference(self):
    v, t = _lengths(seed=6), _labels((5,))
    assert_rel_close(self.variant(margin_loss)(v, t), ref.margin_loss_ref(v, t))


def test_margin_vmap_equals_loop_and_batch_mean():
  vs = np.stack([_lengths(seed=20 + k) for k in range(4)])
  ts = np.stack([_labels((k,)) for k in range(4)])
  out = jax.jit(jax.vmap(margin_loss))(vs, ts)
  np.testing.assert_allclose(out, [_margin(v, t) for v, t in zip(vs, ts)],
                             rtol=1e-6)
  # EncapNet's batch loss: sum over classes, mean over the batch.
  assert_rel_close(jnp.mean(out), np.mean(
      [ref.margin_loss_ref(v, t) for v, t in zip(vs, ts)]))


def test_margin_dtypes_and_integer_labels():
  v = _lengths(seed=7)
  t = _labels((3,)).astype(np.int32)
  assert _margin(v.astype(jnp.bfloat16), t).dtype == jnp.bfloat16
  assert_rel_close(_margin(v, t), ref.margin_loss_ref(v, t))


@pytest.mark.parametrize("lengths_shape,labels_shape,name", [
    ((N_CLASSES, 1), (N_CLASSES,), "lengths"),
    ((N_CLASSES,), (N_CLASSES + 1,), "labels"),
    ((N_CLASSES,), (1, N_CLASSES), "labels"),
])
def test_margin_rejects_bad_shapes(lengths_shape, labels_shape, name):
  with pytest.raises(ValueError, match=f"{name} must have"):
    margin_loss(np.zeros(lengths_shape, np.float32),
                np.zeros(labels_shape, np.float32))


@pytest.mark.parametrize("name", ["m_plus", "m_minus", "lam"])
def test_margin_rejects_bad_hyperparameters(name):
  with pytest.raises(ValueError, match=f"{name} must be a finite number"):
    margin_loss(_lengths(), _labels((0,)), **{name: float("nan")})
