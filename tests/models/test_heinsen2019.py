"""Tests of capsjax.models.heinsen2019 (Heinsen 2019: smallNORB and SST)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.nnx import bridge

from capsjax.models.heinsen2019 import (SSTClassifier, add_coord_channels,
                                        mask_logits, smallnorb_model,
                                        sst2r_model, sst5r_model, sst_model)
from tests.testing_utils import assert_rel_close, assert_tree_rel_close


def _n_params(module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _build(ctor, seed=0, **kw):
  """The model, initialised under one jit (eager init compiles op by op)."""
  return nnx.jit(lambda: ctor(rngs=nnx.Rngs(seed), **kw))()


def _abstract(ctor, **kw):
  """The model built under nnx.eval_shape (free), split for jax.eval_shape."""
  return nnx.split(nnx.eval_shape(lambda: ctor(rngs=nnx.Rngs(0), **kw)))


# ---------------------------------------------------------------- param counts

def test_smallnorb_parameter_count():
  # Paper Sec. 4 / Tab. 2: "approximately 272,000"; the exact 271,688 is the
  # count of the official SmallNORBClassifier(n_objs=5, n_parts=64, d_chns=64)
  # (PAPERS.md). BatchNorm running statistics are not parameters.
  convs = (4 * 9 * 64 + 64) + 5 * (64 * 9 * 64 + 64)      # 187,008
  stem_bns = 2 * 4 + 5 * 2 * 64                            # 648
  head = 2 * 2 * 64 + (64 * 64 + 64) + (64 * 1024 + 1024)  # 256 + 70,720
  routing1 = 1 * 64 * 4 * 4 * 2 + 2 * 64                   # W, B; betas: 2,176
  routing2 = 64 * 5 * 4 * 4 * 2 + 2 * 64 * 5              # 10,880
  assert convs + stem_bns + head + routing1 + routing2 == 271_688
  graphdef, state = _abstract(smallnorb_model)
  model = nnx.merge(graphdef, state)
  assert _n_params(model.stem) == convs + stem_bns
  assert _n_params(model.routing1) == routing1
  assert _n_params(model.routing2) == routing2
  assert _n_params(model) == 271_688


@pytest.mark.parametrize("ctor, n_classes, expected", [
    (sst5r_model, 5, 140_480),  # SST-5/R, Tab. 3 ("approximately 140,000")
    (sst2r_model, 2, 138_944),  # SST-2/R, Tab. 4
])
def test_sst_parameter_count(ctor, n_classes, expected):
  # GPT-2-large shapes: 37 layers x 1280 (paper Sec. 5.1); counts of the
  # official SSTClassifier(d_depth=37, d_emb=1280, d_inp=64, d_cap=2,
  # n_parts=64, n_classes) (PAPERS.md).
  depth_emb = 37 * 1280                                    # 47,360
  affine = 1280 * 64 + 64                                  # 81,984
  layer_norm = 2 * 64                                      # 128
  routing1 = 64 * 64 * 2 + 64 * 1 * 2 + 2 * 64             # W, B, betas: 8,448
  routing2 = 64 * n_classes * (2 * 2 + 1 * 2 + 2)          # 2,560 / 1,024
  assert depth_emb + affine + layer_norm + routing1 + routing2 == expected
  graphdef, state = _abstract(ctor)
  model = nnx.merge(graphdef, state)
  assert _n_params(model.routing2) == routing2
  assert _n_params(model) == expected
  graphdef, state = _abstract(sst_model, n_classes=n_classes)
  assert _n_params(nnx.merge(graphdef, state)) == expected


# ------------------------------------------------------------------ smallNORB

def test_smallnorb_96x96_gives_5184_input_capsules():
  # Paper Fig. 3: 96 -> 94 -> 46 -> 44 -> 21 -> 19 -> 9; 64 * 9 * 9 = 5184.
  graphdef, state = _abstract(smallnorb_model)
  images = jax.ShapeDtypeStruct((2, 96, 96, 2), jnp.float32)
  a, mu = jax.eval_shape(
      lambda s, x: nnx.merge(graphdef, s).input_capsules(x), state, images)
  assert a.shape == (2, 5184) and mu.shape == (2, 5184, 4, 4)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, images)
  assert out.a_out.shape == (2, 5) and out.mu_out.shape == (2, 5, 4, 4)
  assert out.sig2_out.shape == (2, 5, 4, 4) and out.R.shape == (2, 64, 5)
  assert out.a_out.dtype == jnp.float32
  # bfloat16 compute with float32 parameters.
  graphdef, state = _abstract(smallnorb_model, dtype=jnp.bfloat16)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                       jax.ShapeDtypeStruct((2, 32, 32, 2), jnp.float32))
  assert all(o.dtype == jnp.bfloat16 for o in out)
  assert all(x.dtype == jnp.float32
             for x in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state),
                                                nnx.Param)))


def test_add_coord_channels():
  x = np.random.default_rng(0).standard_normal((2, 3, 5, 2)).astype(np.float32)
  y = np.asarray(add_coord_channels(x))
  assert y.shape == (2, 3, 5, 4) and y.dtype == np.float32
  np.testing.assert_array_equal(y[..., :2], x)
  np.testing.assert_allclose(y[1, :, 4, 2], [-1, 0, 1])       # along rows
  np.testing.assert_allclose(y[0, 2, :, 3], [-1, -.5, 0, .5, 1])  # columns


# A non-square size near the smallest (29): 32x40 -> 1x2 -> 128 capsules.
_IMAGES = np.random.default_rng(1).uniform(0, 1, (2, 32, 40, 2)).astype(
    np.float32)


def _randomise_routing(model, seed):
  """Random B and betas in both routing layers. At the paper's init (zero
  betas) a_out is identically 0 and only the betas get a gradient."""
  rng = np.random.default_rng(seed)
  for layer in (model.routing1, model.routing2):
    for name in ("B", "beta_use", "beta_ign"):
      p = getattr(layer, name)
      p[...] = jnp.asarray(0.5 * rng.standard_normal(p.shape), p.dtype)
  return model


@pytest.fixture(scope="module")
def norb():
  return _build(smallnorb_model)


def test_smallnorb_init(norb):
  # Kaiming normal 3x3 convs with zero bias (paper Sec. 4.1, official code);
  # PyTorch default U(+-1/sqrt(64)) 1x1 convs.
  k = np.asarray(norb.stem.convs[1].kernel[...])
  assert k.shape == (3, 3, 64, 64)
  assert abs(k.std() * np.sqrt(64 * 9 / 2) - 1) < 0.02
  assert not np.any(np.asarray(norb.stem.convs[1].bias[...]))
  k = np.asarray(norb.conv_mu.kernel[...])
  assert k.shape == (1, 1, 64, 1024) and np.abs(k).max() <= 1 / 8
  assert abs(k.std() * np.sqrt(3) * 8 - 1) < 0.02
  b = np.asarray(norb.conv_mu.bias[...])
  assert np.abs(b).max() <= 1 / 8 and b.std() > 0.05


def test_smallnorb_jitted_train_step(norb):
  """Train mode: jitted grad over the nnx.split state; BN stats update."""
  norb = _randomise_routing(nnx.clone(norb), 5)
  norb.train()
  graphdef, params, rest = nnx.split(norb, nnx.Param, ...)
  labels = jnp.array([0, 3])

  @jax.jit
  def step(params, rest, images):
    def loss(params):
      # copy=True: BatchNorm mutates its statistics inside this grad trace.
      model = nnx.merge(graphdef, params, rest, copy=True)
      out = model(images)
      ce = -jnp.take_along_axis(jax.nn.log_softmax(out.a_out), labels[:, None],
                                1).mean()
      return ce, (out, nnx.state(model, nnx.BatchStat))
    return jax.grad(loss, has_aux=True)(params)

  grads, (out, stats) = step(params, rest, _IMAGES)
  assert out.a_out.shape == (2, 5) and out.mu_out.shape == (2, 5, 4, 4)
  assert out.R.shape == (2, 64, 5)
  for x in jax.tree.leaves((out, grads)):
    assert np.all(np.isfinite(np.asarray(x)))
  flat = dict(nnx.to_flat_state(grads))
  # Every parameter gets a gradient, down to the first convolution.
  assert len(flat) == len(jax.tree.leaves(params))
  for path in (("routing2", "beta_use"), ("routing1", "W"), ("conv_a", "bias"),
               ("conv_mu", "kernel"), ("stem", "convs", 0, "kernel"),
               ("stem", "norms", 0, "scale")):
    assert np.any(np.asarray(flat[path][...])), path
  # Running stats moved from (0, 1) towards the batch's (PyTorch momentum).
  mean = np.asarray(stats["stem"]["norms"][0]["mean"][...])
  np.testing.assert_allclose(mean[:2], 0.1 * _IMAGES.mean((0, 1, 2)),
                             rtol=1e-5)
  assert np.all(np.asarray(stats["norm_a"]["var"][...]) != 1)


def test_smallnorb_eval_batch_equals_per_sample(norb):
  norb = _randomise_routing(nnx.clone(norb), 6)
  norb.eval()
  rng = np.random.default_rng(2)
  for _, v in nnx.iter_graph(norb):  # non-trivial running statistics
    if isinstance(v, nnx.BatchStat):
      v[...] = jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32)
  forward = nnx.jit(lambda m, x: m(x))
  batch = forward(norb, _IMAGES)
  for k in range(2):
    single = forward(norb, _IMAGES[k:k + 1])
    assert_tree_rel_close(jax.tree.map(lambda x: x[k], batch),
                          jax.tree.map(lambda x: x[0], single), 1e-5,
                          f"sample {k}")
  assert np.all(np.isfinite(np.asarray(batch.a_out)))


@pytest.mark.parametrize("shape, match", [
    ((1, 32, 32, 4), r"images must have shape \[b, H, W, 2\]"),
    ((32, 32, 2), r"images must have 4 axes"),
    ((1, 28, 40, 2), r"images must be at least 29x29 pixels"),
])
def test_smallnorb_errors(shape, match):
  graphdef, state = _abstract(smallnorb_model)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state,
                   jax.ShapeDtypeStruct(shape, jnp.float32))


# ------------------------------------------------------------------------ SST

N_LAYERS, D_EMB = 3, 64  # small stand-ins for GPT-2-large's 37 x 1280


def _embs(b, n, seed):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((b, n, N_LAYERS, D_EMB)).astype(np.float32)


@pytest.fixture(scope="module")
def sst_init():
  """SST-5/R at the paper's initialisation."""
  return _build(sst_model, 3, n_layers=N_LAYERS, d_emb=D_EMB)


