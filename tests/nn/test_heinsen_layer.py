"""Tests of capsjax.nn.heinsen.HeinsenRoutingLayer.

The layer is checked per sample against the float64 NumPy port of the
official ``Routing.forward`` (tests/routing/reference_heinsen.py), with every
parameter randomised, in each mode: fixed / variable number of inputs,
fixed / variable number of outputs, gaussian / skm, single_beta.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax.nn.heinsen import HeinsenRoutingLayer
from capsjax.nn.heinsen_stem import SmallNORBStem
from tests.routing.reference_heinsen import reference_heinsen_routing
from tests.testing_utils import assert_rel_close

B_SZ, N_INP, D_COV, D_INP, D_OUT = 3, 6, 2, 3, 4


def _layer(n_inp, n_out, **kw):
  return HeinsenRoutingLayer(D_COV, D_INP, D_OUT, n_inp=n_inp, n_out=n_out,
                             rngs=nnx.Rngs(0), **kw)


def _randomise(layer, seed):
  """Replaces every parameter by N(0, 0.5) draws (the init has zeros)."""
  rng = np.random.default_rng(seed)
  for _, p in nnx.iter_graph(layer):
    if isinstance(p, nnx.Param):
      p[...] = jnp.asarray(0.5 * rng.standard_normal(p.shape), p.dtype)
  return layer


def _inputs(seed, b=B_SZ, n=N_INP):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((b, n)).astype(np.float32)
  mu = rng.standard_normal((b, n, D_COV, D_INP)).astype(np.float32)
  return a, mu


def _params(layer):
  beta_ign = layer.beta_use if layer.beta_ign is None else layer.beta_ign
  return [np.asarray(p[...]) for p in (layer.W, layer.B, layer.beta_use,
                                        beta_ign)]


def _reference(layer, a, mu, keep=None, n_out=None):
  """Per-sample reference; ``keep[k]`` are the inputs sample k really has."""
  W, B, bu, bi = _params(layer)
  B_brk = None if layer.B_brk is None else np.asarray(layer.B_brk[...])
  outs = []
  for k in range(a.shape[0]):
    idx = np.arange(a.shape[1]) if keep is None else keep[k]
    # A fixed number of inputs: removing input i removes its parameters.
    take = (lambda x: x[idx]) if W.shape[0] > 1 else (lambda x: x)
    outs.append(reference_heinsen_routing(
        a[k, idx], mu[k, idx], take(W), take(B), take(bu), take(bi),
        n_iters=layer.n_iters, p_model=layer.p_model, eps=layer.eps,
        n_out=n_out if layer.n_out is None else None, B_brk=B_brk))
  return outs


@nnx.jit(static_argnames="n_out")
def _forward(layer, a, mu, mask=None, n_out=None):
  return layer(a, mu, mask=mask, n_out=n_out)


def test_init_follows_paper():
  # Paper Sec. 4.1: W ~ N(0, 1) / d_inp, B = 0, betas = 0; B_brk = 0
  # (official code).
  layer = HeinsenRoutingLayer(2, 16, 16, n_inp=8, n_out=16, rngs=nnx.Rngs(1))
  W = np.asarray(layer.W[...])
  assert W.shape == (8, 16, 16, 16) and W.dtype == np.float32
  assert abs(W.std() * 16 - 1) < 0.03 and abs(W.mean() * 16) < 0.03
  for p in (layer.B, layer.beta_use, layer.beta_ign):
    assert not np.any(np.asarray(p[...]))
  assert layer.B[...].shape == (8, 16, 2, 16)
  assert layer.beta_use[...].shape == layer.beta_ign[...].shape == (8, 16)
  assert layer.B_brk is None

  var = HeinsenRoutingLayer(2, 3, 4, single_beta=True, rngs=nnx.Rngs(1))
  shapes = {"/".join(map(str, k)): v.shape
            for k, v in nnx.to_flat_state(nnx.state(var, nnx.Param))}
  assert shapes == {"W": (1, 1, 3, 4), "B": (1, 1, 2, 4), "B_brk": (1, 2, 4),
                    "beta_use": (1, 1)}
  assert not np.any(np.asarray(var.B_brk[...]))


# Padding patterns: none, some, all but one.
_MASK = np.array([[1, 1, 1, 1, 1, 1],
                  [1, 0, 1, 1, 0, 1],
                  [0, 0, 0, 1, 0, 0]], bool)


@pytest.mark.parametrize("n_inp, n_out, kw", [
    (N_INP, 3, {}),                                   # both fixed
    (None, 3, {"p_model": "skm"}),                    # variable inputs
    # variable outputs (n_out defaults to n_inp, as in the official code)
    (None, None, {"single_beta": True, "n_iters": 2}),
])
def test_matches_reference_per_sample_and_padding_removes(n_inp, n_out, kw):
  layer = _randomise(_layer(n_inp, n_out, **kw), 1)
  a, mu = _inputs(2)
  n = n_out or N_INP
  full = np.ones_like(_MASK)
  out = _forward(layer, a, mu, full)
  assert out.a_out.shape == (B_SZ, n) and out.R.shape == (B_SZ, N_INP, n)
  assert out.mu_out.shape == out.sig2_out.shape == (B_SZ, n, D_COV, D_OUT)
  for k, ref in enumerate(_reference(layer, a, mu, n_out=n)):
    for name, o, r in zip(out._fields, out, ref):
      assert_rel_close(o[k], r, 1e-4, f"sample {k} {name}")

  # Masked inputs are removed: the outputs are the reference's without them
  # (a variable-output layer keeps n_out = n_inp of the padded call). The
  # padding may hold anything, even NaN capsules and +inf scores.
  a = np.where(_MASK, a, np.inf)
  mu = np.where(_MASK[:, :, None, None], mu, np.nan)
  out = _forward(layer, a, mu, _MASK)
  keep = [np.flatnonzero(m) for m in _MASK]
  for k, ref in enumerate(_reference(layer, a, mu, keep=keep, n_out=n)):
    for name, o, r in zip(out._fields, out, ref):
      o = np.asarray(o[k])
      assert np.all(np.isfinite(o)), name
      assert_rel_close(o[keep[k]] if name == "R" else o, r, 1e-4,
                       f"padded sample {k} {name}")


def test_variable_n_out_at_call_time():
  layer = _layer(None, None)
  a, mu = _inputs(0)
  for n in (1, 5, 9):
    out = jax.eval_shape(lambda a, mu: layer(a, mu, n_out=n), a, mu)
    assert out.a_out.shape == (B_SZ, n)
    assert out.mu_out.shape == (B_SZ, n, D_COV, D_OUT)


def test_jitted_grad_over_split_state_is_finite():
  a, mu = _inputs(7)
  mask = _MASK.copy()
  mu[~mask] = np.nan  # padding gets no gradient, and makes no NaN
  layer = _randomise(_layer(None, 3), 8)
  graphdef, params = nnx.split(layer, nnx.Param)

  def loss(params, a, mu):
    out = nnx.merge(graphdef, params)(a, mu, mask=mask)
    return jnp.sum(out.a_out * jnp.arange(3.0)) + jnp.sum(out.mu_out ** 2)

  g, ga, gmu = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, a, mu)
  assert set(g.keys()) == {"W", "B", "beta_use", "beta_ign"}
  for x in jax.tree.leaves((g, ga, gmu)):
    assert np.all(np.isfinite(np.asarray(x)))
    assert np.any(np.asarray(x))
  assert not np.any(np.asarray(ga)[~mask])
  assert not np.any(np.asarray(gmu)[~mask])


def test_dtypes():
  a, mu = _inputs(9)
  layer = _randomise(_layer(None, 3, dtype=jnp.bfloat16), 1)
  assert layer.W[...].dtype == jnp.float32
  out = _forward(layer, a, mu)  # bfloat16 runs, and stays finite
  assert all(o.dtype == jnp.bfloat16 for o in out)
  assert all(np.all(np.isfinite(np.asarray(o, np.float32))) for o in out)
  layer = nnx.eval_shape(lambda: _layer(None, 3, param_dtype=jnp.bfloat16))
  assert all(p.dtype == jnp.bfloat16
             for p in jax.tree.leaves(nnx.state(layer, nnx.Param)))
  with jax.enable_x64(True):  # float32 in, float32 params: no float64 leak
    out = jax.eval_shape(_layer(None, 3), a, mu)
    assert all(o.dtype == jnp.float32 for o in out)


@pytest.mark.parametrize("kw, call, match", [
    ({}, {"a_inp": np.zeros((3,))}, r"a_inp must have 2 axes \[b, n_inp\]"),
    ({"n_inp": 5}, {}, r"a_inp must have shape \[b, n_inp\] = \[\*, 5\]"),
    ({}, {"mu_inp": np.zeros((3, 6, 2, 4))},
     r"mu_inp must have shape \[b, n_inp, d_cov, d_inp\] = \[3, 6, 2, 3\]"),
    ({}, {"mask": np.ones((3, 5), bool)}, r"mask must have shape \[b, n_inp\]"),
    ({}, {"mask": np.ones((3, 6))}, r"mask must be boolean"),
    ({}, {"n_out": 4}, r"n_out can only be given .* n_out=3"),
    ({"n_out": None}, {"n_out": 0}, r"n_out must be a positive integer"),
])
def test_call_errors(kw, call, match):
  # Checks run before any parameter is read: an abstract layer suffices.
  layer = nnx.eval_shape(
      lambda: _layer(kw.pop("n_inp", None), kw.pop("n_out", 3), **kw))
  a, mu = _inputs(0)
  args = {"a_inp": a, "mu_inp": mu} | call
  with pytest.raises(ValueError, match=match):
    layer(args.pop("a_inp"), args.pop("mu_inp"), **args)


@pytest.mark.parametrize("kw, match", [
    ({"d_inp": 0}, "d_inp must be a positive integer"),
    ({"n_inp": 0}, "n_inp must be a positive integer"),
    ({"n_out": -1}, "n_out must be a positive integer"),
    ({"n_iters": 0}, "n_iters must be a positive integer"),
    ({"p_model": "gmm"}, "p_model must be one of"),
])
def test_constructor_errors(kw, match):
  args = {"d_cov": 2, "d_inp": 3, "d_out": 4} | kw
  with pytest.raises(ValueError, match=match):
    nnx.eval_shape(lambda: HeinsenRoutingLayer(**args, rngs=nnx.Rngs(0)))


# ------------------------------------------------------- smallNORB conv stem

def _stem_eval_shape(stem, shape):
  graphdef, state = nnx.split(stem)
  return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                        jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("hw, out_hw", [((96, 96), (9, 9)), ((29, 40), (1, 2))])
def test_stem_shapes(hw, out_hw):
  # Paper Fig. 3(c): 96 -> 94 -> 46 -> 44 -> 21 -> 19 -> 9.
  stem = nnx.eval_shape(lambda: SmallNORBStem(rngs=nnx.Rngs(0)))
  assert stem.min_size() == 29
  out = _stem_eval_shape(stem, (2, *hw, 4))
  assert out.shape == (2, *out_hw, 64)
  # Each conv is preceded by a BatchNorm on its input channels.
  assert [n.scale.shape for n in stem.norms] == [(4,)] + [(64,)] * 5
  assert [c.strides for c in stem.convs] == [1, 2, 1, 2, 1, 2]


@pytest.mark.parametrize("shape, match", [
    ((2, 28, 40, 4), r"x must be at least 29x29 pixels"),
    ((2, 32, 32, 2), r"x must have shape \[b, H, W, in_features\]"),
])
def test_stem_errors(shape, match):
  stem = nnx.eval_shape(lambda: SmallNORBStem(rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=match):
    _stem_eval_shape(stem, shape)
