"""Tests of the multimodal feature format, converter and synthetic clips."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from capsjax.data import digits
from capsjax.data import multimodal as mm
from capsjax.data import multimodal_convert as mc
from capsjax.data.errors import DatasetUnavailableError
from capsjax.data.synthetic_multimodal import SyntheticTriModal

_SYN = {"num_examples": 24, "dims": {"video": 6, "audio": 4, "text": 3},
        "min_lens": {"video": 1, "audio": 2, "text": 1},
        "max_lens": {"video": 5, "audio": 4, "text": 3}, "seed": 3}


def _clips():
  rng = np.random.default_rng(0)
  return [
      {"video": rng.normal(size=(3, 4)), "text": rng.normal(size=(2, 2))},
      {"video": rng.normal(size=(6, 4)), "text": np.zeros((0, 2))},  # cut; empty
      {"video": rng.normal(size=(1, 4)), "text": rng.normal(size=(4, 2))},
  ]


# ---------------------------------------------------------------- format


def test_round_trip_masks_labels_and_meta(tmp_path):
  clips = _clips()
  d = str(tmp_path / "split")
  mm.write_feature_clips(d, clips, max_lens={"video": 4}, ids=["a", "b", "c"],
                         labels=[2, 0, 1], parts={"video": [3, 1]},
                         num_queries=5, source="test")
  src = mm.FeatureClipSource(d)
  assert len(src) == 3 and src.ids == ["a", "b", "c"] and src.num_queries == 5
  assert src.dims == {"video": 4, "text": 2}
  assert src.max_lens == {"video": 4, "text": 4}    # text: longest clip
  assert src.parts == {"video": [3, 1], "text": None}
  for i, clip in enumerate(clips):
    r = src[i]
    assert set(r) == {"video", "video_mask", "text", "text_mask", "label"}
    assert r["label"] == [2, 0, 1][i] and r["label"].dtype == np.int32
    for m in ("video", "text"):
      t = min(len(clip[m]), src.max_lens[m])
      assert r[m].dtype == np.float32 and r[f"{m}_mask"].dtype == bool
      np.testing.assert_array_equal(r[f"{m}_mask"], np.arange(src.max_lens[m]) < t)
      np.testing.assert_allclose(r[m][:t], clip[m][:t], rtol=1e-6)
      assert not r[m][t:].any()
  with open(os.path.join(d, "meta.json")) as f:
    meta = json.load(f)
  assert meta["format"] == mm.FORMAT and meta["version"] == mm.VERSION
  assert meta["source"] == "test" and meta["has_labels"]
  # Only some modalities; the arrays are memory-mapped.
  video_only = mm.FeatureClipSource(d, modalities=["video"])
  assert set(video_only[1]) == {"video", "video_mask", "label"}
  assert isinstance(video_only._features["video"], np.memmap)
  # Pickles (grain workers) by path, not by copying the arrays.
  blob = pickle.dumps(video_only)
  assert len(blob) < 1000
  np.testing.assert_array_equal(pickle.loads(blob)[2]["video"],
                                video_only[2]["video"])


def test_float16_storage_and_writer_errors(tmp_path):
  d = str(tmp_path / "half")
  mm.write_feature_clips(d, _clips(), dtype="float16")
  r = mm.FeatureClipSource(d)[0]
  assert r["video"].dtype == np.float32
  np.testing.assert_array_equal(
      r["video"][:3], _clips()[0]["video"].astype(np.float16).astype(np.float32))
  with pytest.raises(FileExistsError):
    mm.write_feature_clips(d, _clips())
  w = mm.FeatureClipWriter(str(tmp_path / "w"), {"x": mm.ModalitySpec(2, 3)}, 2)
  with pytest.raises(ValueError, match="modalities"):
    w.add("0", {"y": np.zeros((1, 2))})
  with pytest.raises(ValueError, match=r"features\['x'\] must have shape"):
    w.add("0", {"x": np.zeros((1, 3))})
  with pytest.raises(ValueError, match="not finite"):
    w.add("0", {"x": np.full((1, 2), np.nan)})
  w.add("0", {"x": np.zeros((1, 2))})
  with pytest.raises(ValueError, match="1 of 2 clips"):
    w.close()
  with pytest.raises(ValueError, match="parts"):
    mm.ModalitySpec(4, 2, parts=[3, 2])
  with pytest.raises(ValueError, match="modality names"):
    mm.FeatureClipWriter(str(tmp_path / "v"), {"a_mask": mm.ModalitySpec(2, 3)}, 1)


def test_missing_or_incomplete_split_names_the_converter(tmp_path):
  with pytest.raises(DatasetUnavailableError, match="multimodal convert"):
    mm.FeatureClipSource(str(tmp_path / "nothing"))
  # An interrupted conversion: arrays but no meta.json.
  w = mm.FeatureClipWriter(str(tmp_path / "half"), {"x": mm.ModalitySpec(2, 3)}, 1)
  del w
  with pytest.raises(DatasetUnavailableError, match="meta.json"):
    mm.FeatureClipSource(str(tmp_path / "half"))
  d = str(tmp_path / "ok")
  mm.write_feature_clips(d, _clips())
  with pytest.raises(ValueError, match="modality 'audio' is not"):
    mm.FeatureClipSource(d, modalities=["audio"])


# ------------------------------------------------------------ transforms


def test_pool_and_normalize_records_by_hand():
  record = {
      "video": np.array([[3, 4, 1], [0, 8, -2], [9, 9, 9]], np.float32),
      "video_mask": np.array([True, True, False]),
      "audio": np.array([[1, 2], [3, 6]], np.float32),
      "audio_mask": np.array([True, True]),
      "text": np.zeros((2, 2), np.float32), "text_mask": np.zeros(2, bool),
      "label": np.int32(4)}
  pooled = mm.pool_record(record)
  np.testing.assert_array_equal(pooled["video"], [3, 8, 1])   # max, valid only
  np.testing.assert_array_equal(pooled["audio"], [2, 4])      # mean
  np.testing.assert_array_equal(pooled["text"], [0, 0])       # empty -> zeros
  assert pooled["label"] == 4 and "video_mask" not in pooled
  # Per-part normalisation after pooling: [3, 8] / |.| = [.35, .94]; [1] -> 1.
  parted = mm.pool_record(record, parts={"video": [2, 1]}, how={"audio": "max"})
  np.testing.assert_allclose(parted["video"], [3 / 73**.5, 8 / 73**.5, 1],
                             rtol=1e-6)
  np.testing.assert_array_equal(parted["audio"], [3, 6])
  normed = mm.normalize_record(record, parts={"video": [2, 1]})
  np.testing.assert_allclose(normed["video"][0], [0.6, 0.8, 1.0], rtol=1e-6)
  np.testing.assert_allclose(normed["video"][1], [0, 1, -1], rtol=1e-6)
  np.testing.assert_array_equal(normed["audio"], record["audio"])


# ------------------------------------------------------------- converter


def _write_word2vec_bin(path, vectors):
  dim = len(next(iter(vectors.values())))
  with open(path, "wb") as f:
    f.write(f"{len(vectors)} {dim}\n".encode())
    f.writelines(word.encode() + b" " + np.asarray(vec, "<f4").tobytes()
                 + b"\n" for word, vec in vectors.items())


class _TensorLike:
  """Stands for the torch tensors of some AVLnet pickles (``.numpy()``)."""

  def __init__(self, array):
    self._array = array

  def numpy(self):
    return self._array


def test_converter_on_an_eao_youcook_style_pickle(tmp_path):
  rng = np.random.default_rng(1)
  vectors = {"cut": [1, 0, 0], "the": [0, 1, 0], "onion's": [0, 0, 1],
             "Add": [2, 2, 2], "unused": [5, 5, 5]}
  _write_word2vec_bin(tmp_path / "w2v.bin", vectors)
  clips = [
      {"id": "v1", "2d_full": rng.normal(size=(2, 4)),      # 1 fps
       "3d_full": rng.normal(size=(3, 5)),                  # 1.5 fps
       "audio": rng.normal(size=(6, 7)),                    # [mels, frames]
       "caption": "cut the onion's skin, cut!"},
      {"id": "v2", "3d_full": rng.normal(size=(3, 5)),      # no 2D: skipped
       "audio": rng.normal(size=(6, 7)), "caption": "cut"},
      {"id": "v3", "2d_full": rng.normal(size=(4, 4)),
       "3d_full": rng.normal(size=(1, 5)),
       "audio": _TensorLike(rng.normal(size=(6, 2))),
       "caption": "xyz Add"},
  ]
  with open(tmp_path / "youcook.pkl", "wb") as f:
    pickle.dump(clips, f)
  out = str(tmp_path / "youcook_val")
  assert mm.main(["convert", f"--input={tmp_path / 'youcook.pkl'}",
                  f"--output={out}", f"--word_vectors={tmp_path / 'w2v.bin'}",
                  "--max_words=3", "--max_audio_frames=5"]) == 0
  src = mm.FeatureClipSource(out)
  assert src.ids == ["v1", "v3"] and src.num_queries == 3   # v2 is a miss
  assert src.dims == {"video": 9, "audio": 6, "text": 3}
  assert src.parts["video"] == [4, 5]
  assert src.max_lens == {"video": 3, "audio": 5, "text": 3}
  r = src[0]
  # 2D (2 steps) resampled to the 3 3D steps: floor(j * 2 / 3) = 0, 0, 1.
  want_video = np.concatenate([clips[0]["2d_full"][[0, 0, 1]],
                               clips[0]["3d_full"]], axis=1)
  np.testing.assert_allclose(r["video"], want_video, rtol=1e-6)
  # Audio time-major, cut to 5 frames.
  np.testing.assert_allclose(r["audio"], clips[0]["audio"].T[:5], rtol=1e-6)
  assert r["audio_mask"].all()
  # Words cut, the, onion's (skin: no vector), cut -> the first 3 kept.
  np.testing.assert_array_equal(r["text"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
  r = src[1]
  np.testing.assert_array_equal(r["video_mask"], [True, False, False])
  np.testing.assert_allclose(
      r["video"][0], np.concatenate([clips[2]["2d_full"][0],
                                     clips[2]["3d_full"][0]]), rtol=1e-6)
  np.testing.assert_array_equal(r["audio_mask"], [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(r["text"][0], [2, 2, 2])       # xyz unknown
  np.testing.assert_array_equal(r["text_mask"], [1, 0, 0])


def test_converter_on_an_msrvtt_style_pickle_with_text_vectors(tmp_path):
  (tmp_path / "w2v.txt").write_text("2 2\nman 1 0\nsings 0 1\n")
  clips = [{"id": "video7", "2d": np.ones(4), "3d": 2 * np.ones(4),
            "audio": np.zeros((3, 2)), "caption": ["a man sings", "sings"],
            "category": 5}]
  with open(tmp_path / "msrvtt.pkl", "wb") as f:
    pickle.dump(clips, f)
  src = mc.convert_pickle(str(tmp_path / "msrvtt.pkl"), str(tmp_path / "out"),
                          word_vectors=str(tmp_path / "w2v.txt"),
                          label_key="category", num_queries=4)
  # One record per caption; pooled 2D/3D become one-token sequences.
  assert src.ids == ["video7#0", "video7#1"] and src.num_queries == 4
  np.testing.assert_array_equal(src[0]["video"], [[1, 1, 1, 1, 2, 2, 2, 2]])
  np.testing.assert_array_equal(src[0]["text"][:2], [[1, 0], [0, 1]])
  np.testing.assert_array_equal(src[1]["text_mask"][:2], [True, False])
  assert src[1]["label"] == 5
  assert mc.load_word_vectors(str(tmp_path / "w2v.txt"), ["man"]).keys() == {"man"}


def test_howto100m_converter_cuts_fixed_clips(tmp_path):
  rng = np.random.default_rng(2)
  root = tmp_path / "feats"
  (root / "abc" / "vid1").mkdir(parents=True)
  feat_2d = rng.normal(size=(20, 4))        # 20 s at 1 / s
  feat_3d = rng.normal(size=(30, 5))        # at 1.5 / s
  mel = rng.normal(size=(3, 2000))          # 20 s at 100 frames / s
  np.savez(root / "abc" / "vid1" / "vid1_2d.npz", features=feat_2d)
  np.savez(root / "abc" / "vid1" / "vid1.npz", features=feat_3d)
  np.savez(root / "abc" / "vid1" / "vid1_spec.npz", mel)
  (root / "abc" / "vid2").mkdir()           # vid2 has no audio: skipped
  np.savez(root / "abc" / "vid2" / "vid2_2d.npz", features=feat_2d)
  np.savez(root / "abc" / "vid2" / "vid2_3d.npz", features=feat_3d)
  (tmp_path / "videos.csv").write_text("path\nNone/abc/vid1\nabc/vid2\n")
  captions = {"vid1": {"start": [0.0, 3.0, 10.0], "end": [2.0, 9.0, 19.0],
                       "text": ["add salt", "stir the pot", "serve hot"]},
              "vid2": {"start": [0.0], "end": [9.0], "text": ["salt"]}}
  with open(tmp_path / "captions.pkl", "wb") as f:
    pickle.dump(captions, f)
  vocab = ["add", "salt", "stir", "the", "pot", "serve", "hot"]
  words = {w: [float(k)] for k, w in enumerate(vocab, start=1)}
  kwargs = {"features_2d": str(root), "audio": str(root),
            "word_vectors": words, "max_audio_frames": 1000}
  src = mc.convert_howto100m(str(tmp_path / "videos.csv"),
                             str(tmp_path / "captions.pkl"),
                             str(tmp_path / "all"), clips_per_video=None,
                             **kwargs)
  # Segment 0 (2 s) can only grow forward: [0, 9]. Segment 1 (6 s): adding
  # segment 0 gives 9 s, adding segment 2 16 s -> [0, 9]. Segment 2: 9 s.
  assert src.ids == ["vid1@0-9", "vid1@0-9", "vid1@10-19"]
  assert src.max_lens == {"video": 12, "audio": 1000, "text": 20}
  np.testing.assert_array_equal(src[0]["text"][:5, 0], [1, 2, 3, 4, 5])
  np.testing.assert_array_equal(src[2]["text_mask"].sum(), 2)
  r = src[2]
  # Video [10, 19] s: 2D rows 10..19 (10), 3D rows 15..28 (14), kept 12.
  src_2d = 10 + np.floor(np.arange(14) * 10 / 14).astype(int)
  want = np.concatenate([feat_2d[src_2d], feat_3d[15:29]], axis=1)[:12]
  np.testing.assert_allclose(r["video"], want, rtol=1e-3, atol=1e-3)  # fp16
  # Audio frames floor((t * 16000 - 200) / 160): 998 .. 1898.
  assert r["audio_mask"].sum() == 900
  np.testing.assert_allclose(r["audio"][:900], mel[:, 998:1898].T,
                             rtol=1e-3, atol=1e-3)
  assert src[0]["audio_mask"].sum() == 898              # from frame 0
  # One seeded segment per video: reproducible.
  one = [mc.convert_howto100m(str(tmp_path / "videos.csv"),
                              str(tmp_path / "captions.pkl"),
                              str(tmp_path / f"one{k}"), seed=5, **kwargs).ids
         for k in range(2)]
  assert len(one[0]) == 1 and one[0] == one[1]
  # The command line, all segments (0), word vectors from a text file.
  (tmp_path / "w.txt").write_text(
      "".join(f"{w} {v[0]}\n" for w, v in words.items()))
  assert mm.main(["convert_howto100m", f"--csv={tmp_path / 'videos.csv'}",
                  f"--captions={tmp_path / 'captions.pkl'}",
                  f"--features_2d={root}", f"--audio={root}",
                  f"--word_vectors={tmp_path / 'w.txt'}",
                  f"--output={tmp_path / 'cli'}", "--clips_per_video=0"]) == 0
  cli = mm.FeatureClipSource(str(tmp_path / "cli"))
  assert cli.ids == src.ids
  np.testing.assert_array_equal(cli[0]["text"], src[0]["text"])
  assert mm.main(["info", str(tmp_path / "cli")]) == 0


# ------------------------------------------------------------- synthetic


def test_synthetic_layout_determinism_and_disjoint_splits():
  train = SyntheticTriModal("train", **_SYN)
  again = SyntheticTriModal("train", **_SYN)
  test = SyntheticTriModal("test", **_SYN)
  other_seed = SyntheticTriModal("train", **{**_SYN, "seed": 4})
  r = train[5]
  assert set(r) == {"video", "video_mask", "audio", "audio_mask", "text",
                    "text_mask", "label"}
  for m, d in _SYN["dims"].items():
    assert r[m].shape == (_SYN["max_lens"][m], d) and r[m].dtype == np.float32
    t = int(r[f"{m}_mask"].sum())
    assert _SYN["min_lens"][m] <= t <= _SYN["max_lens"][m]
    np.testing.assert_array_equal(r[f"{m}_mask"], np.arange(len(r[m])) < t)
    assert not r[m][t:].any() and np.abs(r[m][:t]).min() > 0
    assert t == train.latent(5).lengths[m]
  assert r["label"] == train.latent(5).label
  # Pure function of (seed, split, index), in any order.
  for i in (7, 0, 5):
    for k, v in train[i].items():
      np.testing.assert_array_equal(v, again[i][k])
  assert not np.array_equal(train[5]["video"], test[5]["video"])
  assert not np.array_equal(train[5]["video"], other_seed[5]["video"])
  # Train and test share no clip (latents), but the concepts are shared.
  z_train = np.stack([train.latent(i).z for i in range(len(train))])
  z_test = np.stack([test.latent(i).z for i in range(len(test))])
  assert np.min(np.abs(z_train[:, None] - z_test[None]).max(-1)) > 1e-6
  np.testing.assert_array_equal(train.centers, test.centers)
  with pytest.raises(IndexError):
    train[len(train)]
  with pytest.raises(ValueError, match="min_lens"):
    SyntheticTriModal(num_examples=2, min_lens={"video": 20, "audio": 1, "text": 1})


def test_synthetic_modalities_share_the_clip():
  # The same clip's text and video agree more than different clips':
  # a linear map fitted on pooled features retrieves far above chance.
  src = SyntheticTriModal("train", num_examples=600, seed=0)
  pooled = [mm.pool_record(src[i]) for i in range(len(src))]
  text = np.stack([p["text"] for p in pooled])
  video = np.stack([p["video"] for p in pooled])
  fit, held = slice(0, 500), slice(500, 600)
  x = np.c_[text, np.ones(len(text))]
  w = np.linalg.lstsq(x[fit], video[fit], rcond=None)[0]
  pred = x[held] @ w
  sim = (pred / np.linalg.norm(pred, axis=1, keepdims=True)) @ (
      video[held] / np.linalg.norm(video[held], axis=1, keepdims=True)).T
  ranks = np.sum(sim > np.diag(sim)[:, None], axis=1)
  assert np.mean(ranks < 10) > 0.25         # chance: 0.1 (seed 0: 0.37)
  assert np.mean(ranks < 1) < 0.9           # but not solved by a linear map


# ------------------------------------------------- grain: resume, hosts


def test_resume_and_host_sharding_through_batched_dataset(tmp_path):
  syn = SyntheticTriModal("train", **_SYN)
  d = str(tmp_path / "syn")
  keys = ("video", "audio", "text")
  with mm.FeatureClipWriter(d, {m: mm.ModalitySpec(_SYN["dims"][m],
                                                   _SYN["max_lens"][m])
                                for m in keys}, len(syn), has_labels=True) as w:
    for i in range(len(syn)):
      r = syn[i]
      w.add(str(i), {m: r[m][r[f"{m}_mask"]] for m in keys}, int(r["label"]))
  src = mm.FeatureClipSource(d)
  # The written split reads back as the synthetic records themselves.
  for k, v in syn[11].items():
    np.testing.assert_array_equal(src[11][k], v)

  make = lambda: digits.batched_iterator(src, 8, seed=2, process_index=0,
                                         process_count=1)
  it = make()
  for _ in range(4):                      # crosses the epoch (3 batches)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  # Two hosts: disjoint halves that stack into the one-host global batch.
  one = digits.batched_dataset(src, 8, seed=2, num_epochs=1, process_index=0,
                               process_count=1)
  hosts = [digits.batched_dataset(src, 8, seed=2, num_epochs=1,
                                  process_index=p, process_count=2)
           for p in range(2)]
  assert len(one) == 3 and all(len(h) == 3 for h in hosts)
  for g in range(3):
    for k in ("video", "text_mask", "label"):
      np.testing.assert_array_equal(
          np.concatenate([hosts[0][g][k], hosts[1][g][k]]), one[g][k])
  labels = np.concatenate([one[g]["label"] for g in range(3)])
  np.testing.assert_array_equal(np.sort(labels), np.sort(src.labels))


def test_default_knobs_are_the_generators_defaults():
  """Configs store ``default_knobs()``: passing them must change nothing."""
  from capsjax.data import synthetic_multimodal
  knobs = synthetic_multimodal.default_knobs()
  assert "num_examples" not in knobs and "dims" not in knobs
  plain = synthetic_multimodal.SyntheticTriModal("test", num_examples=3)
  explicit = synthetic_multimodal.SyntheticTriModal("test", num_examples=3, **knobs)
  for i in range(3):
    a, b = plain[i], explicit[i]
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