@pytest.fixture(scope="module")
def sst(sst_init):
  """SST-5/R with every zero-initialised parameter made random."""
  model = nnx.clone(sst_init)
  rng = np.random.default_rng(4)
  for path, v in nnx.iter_graph(model):
    if isinstance(v, nnx.Param) and "kernel" not in path and "W" not in path:
      v[...] = jnp.asarray(0.5 * rng.standard_normal(v.shape), v.dtype)
  return model


# One jitted forward shared by the SST tests (same shapes: one compile).
_sst_forward = nnx.jit(lambda m, e, k: (m.input_capsules(e, k), m(e, k)))


def test_sst_init(sst_init):
  # Depth embedding zeros, affine Kaiming normal with zero bias (Sec. 5.2).
  assert not np.any(np.asarray(sst_init.depth_emb[...]))
  k = np.asarray(sst_init.affine.kernel[...])
  assert k.shape == (D_EMB, 64)
  assert abs(k.std() * np.sqrt(D_EMB / 2) - 1) < 0.05
  assert not np.any(np.asarray(sst_init.affine.bias[...]))


def _front_end_reference(model, embs):
  """Fig. 5(b)-(d) in float64 NumPy: + depth, affine, Swish, LayerNorm."""
  x = embs.astype(np.float64) + np.asarray(model.depth_emb[...])
  x = x @ np.asarray(model.affine.kernel[...]) + np.asarray(
      model.affine.bias[...])
  x = x * 0.5 * (1 + np.tanh(x / 2))  # Swish, x * sigmoid(x)
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True)
                                                 + 1e-5)
  x = x * np.asarray(model.norm.scale[...]) + np.asarray(model.norm.bias[...])
  return x.reshape(x.shape[0], -1, 1, x.shape[-1])  # (token, layer) order


