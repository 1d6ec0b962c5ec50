"""Tests of capsjax.models.swetha2023 (EAO + Multi-SK, Swetha et al. 2023).

The model's forward is compared with a float64 NumPy run of the official
``EverythingAtOnceModel.forward`` structure (separate fusion passes per
modality and per pair, no segment trick) built from the layer references of
tests/nn/test_fusion.py; the losses with float64 NumPy versions of the
official ``NormSoftmaxLoss``, ``CombinatorialLoss`` and ``AncSimilarityLoss``
(its eighteen ``loss_pair_r_c`` terms written out as in the official code),
with Multi-SK targets from tests/ot/reference_ot.py.

Compile time dominates, so one small model (module fixture) and three
compiled programs (the training step at batch 4, the forward at batch 4 and
at batch 1) serve most tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax.models import swetha2023 as S
from tests.nn.test_fusion import (geu_ref, layer_norm_ref, masked_mean_ref,
                                  transformer_ref)
from tests.ot.reference_ot import multi_sk_assignment_ref
from tests.testing_utils import assert_rel_close

MODS = ("text", "video", "audio")
# Few distinct parameter shapes: each one costs an eager compile of its
# random init. Mixed-up dimensions are caught at the default sizes
# (test_default_size_output_shapes traces the 4096/6144-wide model).
SMALL = dict(text_dim=6, video_dim=8, audio_dim=8, embed_dim=8,
             projection_dim=12, num_heads=2, n_anchors=4)
DIMS = {"text": 6, "video": 8, "audio": 8}
LENGTHS = {"text": 5, "video": 4, "audio": 3}
B, QUEUE = 4, 6


def _count(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _inputs(seed: int, b: int = B, extra: int = 0) -> dict[str, np.ndarray]:
  """Token features and masks; sample 1 has no text at all (masking token),
  the others have some padding. ``extra`` appends padded garbage tokens."""
  rng = np.random.default_rng(seed)
  masks = {"text": [[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1],
                    [1, 0, 1, 1, 0]],
           "video": [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]],
           "audio": [[1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 1, 1]]}
  x = {}
  for m in MODS:
    mask = np.array(masks[m][:b], bool)
    tok = rng.standard_normal((b, LENGTHS[m] + extra, DIMS[m])).astype(np.float32)
    x[m] = tok
    x[f"{m}_mask"] = np.concatenate([mask, np.zeros((b, extra), bool)], 1)
  return x


def _queue(seed: int, count: int) -> S.SSPCQueue:
  rng = np.random.default_rng(seed)

  def unit(d):
    v = rng.standard_normal((QUEUE, d))
    return jnp.asarray(v / np.linalg.norm(v, axis=1, keepdims=True), jnp.float32)

  return S.SSPCQueue(input={m: unit(8) for m in MODS},
                     joint={m: unit(12) for m in MODS},
                     count=jnp.asarray(count, jnp.int32))


@pytest.fixture(scope="module")
def model():
  m = S.swetha2023_tva(**SMALL, rngs=nnx.Rngs(0))
  m.eval()
  return m


@jax.jit
def _forward(graphdef, state, x):
  return nnx.merge(graphdef, state)(**x)


def _apply(model, x):
  return _forward(*nnx.split(model), x)


@jax.jit
def _train_step(graphdef, params, rest, x, queue):
  def loss_fn(params):
    out = nnx.merge(graphdef, params, rest)(**x)
    res = S.swetha2023_loss(out, queue)
    return res.loss, (res, out)

  (_, (res, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return res, out, grads


@pytest.fixture(scope="module")
def step(model):
  """The jitted full-loss step on a full queue: ``(result, out, grads)``."""
  return _train_step(*nnx.split(model, nnx.Param, ...), _inputs(0),
                     _queue(1, QUEUE))


# ----------------------------------------------------------------------------
# Float64 NumPy references.
# ----------------------------------------------------------------------------


def _normalize(x, eps):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def forward_ref(model, x, shared=True):
  """The official EverythingAtOnceModel.forward (+ TransformerPerModality2's
  anchor similarities), one fusion pass per modality and per pair; with
  ``shared=False`` TransformerPerModalityModel2's (a transformer per
  modality, the text one's masking token for all, no pairs)."""
  f64 = lambda a: np.asarray(a, np.float64)
  fusion_of = (lambda m: model.fusion) if shared else (lambda m: model.fusion[m])
  tok, msk, nonempty = {}, {}, {}
  for m in MODS:
    t = layer_norm_ref(model.token_norm[m],
                       geu_ref(model.token_proj[m], f64(x[m])))
    mask = x[f"{m}_mask"].copy()
    nonempty[m] = mask.sum(-1) != 0
    t[~nonempty[m], 0] = f64(fusion_of("text").masking_token[...])
    mask[~nonempty[m], 0] = True
    tok[m], msk[m] = t, mask

  def fusion(*mods):
    y = transformer_ref(fusion_of(mods[0]),
                        np.concatenate([tok[m] for m in mods], 1),
                        np.concatenate([msk[m] for m in mods], 1))
    out, start = {}, 0
    for m in mods:
      n = tok[m].shape[1]
      out[m] = masked_mean_ref(y[:, start:start + n], msk[m])
      start += n
    return out

  ref = {m: geu_ref(model.proj[m], fusion(m)[m]) for m in MODS}
  for a, b in (("text", "video"), ("text", "audio"), ("video", "audio")):
    if not shared:
      continue
    both = fusion(a, b)
    ref[f"{a}_{b}"] = (_normalize(geu_ref(model.proj[a], both[a]), 1e-8)
                       + _normalize(geu_ref(model.proj[b], both[b]), 1e-8)) / 2
  in_embed = {m: _normalize(masked_mean_ref(tok[m], msk[m]), 1e-12) for m in MODS}
  joint_embed = {m: _normalize(ref[m], 1e-12) for m in MODS}
  a_in = {m: _normalize(f64(model.input_anchors[m][...]), 1e-12) for m in MODS}
  a_joint = {m: _normalize(f64(model.joint_anchors[m][...]), 1e-12) for m in MODS}
  ref["input_sim"] = {m: in_embed[m] @ a_in[m].T for m in MODS}
  ref["joint_sim"] = {n: {m: joint_embed[n] @ a_joint[m].T for m in MODS}
                      for n in MODS}
  return ref, nonempty, in_embed, joint_embed


