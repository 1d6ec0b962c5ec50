"""SyntheticTriModal(structure="entities"): each clip a set of present
entities with their own properties (the pre-registered multi-entity data)."""

from __future__ import annotations

import numpy as np
import pytest

from capsjax.data.synthetic_multimodal import (
    SyntheticTriModal,
    TriModalEntities,
    default_knobs,
)

_ENT = {"num_examples": 24, "structure": "entities", "seed": 1,
        "dims": {"video": 6, "audio": 5, "text": 4},
        "min_lens": {"video": 3, "audio": 2, "text": 1},
        "max_lens": {"video": 7, "audio": 5, "text": 4}}


def _render(src, m, type_ids, props, nuisance):
  """g_m([t_type, a, u_m]) recomputed from the ground truth (noise 0)."""
  h = np.concatenate([src.type_vectors[type_ids], props,
                      np.broadcast_to(nuisance, (len(type_ids),
                                                 src.distractor_dims))], axis=1)
  w, b, v = src.maps[m]
  return np.tanh(h @ w + b) @ v


def test_layout_masks_and_determinism():
  train = SyntheticTriModal("train", **_ENT)
  again = SyntheticTriModal("train", **_ENT)
  test = SyntheticTriModal("test", **_ENT)
  other_seed = SyntheticTriModal("train", **{**_ENT, "seed": 2})
  for i in range(len(train)):
    r, truth = train[i], train.latent(i)
    assert isinstance(truth, TriModalEntities)
    assert set(r) == {"video", "video_mask", "audio", "audio_mask", "text",
                      "text_mask", "label"}
    assert r["label"].dtype == np.int32 and r["label"].shape == ()
    assert r["label"] == truth.label == truth.types[0]
    for m, d in _ENT["dims"].items():
      assert r[m].shape == (_ENT["max_lens"][m], d)
      assert r[m].dtype == np.float32 and r[f"{m}_mask"].dtype == bool
      t = truth.lengths[m]
      assert _ENT["min_lens"][m] <= t <= _ENT["max_lens"][m]
      np.testing.assert_array_equal(r[f"{m}_mask"], np.arange(len(r[m])) < t)
      assert not r[m][t:].any() and np.abs(r[m][:t]).min() > 0
      assert train.token_sources(i)[m].shape == (t,)
  # A pure function of (seed, split, index), in any order.
  for i in (9, 0, 9, 3):
    for k, v in train[i].items():
      np.testing.assert_array_equal(v, again[i][k])
    np.testing.assert_array_equal(train.latent(i).properties,
                                  again.latent(i).properties)
  assert not np.array_equal(train[5]["video"], test[5]["video"])
  assert not np.array_equal(train[5]["video"], other_seed[5]["video"])
  # Splits share the world (types, maps), not the clips.
  np.testing.assert_array_equal(train.type_vectors, test.type_vectors)
  assert not np.array_equal(train.type_vectors, other_seed.type_vectors)
  assert train.centers is None


def test_entity_sets_are_distinct_types_of_the_documented_sizes():
  src = SyntheticTriModal("train", **{**_ENT, "num_examples": 400})
  sizes, first = [], []
  for i in range(len(src)):
    truth = src.latent(i)
    s = len(truth.types)
    sizes.append(s)
    first.append(truth.label)
    assert len(set(truth.types.tolist())) == s  # distinct types
    assert truth.properties.shape == (s, src.prop_dim)
    assert all(0 <= k < src.n_entity_types for k in truth.types)
  # S ~ U{1..3}: every size appears, about equally often.
  counts = np.bincount(sizes, minlength=4)
  assert counts[0] == 0 and counts[1:].min() > 100
  # The label (first-drawn type) covers the 16 types.
  assert len(set(first)) == src.n_entity_types


