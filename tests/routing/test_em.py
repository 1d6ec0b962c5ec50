"""Tests of ``capsjax.routing.em`` against the float64 NumPy reference."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from capsjax.routing import EMRouting, em_routing
from capsjax.routing.em import inverse_temperatures
from tests.routing import reference_em as ref
from tests.testing_utils import assert_rel_close, assert_tree_rel_close

# Few shapes, reused, so that compiles stay few.
N_INP, N_OUT, D = 10, 3, 4
ARGS = ("a_inp", "votes", "beta_u", "beta_a")


def _inputs(seed=0, n_inp=N_INP, n_out=N_OUT, d=D, scale=1.0):
  """``(a_inp, votes, beta_u, beta_a)`` in float32."""
  rng = np.random.default_rng(seed)
  a = rng.uniform(0.2, 1.0, size=n_inp)
  votes = scale * rng.normal(size=(n_inp, n_out, d))
  beta_u = 0.5 * rng.normal(size=n_out)
  beta_a = rng.normal(size=n_out)
  return tuple(x.astype(np.float32) for x in (a, votes, beta_u, beta_a))


def _cotangents(seed, n_inp=N_INP, n_out=N_OUT, d=D):
  rng = np.random.default_rng(seed)
  shapes = [(n_out,), (n_out, d), (n_out, d), (n_inp, n_out)]
  return tuple(rng.normal(size=s) for s in shapes)


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


def _ref_loss_grads(inputs, cot, n_iters=3, final_lambda=0.01):
  """Finite-difference gradients of ``sum_k <out_k, cot_k>`` of the reference."""
  inputs = [np.asarray(x, np.float64) for x in inputs]
  grads = []
  for k in range(4):
    def loss(x, k=k):
      args = list(inputs)
      args[k] = x
      out = ref.em_routing(*args, n_iters=n_iters, final_lambda=final_lambda)
      return float(sum(np.sum(o * g) for o, g in zip(out, cot)))
    grads.append(_fd_grad(loss, inputs[k]))
  return grads


# Compile time dominates: the tests go through these few jitted functions,
# with final_lambda traced so that its values share one compile.
@functools.partial(jax.jit, static_argnames="n_iters")
def _route(a_inp, votes, beta_u, beta_a, final_lambda, n_iters=3):
  return em_routing(a_inp, votes, beta_u, beta_a, n_iters=n_iters,
                    final_lambda=final_lambda)


@jax.jit
def _loss_grads(a_inp, votes, beta_u, beta_a, final_lambda, cot):
  def loss(*inputs):
    out = em_routing(*inputs, n_iters=3, final_lambda=final_lambda)
    return sum(jnp.sum(o * g) for o, g in zip(out, cot))
  return jax.grad(loss, argnums=(0, 1, 2, 3))(a_inp, votes, beta_u, beta_a)


def _f32(xs):
  return tuple(np.asarray(x, np.float32) for x in xs)


# --------------------------------------------------------------- forward


def test_inverse_temperature_schedule():
  np.testing.assert_allclose(inverse_temperatures(3, 0.01),
                             [0.0005, 0.000975, 0.00142625], rtol=1e-12)


@pytest.mark.parametrize("n_iters,final_lambda",
                         [(1, 0.01), (3, 0.01), (3, 1.0), (5, 1.0)])
def test_forward_matches_reference(n_iters, final_lambda):
  # final_lambda = 1 makes the activations (and through them R) far from
  # 1/2, so that the a_out -> E-step path matters.
  inputs = _inputs(seed=n_iters)
  out = _route(*inputs, np.float32(final_lambda), n_iters=n_iters)
  assert isinstance(out, EMRouting)
  assert [o.shape for o in out] == [(N_OUT,), (N_OUT, D), (N_OUT, D), (N_INP, N_OUT)]
  assert all(o.dtype == jnp.float32 for o in out)
  want = ref.em_routing(*inputs, n_iters=n_iters, final_lambda=final_lambda)
  assert_tree_rel_close(out, want, name=f"n_iters={n_iters}, lambda={final_lambda}")
  np.testing.assert_allclose(np.sum(out.R, axis=1), 1.0, rtol=1e-6)
  if n_iters == 1:
    np.testing.assert_array_equal(out.R, np.float32(1 / N_OUT))


@pytest.mark.parametrize("final_lambda", [0.01, 1.0])
def test_gradients_match_finite_differences(final_lambda):
  inputs = _inputs(seed=20)
  cot = _cotangents(21)
  got = _loss_grads(*inputs, np.float32(final_lambda), _f32(cot))
  want = _ref_loss_grads(inputs, cot, final_lambda=final_lambda)
  for name, g, w in zip(ARGS, got, want):
    assert g.dtype == jnp.float32
    assert_rel_close(g, w, name=f"d/d{name}")


def test_check_grads_float64():
  with jax.enable_x64(True):
    inputs = tuple(jnp.asarray(x, jnp.float64)
                   for x in _inputs(seed=22, n_inp=4, n_out=2, d=3))
    f = jax.jit(functools.partial(em_routing, n_iters=3, final_lambda=1.0))
    check_grads(f, inputs, order=1, modes=("rev", "fwd"))


class EMRoutingVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_match_reference_with_defaults(self):
    inputs = _inputs(seed=23)
    out = self.variant(em_routing)(*inputs)
    assert_tree_rel_close(out, ref.em_routing(*inputs))


def test_vmap_equals_loop():
  batch = [np.stack(x) for x in zip(*[_inputs(seed=30 + k) for k in range(3)])]
  lam = np.float32(1.0)
  out = jax.jit(jax.vmap(_route, in_axes=(0, 0, 0, 0, None)))(*batch, lam)
  for k in range(3):
    one = _route(*(x[k] for x in batch), lam)
    for o, w in zip(out, one):
      np.testing.assert_allclose(o[k], w, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- edge cases


def test_absent_inputs_change_nothing():
  # Inputs with a_inp = 0 are appended (with wild votes); every output, the
  # routing of the present inputs and every gradient with respect to the
  # present inputs must stay as without them.
  n_pres = N_INP - 3
  a, votes, beta_u, beta_a = _inputs(seed=40, n_inp=n_pres)
  rng = np.random.default_rng(41)
  lam = np.float32(1.0)
  cot = _cotangents(42, n_inp=n_pres)
  ref_out = ref.em_routing(a, votes, beta_u, beta_a, final_lambda=1.0)
  ref_grads = _ref_loss_grads((a, votes, beta_u, beta_a), cot, final_lambda=1.0)
  # The absent inputs' rows of R are outputs too (they depend on mu, sigma2,
  # a_out); their cotangent is 0 so that L is the unpadded one.
  cot_pad = _f32(cot[:3] + (np.concatenate([cot[3], np.zeros((3, N_OUT))]),))
  outs, grads = [], []
  for vote_scale in (1.0, 1e4):
    a_pad = np.concatenate([a, np.zeros(3, np.float32)])
    wild = vote_scale * rng.normal(size=(3, N_OUT, D))
    v_pad = np.concatenate([votes, wild.astype(np.float32)])
    out = _route(a_pad, v_pad, beta_u, beta_a, lam)
    g = _loss_grads(a_pad, v_pad, beta_u, beta_a, lam, cot_pad)
    assert_tree_rel_close(out[:3] + (out.R[:n_pres],), ref_out, name="padded")
    assert_rel_close(g[1][:n_pres], ref_grads[1], name="d/dvotes present")
    for k in (2, 3):
      assert_rel_close(g[k], ref_grads[k], name=f"d/d{ARGS[k]}")
    assert_rel_close(g[0][:n_pres], ref_grads[0], name="d/da_inp present")
    np.testing.assert_array_equal(g[1][n_pres:], 0.0)
    assert _all_finite(g[0])
    outs.append(out)
    grads.append(g)
  # The absent inputs' votes make no difference beyond round-off.
  for o0, o1 in zip(outs[0][:3], outs[1][:3]):
    np.testing.assert_allclose(o0, o1, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(outs[0].R[:n_pres], outs[1].R[:n_pres],
                             rtol=1e-6, atol=1e-7)
  for g0, g1 in zip(grads[0][1:], grads[1][1:]):
    np.testing.assert_allclose(g0, g1, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grads[0][0][:n_pres], grads[1][0][:n_pres],
                             rtol=1e-5, atol=1e-6)


def test_all_inputs_absent():
  a, votes, beta_u, beta_a = _inputs(seed=50)
  a = np.zeros_like(a)
  lam = np.float32(1.0)
  out = _route(a, votes, beta_u, beta_a, lam)
  assert _all_finite(out)
  lam_last = inverse_temperatures(3, 1.0)[-1]
  assert_rel_close(out.a_out, 1 / (1 + np.exp(-lam_last * beta_a.astype(np.float64))))
  np.testing.assert_array_equal(out.mu, 0.0)
  np.testing.assert_array_equal(out.sigma2, np.float32(1e-8))
  assert_tree_rel_close(out, ref.em_routing(a, votes, beta_u, beta_a, final_lambda=1.0))
  assert _all_finite(_loss_grads(a, votes, beta_u, beta_a, lam, _f32(_cotangents(51))))


def test_one_input():
  inputs = _inputs(seed=60, n_inp=1)
  lam = np.float32(1.0)
  out = _route(*inputs, lam)
  np.testing.assert_allclose(out.mu, inputs[1][0], rtol=1e-6)
  np.testing.assert_allclose(out.sigma2, 1e-8, rtol=1e-6)
  assert_tree_rel_close(out, ref.em_routing(*inputs, final_lambda=1.0))
  grads = _loss_grads(*inputs, lam, _f32(_cotangents(61, n_inp=1)))
  assert _all_finite(grads)


@pytest.mark.parametrize("final_lambda", [0.01, 1.0])
def test_very_large_votes(final_lambda):
  inputs = _inputs(seed=70, scale=1e6)
  lam = np.float32(final_lambda)
  out = _route(*inputs, lam)
  assert_tree_rel_close(out, ref.em_routing(*inputs, final_lambda=final_lambda))
  assert _all_finite(_loss_grads(*inputs, lam, _f32(_cotangents(71))))


def test_identical_votes():
  # Every input votes the same: the variance collapses to eps. Only
  # finiteness is checked for the gradients: at sigma2 = eps = 1e-8 the
  # float32 round-off in (V - mu) ~ 1e-7 is amplified by 1 / sigma2, so
  # float32 and float64 gradients differ at the level of that round-off.
  a, votes, beta_u, beta_a = _inputs(seed=80)
  votes = np.broadcast_to(votes[:1], votes.shape).copy()
  lam = np.float32(1.0)
  out = _route(a, votes, beta_u, beta_a, lam)
  assert _all_finite(out)
  np.testing.assert_allclose(out.mu, votes[0], rtol=1e-6)
  np.testing.assert_allclose(out.sigma2, 1e-8, rtol=1e-3)
  want = ref.em_routing(a, votes, beta_u, beta_a, final_lambda=1.0)
  assert_rel_close(out.a_out, want[0])
  assert _all_finite(_loss_grads(a, votes, beta_u, beta_a, lam, _f32(_cotangents(81))))


def test_dtypes():
  inputs = _inputs(seed=90)
  out = _route(*(jnp.asarray(x, jnp.bfloat16) for x in inputs), jnp.bfloat16(1.0))
  assert all(o.dtype == jnp.bfloat16 for o in out)
  assert _all_finite(out)
  with jax.enable_x64(True):
    # A float64 final_lambda must not promote the float32 computation.
    out = _route(*inputs, np.float64(1.0))
    assert all(o.dtype == jnp.float32 for o in out)


# -------------------------------------------------------------- argument checks


@pytest.mark.parametrize("name,shape,match", [
    ("a_inp", (N_INP + 1,), r"a_inp must have shape \[n_inp\] = \[10\], got \(11,\)"),
    ("a_inp", (N_INP, 1), r"a_inp must have shape \[n_inp\] = \[10\]"),
    ("votes", (N_INP, N_OUT * D), r"votes must have 3 axes \[n_inp, n_out, d\]"),
    ("votes", (N_INP, N_OUT, 2, 2), r"votes must have 3 axes \[n_inp, n_out, d\]"),
    ("beta_u", (N_OUT + 1,), r"beta_u must have shape \[n_out\] = \[3\], got \(4,\)"),
    ("beta_u", (N_OUT, D), r"beta_u must have shape \[n_out\] = \[3\]"),
    ("beta_a", (), r"beta_a must have shape \[n_out\] = \[3\], got \(\)"),
    ("beta_a", (1, N_OUT), r"beta_a must have shape \[n_out\] = \[3\]"),
])
def test_wrong_shapes_raise(name, shape, match):
  kwargs = dict(zip(ARGS, _inputs()))
  kwargs[name] = np.zeros(shape, np.float32)
  with pytest.raises(ValueError, match=match):
    em_routing(**kwargs)


@pytest.mark.parametrize("n_iters", [0, -2, 3.0, None])
def test_bad_n_iters_raises(n_iters):
  with pytest.raises(ValueError, match="n_iters must be a positive integer"):
    em_routing(*_inputs(), n_iters=n_iters)


@pytest.mark.parametrize("eps", [0.0, -1e-8])
def test_bad_eps_raises(eps):
  with pytest.raises(ValueError, match="eps must be positive"):
    em_routing(*_inputs(), eps=eps)