def norm_softmax_ref(S_, temperature=0.05):
  def log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))
  i = np.diag(log_softmax(S_ / temperature))
  j = np.diag(log_softmax(S_.T / temperature))
  return -i.mean() - j.mean()


def contrastive_ref(out, weights):
  """Official CombinatorialLoss: drop empty samples, weighted mean of pairs."""
  ne = {m: np.asarray(out.nonempty[m]) for m in MODS}
  nonempty = {"tv": ne["text"] & ne["video"], "ta": ne["text"] & ne["audio"],
              "va": ne["video"] & ne["audio"],
              "t_va": ne["text"] & ne["video"] & ne["audio"]}
  nonempty["v_ta"] = nonempty["a_tv"] = nonempty["t_va"]
  pairs = [("tv", "text", "video"), ("ta", "text", "audio"),
           ("va", "video", "audio"), ("t_va", "text", "video_audio"),
           ("v_ta", "video", "text_audio"), ("a_tv", "audio", "text_video")]
  total = wsum = 0.0
  losses = {}
  for name, e1, e2 in pairs:
    keep = nonempty[name]
    a = _normalize(np.asarray(getattr(out, e1), np.float64)[keep], 1e-8)
    b = _normalize(np.asarray(getattr(out, e2), np.float64)[keep], 1e-8)
    losses[name] = norm_softmax_ref(a @ b.T)
    total += weights[name] * losses[name]
    wsum += weights[name]
  return total / wsum, losses


# The official AncSimilarityLoss terms: loss_pair_r_c = c_loss_r_c *
# calculate_cost(prediction, calculate_sk(target)[-B:]). "in_X": X's input
# similarities to X's input anchors; "trans_X_aY": X's joint embedding
# against Y's joint anchors.
OFFICIAL_TERMS = {
    (1, 1): ("in_text", "trans_text_atext"),
    (1, 2): ("in_text", "trans_video_atext"),
    (1, 3): ("in_text", "trans_audio_atext"),
    (2, 1): ("in_video", "trans_text_avideo"),
    (2, 2): ("in_video", "trans_video_avideo"),
    (2, 3): ("in_video", "trans_audio_avideo"),
    (3, 1): ("in_audio", "trans_text_aaudio"),
    (3, 2): ("in_audio", "trans_video_aaudio"),
    (3, 3): ("in_audio", "trans_audio_aaudio"),
    (4, 1): ("trans_text_atext", "in_text"),
    (4, 2): ("trans_text_avideo", "in_video"),
    (4, 3): ("trans_text_aaudio", "in_audio"),
    (5, 1): ("trans_video_atext", "in_text"),
    (5, 2): ("trans_video_avideo", "in_video"),
    (5, 3): ("trans_video_aaudio", "in_audio"),
    (6, 1): ("trans_audio_atext", "in_text"),
    (6, 2): ("trans_audio_avideo", "in_video"),
    (6, 3): ("trans_audio_aaudio", "in_audio"),
}


