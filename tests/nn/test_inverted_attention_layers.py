"""Tests of capsjax.nn.inverted_attention and capsjax.nn.primary_capsules.

The layers are checked per sample against the float64 NumPy reference of the
routing step (tests/routing/reference_inverted_attention.py, written from the
paper and the official ``CapsuleFC`` / ``CapsuleCONV``); the layers' own
pre-LayerNorm path (dropout, ablations A and C) is checked against the same
reference, and ablation C's activations against a float64 NumPy port of the
formula in the layer's docstring.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax.nn.inverted_attention import (InvertedAttentionConv,
                                           InvertedAttentionFC, RoutedCapsules)
from capsjax import routing
from capsjax.nn.primary_capsules import PrimaryCapsules
from tests.routing import reference_inverted_attention as ref
from tests.testing_utils import assert_rel_close

B = 2


def _rng(seed):
  return np.random.default_rng(seed)


def _randomise_ln(layer, seed):
  """Non-trivial LayerNorm scale/bias so that their use is tested."""
  rng = _rng(seed)
  layer.ln_scale[...] = jnp.asarray(1 + 0.3 * rng.standard_normal(layer.d_out),
                                    jnp.float32)
  layer.ln_bias[...] = jnp.asarray(0.3 * rng.standard_normal(layer.d_out),
                                   jnp.float32)
  return layer


def _fc(matrix_pose, **kw):
  d_inp, d_out = (9, 9) if matrix_pose else (3, 5)
  return InvertedAttentionFC(7, d_inp, 4, d_out, matrix_pose=matrix_pose,
                             rngs=nnx.Rngs(0, dropout=1), **kw)


def _conv(matrix_pose, **kw):
  d_inp, d_out = (4, 4) if matrix_pose else (3, 2)
  return InvertedAttentionConv(3, d_inp, 2, d_out, 3, 2,
                               matrix_pose=matrix_pose,
                               rngs=nnx.Rngs(0, dropout=1), **kw)


def _x(layer, seed, grid=5):
  rng = _rng(seed)
  if isinstance(layer, InvertedAttentionConv):
    return rng.standard_normal((B, grid, grid, layer.n_inp, layer.d_inp)
                               ).astype(np.float32)
  return rng.standard_normal((B, layer.n_inp, layer.d_inp)).astype(np.float32)


def _reference(layer, x, x_out, ln=True):
  """Per-sample float64 reference step with the layer's parameters."""
  W = np.asarray(layer.W[...])
  scale = np.asarray(layer.ln_scale[...]) if ln else None
  bias = np.asarray(layer.ln_bias[...]) if ln else None
  out = []
  for k in range(x.shape[0]):
    xo = None if x_out is None else np.asarray(x_out[k], np.float64)
    if isinstance(layer, InvertedAttentionConv):
      out.append(ref.conv(x[k], W, xo, stride=layer.stride,
                          matrix_pose=layer.matrix_pose, ln_scale=scale,
                          ln_bias=bias))
    else:
      out.append(ref.fc(x[k], W, xo, matrix_pose=layer.matrix_pose,
                        ln_scale=scale, ln_bias=bias))
  return np.stack(out)


@nnx.jit
def _step(layer, x, x_out):
  return layer(x, x_out)


@nnx.jit
def _step_first(layer, x):
  return layer(x)


@nnx.jit
def _call(layer, x, x_out=None, a_inp=None, mask=None):
  return layer(x, x_out, a_inp=a_inp, **({} if mask is None else {"mask": mask}))


