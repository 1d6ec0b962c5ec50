"""Tests of ``capsjax.routing.dynamic`` against the float64 NumPy reference."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from capsjax.routing import DynamicRouting, dynamic_routing, squash
from tests.routing import reference_dynamic as ref
from tests.testing_utils import assert_rel_close, assert_tree_rel_close

# Few shapes, reused, so that compiles stay few.
N_INP, N_OUT, D = 6, 3, 4


def _u_hat(seed=0, n_inp=N_INP, n_out=N_OUT, d=D, scale=1.0):
  rng = np.random.default_rng(seed)
  return (scale * rng.normal(size=(n_inp, n_out, d))).astype(np.float32)


def _ref(u_hat, n_iters=3):
  return ref.dynamic_routing(np.asarray(u_hat, np.float64), n_iters)


# Compile time dominates: every test goes through these few jitted functions
# (eager mode compiles each primitive on its own and is far slower).
_route = jax.jit(dynamic_routing, static_argnames="n_iters")
_squash = jax.jit(squash, static_argnames="axis")


@jax.jit
def _loss_grad(u_hat, g_v, g_c):
  """Gradient of ``<v, g_v> + <c, g_c>`` with respect to ``u_hat``."""
  def loss(x):
    v, c = dynamic_routing(x, n_iters=3)
    return jnp.sum(v * g_v) + jnp.sum(c * g_c)
  return jax.grad(loss)(u_hat)


def _cotangents(seed, n_inp=N_INP, n_out=N_OUT, d=D):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n_out, d)), rng.normal(size=(n_inp, n_out))


def _all_finite(tree):
  return all(bool(np.all(np.isfinite(np.asarray(x, np.float64))))
             for x in jax.tree_util.tree_leaves(tree))


def _fd_grad(f, x, step=1e-6):
  """Central finite differences of the scalar ``f`` at float64 ``x``."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for k in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[k] = step
    g[k] = (f(x + e) - f(x - e)) / (2 * step)
  return g


# ----------------------------------------------------------------- squash


def test_squash_matches_reference_and_formula():
  s = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
  s[0] *= 1e-3   # short vectors: length ~ |s|^2
  s[1] *= 1e3    # long vectors: length ~ 1
  want = np.stack([ref.squash(row) for row in s.astype(np.float64)])
  got = _squash(s)
  assert got.dtype == jnp.float32
  for k in range(5):   # per vector, so that the short ones count too
    assert_rel_close(got[k], want[k], name=f"squash row {k}")
  np.testing.assert_array_less(np.linalg.norm(np.asarray(got), axis=1), 1.0)
  # Along another axis.
  assert_rel_close(_squash(s.T, axis=0), want.T)


def test_squash_safe_at_zero():
  # Rows 0 and 2 are zero vectors, next to a non-zero row.
  s = np.array([[0.0, 0.0], [0.3, -0.4], [0.0, 0.0]], np.float32)
  np.testing.assert_array_equal(_squash(s)[::2], 0.0)
  # The true Jacobian at 0 is 0 (squash(s) = O(|s|^2)); no NaN from s / |s|.
  jac_rev, jac_fwd = jax.jit(
      lambda x: (jax.jacrev(squash)(x), jax.jacfwd(squash)(x)))(s)
  for jac in (jac_rev, jac_fwd):
    assert _all_finite(jac)
    np.testing.assert_array_equal(jac[::2], 0.0)
    np.testing.assert_array_equal(jac[:, :, ::2], 0.0)
  row = np.array([0.3, -0.4])
  want = _fd_grad(lambda x: ref.squash(x)[0], row)   # d squash_0 / d s
  assert_rel_close(jac_rev[1, 0, 1], want)


def test_squash_check_grads_order2():
  # The single second-order check of this file: squash is the only
  # non-trivial non-linearity, and it is cheap.
  s = np.random.default_rng(3).normal(size=(2, 3))
  with jax.enable_x64(True):
    check_grads(jax.jit(squash), (jnp.asarray(s),), order=2, modes=("rev",))


# -------------------------------------------------------- dynamic_routing


@pytest.mark.parametrize("n_iters", [1, 3, 5])
def test_forward_matches_reference(n_iters):
  # Larger predictions for more iterations: large agreement logits, sharp
  # couplings.
  u = _u_hat(seed=n_iters, scale=1.0 if n_iters < 5 else 3.0)
  out = _route(u, n_iters=n_iters)
  assert isinstance(out, DynamicRouting)
  assert out.v.shape == (N_OUT, D) and out.c.shape == (N_INP, N_OUT)
  assert out.v.dtype == jnp.float32 and out.c.dtype == jnp.float32
  assert_tree_rel_close(out, _ref(u, n_iters), name=f"n_iters={n_iters}")


def test_gradient_matches_finite_differences():
  u = _u_hat(seed=5)
  g_v, g_c = _cotangents(6)

  def loss_ref(x):
    v, c = ref.dynamic_routing(x, 3)
    return float(np.sum(v * g_v) + np.sum(c * g_c))

  got = _loss_grad(u, g_v.astype(np.float32), g_c.astype(np.float32))
  assert got.dtype == jnp.float32
  assert_rel_close(got, _fd_grad(loss_ref, u), name="d/du_hat")


