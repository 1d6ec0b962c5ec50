"""Tests of ``self_attention_routing`` (Duarte et al., 2021).

The float32 kernel is compared with the float64 NumPy reference in
``reference_self_attention.py`` (forward, and gradients by central finite
differences of the reference). Shapes are kept few and small: compile time
dominates.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from capsjax.routing.self_attention import (SelfAttentionParams, SelfAttentionRouting,
                                            self_attention_routing)
from tests.routing.reference_self_attention import self_attention_routing_ref
from tests.testing_utils import assert_rel_close, assert_tree_rel_close

C, D1, D2, HID, HEADS = 5, 3, 4, 6, 2
STATIC = ("n_heads", "dropout_rate", "qk_scale", "ln_eps", "chunk_size",
          "qkv_activation")
_fwd = jax.jit(self_attention_routing, static_argnames=STATIC)


def make_params(seed, d1=D1, d2=D2, hid=HID, with_o=False, dtype=np.float32,
                qkv_hidden=None):
  """Random parameters with fan-in scaled weights (well-conditioned draws).

  ``qkv_hidden``: ``None`` for one layer per ``h``; else two, with this width
  between them.
  """
  rs = np.random.RandomState(seed)
  w = lambda m, n: rs.randn(m, n) / math.sqrt(m)
  b = lambda n: 0.3 * rs.randn(n)
  d_first = d2 if qkv_hidden is None else qkv_hidden
  vals = dict(
      w_q=w(d1, d_first), b_q=b(d_first), w_k=w(d1, d_first), b_k=b(d_first),
      w_v=w(d1, d_first), b_v=b(d_first), ln1_scale=1 + 0.2 * rs.randn(d2),
      ln1_bias=b(d2), w_mlp1=w(d2, hid), b_mlp1=b(hid), w_mlp2=w(hid, d2),
      b_mlp2=b(d2), ln2_scale=1 + 0.2 * rs.randn(d2), ln2_bias=b(d2),
      w_p=w(d2, 1), b_p=b(1))
  if with_o:
    vals.update(w_o=w(d2, d2), b_o=b(d2))
  if qkv_hidden is not None:
    for n in "qkv":
      vals.update({f"w_{n}2": w(qkv_hidden, d2), f"b_{n}2": b(d2)})
  return SelfAttentionParams(**{k: v.astype(dtype) for k, v in vals.items()})


def make_inputs(seed, n_caps=C, d1=D1, dtype=np.float32):
  rs = np.random.RandomState(seed)
  poses = (1.5 * rs.randn(n_caps, d1)).astype(dtype)
  acts = rs.uniform(0.2, 1.0, n_caps).astype(dtype)
  return poses, acts


def ref(poses, acts, params, **kw):
  kw.setdefault("n_heads", HEADS)
  return self_attention_routing_ref(poses, acts, params, **kw)


# ----------------------------------------------------------------- forward


@pytest.mark.parametrize("with_o", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_forward_matches_reference(with_o, masked):
  params = make_params(0, with_o=with_o)
  poses, acts = make_inputs(1)
  mask = None
  if masked:  # one masked capsule and one with p_i = 0
    mask = np.array([True, False, True, True, True])
    acts[3] = 0.0
  out = _fwd(poses, acts, params, n_heads=HEADS, mask=mask)
  assert isinstance(out, SelfAttentionRouting)
  assert out.poses.shape == (C, D2) and out.activations.shape == (C,)
  assert out.poses.dtype == jnp.float32 and out.activations.dtype == jnp.float32
  assert_tree_rel_close(out, ref(poses, acts, params, mask=mask), name="fwd")
  np.testing.assert_allclose(np.sum(out.activations), 1.0, rtol=1e-6)
  if masked:
    assert out.activations[1] == 0 and out.activations[3] == 0


# Two linear layers per h (Sec. 3.1), with a hidden width (7) unlike d1 and
# d2 so that a swapped axis fails.
QKV_HID = 7


@pytest.mark.parametrize("activation", [None, "relu"])
def test_two_layer_h_matches_reference(activation):
  params = make_params(40, qkv_hidden=QKV_HID, with_o=True)
  poses, acts = make_inputs(41)
  mask = np.array([True, True, False, True, True])
  acts[4] = 0.0  # one masked capsule and one with p_i = 0
  if activation == "relu":
    # The ReLU must act: some first-layer pre-activations of present
    # capsules are negative, some positive.
    pre = (acts[:, None] * poses) @ params.w_q + params.b_q
    assert np.any(pre[:2] < 0) and np.any(pre[:2] > 0)
  out = _fwd(poses, acts, params, n_heads=HEADS, mask=mask,
             qkv_activation=activation)
  assert out.poses.shape == (C, D2)
  assert_tree_rel_close(out, ref(poses, acts, params, mask=mask,
                                 qkv_activation=activation), name="two-layer h")
  assert out.activations[2] == 0 and out.activations[4] == 0
  np.testing.assert_allclose(np.sum(out.activations), 1.0, rtol=1e-6)
  if activation == "relu":  # the ReLU changes the function
    linear = ref(poses, acts, params, mask=mask)
    assert not np.allclose(out.poses, linear[0], rtol=1e-3, atol=1e-3)


def test_two_linear_layers_equal_the_folded_affine_map():
  # Without a nonlinearity, h(u) = (u W + b) W2 + b2 is the one-layer h with
  # W W2 and b W2 + b2: the docstring's porting rule.
  two = make_params(42, qkv_hidden=QKV_HID)
  fold = {}
  for n in "qkv":
    w, b = getattr(two, f"w_{n}"), getattr(two, f"b_{n}")
    w2, b2 = getattr(two, f"w_{n}2"), getattr(two, f"b_{n}2")
    fold[f"w_{n}"] = (w.astype(np.float64) @ w2).astype(np.float32)
    fold[f"b_{n}"] = (b.astype(np.float64) @ w2 + b2).astype(np.float32)
  one = two._replace(**fold, **{f"{k}_{n}2": None for n in "qkv" for k in "wb"})
  poses, acts = make_inputs(43)
  a = _fwd(poses, acts, two, n_heads=HEADS)
  b = _fwd(poses, acts, one, n_heads=HEADS)
  for got, want in zip(a, b):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_qk_scale_and_single_head_match_reference():
  params = make_params(2)
  poses, acts = make_inputs(3)
  out = _fwd(poses, acts, params, n_heads=HEADS, qk_scale=1 / math.sqrt(D2))
  assert_tree_rel_close(out, ref(poses, acts, params, qk_scale=1 / math.sqrt(D2)))
  out = _fwd(poses, acts, params, n_heads=1)
  assert_tree_rel_close(out, ref(poses, acts, params, n_heads=1))


class VariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_match_reference(self):
    params = make_params(4, with_o=True)
    poses, acts = make_inputs(5)
    mask = np.array([True, True, False, True, True])
    fn = self.variant(functools.partial(self_attention_routing, n_heads=HEADS))
    out = fn(poses, acts, params, mask=mask)
    assert_tree_rel_close(out, ref(poses, acts, params, mask=mask), name="variant")


def test_vmap_equals_loop():
  params = make_params(6)
  rs = np.random.RandomState(7)
  poses = rs.randn(3, C, D1).astype(np.float32)
  acts = rs.uniform(0.1, 1.0, (3, C)).astype(np.float32)
  mask = rs.rand(3, C) > 0.3
  mask[:, 0] = True
  batched = jax.jit(jax.vmap(
      lambda x, p, prm, m: self_attention_routing(x, p, prm, n_heads=HEADS, mask=m),
      in_axes=(0, 0, None, 0)))(poses, acts, params, mask)
  for b in range(3):
    single = _fwd(poses[b], acts[b], params, n_heads=HEADS, mask=mask[b])
    for got, want in zip(batched, single):
      np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------- gradients


@functools.partial(jax.jit, static_argnames=("chunk_size", "qkv_activation"))
def _grads(poses, acts, params, mask, cot_poses, cot_acts, chunk_size=None,
           qkv_activation=None):
  """Outputs and d/d(poses, activations, params) of ``L = <out, cot>``.

  One jitted program shared by the gradient tests (compile time dominates).
  """
  def loss(x, p, prm):
    out = self_attention_routing(x, p, prm, n_heads=HEADS, mask=mask,
                                 chunk_size=chunk_size,
                                 qkv_activation=qkv_activation)
    return jnp.sum(out.poses * cot_poses) + jnp.sum(out.activations * cot_acts), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
      poses, acts, params)
  return out, grads


def _fd_grad(f, arrays, step=1e-6):
  """Central differences of scalar ``f(list_of_float64_arrays)``."""
  grads = []
  for k, a in enumerate(arrays):
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
      plus = [x.copy() for x in arrays]
      minus = [x.copy() for x in arrays]
      plus[k][idx] += step
      minus[k][idx] -= step
      g[idx] = (f(plus) - f(minus)) / (2 * step)
    grads.append(g)
  return grads


# h: one affine map, two linear layers ("linear") or two with a ReLU.
@pytest.mark.parametrize("with_o,h", [(False, "one"), (True, "one"),
                                      (False, "linear"), (True, "relu")])
def test_gradients_match_finite_differences(with_o, h):
  activation = "relu" if h == "relu" else None
  params = make_params(8, with_o=with_o,
                       qkv_hidden=None if h == "one" else QKV_HID)
  poses, acts = make_inputs(9)
  mask = np.array([True, True, True, False, True])
  rs = np.random.RandomState(10)
  cot_poses = rs.randn(C, D2)
  cot_acts = rs.randn(C)
  _, (g_poses, g_acts, g_params) = _grads(
      poses, acts, params, mask, cot_poses.astype(np.float32),
      cot_acts.astype(np.float32), qkv_activation=activation)

  names = [k for k in params._fields if getattr(params, k) is not None]
  # Biases that add the same amount to every logit of a softmax: b_p always;
  # the last bias of h_K (b_k, or b_k2 with two layers); with two linear
  # layers also b_k, whose image b_k W_K2 is such a constant too.
  cancelling = {"one": ("b_k", "b_p"), "linear": ("b_k", "b_k2", "b_p"),
                "relu": ("b_k2", "b_p")}[h]

  def ref_loss(arrays):
    p = dict(zip(names, arrays[2:]))
    out_p, out_a = ref(arrays[0], arrays[1], p, mask=mask,
                       qkv_activation=activation)
    return np.sum(out_p * cot_poses) + np.sum(out_a * cot_acts)

  arrays = [np.asarray(poses, np.float64), np.asarray(acts, np.float64)] + [
      np.asarray(getattr(params, k), np.float64) for k in names]
  fd = _fd_grad(ref_loss, arrays)
  assert_rel_close(g_poses, fd[0], name="d/poses")
  assert_rel_close(g_acts, fd[1], name="d/activations")
  scale = max(np.max(np.abs(g)) for g in fd)
  for name, want in zip(names, fd[2:]):
    got = np.asarray(getattr(g_params, name))
    if name in cancelling:
      # b_k adds q_i . b_k to every logit of query i and b_p the same logit to
      # every capsule: both cancel in their softmax, so the true gradient is 0
      # and a relative error is meaningless; check it vanishes to round-off.
      assert np.max(np.abs(got)) < 1e-6 * scale, name
      assert np.max(np.abs(want)) < 1e-8 * scale, name
    else:
      assert_rel_close(got, want, name=f"d/{name}")


@pytest.mark.parametrize("activation,qkv_hidden", [(None, None), ("relu", QKV_HID)])
def test_check_grads_float64(activation, qkv_hidden):
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: np.asarray(a, np.float64),
                          make_params(11, with_o=True, qkv_hidden=qkv_hidden))
    poses, acts = make_inputs(12, dtype=np.float64)
    mask = np.array([True, False, True, True, True])
    f = jax.jit(lambda x, p, prm: tuple(self_attention_routing(
        x, p, prm, n_heads=HEADS, mask=mask, qkv_activation=activation)))
    check_grads(f, (poses, acts, params), order=1, modes=("fwd", "rev"))


# --------------------------------------------------------------- masking


@pytest.mark.parametrize("activation,qkv_hidden", [(None, None), ("relu", QKV_HID)])
def test_masked_equals_removed_and_zero_activation_equals_masked(activation,
                                                                 qkv_hidden):
  # With two layers h(0) = a(b) W2 + b2 is not 0 either: an absent capsule
  # would still give a key and a value unless it is excluded.
  params = make_params(13, qkv_hidden=qkv_hidden)
  kw = {"n_heads": HEADS, "qkv_activation": activation}
  poses, acts = make_inputs(14, n_caps=6)
  mask = np.array([True, False, True, True, False, True])
  keep = np.flatnonzero(mask)
  removed = _fwd(poses[keep], acts[keep], params, **kw)
  masked = _fwd(poses, acts, params, mask=mask, **kw)
  # p_i = 0 (no mask) must behave exactly like a masked capsule.
  acts_zero = np.where(mask, acts, 0).astype(np.float32)
  zeroed = _fwd(poses, acts_zero, params, mask=np.ones(6, bool), **kw)
  for out in (masked, zeroed):
    np.testing.assert_allclose(out.poses[keep], removed.poses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.activations[keep], removed.activations,
                               rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(out.activations)[~mask] == 0)
    assert np.all(np.isfinite(out.poses))
    np.testing.assert_allclose(np.sum(out.activations), 1.0, rtol=1e-6)


def test_masked_capsule_changes_nothing():
  params = make_params(15)
  poses, acts = make_inputs(16)
  mask = np.array([True, True, False, True, True])
  base = _fwd(poses, acts, params, n_heads=HEADS, mask=mask)
  poses2, acts2 = poses.copy(), acts.copy()
  poses2[2] = 1e4
  acts2[2] = 1.0
  moved = _fwd(poses2, acts2, params, n_heads=HEADS, mask=mask)
  np.testing.assert_array_equal(np.delete(moved.poses, 2, 0), np.delete(base.poses, 2, 0))
  np.testing.assert_array_equal(moved.activations, base.activations)

  # Gradients of the present capsules' outputs w.r.t. the masked capsule's
  # inputs are exactly zero.
  rs = np.random.RandomState(29)
  cot_poses = (rs.randn(C, D2) * mask[:, None]).astype(np.float32)
  _, (g_x, g_p, _) = _grads(poses, acts, params, mask, cot_poses,
                            rs.randn(C).astype(np.float32))
  assert np.all(np.asarray(g_x)[2] == 0) and g_p[2] == 0
  assert np.all(np.isfinite(g_x)) and np.all(np.asarray(g_x)[mask] != 0)


def test_one_capsule_and_all_but_one_masked():
  params = make_params(17)
  poses, acts = make_inputs(18)
  single = _fwd(poses[2:3], acts[2:3], params, n_heads=HEADS)
  assert single.activations[0] == 1.0
  assert_tree_rel_close(single, ref(poses[2:3], acts[2:3], params), name="C=1")
  mask = np.zeros(C, bool)
  mask[2] = True
  out = _fwd(poses, acts, params, n_heads=HEADS, mask=mask)
  np.testing.assert_allclose(out.poses[2], single.poses[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out.activations, mask.astype(np.float32))
  assert np.all(np.isfinite(out.poses))


def test_everything_masked_is_finite():
  params = make_params(19)
  poses, acts = make_inputs(20)
  mask = np.zeros(C, bool)
  ones = np.ones((C, D2), np.float32), np.ones(C, np.float32)
  out, grads = _grads(poses, acts, params, mask, *ones)
  assert np.all(np.asarray(out.activations) == 0)
  assert_rel_close(out.poses, ref(poses, acts, params, mask=mask)[0], name="all masked")
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))


def test_large_inputs_are_finite():
  params = make_params(21)
  params = params._replace(w_q=params.w_q * 100, w_k=params.w_k * 100,
                           w_p=params.w_p * 1e3)
  poses, acts = make_inputs(22)
  poses = poses * 1e3  # attention logits ~1e10, activation logits ~1e3
  mask = np.array([True, True, True, True, False])
  out, grads = _grads(poses, acts, params, mask, np.ones((C, D2), np.float32),
                      np.arange(C, dtype=np.float32))
  assert np.all(np.isfinite(out.poses)) and np.all(np.isfinite(out.activations))
  np.testing.assert_allclose(np.sum(out.activations), 1.0, rtol=1e-6)
  for g in jax.tree.leaves(grads):
    assert np.all(np.isfinite(g))


# ------------------------------------------------------ query blocks (chunks)


def test_query_blocks_match_reference_and_one_block():
  # C = 5 in blocks of 2: three blocks, the last padded; one masked capsule
  # and one with p_i = 0, so padding, masking and blocks meet.
  params = make_params(30, with_o=True)
  poses, acts = make_inputs(31)
  mask = np.array([True, True, False, True, True])
  acts[4] = 0.0
  chunked = _fwd(poses, acts, params, n_heads=HEADS, mask=mask, chunk_size=2)
  whole = _fwd(poses, acts, params, n_heads=HEADS, mask=mask)
  assert_tree_rel_close(chunked, ref(poses, acts, params, mask=mask), name="chunked")
  for got, want in zip(chunked, whole):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert chunked.activations[2] == 0 and chunked.activations[4] == 0


def test_query_block_gradients_match_one_block():
  # The one-block gradients are checked against finite differences of the
  # float64 reference above; the blocked (rematerialised) ones must agree.
  params = make_params(8)
  poses, acts = make_inputs(9)
  mask = np.array([True, True, True, False, True])
  rs = np.random.RandomState(10)
  # No cotangent on the masked capsule's own pose: then nothing reaches it.
  cots = ((rs.randn(C, D2) * mask[:, None]).astype(np.float32),
          rs.randn(C).astype(np.float32))
  out_w, g_w = _grads(poses, acts, params, mask, *cots)
  out_c, g_c = _grads(poses, acts, params, mask, *cots, chunk_size=2)
  assert_tree_rel_close(out_c, out_w, tol=1e-6, name="fwd")
  for got, want in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_w)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(g_c[0])[3] == 0)  # the masked capsule


def _step_peak_bytes(n_caps, chunk_size):
  """Peak memory (XLA memory analysis) of the compiled fwd+bwd step."""
  params = make_params(32)
  poses, acts = make_inputs(33, n_caps=n_caps)
  step = jax.jit(jax.grad(lambda x, p, prm: jnp.sum(self_attention_routing(
      x, p, prm, n_heads=HEADS, chunk_size=chunk_size).poses), argnums=(0, 1, 2)))
  mem = step.lower(poses, acts, params).compile().memory_analysis()
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes
          + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def test_query_blocks_make_memory_linear_in_capsules():
  # Tiny d2 and d_hidden, so that C x C scores would dominate: 4x the
  # capsules must cost ~4x the memory, and far less than the one-block step.
  blocked_64, blocked_256 = _step_peak_bytes(64, 16), _step_peak_bytes(256, 16)
  whole_256 = _step_peak_bytes(256, 256)
  assert blocked_256 < 4.5 * blocked_64, (blocked_64, blocked_256)
  assert whole_256 > 3 * blocked_256, (whole_256, blocked_256)


def test_bad_chunk_size_raises():
  with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
    _call(chunk_size=0)


# ------------------------------------------------------------ dropout/dtype


def test_dropout():
  params = make_params(23)
  poses, acts = make_inputs(24)
  rng = jax.random.key(0)
  base = _fwd(poses, acts, params, n_heads=HEADS)
  same = _fwd(poses, acts, params, n_heads=HEADS, dropout_rate=0.0, dropout_rng=rng)
  np.testing.assert_array_equal(base.poses, same.poses)
  out = _fwd(poses, acts, params, n_heads=HEADS, dropout_rate=0.5, dropout_rng=rng)
  keep = np.asarray(jax.random.bernoulli(rng, 0.5, (C, HID)))
  assert 0 < keep.sum() < keep.size
  assert_tree_rel_close(out, ref(poses, acts, params, keep=keep, dropout_rate=0.5),
                        name="dropout")
  assert not np.allclose(out.poses, base.poses)
  with pytest.raises(ValueError, match="dropout_rng"):
    self_attention_routing(poses, acts, params, n_heads=HEADS, dropout_rate=0.1)
  for bad in (-0.1, 1.0):
    with pytest.raises(ValueError, match="dropout_rate"):
      self_attention_routing(poses, acts, params, n_heads=HEADS, dropout_rate=bad,
                             dropout_rng=rng)


def test_dtypes():
  params = make_params(25)
  poses, acts = make_inputs(26)
  with jax.enable_x64(True):
    out = _fwd(poses, acts, params, n_heads=HEADS)
    assert out.poses.dtype == jnp.float32 and out.activations.dtype == jnp.float32
  bf = jax.tree.map(lambda a: jnp.asarray(a, jnp.bfloat16), (poses, acts, params))
  out = _fwd(*bf, n_heads=HEADS)  # jit: bfloat16 op-by-op is slow to dispatch
  assert out.poses.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out.poses, np.float32)))


@pytest.mark.parametrize("activation", [None, "relu"])
def test_two_layer_h_mixed_precision_close_to_float32(activation):
  # compute_dtype=bfloat16: both layers of h take bfloat16 operands; the
  # result stays within bfloat16 rounding of the float32 one (8 bits of
  # mantissa: ~4e-3 relative per rounding, a few roundings deep).
  params = make_params(44, qkv_hidden=QKV_HID)
  poses, acts = make_inputs(45)
  mask = np.array([True, True, True, False, True])
  kw = {"n_heads": HEADS, "mask": mask, "qkv_activation": activation}
  full = _fwd(poses, acts, params, **kw)
  mixed = jax.jit(functools.partial(self_attention_routing, compute_dtype=jnp.bfloat16,
                                    **kw))(poses, acts, params)
  assert mixed.poses.dtype == jnp.float32
  err = np.max(np.abs(np.asarray(mixed.poses) - np.asarray(full.poses)))
  assert 0 < err < 0.1, err  # the bfloat16 path is taken, and close
  np.testing.assert_allclose(mixed.activations, full.activations, rtol=0.05, atol=5e-3)
  assert mixed.activations[3] == 0


def test_duarte_shape_forward():
  # Sec. 4.1: C = 128, d1 = 32, d2 = 256; App. B: hidden 1024. The paper does
  # not give the number of heads; 8 is the Transformer default.
  params = make_params(27, d1=32, d2=256, hid=1024)
  poses, acts = make_inputs(28, n_caps=128, d1=32)
  out = _fwd(poses, acts, params, n_heads=8)
  assert out.poses.shape == (128, 256)
  assert np.all(np.isfinite(out.poses)) and np.all(np.isfinite(out.activations))
  np.testing.assert_allclose(np.sum(np.asarray(out.activations, np.float64)), 1.0, rtol=1e-5)


# ------------------------------------------------------------ validation


def _call(poses=None, acts=None, params=None, **kw):
  p, a = make_inputs(0)
  kw.setdefault("n_heads", HEADS)
  return self_attention_routing(p if poses is None else poses,
                                a if acts is None else acts,
                                make_params(0) if params is None else params, **kw)


def test_bad_input_shapes_raise():
  with pytest.raises(ValueError, match=r"poses must have 2 axes \[C, d1\]"):
    _call(poses=np.zeros((C,), np.float32))
  with pytest.raises(ValueError, match="poses must hold at least one capsule"):
    _call(poses=np.zeros((0, D1), np.float32), acts=np.zeros((0,), np.float32))
  with pytest.raises(ValueError, match=r"activations must have shape \[C\] = \[5\]"):
    _call(acts=np.zeros((C + 1,), np.float32))
  with pytest.raises(ValueError, match=r"mask must have shape \[C\] = \[5\]"):
    _call(mask=np.ones((C, 1), bool))
  with pytest.raises(ValueError, match="mask must be boolean"):
    _call(mask=np.ones((C,), np.float32))
  with pytest.raises(ValueError, match=r"params.w_q must have shape \[d1, d2\] = \[3, 4\]"):
    _call(params=make_params(0, d1=D1 + 1))


@pytest.mark.parametrize("name", SelfAttentionParams._fields)
def test_bad_param_shape_raises(name):
  params = make_params(0, with_o=True, qkv_hidden=QKV_HID)
  bad = np.zeros(np.shape(getattr(params, name)) + (2,), np.float32)
  with pytest.raises(ValueError, match=rf"params\.{name} must have"):
    _call(params=params._replace(**{name: bad}), qkv_activation="relu")


def test_bad_two_layer_params_raise():
  two = make_params(0, qkv_hidden=QKV_HID)
  with pytest.raises(ValueError, match=r"second layer of h_Q, h_K, h_V needs all"
                     r".* got w_q2, b_q2, w_k2, b_k2, w_v2 without b_v2"):
    _call(params=two._replace(b_v2=None))
  # The second layer's input must be the first layer's output width.
  with pytest.raises(ValueError, match=r"params.w_k2 must have shape \[d_qkv, d2\] = \[7, 4\]"):
    _call(params=two._replace(w_k2=np.zeros((QKV_HID + 1, D2), np.float32)))
  with pytest.raises(ValueError, match=r"params.b_q must have shape \[d_qkv\] = \[7\]"):
    _call(params=two._replace(b_q=np.zeros((D2,), np.float32)))
  with pytest.raises(ValueError, match="qkv_activation must be one of"):
    _call(params=two, qkv_activation="gelu")
  with pytest.raises(ValueError, match="qkv_activation='relu' acts between the two layers"):
    _call(qkv_activation="relu")  # one-layer params


def test_bad_options_raise():
  with pytest.raises(ValueError, match="n_heads must divide d2 = 4"):
    _call(n_heads=3)
  with pytest.raises(ValueError, match="n_heads must be a positive integer"):
    _call(n_heads=0)
  with pytest.raises(ValueError, match="params.w_o and params.b_o must be given together"):
    _call(params=make_params(0, with_o=True)._replace(b_o=None))
  with pytest.raises(ValueError, match="ln_eps must be positive"):
    _call(ln_eps=0.0)
