"""Tests of ``capsjax.data.embedded_text``: the shard format and its source.

NumPy only (no torch): shards are written with random "embeddings" whose
expected padded records are built by hand.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from capsjax.data import embedded_text as et
from capsjax.data import pipeline
from capsjax.data.errors import DatasetUnavailableError

L, D = 3, 4
LENGTHS = [[2, 1, 3], [1, 4]]                     # two shards
SST5 = [[4, 2, 0], [1, 3]]
SST2 = [[1, -1, 0], [0, 1]]


def _embeddings(rng, lengths):
  return [rng.normal(size=(n, L, D)).astype(np.float32) for n in lengths]


@pytest.fixture()
def data(tmp_path):
  rng = np.random.default_rng(0)
  embs = [_embeddings(rng, n) for n in LENGTHS]
  entries = [et.write_shard(str(tmp_path), "train", k, embs[k],
                            {"sst5": SST5[k], "sst2": SST2[k]},
                            texts=[f"t{k}{i}" for i in range(len(embs[k]))],
                            dtype="float32")
             for k in range(2)]
  et.write_index(str(tmp_path), model="toy", n_layers=L, d_emb=D,
                 dtype="float32", labels=("sst5", "sst2"),
                 splits={"train": entries})
  flat = [e for shard in embs for e in shard]
  return str(tmp_path), flat


def test_index_describes_the_shards(data):
  path, _ = data
  with open(os.path.join(path, "index.json")) as f:
    index = json.load(f)
  assert index["format"] == et.FORMAT and index["max_tokens"] == 4
  split = index["splits"]["train"]
  assert split["num_records"] == 5 and split["num_tokens"] == 11
  assert [s["embeddings"] for s in split["shards"]] == ["train-00000.npy",
                                                         "train-00001.npy"]
  assert np.load(os.path.join(path, "train-00000.npy")).shape == (6, L, D)


def test_records_are_padded_masked_and_labelled(data):
  path, flat = data
  src = et.EmbeddedTextSource(path, "train", label_set="sst5")
  assert len(src) == 5 and src.max_tokens == 4
  for i, (ref, label) in enumerate(zip(flat, SST5[0] + SST5[1])):
    embs, mask, y = src[i]
    n = len(ref)
    assert embs.shape == (4, L, D) and embs.dtype == np.float32
    np.testing.assert_array_equal(embs[:n], ref)
    assert not embs[n:].any()
    np.testing.assert_array_equal(mask, [1.0] * n + [0.0] * (4 - n))
    assert y == label
  with pytest.raises(IndexError):
    src[5]


def test_label_set_drops_excluded_records(data):
  path, flat = data
  src = et.EmbeddedTextSource(path, "train", label_set="sst2", max_tokens=6,
                              dtype=np.float16)
  assert len(src) == 4 and src.labels.tolist() == [1, 0, 0, 1]
  embs, mask, y = src[1]  # the third record: the second one is neutral
  assert embs.shape == (6, L, D) and embs.dtype == np.float16 and y == 0
  np.testing.assert_array_equal(embs[:3], flat[2].astype(np.float16))
  assert mask.sum() == 3


def test_bad_arguments_are_named(data, tmp_path):
  path, _ = data
  with pytest.raises(ValueError, match="max_tokens = 3 .* 4 tokens"):
    et.EmbeddedTextSource(path, "train", label_set="sst5", max_tokens=3)
  with pytest.raises(ValueError, match="split must be one of"):
    et.EmbeddedTextSource(path, "dev", label_set="sst5")
  with pytest.raises(ValueError, match="label_set must be one of"):
    et.EmbeddedTextSource(path, "train", label_set="sst3")
  with pytest.raises(DatasetUnavailableError,
                     match="index.json.*\n.*\n.*capsjax.data.sst_embed"):
    et.EmbeddedTextSource(str(tmp_path / "none"), "train", label_set="sst5")
  with pytest.raises(DatasetUnavailableError, match="config.data.dir is empty"):
    et.read_index("")


def test_writer_checks_its_input(tmp_path):
  ok = [np.zeros((2, L, D), np.float32)]
  with pytest.raises(ValueError, match=r"embeddings\[1\] must be"):
    et.write_shard(str(tmp_path), "x", 0, ok + [np.zeros((2, L, D + 1))],
                   {"a": [0, 0]})
  with pytest.raises(ValueError, match="float16 holds"):
    et.write_shard(str(tmp_path), "x", 0, [np.full((1, L, D), 1e5)], {"a": [0]})
  with pytest.raises(ValueError, match="shape \\(1,\\)"):
    et.write_shard(str(tmp_path), "x", 0, ok, {"a": [0, 1]})
  assert not os.listdir(tmp_path)  # nothing half-written


def test_resume_detection(data):
  path, _ = data
  assert et.shard_complete(path, "train", 1, 2)["num_tokens"] == 5
  assert et.shard_complete(path, "train", 1, 3) is None  # other shard size
  assert et.shard_complete(path, "train", 2, 2) is None


def test_pickles_and_feeds_a_resumable_multi_host_pipeline(data):
  path, _ = data
  src = pickle.loads(pickle.dumps(et.EmbeddedTextSource(
      path, "train", label_set="sst5")))
  whole = list(pipeline.batched_dataset(src, 2, seed=3, num_epochs=2,
                                        process_index=0, process_count=1))
  hosts = [list(pipeline.batched_dataset(src, 2, seed=3, num_epochs=2,
                                         process_index=p, process_count=2))
           for p in range(2)]
  assert len(whole) == 5 and whole[0][0].shape == (2, 4, L, D)
  for k, batch in enumerate(whole):
    for field in range(3):
      np.testing.assert_array_equal(
          np.concatenate([hosts[0][k][field], hosts[1][k][field]]), batch[field])
  it = pipeline.batched_iterator(src, 2, seed=3, process_index=0,
                                 process_count=1)
  next(it)
  state = it.get_state()
  expected = next(it)
  again = pipeline.batched_iterator(src, 2, seed=3, process_index=0,
                                    process_count=1)
  again.set_state(state)
  for a, b in zip(next(again), expected):
    np.testing.assert_array_equal(a, b)