def sspc_ref(out, queue, weights=S.AUTHORS_SSPC_WEIGHTS):
  f64 = lambda a: np.asarray(a, np.float64)

  def batch_and_queue(name):
    if name.startswith("in_"):
      m = name[3:]
      return (f64(out.input_sim[m]),
              f64(queue.input[m]) @ f64(out.input_anchors[m]).T)
    _, x, y = name.split("_")
    y = y[1:]  # "atext" -> "text"
    return (f64(out.joint_sim[x][y]),
            f64(queue.joint[x]) @ f64(out.joint_anchors[y]).T)

  def cost(sim, target):
    x = np.exp(sim / 0.1)
    return np.mean(np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x))))

  b = f64(out.input_sim["text"]).shape[0]
  terms = {}
  for (r, c), (pred, target) in OFFICIAL_TERMS.items():
    batch, queued = batch_and_queue(target)
    sk = multi_sk_assignment_ref(np.concatenate([queued, batch]), 0.07, 20, 0.5)
    terms[f"loss_pair_{r}_{c}"] = weights[r - 1][c - 1] * cost(
        batch_and_queue(pred)[0], sk[-b:])
  return sum(terms.values()), terms


# ----------------------------------------------------------------------------
# Parameter counts (free: nnx.eval_shape).
# ----------------------------------------------------------------------------


def _geu(i, o):
  """GatedEmbeddingUnit: Linear(i, o) + ContextGating Linear(o, o)."""
  return i * o + o + o * o + o


# Derived from the EAO architecture with the authors' resnet_tva.yaml sizes
# (d = 4096 fusion width, D = 6144 joint space, word2vec 300, 64 anchors).
D_MODEL, D_JOINT, K = 4096, 6144, 64
TOKEN_PROJECTIONS = _geu(300, D_MODEL) + 2 * _geu(4096, D_MODEL)  # t, v, a
TOKEN_NORMS = 3 * 2 * D_MODEL
FUSION = (D_MODEL                                   # masking token
          + 2 * 2 * D_MODEL                         # norm1, norm2
          + D_MODEL * 3 * D_MODEL + 3 * D_MODEL     # qkv (bias)
          + D_MODEL * D_MODEL + D_MODEL             # attention proj
          + 2 * (D_MODEL * D_MODEL + D_MODEL))      # MLP, ratio 1
JOINT_PROJECTIONS = 3 * _geu(D_MODEL, D_JOINT)
ANCHORS = 3 * K * D_MODEL + 3 * K * D_JOINT         # input + joint space


def test_parameter_count_default():
  m = nnx.eval_shape(lambda: S.swetha2023_tva(rngs=nnx.Rngs(0)))
  expected = (TOKEN_PROJECTIONS + TOKEN_NORMS + FUSION + JOINT_PROJECTIONS
              + ANCHORS)
  assert expected == 376_619_008
  assert _count(m) == expected
  # The authors' PyTorch module holds, besides these, a final LayerNorm of
  # the fusion transformer it never applies (2 x 4096), an unused bias and a
  # frozen anc_dist buffer per anchor set (6 x 2 x 64), and the DAVEnet audio
  # CNN, none of which this model has.


def test_parameter_count_per_modality():
  m = nnx.eval_shape(lambda: S.swetha2023_tva_per_modality(rngs=nnx.Rngs(0)))
  assert _count(m) == 376_619_008 + 2 * FUSION


