"""Tests of capsjax.nn.fusion (the Everything-At-Once building blocks).

The float64 NumPy references below (``geu_ref``, ``layer_norm_ref``,
``block_ref``, ``transformer_ref``, ``masked_mean_ref``) are written from the
official PyTorch modules (``GatedEmbeddingUnit``, ``ContextGating``,
``FusionBlock``, timm's ``Attention`` with the ``masked_fill(-inf)`` of
``FusionAttention``, ``Mlp`` with exact GELU, ``get_average``) with plain
loops over heads and samples; tests/models/test_swetha2023.py reuses them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from capsjax.nn.fusion import (FusionBlock, FusionTransformer,
                               GatedEmbeddingUnit, masked_mean)
from tests.testing_utils import assert_rel_close

D, HEADS = 8, 2


# ----------------------------------------------------------------------------
# Float64 NumPy references.
# ----------------------------------------------------------------------------


def _np(p):
  return np.asarray(p[...], np.float64)


def linear_ref(lin, x):
  """``nn.Linear`` with the Flax layout (kernel ``[in, out]``)."""
  return x @ _np(lin.kernel) + _np(lin.bias)


def geu_ref(unit, x):
  """Official GatedEmbeddingUnit: fc, then ``glu(cat(y, cg(y)))``."""
  y = linear_ref(unit.fc, x)
  g = linear_ref(unit.gate, y)
  return y / (1.0 + np.exp(-g))


def layer_norm_ref(ln, x, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * _np(ln.scale) + _np(ln.bias)


def block_ref(block, x, mask, segments=None):
  """One FusionBlock on ``x [B, N, d]`` with key mask ``[B, N]``."""
  b, n, d = x.shape
  h = block.num_heads
  hd = d // h
  if segments is None:
    segments = np.zeros(n, int)
  out = np.array(x, np.float64)
  y = layer_norm_ref(block.norm1, out)
  qkv = linear_ref(block.qkv, y).reshape(b, n, 3, h, hd)
  attn_out = np.zeros((b, n, d))
  for s in range(b):
    for head in range(h):
      q, k, v = (qkv[s, :, i, head] for i in range(3))
      logits = q @ k.T / math.sqrt(hd)
      visible = mask[s][None, :] & (segments[:, None] == segments[None, :])
      logits = np.where(visible, logits, -np.inf)
      w = np.exp(logits - logits.max(1, keepdims=True))
      w /= w.sum(1, keepdims=True)
      attn_out[s, :, head * hd:(head + 1) * hd] = w @ v
  out = out + linear_ref(block.proj, attn_out)
  z = linear_ref(block.fc1, layer_norm_ref(block.norm2, out))
  z = 0.5 * z * (1 + erf(z / math.sqrt(2)))
  return out + linear_ref(block.fc2, z)


def transformer_ref(transformer, x, mask, segments=None):
  for block in transformer.blocks:
    x = block_ref(block, x, mask, segments)
  return x


def masked_mean_ref(x, mask):
  """Official ``get_average``."""
  m = mask.astype(np.float64)[..., None]
  return (x * m).sum(-2) / (m.sum(-2) + 1e-5)


# ----------------------------------------------------------------------------
# Inputs and modules (one set of shapes for the whole file).
# ----------------------------------------------------------------------------


def _tokens(seed, b=3, n=5, d=D):
  return np.random.default_rng(seed).standard_normal((b, n, d)).astype(np.float32)


# Three real tokens per row, at different places (one compiled shape serves
# the shortened sequences of the padding test).
MASK = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1], [0, 1, 1, 1, 0]], bool)


def _transformer(**kw):
  kw = {"depth": 2, **kw}  # two blocks, one structure for the whole file
  return FusionTransformer(D, num_heads=HEADS, mlp_ratio=2.0,
                           rngs=nnx.Rngs(0), **kw)


def _randomise(module, seed):
  """Replaces every parameter by N(0, 0.5^2) so LayerNorm affines and
  biases (initialised 1 / 0) are exercised by the comparisons."""
  rng = np.random.default_rng(seed)
  state = nnx.state(module, nnx.Param)
  nnx.update(module, jax.tree.map(
      lambda p: jnp.asarray(0.5 * rng.standard_normal(p.shape), p.dtype), state))
  return module


@jax.jit
def _run(graphdef, state, x, mask, segments):
  return nnx.merge(graphdef, state)(x, mask, segments)


def _apply(module, x, mask, segments=None):
  if segments is None:
    segments = np.zeros(x.shape[-2], np.int32)
  return _run(*nnx.split(module), x, mask, segments)


# ----------------------------------------------------------------------------
# Tests.
# ----------------------------------------------------------------------------


def test_gated_embedding_unit_matches_reference_and_torch_init():
  unit = GatedEmbeddingUnit(D, 2 * D, rngs=nnx.Rngs(1))
  x = _tokens(0)
  y = jax.jit(lambda s, x: nnx.merge(nnx.graphdef(unit), s)(x))(
      nnx.state(unit), x)
  assert y.shape == (3, 5, 2 * D)
  assert_rel_close(y, geu_ref(unit, x), name="geu")
  # PyTorch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
  # weight and the bias. Scaled by the bound, the weights are U(-1, 1),
  # whose std is 1/sqrt(3) (384 draws: the estimate is within ~4 %).
  scaled = []
  for lin, fan_in in ((unit.fc, D), (unit.gate, 2 * D)):
    bound = 1 / math.sqrt(fan_in)
    for p in (lin.kernel[...], lin.bias[...]):
      assert np.abs(p).max() <= bound
    scaled.append(np.ravel(lin.kernel[...]) / bound)
  assert abs(np.std(np.concatenate(scaled)) * math.sqrt(3) - 1) < 0.15


def test_vit_init_of_the_transformer():
  t = _transformer()
  kernels = []
  for block in t.blocks:
    for lin in (block.qkv, block.proj, block.fc1, block.fc2):
      kernels.append(np.ravel(lin.kernel[...]))
      np.testing.assert_array_equal(lin.bias[...], 0)
    for ln in (block.norm1, block.norm2):
      np.testing.assert_array_equal(ln.scale[...], 1)
      np.testing.assert_array_equal(ln.bias[...], 0)
  # timm trunc_normal(std=.02): 1024 draws, the std estimate within ~5 %.
  assert abs(np.std(np.concatenate(kernels)) / 0.02 - 1) < 0.15
  assert t.masking_token[...].shape == (D,)
  assert np.abs(t.masking_token[...]).max() < 0.1
  assert t.blocks[0].qkv.kernel[...].shape == (D, 3 * D)


def test_transformer_matches_reference_with_mask_and_segments():
  t = _randomise(_transformer(), 3)
  x = _tokens(0)
  segments = np.array([0, 0, 1, 1, 1], np.int32)
  ours = _apply(t, x, MASK, segments)
  assert ours.shape == x.shape and ours.dtype == jnp.float32
  ref = transformer_ref(t, x.astype(np.float64), MASK, segments)
  # Only real tokens are meaningful; a masked query still gets a defined row.
  assert_rel_close(np.where(MASK[..., None], ours, 0),
                   np.where(MASK[..., None], ref, 0), name="transformer")


def test_segments_equal_separate_calls():
  t = _randomise(_transformer(), 4)
  x = _tokens(1)
  joint = _apply(t, x, MASK, np.array([0, 0, 1, 1, 1], np.int32))
  ref_a = transformer_ref(t, x[:, :2].astype(np.float64), MASK[:, :2])
  ref_b = transformer_ref(t, x[:, 2:].astype(np.float64), MASK[:, 2:])
  for got, ref, m in ((joint[:, :2], ref_a, MASK[:, :2]),
                      (joint[:, 2:], ref_b, MASK[:, 2:])):
    assert_rel_close(np.where(m[..., None], got, 0),
                     np.where(m[..., None], ref, 0), name="segment")


def test_padded_tokens_change_nothing():
  t = _randomise(_transformer(), 5)
  x = _tokens(2)
  garbage = np.where(MASK[..., None], x, 100 * _tokens(3))
  garbage[0, 3, :2] = np.nan, np.inf  # MASK[0, 3] is False
  a = _apply(t, x, MASK)
  b = _apply(t, garbage, MASK)
  np.testing.assert_array_equal(np.where(MASK[..., None], a, 0),
                                np.where(MASK[..., None], b, 0))
  # The real tokens alone, padding removed: the same outputs.
  short = _apply(t, x[MASK].reshape(3, 3, D), np.ones((3, 3), bool))
  np.testing.assert_allclose(np.asarray(a)[MASK].reshape(3, 3, D), short,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(masked_mean(a, MASK), masked_mean(b, MASK),
                             rtol=1e-6, atol=1e-6)


def test_masked_mean_matches_official_average():
  x = _tokens(4)
  mask = MASK.copy()
  mask[0] = False  # all masked: 0, not NaN, thanks to the official 1e-5
  got = masked_mean(x, mask)
  assert_rel_close(got, masked_mean_ref(x.astype(np.float64), mask), name="mean")
  np.testing.assert_array_equal(got[0], 0)


def test_fill_empty_puts_the_masking_token_first():
  t = _transformer()
  x = _tokens(5)
  mask = MASK.copy()
  mask[1] = False
  tokens, new_mask, nonempty = t.fill_empty(x, mask)
  np.testing.assert_array_equal(nonempty, [True, False, True])
  np.testing.assert_array_equal(tokens[1, 0], t.masking_token[...])
  np.testing.assert_array_equal(tokens[1, 1:], x[1, 1:])
  np.testing.assert_array_equal(np.asarray(tokens)[[0, 2]], x[[0, 2]])
  np.testing.assert_array_equal(new_mask[1], [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(np.asarray(new_mask)[[0, 2]], mask[[0, 2]])


def test_fully_masked_sequence_has_finite_output_and_gradient():
  block = FusionBlock(D, HEADS, mlp_ratio=2.0, rngs=nnx.Rngs(0))
  x = _tokens(6)
  mask = MASK.copy()
  mask[2] = False
  graphdef, params, rest = nnx.split(block, nnx.Param, ...)

  @jax.jit
  def loss(params, x):
    return jnp.sum(nnx.merge(graphdef, params, rest)(x, mask) ** 2)

  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(params, x)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_bfloat16_compute_runs():
  # bfloat16 compute, float32 parameters; a bfloat16 input keeps the residual
  # stream in bfloat16 (a float32 input would keep it in float32).
  t = _transformer(dtype=jnp.bfloat16)
  y = _apply(t, _tokens(7).astype(jnp.bfloat16), MASK)
  assert y.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(y, np.float32)))
  assert t.blocks[0].qkv.kernel[...].dtype == jnp.float32


def test_bad_arguments_raise():
  t = nnx.eval_shape(_transformer)  # checks run before any parameter is read
  x = _tokens(9)
  with pytest.raises(ValueError, match=r"tokens must have shape \[\.\.\., n_tok, d\]"):
    t(x[..., :4], MASK)
  with pytest.raises(ValueError, match=r"mask must have shape \[\.\.\., n_tok\]"):
    t(x, MASK[:, :4])
  with pytest.raises(ValueError, match=r"segment_ids must have shape \[n_tok\]"):
    t(x, MASK, np.zeros(4, np.int32))
  with pytest.raises(ValueError, match="num_heads must divide dim"):
    FusionBlock(D, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="depth must be a positive integer"):
    FusionTransformer(D, depth=0, num_heads=HEADS, rngs=nnx.Rngs(0))
  unit = nnx.eval_shape(lambda: GatedEmbeddingUnit(4, 6, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., in_features\]"):
    unit(np.zeros((2, 5), np.float32))
