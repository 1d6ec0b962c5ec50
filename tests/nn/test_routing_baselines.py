"""Tests of capsjax.nn.routing_baselines (Duarte et al. 2021, Tables 3 and 5).

Each layer is compared per sample with a float64 NumPy computation of its
documented design: the no-routing MLP, the FC map and the Set Transformer
PMA block are written out below; dynamic and EM routing reuse the kernels'
NumPy references (tests/routing/reference_dynamic.py, reference_em.py) on
votes computed here. Masked capsules hold garbage and must change nothing.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax.nn.routing_baselines import (
    DynamicRoutingLayer,
    EMRoutingLayer,
    FCRoutingLayer,
    NoRoutingLayer,
    SetTransformerRoutingLayer,
)
from capsjax.nn.self_attention import Capsules
from tests.routing import reference_dynamic, reference_em
from tests.testing_utils import assert_rel_close, numpy_init

B, C, D_IN, N_OUT, D_OUT, HIDDEN, HEADS = 3, 5, 4, 3, 6, 16, 2


def _count(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _np(v) -> np.ndarray:
  return np.asarray(v[...], np.float64)


def _inputs(seed: int, c: int = C):
  """Poses, activations and a mask with garbage in the masked slots."""
  rng = np.random.default_rng(seed)
  poses = rng.normal(size=(B, c, D_IN)).astype(np.float32)
  acts = rng.uniform(0.2, 1.0, size=(B, c)).astype(np.float32)
  mask = np.ones((B, c), bool)
  mask[1, [0, 2]] = False
  poses[1, [0, 2]] = 40.0
  acts[1, [0, 2]] = 0.9
  return poses, acts, mask


def _softmax(z, keep=None):
  keep = np.ones(z.shape, bool) if keep is None else keep
  if not keep.any():
    return np.zeros(z.shape)
  e = np.where(keep, np.exp(z - np.max(z[keep])), 0.0)
  return e / e.sum()


def _layer_norm(x, eps=1e-5):
  return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


# ----------------------------------------------------------------------------
# Float64 references of the documented designs, one sample at a time.
# ----------------------------------------------------------------------------


def _no_routing_ref(layer, x, p, keep):
  u = p[:, None] * x
  logits = (np.maximum(u @ _np(layer.w_1) + _np(layer.b_1), 0) @ _np(layer.w_2)
            + _np(layer.b_2))[:, 0]
  return x, _softmax(logits, keep)


def _fc_ref(layer, x, p, keep):
  u = np.where(keep[:, None], p[:, None] * x, 0.0)
  pose = (u.reshape(-1) @ _np(layer.w) + _np(layer.b)).reshape(layer.n_out, layer.d_out)
  return pose, _softmax((pose @ _np(layer.w_p) + _np(layer.b_p))[:, 0])


def _dynamic_ref(layer, x, p, keep):
  W = _np(layer.W)
  u_hat = np.zeros((x.shape[0], layer.n_out, layer.d_out))
  for i in range(x.shape[0]):
    for j in range(layer.n_out):
      if keep[i]:
        u_hat[i, j] = (p[i] * x[i]) @ W[i, j]
  v, _ = reference_dynamic.dynamic_routing(u_hat, n_iters=layer.n_iters)
  return v, np.linalg.norm(v, axis=-1)


def _em_ref(layer, x, p, keep):
  s, W = layer.s, _np(layer.W)
  votes = np.zeros((x.shape[0], layer.n_out, s * s))
  for i in range(x.shape[0]):
    for j in range(layer.n_out):
      votes[i, j] = (x[i].reshape(s, s) @ W[i, j]).reshape(-1)
  a_out, mu, _, _ = reference_em.em_routing(
      np.where(keep, p, 0.0), votes, _np(layer.beta_u), _np(layer.beta_a),
      n_iters=layer.n_iters)
  return mu, a_out


def _set_transformer_ref(layer, x, p, keep):
  g = lambda name: _np(getattr(layer, name))
  seeds = g("seeds")
  q = seeds @ g("w_q") + g("b_q")
  u = p[:, None] * x
  k, v = u @ g("w_k") + g("b_k"), u @ g("w_v") + g("b_v")
  dh = layer.d_out // layer.n_heads
  o = np.zeros_like(q)
  for h in range(layer.n_heads):
    sl = slice(h * dh, (h + 1) * dh)
    for j in range(layer.n_out):
      o[j, sl] = _softmax(k[:, sl] @ q[j, sl] / math.sqrt(dh), keep) @ v[:, sl]
  hid = _layer_norm(seeds + o @ g("w_o") + g("b_o")) * g("ln1_scale") + g("ln1_bias")
  ff = np.maximum(hid @ g("w_ff1") + g("b_ff1"), 0) @ g("w_ff2") + g("b_ff2")
  pose = _layer_norm(hid + ff) * g("ln2_scale") + g("ln2_bias")
  return pose, _softmax((pose @ g("w_p") + g("b_p"))[:, 0])


LAYERS = {
    "none": (lambda **kw: NoRoutingLayer(D_IN, d_hidden=HIDDEN, **kw), _no_routing_ref),
    "fc": (lambda **kw: FCRoutingLayer(C, D_IN, N_OUT, D_OUT, **kw), _fc_ref),
    "dynamic": (lambda **kw: DynamicRoutingLayer(C, D_IN, N_OUT, D_OUT, n_iters=3, **kw),
                _dynamic_ref),
    "em": (lambda **kw: EMRoutingLayer(C, D_IN, N_OUT, n_iters=3, **kw), _em_ref),
    "set_transformer": (lambda **kw: SetTransformerRoutingLayer(
        D_IN, N_OUT, D_OUT, n_heads=HEADS, d_hidden=HIDDEN, dropout_rate=0.5, **kw),
                        _set_transformer_ref),
}


@nnx.jit
def _forward_and_grad(layer, poses, acts, mask):
  """Outputs, and gradients of a loss that weighs every real output."""
  # A padded slot's per-capsule output is not an output: leave it out.
  keep = mask[..., None] if layer.n_out is None else 1.0

  def loss(layer, poses):
    out = layer(poses, acts, mask=mask)
    return jnp.sum((out.poses * keep) ** 2) + jnp.sum(out.activations), out

  return nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer, poses)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_matches_reference_ignores_masked_capsules_and_has_finite_grads(name):
  make, ref = LAYERS[name]
  layer = numpy_init(lambda rngs: make(rngs=rngs))
  layer.eval()
  poses, acts, mask = _inputs(1)
  mask[2] = False                                    # an empty sample
  (value, out), (g_layer, g_poses) = _forward_and_grad(layer, poses, acts, mask)
  assert isinstance(out, Capsules)
  n_out = layer.n_out or C
  assert out.poses.shape == (B, n_out, layer.d_out)
  assert out.activations.shape == (B, n_out)
  for s in range(B):
    want_pose, want_act = ref(layer, poses[s].astype(np.float64),
                              acts[s].astype(np.float64), mask[s])
    assert_rel_close(out.poses[s], want_pose, name=f"{name} poses[{s}]")
    assert_rel_close(out.activations[s], want_act, name=f"{name} activations[{s}]")
  assert np.isfinite(value)
  for leaf in jax.tree.leaves((nnx.state(g_layer, nnx.Param), g_poses)):
    assert np.all(np.isfinite(leaf))
  assert np.all(np.asarray(g_poses)[~mask] == 0)
  # Different garbage in the masked slots: the same outputs (for a layer with
  # one output per input, those of the present capsules; a padded one's own
  # activation is 0).
  poses2, acts2 = poses.copy(), acts.copy()
  poses2[~mask], acts2[~mask] = -7.0, 0.3
  (_, out2), _ = _forward_and_grad(layer, poses2, acts2, mask)
  sel = mask if layer.n_out is None else np.ones((B, n_out), bool)
  np.testing.assert_allclose(out2.poses[sel], out.poses[sel], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(out2.activations, out.activations, rtol=1e-6, atol=1e-7)
  if layer.n_out is None:
    assert np.all(np.asarray(out.activations)[~mask] == 0)


def test_parameter_counts():
  # Each count is the sum of the documented parameter shapes.
  counts = {
      # w_1 [d, h], b_1 [h], w_2 [h, 1], b_2 [1]
      "none": D_IN * HIDDEN + HIDDEN + HIDDEN + 1,
      # w [C d, n d'], b [n d'], w_p [d', 1], b_p [1]
      "fc": C * D_IN * N_OUT * D_OUT + N_OUT * D_OUT + D_OUT + 1,
      # W [C, n, d, d']
      "dynamic": C * N_OUT * D_IN * D_OUT,
      # W [C, n, s, s], beta_u, beta_a [n]
      "em": C * N_OUT * D_IN + 2 * N_OUT,
      # seeds; w_q, w_o [d', d'] + biases; w_k, w_v [d, d'] + biases; two
      # LayerNorms; rFF d' -> h -> d'; w_p, b_p.
      "set_transformer": (N_OUT * D_OUT + 2 * (D_OUT * D_OUT + D_OUT)
                          + 2 * (D_IN * D_OUT + D_OUT) + 4 * D_OUT
                          + (2 * D_OUT * HIDDEN + HIDDEN + D_OUT) + D_OUT + 1),
  }
  for name, (make, _) in LAYERS.items():
    layer = nnx.eval_shape(lambda make=make: make(rngs=nnx.Rngs(0)))
    assert _count(layer) == counts[name], name


def test_initialisation():
  dyn = DynamicRoutingLayer(C, D_IN, N_OUT, D_OUT, rngs=nnx.Rngs(1))
  em = EMRoutingLayer(C, D_IN, N_OUT, rngs=nnx.Rngs(1))
  st = SetTransformerRoutingLayer(D_IN, N_OUT, D_OUT, n_heads=HEADS,
                                  d_hidden=HIDDEN, rngs=nnx.Rngs(1))
  # W_ij like a bias-free torch Linear(d_in, d_out): U(+-1/sqrt(d_in));
  # EM's W_ij acts on rows of s x s matrices: U(+-1/sqrt(s)); seeds Xavier.
  for w, bound in ((dyn.W, 1 / math.sqrt(D_IN)), (em.W, 1 / math.sqrt(2)),
                   (st.seeds, math.sqrt(6 / (N_OUT + D_OUT))),
                   (st.w_k, 1 / math.sqrt(D_IN)), (st.w_ff2, 1 / math.sqrt(HIDDEN))):
    w = np.asarray(w[...])
    assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > 0.6 * bound
  np.testing.assert_array_equal(em.beta_u[...], 0)
  np.testing.assert_array_equal(em.beta_a[...], 0)


def test_set_transformer_padding_equals_removal():
  layer = numpy_init(lambda rngs: LAYERS["set_transformer"][0](rngs=rngs))
  layer.eval()
  poses, acts, _ = _inputs(2, c=C + 1)
  mask = np.ones((B, C + 1), bool)
  for s in range(B):
    mask[s, (2 * s) % (C + 1)] = False
  poses[~mask] = 30.0
  small_p = np.stack([poses[s][mask[s]] for s in range(B)])
  small_a = np.stack([acts[s][mask[s]] for s in range(B)])
  (_, padded), _ = _forward_and_grad(layer, poses, acts, mask)
  (_, removed), _ = _forward_and_grad(layer, small_p, small_a, np.ones((B, C), bool))
  np.testing.assert_allclose(padded.poses, removed.poses, rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(padded.activations, removed.activations, rtol=2e-6, atol=1e-7)


def test_set_transformer_dropout_only_in_training():
  layer = numpy_init(lambda rngs: LAYERS["set_transformer"][0](rngs=rngs))
  poses, acts, mask = _inputs(3)
  (_, train), _ = _forward_and_grad(layer, poses, acts, mask)
  layer.eval()
  (_, eval_), _ = _forward_and_grad(layer, poses, acts, mask)
  assert np.all(np.isfinite(train.poses))
  assert not np.allclose(train.poses, eval_.poses)


def test_errors():
  poses, acts, mask = _inputs(5)
  with pytest.raises(ValueError, match=r"d_in must be a square"):
    EMRoutingLayer(C, 6, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="n_heads must divide d_out"):
    SetTransformerRoutingLayer(D_IN, N_OUT, 5, n_heads=2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="n_iters must be a positive integer"):
    DynamicRoutingLayer(C, D_IN, n_iters=0, rngs=nnx.Rngs(0))
  layer = numpy_init(lambda rngs: DynamicRoutingLayer(C, D_IN, N_OUT, D_OUT, rngs=rngs))
  with pytest.raises(ValueError, match=r"poses must have shape \[b, C, d_in\] = \[\*, 5, 4\]"):
    layer(poses[:, :4], acts[:, :4])
  with pytest.raises(ValueError, match=r"activations must have shape \[b, C\]"):
    layer(poses, acts[:2])
  with pytest.raises(ValueError, match="mask must be boolean"):
    layer(poses, acts, mask=mask.astype(np.int32))