# ----------------------------------------------------------------------------
# Initialisation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("matrix_pose", [True, False])
def test_init_follows_official_code(matrix_pose):
  # Official CapsuleFC/CapsuleCONV: w ~ N(0,1) * sqrt(n_out / (s n_inp k^2)),
  # s = sqrt(d_inp) (matrix) or d_inp (vector); LayerNorm 1 and 0.
  d = 16 if matrix_pose else 8
  fc = InvertedAttentionFC(300, d, 10, d, matrix_pose=matrix_pose,
                           rngs=nnx.Rngs(3))
  conv = InvertedAttentionConv(32, d, 8, d, 3, 2, matrix_pose=matrix_pose,
                               rngs=nnx.Rngs(4))
  s = 4 if matrix_pose else 8
  for layer, n_inp, n_out, k in ((fc, 300, 10, 1), (conv, 32, 8, 3)):
    W = np.asarray(layer.W[...])
    lead = (k, k) if k > 1 else ()
    want = (*lead, n_inp, n_out, 4, 4) if matrix_pose else (*lead, n_inp, n_out, d, d)
    assert W.shape == want and W.dtype == np.float32
    const = math.sqrt(n_out / (s * n_inp * k * k))
    assert abs(W.std() / const - 1) < 0.03
    assert abs(W.mean() / const) < 0.03
    np.testing.assert_array_equal(np.asarray(layer.ln_scale[...]), np.ones(d))
    np.testing.assert_array_equal(np.asarray(layer.ln_bias[...]), np.zeros(d))
    assert layer.beta_a is None and layer.beta_u is None


# ----------------------------------------------------------------------------
# The routing step, batched, against the float64 reference.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fc", "conv"])
@pytest.mark.parametrize("matrix_pose", [True, False])
def test_step_matches_reference(kind, matrix_pose):
  layer = _randomise_ln((_fc if kind == "fc" else _conv)(matrix_pose), 1)
  x = _x(layer, 2)
  # The first iteration, then one fed the layer's own poses (as the authors'
  # code does); one compiled program for both.
  first, second = nnx.jit(lambda m, x: (m(x), m(x, m(x))))(layer, x)
  assert first.dtype == second.dtype == jnp.float32
  assert_rel_close(first, _reference(layer, x, None), name="first")
  assert_rel_close(second, _reference(layer, x, np.asarray(first)),
                   name="second")


@pytest.mark.parametrize("kind", ["fc", "conv"])
@pytest.mark.parametrize("matrix_pose", [True, False])
def test_no_layer_norm_path_matches_reference(kind, matrix_pose):
  # Ablation A runs the layer's own routing step (not the kernel): its pose
  # is the reference's pre-LayerNorm pose.
  layer = (_fc if kind == "fc" else _conv)(matrix_pose, layer_norm=False)
  assert layer.ln_scale is None and layer.ln_bias is None
  x = _x(layer, 5)
  first = _step_first(layer, x)
  # Later iterations see normalised poses: feed LayerNorm'd random ones.
  x_out = ref.layer_norm(_rng(6).standard_normal(first.shape)).astype(np.float32)
  for xo in (None, x_out):
    ours = first if xo is None else _step(layer, x, xo)
    want = _reference(layer, x, xo, ln=False)
    # The reference's pre-norm pose: undo nothing, recompute without LN.
    W = np.asarray(layer.W[...])
    pre = []
    for k in range(B):
      xk = np.asarray(x[k], np.float64)
      o = None if xo is None else np.asarray(xo[k], np.float64)
      if kind == "fc":
        votes = ref.fc_votes(xk, W.astype(np.float64), matrix_pose)
        pre.append(_route_no_ln(votes, o))
      else:
        pre.append(_conv_no_ln(xk, W.astype(np.float64), o, layer.stride,
                               matrix_pose))
    pre = np.stack(pre)
    assert_rel_close(ours, pre, name=f"x_out={xo is not None}")
    # And LayerNorm of it is the kernel's output.
    assert_rel_close(ref.layer_norm(pre), want, name="normalised")