def test_sst_padding_changes_nothing_and_batch_equals_per_sample(sst):
  # Two sentences of 4 tokens padded to 7, the second with its padding
  # scattered (the first routing ignores order); padding holds garbage.
  embs = _embs(2, 7, 5)
  mask = np.zeros((2, 7), bool)
  mask[0, :4] = mask[1, [1, 3, 4, 6]] = True
  embs[~mask] *= 1e3
  (a, mu), batch = _sst_forward(sst, embs, mask)
  assert batch.a_out.shape == (2, 5) and batch.mu_out.shape == (2, 5, 1, 2)
  assert batch.R.shape == (2, 64, 5)
  for k in range(2):
    _, single = _sst_forward(sst, embs[k][mask[k]][None],
                             np.ones((1, 4), bool))
    assert_tree_rel_close(jax.tree.map(lambda x: x[k], batch),
                          jax.tree.map(lambda x: x[0], single), 1e-5,
                          f"sample {k}")
  # The input capsules: a_inp = logit(mask) per (token, layer), token slowest
  # as in the official code; mu_inp from the Fig. 5 front end.
  np.testing.assert_array_equal(
      np.asarray(a), np.repeat(np.where(mask, np.inf, -np.inf), N_LAYERS, 1))
  assert mu.shape == (2, 7 * N_LAYERS, 1, 64)
  assert_rel_close(mu, _front_end_reference(sst, embs), 1e-5, "mu_inp")


