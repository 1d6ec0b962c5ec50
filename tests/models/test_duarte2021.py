"""Tests of capsjax.models.duarte2021 (Duarte et al., 2021).

The paper states no parameter counts, so the expected counts below are
derived from the architecture (Sec. 3.1, 4.1, App. B and the design choices
documented in the model module: secondary poses pooled, audio 1024-d,
``torch.nn.Linear`` layers with biases) and written out term by term.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax.models import duarte2021 as D
from tests.reference_losses import mms_loss_ref
from tests.testing_utils import assert_rel_close

B = 4
DIMS = {"video": 12, "audio": 10, "text": 7}
# Small sizes for forward tests (every constructor accepts these overrides).
SMALL = dict(input_dims=DIMS, n_caps=4, d1=4, d2=8, d_embed=6, d_hidden=16, n_heads=2)
SMALL_EM = {**SMALL, "d2": 4}
SMALL_FC = dict(input_dims=DIMS, d_hidden=16, d_embed=6)
SMALL_SA = dict(input_dims=DIMS, n_tokens=4, d2=8, d_embed=6, d_hidden=16, n_heads=2)


def _count(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _abstract(make, *args, **kw):
  return nnx.eval_shape(lambda: make(*args, rngs=nnx.Rngs(0), **kw))


def _build(make, seed: int = 0, **kw):
  """``make(**kw)`` with NumPy-drawn parameters.

  Eager ``jax.random`` initialisation compiles one program per parameter
  shape, which would dominate this file's run time; the initialisations
  themselves are tested with the layers. Weights are ``U(+-1/sqrt(fan_in))``
  (fan-in: the second-last axis), vectors ``U(+-0.1)``, LayerNorm scales
  ``1 + U(+-0.1)``; dropout streams get real keys.
  """
  model = nnx.eval_shape(lambda: make(rngs=nnx.Rngs(params=seed, dropout=seed + 1), **kw))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    name = str(path[-1])
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.key(int(rng.integers(1 << 30)))
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    if len(x.shape) >= 2:
      return rng.uniform(-1, 1, x.shape).astype(x.dtype) / np.sqrt(x.shape[-2])
    base = 1.0 if "scale" in name else 0.0
    return (base + rng.uniform(-0.1, 0.1, x.shape)).astype(x.dtype)

  nnx.update(model, jax.tree.map_with_path(fill, nnx.state(model)))
  return model


def _inputs(seed: int, b: int = B):
  rng = np.random.default_rng(seed)
  return {m: rng.normal(size=(b, n)).astype(np.float32) for m, n in DIMS.items()}


# ----------------------------------------------------------------------------
# Parameter counts at the paper's sizes (nnx.eval_shape: nothing allocated).
# ----------------------------------------------------------------------------

PAPER_INPUTS = (4096, 1024, 300)   # video, audio, text (Sec. 4.1; audio: DAVEnet)
D_JOINT = 4096
MLP = 1024                          # App. B hidden width


def _primary(c, d1):
  # Per modality: Linear(n, C d1) poses + Linear(n, C) activations.
  return sum((n + 1) * (c * d1 + c) for n in PAPER_INPUTS)


def _self_attention(d1, d2, qkv_layers=2, qkv_hidden=None):
  # h_Q, h_K, h_V, each two linear layers d1 -> q -> d2 (Sec. 3.1; q = d2
  # unless given): 3 (d1 q + q + q d2 + d2), or one, 3 (d1 d2 + d2);
  # LN1, LN2: 4 d2; MLP d2 -> 1024 -> d2; Eq. (2): W_p [d2, 1] + b_p.
  q = d2 if qkv_hidden is None else qkv_hidden
  h = d1 * d2 + d2 if qkv_layers == 1 else d1 * q + q + q * d2 + d2
  return 3 * h + 4 * d2 + (d2 * MLP + MLP + MLP * d2 + d2) + d2 + 1


def _f_out(c, d):
  return c * d * D_JOINT + D_JOINT


def test_paper_model_parameter_count():
  # Primary capsules: video 4097 * 4224 + audio 1025 * 4224 + text 301 * 4224
  # = 17,305,728 + 4,329,600 + 1,271,424 = 22,906,752;
  # routing: h_Q, h_K, h_V 3 * (32 * 256 + 256 + 256 * 256 + 256) = 222,720
  # + LayerNorms 1,024 + MLP 525,568 + Eq. (2) 257 = 749,569;
  # f_out: 128 * 256 * 4096 + 4096 = 134,221,824.
  assert _primary(128, 32) == 22_906_752
  assert _self_attention(32, 256) == 749_569
  assert _f_out(128, 256) == 134_221_824
  assert _count(_abstract(D.duarte2021)) == 157_878_145
  # One affine map per h (qkv_layers=1): 3 * (32 * 256 + 256) = 25,344.
  assert _self_attention(32, 256, qkv_layers=1) == 552_193
  assert _count(_abstract(D.duarte2021, qkv_layers=1)) == 157_680_769
  # A ReLU adds no parameters; another hidden width changes h only.
  assert _count(_abstract(D.duarte2021, qkv_activation="relu")) == 157_878_145
  assert (_count(_abstract(D.duarte2021, qkv_hidden=64))
          == _primary(128, 32) + _self_attention(32, 256, qkv_hidden=64)
          + _f_out(128, 256))


def test_shared_and_not_shared_counts_differ_by_two_copies():
  shared = _count(_abstract(D.duarte2021))
  not_shared = _count(_abstract(D.duarte2021_not_shared))
  # Table 6: three routing layers and three f_out instead of one each.
  assert not_shared - shared == 2 * (_self_attention(32, 256) + _f_out(128, 256))
  assert not_shared == 427_820_931


@pytest.mark.parametrize("n_caps", [32, 64, 256])
def test_table4_capsule_counts(n_caps):
  # The routing layer does not depend on C; primary layers and f_out do.
  expected = _primary(n_caps, 32) + _self_attention(32, 256) + _f_out(n_caps, 256)
  assert _count(_abstract(D.duarte2021_capsules, n_caps)) == expected


# Table 3: C = 64, d1 = d2 = 16; routing parameters per the layer docstrings.
TABLE3_ROUTING = {
    D.duarte2021_no_routing: 16 * MLP + MLP + MLP + 1,              # MLP 16->1024->1
    D.duarte2021_dynamic_routing: 64 * 64 * 16 * 16,                # W_ij
    D.duarte2021_em_routing: 64 * 64 * 4 * 4 + 2 * 64,              # W_ij 4x4, betas
    D.duarte2021_set_transformer_routing: (
        64 * 16                                      # seeds
        + 4 * (16 * 16 + 16)                         # W_Q, W_K, W_V, W_O
        + 4 * 16                                     # two LayerNorms
        + (16 * MLP + MLP + MLP * 16 + 16)           # rFF
        + 16 + 1),                                   # W_p, b_p
    D.duarte2021_small_self_attention: _self_attention(16, 16),
}


@pytest.mark.parametrize("make", list(TABLE3_ROUTING), ids=lambda f: f.__name__)
def test_table3_counts(make):
  expected = _primary(64, 16) + TABLE3_ROUTING[make] + _f_out(64, 16)
  assert _count(_abstract(make)) == expected


def test_fc_routing_and_baseline_counts():
  fc_routing = _abstract(D.duarte2021_routing_ablation, "fc")
  # One Linear(64 * 16, 64 * 16) and W_p, b_p.
  assert _count(fc_routing) == (_primary(64, 16) + 1024 * 1024 + 1024 + 17
                                + _f_out(64, 16))
  # Table 5 "Fully Connected": Linear(n, 4096) per modality, shared
  # Linear(4096, 4096).
  fc = sum((n + 1) * 4096 for n in PAPER_INPUTS) + 4096 * 4096 + 4096
  assert _count(_abstract(D.duarte2021_fc_baseline)) == fc == 38_993_920
  # Table 5 "Self-Attention": tokens of 32 (video), 8 (audio), 3 (text,
  # padded to 384) features; one attention block per modality without W_p;
  # shared Linear(128 * 256, 4096).
  blocks = sum(_self_attention(t, 256) - 257 for t in (32, 8, 3))
  assert _count(_abstract(D.duarte2021_self_attention_baseline)) == (
      blocks + _f_out(128, 256))
  # pool="primary" (the literal Eq. 3) shrinks f_out to C d1 inputs.
  primary = _abstract(D.duarte2021, pool="primary")
  assert _count(primary) == (_primary(128, 32) + _self_attention(32, 256)
                             + _f_out(128, 32))


# ----------------------------------------------------------------------------
# Forward and gradient of the training loss, jitted, at batch 4.
# ----------------------------------------------------------------------------


@nnx.jit
def _loss_and_grad(model, inputs):
  def loss(model):
    out = model(inputs)
    return D.duarte2021_loss(out), out
  return nnx.value_and_grad(loss, has_aux=True)(model)


CONSTRUCTORS = [
    ("duarte2021", D.duarte2021, SMALL),
    ("relu_h", D.duarte2021, {**SMALL, "qkv_activation": "relu"}),
    ("one_layer_h", D.duarte2021, {**SMALL, "qkv_layers": 1}),
    ("not_shared", D.duarte2021_not_shared, SMALL),
    ("capsules", lambda **kw: D.duarte2021_capsules(kw.pop("n_caps"), **kw), SMALL),
    ("no_routing", D.duarte2021_no_routing, SMALL),
    ("dynamic", D.duarte2021_dynamic_routing, SMALL),
    ("em", D.duarte2021_em_routing, SMALL_EM),
    ("set_transformer", D.duarte2021_set_transformer_routing, SMALL),
    ("small_self_attention", D.duarte2021_small_self_attention, SMALL),
    ("fc_routing", lambda **kw: D.duarte2021_routing_ablation("fc", **kw), SMALL),
    ("fc_baseline", D.duarte2021_fc_baseline, SMALL_FC),
    ("self_attention_baseline", D.duarte2021_self_attention_baseline, SMALL_SA),
]


@pytest.mark.parametrize("name,make,kw", CONSTRUCTORS, ids=[c[0] for c in CONSTRUCTORS])
def test_jitted_loss_and_gradient(name, make, kw):
  model = _build(make, **kw)
  (loss, out), grads = _loss_and_grad(model, _inputs(1))
  assert np.isfinite(loss) and loss > 0
  assert set(out) == set(DIMS)
  for m, o in out.items():
    assert o.embedding.shape == (B, 6) and np.all(np.isfinite(o.embedding)), m
    if o.activations is not None:
      n_caps = kw["n_caps"]
      assert o.activations.shape == (B, n_caps)
      assert o.primary_activations.shape == (B, n_caps)
      assert o.poses.shape[:2] == (B, n_caps)
      assert np.all((o.primary_activations > 0) & (o.primary_activations < 1))
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert len(leaves) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert all(np.all(np.isfinite(g)) for g in leaves)
  # Every parameter is used, except self-attention's key biases b_k, b_k2
  # (with two linear layers both add a constant to each softmax row, so
  # their gradient is 0) and the softmax biases b_p.
  flat = nnx.to_flat_state(nnx.state(grads, nnx.Param))
  dead = [path for path, g in flat
          if not np.any(np.asarray(g[...]))
          and path[-1] not in ("b_k", "b_k2", "b_p", "b_2")]
  assert not dead, dead


@nnx.jit
def _forward(model, inputs):
  return model(inputs)


def test_train_vs_eval_batch_vs_per_sample_and_modality_subsets():
  model = _build(D.duarte2021, **{**SMALL, "dropout_rate": 0.5})
  x = _inputs(4)
  train = _forward(model, x)
  model.eval()
  full = _forward(model, x)
  assert not np.allclose(train["video"].embedding, full["video"].embedding)
  # Eval mode: a batch gives the per-sample results.
  for s in range(B):
    one = _forward(model, {m: v[s:s + 1] for m, v in x.items()})
    for m in DIMS:
      np.testing.assert_allclose(one[m].embedding[0], full[m].embedding[s],
                                 rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(one[m].activations[0], full[m].activations[s],
                                 rtol=1e-5, atol=1e-7)
  # Evaluation with video and text only (Table 1 "VT") gives the same
  # embeddings for those modalities.
  vt = _forward(model, {"video": x["video"], "text": x["text"]})
  assert set(vt) == {"video", "text"}
  np.testing.assert_allclose(vt["text"].embedding, full["text"].embedding,
                             rtol=1e-5, atol=1e-6)


# Eager calls would compile every primitive on its own.
_loss = jax.jit(D.duarte2021_loss, static_argnames=("pairs", "margin", "normalize"))


def test_loss_matches_numpy_reference():
  rng = np.random.default_rng(5)
  emb = {m: rng.normal(size=(B, 6)).astype(np.float32) for m in DIMS}
  unit = {m: e / np.linalg.norm(e, axis=1, keepdims=True) for m, e in emb.items()}
  # Eq. (5) with cosine similarities, delta = 0.001.
  want = sum(mms_loss_ref(unit[a].astype(np.float64) @ unit[b].T, 0.001)
             for a, b in (("video", "audio"), ("text", "audio"), ("video", "text")))
  assert_rel_close(_loss(emb), want, name="loss")
  raw = sum(mms_loss_ref(emb[a].astype(np.float64) @ emb[b].T, 0.1)
            for a, b in (("video", "text"),))
  got = _loss(emb, pairs=(("video", "text"),), margin=0.1, normalize=False)
  assert_rel_close(got, raw, name="raw loss")
  wrapped = {m: D.ModalityOutput(e) for m, e in emb.items()}
  np.testing.assert_allclose(_loss(wrapped), _loss(emb))
  with pytest.raises(ValueError, match="pairs names modality 'audio'"):
    _loss({"video": emb["video"], "text": emb["text"]})
  with pytest.raises(ValueError, match="pairs must name"):
    _loss(emb, pairs=())


def test_bfloat16_compute_runs():
  model = _build(D.duarte2021, dtype=jnp.bfloat16, **SMALL)
  model.eval()
  out = _forward(model, _inputs(6))
  assert out["audio"].embedding.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out["audio"].embedding, np.float32)))


def test_to_linen():
  config = {**SMALL, "dropout_rate": 0.0}
  linen_model = nnx.bridge.to_linen(D.duarte2021, **config)
  x = _inputs(7)
  # The Linen init traced (not run: compiling every initialiser costs more
  # than this whole file), its variables drawn as in _build.
  abstract = jax.eval_shape(linen_model.init, jax.random.key(0), x)
  assert set(abstract) == {"params"}
  n_params = sum(v.size for v in jax.tree.leaves(abstract["params"]))
  assert n_params == _count(_abstract(D.duarte2021, **SMALL))
  rng = np.random.default_rng(7)
  variables = jax.tree.map(
      lambda v: rng.uniform(-0.3, 0.3, v.shape).astype(v.dtype), abstract)
  out = jax.jit(linen_model.apply)(variables, x)
  assert out["text"].embedding.shape == (B, 6)
  # The same parameters in the NNX model give the same embeddings.
  model = _abstract(D.duarte2021, **config)
  nnx.update(model, nnx.State(variables["params"]))
  model.eval()
  ref = _forward(model, x)
  np.testing.assert_allclose(out["text"].embedding, ref["text"].embedding,
                             rtol=1e-5, atol=1e-6)
  assert np.isfinite(_loss(out))


def test_errors():
  with pytest.raises(ValueError, match="routing must be one of"):
    _abstract(D.duarte2021, routing="capsule")
  with pytest.raises(ValueError, match="pool must be"):
    _abstract(D.duarte2021, pool="both")
  with pytest.raises(ValueError, match="d1 must equal d2"):
    _abstract(D.duarte2021, routing="em")
  with pytest.raises(ValueError, match="n_caps must be a positive integer"):
    _abstract(D.duarte2021, n_caps=0)
  with pytest.raises(ValueError, match="qkv_layers must be 1 or 2, got 3"):
    _abstract(D.duarte2021, routing="none", qkv_layers=3)
  with pytest.raises(ValueError, match="qkv_activation must be one of"):
    _abstract(D.duarte2021, qkv_activation="gelu")
  with pytest.raises(ValueError, match=r"input_dims\['text'\] must be a positive"):
    _abstract(D.duarte2021, input_dims={"text": 0})
  model = _abstract(D.duarte2021, **SMALL)
  x = _inputs(8)
  with pytest.raises(ValueError, match="unknown modality 'depth'"):
    model({"depth": x["video"]})
  with pytest.raises(ValueError, match=r"inputs\['text'\] must have shape \[b, text_dim\]"):
    model({"video": x["video"], "text": x["text"][:, :5]})
  with pytest.raises(ValueError, match=r"inputs\['text'\] must have shape"):
    model({"video": x["video"], "text": x["text"][:2]})