def test_noiseless_tokens_are_renderings_of_the_present_entities():
  src = SyntheticTriModal("train", **{**_ENT, "noise": 0.0,
                                      "distractor_tokens": 0.0})
  for i in range(len(src)):
    r, truth, sources = src[i], src.latent(i), src.token_sources(i)
    s = len(truth.types)
    for m in _ENT["dims"]:
      t = truth.lengths[m]
      tokens = r[m][:t]
      # At most S distinct token values per modality: one per entity.
      assert len(np.unique(tokens, axis=0)) <= s
      assert sources[m].min() >= 0 and sources[m].max() < s
      # Each token is g_m([t_k, a_j, u_m]) of the entity it is said to show.
      want = _render(src, m, truth.types[sources[m]],
                     truth.properties[sources[m]], truth.nuisance[m])
      np.testing.assert_allclose(tokens, want, rtol=1e-5, atol=1e-5)


def test_background_tokens_show_no_present_entity():
  src = SyntheticTriModal("train", **{**_ENT, "noise": 0.0,
                                      "distractor_tokens": 1.0})
  for i in range(8):
    r, truth, sources = src[i], src.latent(i), src.token_sources(i)
    for m in _ENT["dims"]:
      assert (sources[m] == -1).all()
      present = _render(src, m, truth.types, truth.properties,
                        truth.nuisance[m])
      tokens = r[m][:truth.lengths[m]]
      gap = np.abs(tokens[:, None] - present[None]).max(-1)
      assert gap.min() > 1e-3   # a fresh property: never a present entity
  # At the default rate about 10 % of the tokens are background.
  src = SyntheticTriModal("train", **{**_ENT, "num_examples": 200})
  bg = np.concatenate([s for i in range(len(src))
                       for s in src.token_sources(i).values()]) == -1
  assert 0.06 < bg.mean() < 0.14


def test_modalities_share_the_entities_not_the_nuisance():
  # Same entity, two modalities of one clip: the noiseless renderings differ
  # only through g_m and u_m, and the sources index one shared set.
  src = SyntheticTriModal("train", **{**_ENT, "num_examples": 60})
  shared = 0
  for i in range(len(src)):
    sources = src.token_sources(i)
    seen = [set(sources[m].tolist()) - {-1} for m in ("video", "text")]
    shared += bool(seen[0] & seen[1])
  assert shared > 40   # most clips show an entity in both


def test_default_latent_structure_and_knobs():
  knobs = default_knobs()
  assert knobs["structure"] == "latent"
  assert {"n_entity_types", "type_dim", "prop_dim", "max_entities"} <= set(knobs)
  latent = SyntheticTriModal("train", num_examples=2)
  assert latent.structure == "latent" and latent.type_vectors is None
  with pytest.raises(ValueError, match="token_sources"):
    latent.token_sources(0)
  ent = SyntheticTriModal("train", num_examples=2, structure="entities")
  assert ent.type_vectors.shape == (16, 8) and ent.prop_dim == 4
  assert ent.max_entities == 3 and "entities" in repr(ent)


@pytest.mark.parametrize("kwargs,match", [
    ({"structure": "entity"}, "structure"),
    ({"structure": "entities", "max_entities": 17}, "max_entities"),
    ({"structure": "entities", "n_entity_types": 0}, "n_entity_types"),
    ({"structure": "entities", "prop_dim": 0}, "prop_dim"),
    ({"structure": "entities", "type_dim": -1}, "type_dim"),
    ({"structure": "entities", "max_entities": 0}, "max_entities"),
    ({"structure": "entities", "noise": -0.1}, "noise"),
    ({"structure": "entities", "distractor_tokens": 1.5}, "distractor_tokens"),
])
def test_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    SyntheticTriModal("train", num_examples=2, **kwargs)


def test_index_out_of_range():
  src = SyntheticTriModal("train", **_ENT)
  with pytest.raises(IndexError):
    src[len(src)]
  with pytest.raises(IndexError):
    src.token_sources(-1)