def test_sst_jitted_grad_with_mixup_mask(sst):
  graphdef, params = nnx.split(sst, nnx.Param)
  embs = _embs(2, 5, 6)
  mask = np.array([[1, 1, 1, 0.3, 0], [1, 1, 1, 1, 1]], np.float32)  # mixup

  @jax.jit
  def grads(params):
    def loss(params):
      out = nnx.merge(graphdef, params)(embs, mask)
      return jax.nn.log_softmax(out.a_out)[:, 1].sum(), out
    return jax.grad(loss, has_aux=True)(params)

  g, out = grads(params)
  assert out.a_out.shape == (2, 5)
  for x in jax.tree.leaves((g, out)):
    assert np.all(np.isfinite(np.asarray(x)))
  for name in ("depth_emb", "affine", "norm", "routing1", "routing2"):
    assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(g[name])), name


def test_mask_logits():
  np.testing.assert_array_equal(
      np.asarray(mask_logits(np.array([True, False]))), [np.inf, -np.inf])
  np.testing.assert_allclose(
      np.asarray(mask_logits(np.array([0.25, 0.5], np.float32))),
      [np.log(1 / 3), 0.0], rtol=1e-6)


def test_sst_bfloat16_compute():
  graphdef, state = _abstract(sst_model, n_layers=N_LAYERS, d_emb=D_EMB,
                              dtype=jnp.bfloat16)
  embs = jax.ShapeDtypeStruct((2, 5, N_LAYERS, D_EMB), jnp.float32)
  mask = jax.ShapeDtypeStruct((2, 5), jnp.bool_)
  out = jax.eval_shape(lambda s, e, m: nnx.merge(graphdef, s)(e, m), state,
                       embs, mask)
  assert all(o.dtype == jnp.bfloat16 for o in out)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))


@pytest.mark.parametrize("embs, mask, match", [
    ((2, 5, N_LAYERS + 1, D_EMB), (2, 5),
     r"embs must have shape \[b, n_tokens, n_layers, d_emb\] = "
     r"\[2, 5, 3, 64\]"),
    ((2, 5, D_EMB), (2, 5), r"embs must have 4 axes"),
    ((2, 5, N_LAYERS, D_EMB), (2, 4), r"mask must have shape \[b, n_tokens\]"),
])
def test_sst_errors(embs, mask, match):
  graphdef, state = _abstract(sst_model, n_layers=N_LAYERS, d_emb=D_EMB)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda s, e, m: nnx.merge(graphdef, s)(e, m), state,
                   jax.ShapeDtypeStruct(embs, jnp.float32),
                   jax.ShapeDtypeStruct(mask, jnp.bool_))


# ---------------------------------------------------------------------- Linen

def test_to_linen(sst):
  """SST-5/R inside a Linen module through nnx.bridge.to_linen: its Linen
  parameters, loaded into the NNX model, give the same logits."""
  import flax.linen as nn

  class Head(nn.Module):
    @nn.compact
    def __call__(self, embs, mask):
      out = bridge.to_linen(SSTClassifier, 5, N_LAYERS, D_EMB,
                            name="sst")(embs, mask)
      return out.a_out

  embs = _embs(2, 7, 7)
  mask = np.ones((2, 7), bool)
  mask[0, 5:] = False
  logits, variables = jax.jit(Head().init_with_output)(jax.random.key(0),
                                                       embs, mask)
  assert logits.shape == (2, 5)
  linen_params = nn.unbox(variables["params"]["sst"])
  assert sum(x.size for x in jax.tree.leaves(linen_params)) == _n_params(sst)
  model = nnx.clone(sst)
  params = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(params, linen_params)
  nnx.update(model, params)
  _, out = _sst_forward(model, embs, mask)
  assert_rel_close(logits, out.a_out, 1e-5, "a_out")