def test_default_size_output_shapes():
  m = nnx.eval_shape(lambda: S.swetha2023_tva(rngs=nnx.Rngs(0)))
  x = {"text": jax.ShapeDtypeStruct((2, 20, 300), jnp.float32),
       "text_mask": jax.ShapeDtypeStruct((2, 20), jnp.bool_),
       "video": jax.ShapeDtypeStruct((2, 12, 4096), jnp.float32),
       "video_mask": jax.ShapeDtypeStruct((2, 12), jnp.bool_),
       "audio": jax.ShapeDtypeStruct((2, 12, 4096), jnp.float32),
       "audio_mask": jax.ShapeDtypeStruct((2, 12), jnp.bool_)}
  out = nnx.eval_shape(lambda model, x: model(**x), m, x)
  for f in ("text", "video", "audio", "text_video", "text_audio", "video_audio"):
    assert getattr(out, f).shape == (2, 6144)
  assert out.input_sim["audio"].shape == (2, 64)
  assert out.joint_sim["text"]["video"].shape == (2, 64)
  assert out.input_anchors["video"].shape == (64, 4096)
  res = jax.eval_shape(S.swetha2023_loss, out, S.init_sspc_queue())
  assert res.loss.shape == () and res.queue.joint["text"].shape == (5500, 6144)


# ----------------------------------------------------------------------------
# Forward, gradient and loss values.
# ----------------------------------------------------------------------------


def test_forward_matches_official_structure(model, step):
  _, out, _ = step
  ref, nonempty, in_embed, joint_embed = forward_ref(model, _inputs(0))
  for m in MODS:
    np.testing.assert_array_equal(out.nonempty[m], nonempty[m])
    assert_rel_close(getattr(out, m), ref[m], name=m)
    assert_rel_close(out.input_embed[m], in_embed[m], name=f"in_{m}")
    assert_rel_close(out.joint_embed[m], joint_embed[m], name=f"joint_{m}")
    assert_rel_close(out.input_sim[m], ref["input_sim"][m], name=f"sim_{m}")
    for n in MODS:
      assert_rel_close(out.joint_sim[n][m], ref["joint_sim"][n][m],
                       name=f"joint_sim_{n}_{m}")
  for f in ("text_video", "text_audio", "video_audio"):
    assert_rel_close(getattr(out, f), ref[f], name=f)


def test_full_loss_matches_reference_and_gradients_are_finite(step):
  res, out, grads = step
  queue = _queue(1, QUEUE)
  want_c, want_pairs = contrastive_ref(out, S.AUTHORS_CONTRASTIVE_WEIGHTS)
  want_s, want_terms = sspc_ref(out, queue)
  assert_rel_close(res.metrics["contrastive"], want_c, name="contrastive")
  for name, v in want_pairs.items():
    assert_rel_close(res.metrics[name], v, name=name)
  for name, v in want_terms.items():
    assert_rel_close(res.metrics[name], v, name=name)
  assert_rel_close(res.metrics["sspc"], want_s, name="sspc")
  assert bool(res.metrics["sspc_active"])
  assert_rel_close(res.loss, want_c + want_s, name="loss")
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  # Every parameter receives a gradient, the anchors through the SSPC terms.
  for m in MODS:
    assert np.abs(grads["input_anchors"][m][...]).max() > 0
    assert np.abs(grads["joint_anchors"][m][...]).max() > 0
  assert np.abs(grads["fusion"]["masking_token"][...]).max() > 0


def test_sspc_waits_for_a_full_queue(model, step):
  res_full, _, _ = step
  res, _, grads = _train_step(*nnx.split(model, nnx.Param, ...), _inputs(0),
                              _queue(1, QUEUE - 1))
  assert not bool(res.metrics["sspc_active"])
  assert float(res.metrics["sspc"]) == 0.0
  assert float(res.loss) == float(res.metrics["contrastive"])
  np.testing.assert_allclose(res.metrics["contrastive"],
                             res_full.metrics["contrastive"], rtol=1e-6)
  for m in MODS:  # no SSPC term, so nothing reaches the anchors
    np.testing.assert_array_equal(grads["input_anchors"][m][...], 0)
  assert int(res.queue.count) == QUEUE


def _fake_out(seed, b):
  rng = np.random.default_rng(seed)
  return S.Swetha2023Output(
      text=None, video=None, audio=None, text_video=None, text_audio=None,
      video_audio=None, nonempty={},
      input_embed={m: jnp.asarray(rng.standard_normal((b, 8)), jnp.float32)
                   for m in MODS},
      joint_embed={m: jnp.asarray(rng.standard_normal((b, 12)), jnp.float32)
                   for m in MODS},
      input_anchors={}, joint_anchors={}, input_sim={}, joint_sim={})