def _route_no_ln(votes, x_out):
  n_i, n_out, d_out = votes.shape
  if x_out is None:
    r = np.full((n_i, n_out), 1.0 / n_out)
  else:
    a = np.einsum("ijh,jh->ij", votes, x_out) / math.sqrt(d_out)
    r = np.exp(a - a.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
  return np.einsum("ij,ijh->jh", r, votes)


def _conv_no_ln(x, W, x_out, stride, matrix_pose):
  k = W.shape[0]
  h_out = (x.shape[0] - k) // stride + 1
  out = []
  for oh in range(h_out):
    row = []
    for ow in range(h_out):
      votes = np.concatenate([
          ref.fc_votes(x[oh * stride + dr, ow * stride + dc], W[dr, dc],
                       matrix_pose) for dr in range(k) for dc in range(k)])
      row.append(_route_no_ln(votes, None if x_out is None else x_out[oh, ow]))
    out.append(row)
  return np.asarray(out)


# ----------------------------------------------------------------------------
# Dropout, masks, activations.
# ----------------------------------------------------------------------------


def test_dropout_before_layer_norm_and_only_in_training():
  layer = _fc(False, dropout_rate=0.5)
  x = _x(layer, 7)
  train = np.asarray(_step_first(layer, x))
  train2 = np.asarray(_step_first(layer, x))
  assert np.all(np.isfinite(train))
  assert not np.allclose(train, train2)  # a fresh mask per call
  # LayerNorm comes after dropout: the output is still normalised.
  np.testing.assert_allclose(train.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(train.var(-1), 1, atol=1e-3)
  layer.eval()
  assert_rel_close(_step_first(layer, x), _reference(layer, x, None),
                   name="eval")
  assert not np.allclose(train, _reference(layer, x, None), atol=1e-3)


def test_mask_ignores_padded_inputs():
  layer = _randomise_ln(_fc(True), 8)
  rng = _rng(9)
  n_real = 4
  x = _x(layer, 10)
  mask = np.zeros((B, layer.n_inp), bool)
  mask[:, :n_real] = True
  # A padded capsule changes nothing: same as a layer with only the real ones.
  small = InvertedAttentionFC(n_real, 9, 4, 9, matrix_pose=True,
                              rngs=nnx.Rngs(0))
  small.W[...] = layer.W[...][:n_real]
  small.ln_scale[...] = layer.ln_scale[...]
  small.ln_bias[...] = layer.ln_bias[...]
  x_out = rng.standard_normal((B, 4, 9)).astype(np.float32)
  for xo in (None, x_out):
    ours = _call(layer, x, xo, mask=mask)
    want = _reference(small, x[:, :n_real], xo)
    assert_rel_close(ours, want, name=f"x_out={xo is not None}")


def _reference_activations(votes, x_out, a, beta_a, beta_u):
  """Ablation C (the layer's docstring), float64, one routing problem."""
  n_i, n_out, d_out = votes.shape
  if x_out is None:
    r = np.full((n_i, n_out), 1.0 / n_out)
  else:
    logits = np.einsum("ijh,jh->ij", votes, x_out) / math.sqrt(d_out)
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
  r = r * a[:, None]
  pose = np.einsum("ij,ijh->jh", r, votes)
  mass = r.sum(0)
  mean = pose / (mass[:, None] + 1e-6)
  var = np.einsum("ij,ijh->jh", r, (votes - mean) ** 2) / (mass[:, None] + 1e-6)
  share = mass / (a.sum() + 1e-6)
  cost = (beta_u[:, None] + 0.5 * np.log(var + 1e-6)).sum(1) * share
  return ref.layer_norm(pose), 1 / (1 + np.exp(-(beta_a - cost)))


@pytest.mark.parametrize("kind", ["fc", "conv"])
def test_activations_match_reference(kind):
  layer = (_fc if kind == "fc" else _conv)(True, activations=True)
  rng = _rng(11)
  layer.beta_a[...] = jnp.asarray(rng.standard_normal(layer.n_out), jnp.float32)
  layer.beta_u[...] = jnp.asarray(0.3 * rng.standard_normal(layer.n_out),
                                  jnp.float32)
  x = _x(layer, 12)
  a = rng.uniform(0.05, 1, x.shape[:-1]).astype(np.float32)
  x_out = np.asarray(_step_first(_fc(True) if kind == "fc" else _conv(True), x))
  out = _call(layer, x, x_out, a_inp=a)
  assert isinstance(out, RoutedCapsules)
  W = np.asarray(layer.W[...], np.float64)
  ba, bu = (np.asarray(p[...], np.float64) for p in (layer.beta_a, layer.beta_u))
  poses, acts = [], []
  for k in range(B):
    if kind == "fc":
      p, ac = _reference_activations(ref.fc_votes(x[k].astype(np.float64), W,
                                                  True), x_out[k], a[k], ba, bu)
    else:
      g = (x.shape[1] - 3) // 2 + 1
      p = np.empty((g, g, layer.n_out, layer.d_out))
      ac = np.empty((g, g, layer.n_out))
      for oh in range(g):
        for ow in range(g):
          votes, av = [], []
          for dr in range(3):
            for dc in range(3):
              r, c = 2 * oh + dr, 2 * ow + dc
              votes.append(ref.fc_votes(x[k, r, c].astype(np.float64),
                                        W[dr, dc], True))
              av.append(a[k, r, c])
          p[oh, ow], ac[oh, ow] = _reference_activations(
              np.concatenate(votes), x_out[k][oh, ow], np.concatenate(av),
              ba, bu)
    poses.append(p)
    acts.append(ac)
  assert_rel_close(out.poses, np.stack(poses), name="poses")
  assert_rel_close(out.activations, np.stack(acts), name="activations")
  assert np.all((np.asarray(out.activations) > 0) & (np.asarray(out.activations) < 1))


def test_inactive_capsule_changes_nothing():
  # With activations, an input capsule of activation 0 is ignored entirely.
  layer = _fc(False, activations=True)
  x = _x(layer, 13)
  a = _rng(14).uniform(0.1, 1, (B, layer.n_inp)).astype(np.float32)
  a[:, -1] = 0
  junk = x.copy()
  junk[:, -1] = 100.0
  one, two = _call(layer, x, a_inp=a), _call(layer, junk, a_inp=a)
  for f in RoutedCapsules._fields:
    np.testing.assert_allclose(getattr(one, f), getattr(two, f), rtol=1e-5,
                               atol=1e-6)


# ----------------------------------------------------------------------------
# dtypes, gradients, primary capsules, errors.
# ----------------------------------------------------------------------------


def test_bfloat16_compute_and_gradient():
  layer = _conv(True, dtype=jnp.bfloat16)
  x = _x(layer, 15)
  out = _step_first(layer, x)
  assert out.dtype == jnp.bfloat16 and layer.W[...].dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  f32 = _conv(True)
  grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, m(x)) ** 3)))(f32)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.any(np.asarray(grads.W[...]) != 0)


