"""Heinsen's real-data paths end to end, tiny: the SST-5/R config on
embedding shards written here in the real format (no transformer needed),
and the smallNORB config on ``tfds.testing.mock_data``."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from capsjax import train as T
from capsjax.data import embedded_text
from capsjax.data.errors import DatasetUnavailableError
from experiments.heinsen2019 import main
from experiments.heinsen2019.configs import smallnorb, sst2r, sst5r

LOOP = {"train.log_every": 1, "train.checkpoint_every": 2,
        "train.progress": False}
L, D = 3, 8
# (sst5 labels, sst2 labels) per split; -1: neutral, not an SST-2 example.
SPLITS = {"train": ([0, 1, 2, 3, 4, 2, 1, 3, 4], [0, 0, -1, 1, 1, -1, 0, 1, 1]),
          "dev": ([4, 2, 0], [1, -1, 0]),
          "test": ([1, 3, 2, 0, 4], [0, 1, -1, 0, 1])}


def _set(config, values):
  for path, value in values.items():
    group, field = path.split(".")
    config[group][field] = value
  return config


def _write_embeddings(path):
  rng = np.random.default_rng(0)
  entries = {}
  for split, (sst5, sst2) in SPLITS.items():
    lengths = rng.integers(1, 6, size=len(sst5))
    embs = [rng.normal(size=(n, L, D)).astype(np.float32) for n in lengths]
    half = len(embs) // 2  # two shards per split
    entries[split] = [
        embedded_text.write_shard(path, split, k, embs[lo:hi],
                                  {"sst5": sst5[lo:hi], "sst2": sst2[lo:hi]})
        for k, (lo, hi) in enumerate([(0, half), (half, len(embs))])]
  embedded_text.write_index(path, model="toy", n_layers=L, d_emb=D,
                            dtype="float16", labels=("sst5", "sst2"),
                            splits=entries)


def test_sst5r_config_trains_on_embedding_shards(tmp_path):
  data = str(tmp_path / "emb")
  _write_embeddings(data)
  config = _set(sst5r.get_config(), {
      **LOOP, "model.n_parts": 4, "model.d_inp": 4, "model.n_iters": 1,
      "data.dir": data, "data.embedding_model": "toy", "data.batch_size": 4,
      "eval.batch_size": 4, "train.num_epochs": 1})
  # num_steps 0 and eval_every -1: one epoch of 9 phrases = 2 steps of 4.
  assert config.train.num_steps == 0 and config.train.eval_every == -1
  workdir = str(tmp_path / "run")
  result = main.run(config, workdir)
  assert result.step == 2 and not result.preempted
  records = T.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2]
  assert all(np.isfinite(r["loss"]) for r in train)
  # Every root sentence counted once: 5 test (2 batches), 3 dev.
  assert result.eval_metrics["count"] == 5
  assert result.eval_metrics["dev_count"] == 3
  assert 0.0 <= result.eval_metrics["accuracy"] <= 1.0
  assert 0.0 <= result.eval_metrics["dev_accuracy"] <= 1.0

  # SST-2/R reads the same shards with the binary labels.
  binary = _set(sst2r.get_config(), {"data.dir": data,
                                     "data.embedding_model": "toy"})
  sources = main._sst_sources(binary)
  assert [len(sources[s]) for s in ("train", "dev", "test")] == [7, 2, 4]
  assert sources["dev"].labels.tolist() == [1, 0]
  with pytest.raises(ValueError, match="model.n_classes is 5, but sst2"):
    main._sst_sources(_set(binary, {"model.n_classes": 5}))
  with pytest.raises(ValueError, match="'toy' embeddings"):
    main._sst_sources(_set(binary, {"model.n_classes": 2,
                                    "data.embedding_model": "gpt2-large"}))


def test_sst_config_without_embeddings_names_the_embed_command(tmp_path):
  config = sst5r.get_config()
  config.data.dir = str(tmp_path / "missing")
  with pytest.raises(DatasetUnavailableError,
                     match="(?s)dataset 'sst'.*capsjax.data.sst_embed"):
    main.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_smallnorb_config_trains_on_mock_tfds_data(tmp_path):
  config = _set(smallnorb.get_config(), {
      **LOOP, "model.n_parts": 2, "model.d_chns": 4, "model.n_iters": 1,
      "data.batch_size": 4, "eval.batch_size": 4, "train.num_steps": 2,
      "train.eval_every": 0, "data.dir": str(tmp_path / "tfds")})
  workdir = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=6):
    result = main.run(config, workdir)
  assert result.step == 2 and not result.preempted
  records = T.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert all(np.isfinite(r["loss"]) for r in records if r["split"] == "train")
  assert result.eval_metrics["count"] == 6  # 2 batches of 4, 2 rows padding
  assert 0.0 <= result.eval_metrics["accuracy"] <= 1.0
