"""The multimodal experiments (Duarte et al., Swetha et al.) on real-format
data: each paper's real-data config trains 2 steps on small feature files
written here in ``capsjax.data.multimodal``'s on-disk format and evaluates
on them; missing or mismatched files stop with one clear error; the
routing-vs-baseline comparison runs on a tiny setting."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from capsjax.data import multimodal
from capsjax.data.errors import DatasetUnavailableError
from experiments import _multimodal
from experiments.duarte2021 import compare as duarte_compare
from experiments.duarte2021 import main as duarte_main
from experiments.duarte2021.configs import howto100m as duarte_howto100m
from experiments.duarte2021.configs import synthetic as duarte_synthetic
from experiments.swetha2023 import main as swetha_main
from experiments.swetha2023.configs import howto100m as swetha_howto100m

# Tiny feature widths; video is two concatenated blocks (2D + 3D) as the
# converter writes it.
DIMS = {"video": 6, "audio": 5, "text": 4}
VIDEO_PARTS = [3, 3]
MAX_LENS = {"video": 3, "audio": 4, "text": 5}
LOOP = {"num_steps": 2, "log_every": 1, "eval_every": 0, "checkpoint_every": 2,
        "progress": False}


def _write_split(directory, n, seed, *, labels=False, num_queries=None):
  """``n`` clips of random lengths (>= 1 token, so nothing is empty)."""
  rng = np.random.default_rng(seed)
  clips = []
  for _ in range(n):
    clips.append({m: rng.normal(size=(rng.integers(1, MAX_LENS[m] + 1), d))
                  .astype(np.float32) for m, d in DIMS.items()})
  multimodal.write_feature_clips(
      str(directory), clips, max_lens=MAX_LENS, parts={"video": VIDEO_PARTS},
      labels=list(rng.integers(0, 3, n)) if labels else None,
      num_queries=num_queries)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("features")
  _write_split(root / "howto100m" / "train", 16, 0)
  # 2 of YouCook2's 10 clips "lack features": they count as misses.
  _write_split(root / "youcook2" / "val", 8, 1, num_queries=10)
  _write_split(root / "msrvtt" / "test", 8, 2)
  _write_split(root / "hmdb" / "all", 9, 3, labels=True)
  return str(root)


def _loop(config):
  for k, v in LOOP.items():
    config.train[k] = v
  return config


def _duarte_config(data_dir):
  c = duarte_howto100m.get_config()
  c.model.update(n_caps=4, d1=4, d2=4, d_embed=8, d_hidden=8)
  c.model.input_dims.update(DIMS)
  c.data.dir = data_dir
  c.data.batch_size = 8
  c.eval.batch_size = 8
  return _loop(c)


def _swetha_config(data_dir):
  c = swetha_howto100m.get_config()
  c.model.update(text_dim=DIMS["text"], video_dim=DIMS["video"],
                 audio_dim=DIMS["audio"], embed_dim=8, projection_dim=8,
                 num_heads=2, n_anchors=4)
  c.loss.update(queue_len=16, sk_iters=3)
  c.data.dir = data_dir
  c.data.update(batch_size=8, steps_per_epoch=2)
  c.eval.batch_size = 8
  return _loop(c)


def _check_retrieval(metrics, dataset, directions, *, max_recall=1.0):
  for direction in directions:
    for k in ("R@1", "R@5", "R@10"):
      assert 0.0 <= metrics[f"{dataset}/{direction}/{k}"] <= max_recall
    assert (metrics[f"{dataset}/{direction}/R@1"]
            <= metrics[f"{dataset}/{direction}/R@5"]
            <= metrics[f"{dataset}/{direction}/R@10"])
    for k in ("MedR", "MeanR"):
      assert 1.0 <= metrics[f"{dataset}/{direction}/{k}"] <= 8.0


def test_duarte_real_format_config_trains_and_evaluates(data_dir, tmp_path):
  result = duarte_main.run(_duarte_config(data_dir), str(tmp_path))
  assert result.step == 2 and math.isfinite(result.train_metrics["loss"])
  e = result.eval_metrics
  # 8 clips present of 10 queries: R@10 counts the 8 (all ranks <= 8) / 10.
  _check_retrieval(e, "youcook2", ("t2v", "v2t", "t2va", "va2t"),
                   max_recall=0.8)
  assert e["youcook2/t2v/R@10"] == pytest.approx(0.8)
  _check_retrieval(e, "msrvtt", ("t2v", "v2t", "t2va", "va2t"))
  assert e["msrvtt/t2v/R@10"] == 1.0


def test_swetha_real_format_config_trains_and_evaluates(data_dir, tmp_path):
  config = _swetha_config(data_dir)
  config.eval.retrieval = ("msrvtt/test",)
  config.eval.classification = ("hmdb/all",)
  result = swetha_main.run(config, str(tmp_path))
  assert result.step == 2 and math.isfinite(result.train_metrics["loss"])
  e = result.eval_metrics
  _check_retrieval(e, "msrvtt", ("t2v", "v2t", "t2va", "va2t"))
  # 9 clips of 3 classes: a one-to-one matching gets at least 3 right.
  assert 3 / 9 <= e["hmdb/accuracy"] <= 1.0


def test_missing_feature_splits_are_named_before_anything_is_written(
    data_dir, tmp_path):
  config = _duarte_config(data_dir)
  config.eval.retrieval = ("youcook2/val", "msrvtt/test", "msvd/test")
  with pytest.raises(DatasetUnavailableError,
                     match=r"dataset 'howto100m'.*\n.*msvd/test/meta\.json "
                           r"\(missing\)(.|\n)*capsjax\.data\.multimodal "
                           r"convert"):
    duarte_main.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


def test_feature_width_mismatch_names_the_field(data_dir, tmp_path):
  config = _swetha_config(data_dir)
  config.model.audio_dim = 7
  with pytest.raises(ValueError, match=r"audio features are 5-d.*"
                                       r"--config\.model\.audio_dim=5"):
    swetha_main.run(config, str(tmp_path))


def test_text_video_only_weights_drop_every_audio_term():
  contrastive, sspc = swetha_main.loss_weights(("text", "video"))
  # Only text-video survives; its weight is the authors' 1.0.
  assert contrastive == {"tv": 1.0, "ta": 0.0, "va": 0.0, "t_va": 0.0,
                         "v_ta": 0.0, "a_tv": 0.0}
  # Rows: input text, video, audio, then joint text, video, audio; columns
  # text, video, audio. Audio's row and column are zero, the rest as the
  # authors' (1.0 for every text/video pair).
  expected = ((1.0, 1.0, 0.0), (1.0, 1.0, 0.0), (0.0, 0.0, 0.0),
              (1.0, 1.0, 0.0), (1.0, 1.0, 0.0), (0.0, 0.0, 0.0))
  assert sspc == expected
  full_contrastive, full_sspc = swetha_main.loss_weights(
      ("text", "video", "audio"))
  assert full_contrastive["a_tv"] == 0.1 and full_sspc[2] == (0.1, 0.1, 0.1)
  with pytest.raises(ValueError, match="text and video"):
    swetha_main.loss_weights(("text", "audio"))


def test_retrieval_numbers_names_both_directions():
  # Text i matches clip i; clip 1's text prefers clip 0 (rank 2), so
  # t2v R@1 = 1/2, while each clip's best text is its own: v2t R@1 = 1.
  text = np.array([[1.0, 0.0], [1.0, 0.2]])
  video = np.array([[1.0, -0.1], [0.0, 1.0]])
  out = _multimodal.retrieval_numbers("ds/t2v", text, video)
  assert out["ds/t2v/R@1"] == 0.5 and out["ds/t2v/MedR"] == 1.5
  assert out["ds/v2t/R@1"] == 1.0 and out["ds/v2t/MeanR"] == 1.0
  assert len(out) == 10


def test_compare_trains_every_variant_alike_and_prints_one_table(tmp_path):
  config = duarte_synthetic.get_config()
  config.model.update(n_caps=4, d1=4, d2=4, d_embed=8, d_hidden=8)
  config.data.num_examples = 32
  config.data.batch_size = 16
  config.eval.num_examples = 16
  config.eval.batch_size = 16
  _loop(config)
  rows = duarte_compare.compare(config, str(tmp_path), ["none", "fc"], ["0"])
  assert [r["variant"] for r in rows] == ["none", "fc"]
  for r in rows:
    assert r["chance"] == 1 / 16 and 0 <= r["R@1"] <= r["R@10"] <= 1
    assert 1 <= r["MedR"] <= 16
  saved = [os.path.basename(p) for p in sorted(tmp_path.iterdir())]
  assert saved == ["fc", "none"]
  table = duarte_compare.format_table(rows).splitlines()
  assert table[0].split()[:3] == ["variant", "seed", "R@1"]
  assert table[2].split()[0] == "none" and table[3].split()[0] == "fc"
  assert float(table[2].split()[-2]) == pytest.approx(100 / 16, abs=0.01)
  c = duarte_compare.variant_config(config, "self_attention_baseline")
  assert c.model.architecture == "self_attention" and (
      config.model.architecture == "capsules")  # the original is unchanged
  c = duarte_compare.variant_config(config, "self_attention_primary")
  assert (c.model.routing, c.model.pool) == ("self_attention", "primary")
  with pytest.raises(ValueError, match="variant must be one of"):
    duarte_compare.variant_config(config, "capsnet")