def test_primary_capsules_conv_then_layer_norm():
  rng = _rng(16)
  layer = PrimaryCapsules(5, 3, 4, kernel_size=3, stride=2, rngs=nnx.Rngs(0))
  assert layer.conv.bias is None  # bias-free, as the official pc_layer
  assert layer.conv.kernel[...].shape == (3, 3, 5, 12)
  layer.norm.scale[...] = jnp.asarray(rng.standard_normal(4), jnp.float32)
  layer.norm.bias[...] = jnp.asarray(rng.standard_normal(4), jnp.float32)
  x = rng.standard_normal((B, 7, 7, 5)).astype(np.float32)
  out = nnx.jit(lambda m, x: m(x))(layer, x)
  assert out.shape == (B, 3, 3, 3, 4)
  # Reference: a VALID stride-2 conv in NumPy, channel c = type * 4 + k.
  K = np.asarray(layer.conv.kernel[...], np.float64)
  conv = np.zeros((B, 3, 3, 12))
  for i in range(3):
    for j in range(3):
      patch = x[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :].astype(np.float64)
      conv[:, i, j] = np.einsum("bklc,klco->bo", patch, K)
  want = ref.layer_norm(conv.reshape(B, 3, 3, 3, 4),
                        np.asarray(layer.norm.scale[...]),
                        np.asarray(layer.norm.bias[...]))
  assert_rel_close(out, want)
  # PyTorch's default init: U(+-1/sqrt(fan_in)), fan_in = 3*3*5.
  assert np.abs(K).max() <= 1 / math.sqrt(45)