def test_queue_is_fifo_with_fixed_size():
  q = S.init_sspc_queue(8, 12, queue_len=QUEUE)
  assert int(q.count) == 0 and q.input["text"].shape == (QUEUE, 8)
  np.testing.assert_array_equal(q.joint["audio"], 0)
  batches = [_fake_out(s, B) for s in range(3)]
  q1 = S.update_sspc_queue(q, batches[0])
  q2 = S.update_sspc_queue(q1, batches[1])
  q3 = S.update_sspc_queue(q2, batches[2])
  for space, d in (("input", 8), ("joint", 12)):
    for m in MODS:
      b = [np.asarray(getattr(o, f"{space}_embed")[m]) for o in batches]
      np.testing.assert_array_equal(getattr(q1, space)[m][-B:], b[0])
      np.testing.assert_array_equal(getattr(q1, space)[m][:QUEUE - B], 0)
      np.testing.assert_array_equal(getattr(q2, space)[m],
                                    np.concatenate([b[0][-2:], b[1]]))
      np.testing.assert_array_equal(getattr(q3, space)[m],
                                    np.concatenate([b[1][-2:], b[2]]))
      assert getattr(q3, space)[m].shape == (QUEUE, d)
  assert [int(x.count) for x in (q1, q2, q3)] == [4, 6, 6]
  # The queue is a pytree: it goes through jit as it is.
  q4 = jax.jit(S.update_sspc_queue)(q3, batches[0])
  np.testing.assert_array_equal(q4.input["text"][-B:],
                                batches[0].input_embed["text"])


def test_padded_tokens_do_not_change_embeddings(model, step):
  _, out, _ = step
  x = _inputs(0)
  garbage = _inputs(5)
  for m in MODS:  # new values wherever the mask is False, NaN and inf too
    keep = x[f"{m}_mask"][..., None]
    garbage[m] = np.where(keep, x[m], 50 * garbage[m])
    assert not np.array_equal(garbage[m], x[m])
  garbage["text"][1, 2, :2] = np.nan  # sample 1 has no text at all
  garbage["video"][1, 2:, 0] = np.nan, np.inf  # masked: [1, 1, 0, 0]
  # The training step's program again (no new compilation), other padding.
  _, other, grads = _train_step(*nnx.split(model, nnx.Param, ...), garbage,
                                _queue(1, QUEUE))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  for f in ("text", "video", "audio", "text_video", "text_audio", "video_audio"):
    np.testing.assert_array_equal(getattr(other, f), getattr(out, f))
  for m in MODS:
    np.testing.assert_array_equal(other.input_sim[m], out.input_sim[m])


def test_batch_equals_per_sample_with_extra_padding(model, step):
  # Eval mode (dropout is 0 anyway, so the training step's output serves).
  _, batch, _ = step
  x = _inputs(0)
  padded = _inputs(7, extra=2)  # two more masked (garbage) tokens per modality
  for i in range(B):
    one = {}
    for m in MODS:
      tok = padded[m][i:i + 1].copy()
      tok[:, :LENGTHS[m]] = x[m][i:i + 1]
      one[m], one[f"{m}_mask"] = tok, padded[f"{m}_mask"][i:i + 1]
      one[f"{m}_mask"][:, :LENGTHS[m]] = x[f"{m}_mask"][i:i + 1]
    single = _apply(model, one)
    for f in ("text", "video", "audio", "text_video", "text_audio",
              "video_audio"):
      assert_rel_close(getattr(single, f)[0], getattr(batch, f)[i], tol=1e-5,
                       name=f"{f}[{i}]")
    for m in MODS:
      assert_rel_close(single.input_sim[m][0], batch.input_sim[m][i], tol=1e-5,
                       name=f"input_sim[{m}][{i}]")


def test_to_linen(model, step):
  _, out, _ = step
  linen_model = nnx.bridge.to_linen(S.swetha2023_tva, **SMALL)
  x = _inputs(0)
  # Linen init, traced only (a real init would run the forward eagerly);
  # the variables then take the fixture's parameters, whose tree must match.
  abstract = jax.eval_shape(lambda k: linen_model.init(k, **x),
                            jax.random.key(0))
  variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
  assert jax.tree.structure(variables) == jax.tree.structure(abstract)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, abstract)
  linen_out = jax.jit(linen_model.apply)(variables, **x)
  for f in ("text", "video", "audio", "text_video", "text_audio", "video_audio"):
    assert_rel_close(getattr(linen_out, f), getattr(out, f), tol=1e-6, name=f)
  assert_rel_close(linen_out.joint_sim["audio"]["text"],
                   out.joint_sim["audio"]["text"], tol=1e-6, name="joint_sim")