def test_check_grads_float64():
  u = np.random.default_rng(7).normal(size=(3, 2, 3))
  with jax.enable_x64(True):
    f = jax.jit(functools.partial(dynamic_routing, n_iters=3))
    check_grads(f, (jnp.asarray(u),), order=1, modes=("rev", "fwd"))


class DynamicRoutingVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_match_reference(self):
    u = _u_hat(seed=8)
    fn = self.variant(functools.partial(dynamic_routing, n_iters=3))
    assert_tree_rel_close(fn(u), _ref(u, 3))


def test_vmap_equals_loop():
  batch = np.stack([_u_hat(seed=10 + k) for k in range(3)])
  out = jax.jit(jax.vmap(functools.partial(dynamic_routing, n_iters=3)))(batch)
  for k in range(3):
    one = _route(batch[k], n_iters=3)
    np.testing.assert_allclose(out.v[k], one.v, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out.c[k], one.c, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- edge cases


def test_n_iters_one_is_uniform_coupling():
  u = _u_hat(seed=11)
  out = _route(u, n_iters=1)
  np.testing.assert_array_equal(out.c, np.float32(1 / N_OUT))
  u64 = u.astype(np.float64)
  want = np.stack([ref.squash(u64[:, j].sum(0) / N_OUT) for j in range(N_OUT)])
  assert_rel_close(out.v, want)


def test_one_input_capsule():
  u = _u_hat(seed=12, n_inp=1)
  assert_tree_rel_close(_route(u, n_iters=3), _ref(u, 3))
  g_v, g_c = _cotangents(12, n_inp=1)
  assert _all_finite(_loss_grad(u, g_v.astype(np.float32), g_c.astype(np.float32)))


def test_one_output_capsule_couples_fully():
  u = _u_hat(seed=13, n_out=1)
  out = _route(u, n_iters=3)
  np.testing.assert_array_equal(out.c, 1.0)
  assert_rel_close(out.v, _ref(u, 3)[0])


def test_zero_prediction_inputs_change_nothing():
  # An input whose predictions are all 0 adds nothing to s_j and its logits
  # never move, so appending such "padding" inputs changes no output.
  u = _u_hat(seed=14, n_inp=N_INP - 2)
  padded = np.concatenate([u, np.zeros((2, N_OUT, D), np.float32)])
  out, out_pad = _route(u, n_iters=3), _route(padded, n_iters=3)
  np.testing.assert_allclose(out_pad.v, out.v, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out_pad.c[:N_INP - 2], out.c, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out_pad.c[N_INP - 2:], 1 / N_OUT, rtol=1e-6)


@pytest.mark.parametrize("scale", [0.0, 1e3, 1e6])
def test_zero_and_large_predictions_finite(scale):
  # scale 0: squash at s = 0 inside the routing loop, forward and backward.
  # Large scales: huge agreement logits; the softmax saturates, but nothing
  # overflows.
  u = _u_hat(seed=15, scale=scale)
  out = _route(u, n_iters=3)
  assert _all_finite(out)
  if scale == 0:
    np.testing.assert_array_equal(out.v, 0.0)
    np.testing.assert_allclose(out.c, 1 / N_OUT, rtol=1e-6)
  else:
    assert_tree_rel_close(out, _ref(u, 3))
  g_v, g_c = _cotangents(15)
  assert _all_finite(_loss_grad(u, g_v.astype(np.float32), g_c.astype(np.float32)))


def test_dtypes():
  u = _u_hat(seed=16)
  out = _route(jnp.asarray(u, jnp.bfloat16), n_iters=3)
  assert out.v.dtype == jnp.bfloat16 and out.c.dtype == jnp.bfloat16
  assert _all_finite(out)
  with jax.enable_x64(True):
    out = _route(u, n_iters=3)
    assert out.v.dtype == jnp.float32 and out.c.dtype == jnp.float32


# -------------------------------------------------------------- argument checks


@pytest.mark.parametrize("shape", [(N_INP, N_OUT), (1, N_INP, N_OUT, D), ()])
def test_wrong_u_hat_shape_raises(shape):
  match = r"u_hat must have 3 axes \[n_inp, n_out, d_out\]"
  with pytest.raises(ValueError, match=match):
    dynamic_routing(np.zeros(shape, np.float32))


@pytest.mark.parametrize("n_iters", [0, -1, 2.0, True])
def test_bad_n_iters_raises(n_iters):
  with pytest.raises(ValueError, match="n_iters must be a positive integer"):
    dynamic_routing(_u_hat(), n_iters=n_iters)


def test_bad_squash_arguments_raise():
  with pytest.raises(ValueError, match="s must have at least one axis"):
    squash(np.float32(1.0))
  with pytest.raises(ValueError, match="axis 2 is out of range"):
    squash(np.zeros((2, 3)), axis=2)