def test_bad_arguments_raise():
  fc, conv = _fc(True), _conv(True)
  with pytest.raises(ValueError, match=r"x_inp must have shape \[b, n_inp, d_inp\]"):
    fc(np.zeros((B, 6, 9), np.float32))
  with pytest.raises(ValueError, match=r"x_out must have shape \[b, n_out, d_out\]"):
    fc(np.zeros((B, 7, 9), np.float32), np.zeros((B, 5, 9), np.float32))
  with pytest.raises(ValueError, match=r"mask must have shape \[b, n_inp\]"):
    fc(np.zeros((B, 7, 9), np.float32), mask=np.ones((B, 6), bool))
  with pytest.raises(ValueError, match="mask must be boolean"):
    fc(np.zeros((B, 7, 9), np.float32), mask=np.ones((B, 7), np.float32))
  with pytest.raises(ValueError, match="a_inp was given"):
    fc(np.zeros((B, 7, 9), np.float32), a_inp=np.ones((B, 7), np.float32))
  with pytest.raises(ValueError, match="a_inp is required"):
    _fc(True, activations=True)(np.zeros((B, 7, 9), np.float32))
  with pytest.raises(ValueError, match=r"x_inp must have shape \[b, H, W, n_inp, d_inp\]"):
    conv(np.zeros((B, 5, 5, 3, 9), np.float32))
  with pytest.raises(ValueError, match="at least the kernel size"):
    conv(np.zeros((B, 2, 5, 3, 4), np.float32))
  with pytest.raises(ValueError, match=r"x_out must have shape \[b, H', W', n_out, d_out\]"):
    conv(np.zeros((B, 5, 5, 3, 4), np.float32), np.zeros((B, 3, 3, 2, 4), np.float32))
  with pytest.raises(ValueError, match="matrix_pose=True needs d_inp = d_out = s\\*s"):
    InvertedAttentionFC(3, 8, 2, 8, matrix_pose=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="dropout_rate"):
    InvertedAttentionFC(3, 4, 2, 4, dropout_rate=1.0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="stride must be a positive integer"):
    InvertedAttentionConv(3, 4, 2, 4, 3, 0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="n_out must be a positive integer"):
    InvertedAttentionFC(3, 4, 0, 4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("conv", [False, True])
def test_compute_dtype_reaches_the_kernel(conv):
  """bf16 routing in the layer equals the kernel's own bf16 routing, and
  differs from float32 routing by bf16 rounding only."""
  rng = np.random.default_rng(0)
  if conv:
    layer = InvertedAttentionConv(2, 4, 3, 4, 3, 2, compute_dtype=jnp.bfloat16,
                                     rngs=nnx.Rngs(0))
    x = rng.standard_normal((2, 5, 5, 2, 4)).astype(np.float32)
    kernel = lambda xi: routing.inverted_attention_conv(
        xi, layer.W[...], None, stride=2, matrix_pose=True,
        ln_scale=layer.ln_scale[...],
        ln_bias=layer.ln_bias[...], compute_dtype=jnp.bfloat16)
  else:
    layer = InvertedAttentionFC(6, 4, 3, 4, compute_dtype=jnp.bfloat16,
                                   rngs=nnx.Rngs(0))
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    kernel = lambda xi: routing.inverted_attention_fc(
        xi, layer.W[...], None, matrix_pose=True, ln_scale=layer.ln_scale[...],
        ln_bias=layer.ln_bias[...], compute_dtype=jnp.bfloat16)
  out = layer(x)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.vmap(kernel)(x)))
  layer.compute_dtype = None
  exact = layer(x)
  err = float(jnp.max(jnp.abs(out - exact)) / jnp.max(jnp.abs(exact)))
  assert 0 < err < 8 * 2.0**-9, err


def test_compute_dtype_with_activations_is_refused():
  with pytest.raises(ValueError, match="compute_dtype"):
    InvertedAttentionFC(6, 4, 3, 4, activations=True,
                           compute_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