# ----------------------------------------------------------------------------
# Options and errors (traced only: jax.eval_shape).
# ----------------------------------------------------------------------------


def test_cross_modal_and_modality_specific_switches():
  m = nnx.eval_shape(lambda: S.swetha2023_tva(**SMALL, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda model, x: model(**x), m, _inputs(0))
  queue = S.init_sspc_queue(8, 12, queue_len=QUEUE)
  diagonal = {f"loss_pair_{r}_{c}" for r, c in
              ((1, 1), (2, 2), (3, 3), (4, 1), (5, 2), (6, 3))}
  for cm, ms, want in ((1.0, 1.0, set(f"loss_pair_{r}_{c}" for r, c in
                                      OFFICIAL_TERMS)),
                       (0.0, 1.0, diagonal),
                       (1.0, 0.0, {f"loss_pair_{r}_{c}" for r, c in
                                   OFFICIAL_TERMS} - diagonal)):
    res = jax.eval_shape(lambda o, q: S.swetha2023_loss(
        o, q, cross_modal_weight=cm, modality_specific_weight=ms), out, queue)
    assert {k for k in res.metrics if k.startswith("loss_pair")} == want


def test_per_modality_variant_matches_official_structure():
  m = S.swetha2023_tva_per_modality(**SMALL, rngs=nnx.Rngs(1))
  x = _inputs(0)
  out = _apply(m, x)
  assert out.text_video is None and out.video_audio is None
  ref, _, in_embed, _ = forward_ref(m, x, shared=False)
  for f in MODS:
    assert_rel_close(getattr(out, f), ref[f], name=f)
    assert_rel_close(out.input_embed[f], in_embed[f], name=f"in_{f}")
    assert_rel_close(out.joint_sim["video"][f], ref["joint_sim"]["video"][f],
                     name=f"joint_sim_video_{f}")
  # Without fused pairs the contrastive loss covers t-v, t-a, v-a only.
  res = jax.eval_shape(lambda o, q: S.swetha2023_loss(o, q), out,
                       S.init_sspc_queue(8, 12, queue_len=QUEUE))
  pairs = {k for k in res.metrics if k in S.AUTHORS_CONTRASTIVE_WEIGHTS}
  assert pairs == {"tv", "ta", "va"}


def test_bad_arguments_raise():
  m = nnx.eval_shape(lambda: S.swetha2023_tva(**SMALL, rngs=nnx.Rngs(0)))
  x = _inputs(0)
  call = lambda **kw: nnx.eval_shape(lambda model, x: model(**x), m,
                                     {**x, **kw})
  with pytest.raises(ValueError, match=r"video must have shape \[B, n_video, video_dim\]"):
    call(video=x["video"][..., :3])
  with pytest.raises(ValueError, match=r"audio_mask must have shape \[B, n_audio\]"):
    call(audio_mask=x["audio_mask"][:, :2])
  with pytest.raises(ValueError, match="video must have the batch size of text"):
    call(video=x["video"][:2], video_mask=x["video_mask"][:2])
  with pytest.raises(ValueError, match="n_anchors must be a positive integer"):
    S.Swetha2023Model(n_anchors=0, rngs=nnx.Rngs(0))
  out = nnx.eval_shape(lambda model, x: model(**x), m, x)
  queue = S.init_sspc_queue(8, 12, queue_len=QUEUE)
  traced = lambda fn, *args, **kw: jax.eval_shape(
      lambda o, q: fn(o, q, **kw), *args)
  with pytest.raises(ValueError, match=r"queue.input\['text'\] must have shape"):
    traced(S.swetha2023_loss, out, S.init_sspc_queue(9, 12, queue_len=QUEUE))
  with pytest.raises(ValueError, match="weights has unknown pairs"):
    jax.eval_shape(lambda o: S.combinatorial_contrastive_loss(
        o, weights={"tx": 1.0}), out)
  with pytest.raises(ValueError, match="weights must be 6 rows of 3"):
    traced(S.sspc_loss, out, queue, weights=((1.0, 1.0, 1.0),))
  with pytest.raises(ValueError, match="lambda_nce must be a finite number >= 0"):
    traced(S.swetha2023_loss, out, queue, lambda_nce=-1.0)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    S.norm_softmax_loss(np.eye(3), temperature=0.0)
