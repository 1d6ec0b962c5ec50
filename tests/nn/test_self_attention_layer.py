"""Tests of capsjax.nn.self_attention.SelfAttentionRoutingLayer.

The layer's batched output is checked per sample against the float64 NumPy
reference of the kernel (tests/routing/reference_self_attention.py), which
also checks that the layer hands the kernel its own parameters; padding is
checked against deleting the padded capsules.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax.nn.self_attention import Capsules, SelfAttentionRoutingLayer
from tests.routing.reference_self_attention import PARAM_NAMES, self_attention_routing_ref
from tests.testing_utils import assert_rel_close, numpy_init

B, C, D1, D2, HEADS, HIDDEN = 3, 5, 4, 8, 2, 16


def _layer(**kw) -> SelfAttentionRoutingLayer:
  """A small layer (NumPy-initialised; one dropout rate, so that the eval-mode
  programs of the tests are shared)."""
  kw = {"n_heads": HEADS, "d_hidden": HIDDEN, "dropout_rate": 0.5, **kw}
  return numpy_init(lambda rngs: SelfAttentionRoutingLayer(D1, D2, rngs=rngs, **kw))


def _inputs(seed: int, c: int = C):
  rng = np.random.default_rng(seed)
  poses = rng.normal(size=(B, c, D1)).astype(np.float32)
  acts = rng.uniform(0.2, 1.0, size=(B, c)).astype(np.float32)
  return poses, acts


def _count(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@nnx.jit
def _forward(layer, poses, acts, mask):
  return layer(poses, acts, mask=mask)


def _ref_params(layer):
  return {name: (None if getattr(layer, name, None) is None
                 else np.asarray(getattr(layer, name)[...]))
          for name in PARAM_NAMES}


def _expected_count(h: int, out_proj: bool = False, head: bool = True,
                    qkv_hidden: int | None = None) -> int:
  """h_Q, h_K, h_V: 3 (d1 d2 + d2) with one layer, 3 (d1 q + q + q d2 + d2)
  with two (width q); two LayerNorms: 4 d2; MLP: d2 h + h + h d2 + d2;
  Eq. (2): d2 + 1; output projection: d2 d2 + d2."""
  qkv = (D1 * D2 + D2 if qkv_hidden is None
         else D1 * qkv_hidden + qkv_hidden + qkv_hidden * D2 + D2)
  return (3 * qkv + 4 * D2 + (2 * D2 * h + h + D2)
          + (D2 + 1 if head else 0) + (D2 * D2 + D2 if out_proj else 0))


def test_parameters_and_init():
  h = HIDDEN
  layer = SelfAttentionRoutingLayer(D1, D2, n_heads=HEADS, d_hidden=HIDDEN,
                                    qkv_layers=1, rngs=nnx.Rngs(3))
  assert _count(layer) == _expected_count(h)
  # torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both.
  for name, fan_in in (("w_q", D1), ("b_q", D1), ("w_v", D1), ("w_mlp1", D2),
                       ("b_mlp1", D2), ("w_mlp2", h), ("b_mlp2", h), ("w_p", D2)):
    w = np.asarray(getattr(layer, name)[...])
    bound = 1 / math.sqrt(fan_in)
    assert np.max(np.abs(w)) <= bound, name
    if w.size >= 64:  # a draw spread over the interval, not a constant
      assert np.max(np.abs(w)) > 0.8 * bound and abs(np.mean(w)) < 0.2 * bound, name
  for name, value in (("ln1_scale", 1), ("ln1_bias", 0), ("ln2_scale", 1),
                      ("ln2_bias", 0)):
    np.testing.assert_array_equal(getattr(layer, name)[...], value)
  # Each linear map draws its own weights.
  assert not np.allclose(layer.w_q[...], layer.w_k[...])
  assert layer.w_o is None and layer.d_out == D2
  small = lambda **kw: SelfAttentionRoutingLayer(  # noqa: E731
      D1, D2, n_heads=HEADS, d_hidden=HIDDEN, rngs=nnx.Rngs(0), **kw)
  # The default: two linear layers per h, hidden width d2.
  assert _count(nnx.eval_shape(small)) == _expected_count(HIDDEN, qkv_hidden=D2)
  with_proj = nnx.eval_shape(lambda: small(out_proj=True))
  assert _count(with_proj) == _expected_count(HIDDEN, out_proj=True, qkv_hidden=D2)
  # The kernel gets the output projection (tested there) when there is one.
  kp = nnx.eval_shape(lambda: small(out_proj=True).kernel_params(jnp.float32))
  assert kp.w_o.shape == (D2, D2) and kp.b_o.shape == (D2,)
  no_head = nnx.eval_shape(lambda: small(activation_head=False))
  assert _count(no_head) == _expected_count(HIDDEN, head=False, qkv_hidden=D2)
  assert no_head.w_p is None


def test_two_layer_h_parameters_and_init():
  # Sec. 3.1: "two linear layers for all functions h"; hidden width d2 unless
  # given.
  two = SelfAttentionRoutingLayer(D1, D2, n_heads=HEADS, d_hidden=HIDDEN,
                                  rngs=nnx.Rngs(3))  # the default
  assert two.qkv_hidden == D2 and two.qkv_activation is None
  assert _count(two) == _expected_count(HIDDEN, qkv_hidden=D2)
  assert two.w_q[...].shape == (D1, D2) and two.w_v2[...].shape == (D2, D2)
  for name, fan_in in (("w_q", D1), ("b_k", D1), ("w_q2", D2), ("b_q2", D2),
                       ("w_k2", D2), ("w_v2", D2), ("b_v2", D2)):
    w = np.asarray(getattr(two, name)[...])
    assert np.max(np.abs(w)) <= 1 / math.sqrt(fan_in), name
  assert not np.allclose(two.w_q2[...], two.w_k2[...])
  # The second layers are drawn last: every other parameter is as with one
  # layer (same seed).
  one = SelfAttentionRoutingLayer(D1, D2, n_heads=HEADS, d_hidden=HIDDEN,
                                  qkv_layers=1, rngs=nnx.Rngs(3))
  assert one.w_q2 is None and one.qkv_hidden is None
  for name in ("w_q", "b_q", "w_k", "w_v", "w_mlp1", "w_mlp2", "w_p"):
    np.testing.assert_array_equal(getattr(two, name)[...], getattr(one, name)[...])
  def make_wide():
    return SelfAttentionRoutingLayer(
        D1, D2, n_heads=HEADS, d_hidden=HIDDEN, qkv_layers=2, qkv_hidden=6,
        qkv_activation="relu", rngs=nnx.Rngs(0))

  assert _count(nnx.eval_shape(make_wide)) == _expected_count(HIDDEN, qkv_hidden=6)
  kp = nnx.eval_shape(lambda: make_wide().kernel_params(jnp.float32))
  assert kp.w_q.shape == (D1, 6) and kp.w_q2.shape == (6, D2)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_two_layer_h_matches_reference_and_padding(activation):
  layer = _layer(qkv_layers=2, qkv_hidden=6, qkv_activation=activation)
  layer.eval()
  poses, acts = _inputs(11, c=C + 1)
  acts[0, 2] = 0.0                               # an absent entity
  mask = np.ones((B, C + 1), bool)
  mask[1, [1, 4]] = False
  poses[1, [1, 4]] = 1e3                         # padding holds garbage
  out = _forward(layer, poses, acts, mask)
  params = _ref_params(layer)
  for s in range(B):
    ref_pose, ref_act = self_attention_routing_ref(
        poses[s], acts[s], params, n_heads=HEADS, mask=mask[s],
        qkv_activation=activation)
    assert_rel_close(out.poses[s], ref_pose, name=f"poses[{s}]")
    assert_rel_close(out.activations[s], ref_act, name=f"activations[{s}]")
  # The padded capsules of sample 1 change nothing: same as deleting them.
  keep = [0, 2, 3, 5]
  removed = _forward(layer, poses[:, keep], acts[:, keep], None)
  np.testing.assert_allclose(out.poses[1, keep], removed.poses[1], rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(out.activations[1, keep], removed.activations[1],
                             rtol=2e-6, atol=1e-7)
  assert out.activations[0, 2] == 0 and np.all(out.activations[1, [1, 4]] == 0)


def test_eval_mode_matches_reference_per_sample():
  layer = _layer()
  layer.eval()
  poses, acts = _inputs(1)
  acts[1, 2] = 0.0                               # an absent entity
  mask = np.ones((B, C), bool)
  mask[2, [0, 3]] = False
  poses[2, [0, 3]] = 1e3                         # padding holds garbage
  out = _forward(layer, poses, acts, mask)
  assert isinstance(out, Capsules)
  assert out.poses.shape == (B, C, D2) and out.activations.shape == (B, C)
  assert out.poses.dtype == jnp.float32
  params = _ref_params(layer)
  for s in range(B):
    ref_pose, ref_act = self_attention_routing_ref(
        poses[s], acts[s], params, n_heads=HEADS, mask=mask[s])
    assert_rel_close(out.poses[s], ref_pose, name=f"poses[{s}]")
    assert_rel_close(out.activations[s], ref_act, name=f"activations[{s}]")
  assert out.activations[1, 2] == 0 and np.all(out.activations[2, [0, 3]] == 0)


def test_padded_capsules_equal_removed_ones():
  layer = _layer()
  layer.eval()
  poses, acts = _inputs(2, c=C + 2)
  # Each sample pads two different slots, filled with garbage.
  pads = [(0, 1), (2, 6), (5, 3)]
  mask = np.ones((B, C + 2), bool)
  for s, idx in enumerate(pads):
    mask[s, list(idx)] = False
    poses[s, list(idx)] = np.random.default_rng(s).normal(size=(2, D1)) * 50
  keep = [[i for i in range(C + 2) if mask[s, i]] for s in range(B)]
  small_poses = np.stack([poses[s, k] for s, k in enumerate(keep)])
  small_acts = np.stack([acts[s, k] for s, k in enumerate(keep)])
  padded = _forward(layer, poses, acts, mask)
  removed = _forward(layer, small_poses, small_acts, np.ones((B, C), bool))
  for s, k in enumerate(keep):
    np.testing.assert_allclose(padded.poses[s, k], removed.poses[s], rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(padded.activations[s, k], removed.activations[s],
                               rtol=2e-6, atol=1e-7)
    assert np.all(np.asarray(padded.activations[s])[list(pads[s])] == 0)
  # An activation of exactly 0 removes the capsule too (no mask needed).
  zero_acts = acts.copy()
  zero_acts[~mask] = 0.0
  zeroed = _forward(layer, poses, zero_acts, np.ones((B, C + 2), bool))
  np.testing.assert_allclose(zeroed.activations, padded.activations, rtol=2e-6, atol=1e-7)


def test_dropout_train_and_eval_modes():
  layer = _layer()
  poses, acts = _inputs(3)
  poses[1], acts[1] = poses[0], acts[0]          # two identical samples
  mask = np.ones((B, C), bool)
  train1 = _forward(layer, poses, acts, mask)
  train2 = _forward(layer, poses, acts, mask)
  assert np.all(np.isfinite(train1.poses)) and np.all(np.isfinite(train2.poses))
  # A fresh mask per call and per sample.
  assert not np.allclose(train1.poses, train2.poses)
  assert not np.allclose(train1.poses[0], train1.poses[1])
  layer.eval()
  eval1 = _forward(layer, poses, acts, mask)
  eval2 = _forward(layer, poses, acts, mask)
  np.testing.assert_array_equal(eval1.poses, eval2.poses)
  np.testing.assert_allclose(eval1.poses[0], eval1.poses[1], rtol=1e-6, atol=1e-6)
  assert not np.allclose(train1.poses, eval1.poses)
  # No dropout needs no 'dropout' stream (as under to_linen).
  plain = nnx.eval_shape(lambda: SelfAttentionRoutingLayer(
      D1, D2, dropout_rate=0.0, rngs=nnx.Rngs(params=0)))
  assert plain.dropout.rngs is None


def test_jitted_gradient_is_finite_with_all_but_one_padded():
  layer = _layer()
  poses, acts = _inputs(4)
  mask = np.ones((B, C), bool)
  mask[0, 1:] = False                            # one capsule left
  mask[1, :] = False                             # nothing left
  rng = np.random.default_rng(5)
  g_pose = rng.normal(size=(B, C, D2)).astype(np.float32)
  g_act = rng.normal(size=(B, C)).astype(np.float32)

  @nnx.jit
  def loss_and_grad(layer, poses, acts):
    def loss(layer, poses, acts):
      out = layer(poses, acts, mask=mask)
      return jnp.sum(out.poses * g_pose) + jnp.sum(out.activations * g_act), out
    return nnx.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
        layer, poses, acts)

  (value, out), (g_layer, g_poses, g_acts) = loss_and_grad(layer, poses, acts)
  assert np.isfinite(value)
  for leaf in jax.tree.leaves((nnx.state(g_layer, nnx.Param), g_poses, g_acts)):
    assert np.all(np.isfinite(leaf))
  # Padded capsules get no gradient; the lone capsule has activation 1.
  assert np.all(np.asarray(g_poses)[~mask] == 0)
  assert np.any(np.asarray(g_layer.w_q[...]) != 0)
  np.testing.assert_allclose(out.activations[0], [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(out.activations[1], 0)


def test_bfloat16_compute_runs():
  layer = _layer(dtype=jnp.bfloat16)
  layer.eval()
  poses, acts = _inputs(6)
  out = _forward(layer, poses, acts, None)
  assert out.poses.dtype == jnp.bfloat16 and out.activations.dtype == jnp.bfloat16
  assert layer.w_q[...].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out.poses, np.float32)))


def test_activation_head_off_gives_uniform_activations():
  layer = _layer(activation_head=False)
  layer.eval()
  poses, acts = _inputs(7)
  out = _forward(layer, poses, acts, None)
  np.testing.assert_allclose(out.activations, np.full((B, C), 1 / C), rtol=1e-6)


def test_errors_name_the_argument():
  layer = _layer()
  poses, acts = _inputs(8)
  with pytest.raises(ValueError, match=r"poses must have shape \[b, C, d_in\]"):
    layer(poses[..., :2], acts)
  with pytest.raises(ValueError, match=r"activations must have shape \[b, C\]"):
    layer(poses, acts[:, :2])
  with pytest.raises(ValueError, match=r"mask must have shape \[b, C\]"):
    layer(poses, acts, mask=np.ones((B, C + 1), bool))
  with pytest.raises(ValueError, match="mask must be boolean"):
    layer(poses, acts, mask=np.ones((B, C), np.float32))
  with pytest.raises(ValueError, match="n_heads must divide d2"):
    SelfAttentionRoutingLayer(D1, D2, n_heads=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dropout_rate"):
    SelfAttentionRoutingLayer(D1, D2, dropout_rate=1.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="d1 must be a positive integer"):
    SelfAttentionRoutingLayer(0, D2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="qkv_layers must be 1 or 2, got 3"):
    SelfAttentionRoutingLayer(D1, D2, qkv_layers=3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="qkv_activation must be one of"):
    SelfAttentionRoutingLayer(D1, D2, qkv_layers=2, qkv_activation="tanh",
                              rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="need qkv_layers=2"):
    SelfAttentionRoutingLayer(D1, D2, qkv_layers=1, qkv_hidden=8, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="need qkv_layers=2"):
    SelfAttentionRoutingLayer(D1, D2, qkv_layers=1, qkv_activation="relu",
                              rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="qkv_hidden must be a positive integer"):
    SelfAttentionRoutingLayer(D1, D2, qkv_layers=2, qkv_hidden=0, rngs=nnx.Rngs(0))
