"""Tsai et al. real-data rows end to end on ``tfds.testing.mock_data``: a
CIFAR-10 config and a DiverseMultiMNIST config, 2 steps each with the small
CapsNet (the pipelines, losses and metrics are the rows'; the paper models
are tested in tests/models); and the offline DiverseMultiMNIST stand-in."""

from __future__ import annotations

import os

import pytest
import tensorflow_datasets as tfds

from capsjax import train as T
from experiments.tsai2020 import main
from experiments.tsai2020.configs import (
  cifar10_simple,
  diverse_multimnist,
  multi_digits,
)

_N_MOCK = 10   # mock records per split (the eval set: 10 = 8 + 2 padded)
_TINY = {"model.name": "small", "model.backbone_channels": 8,
         "model.primary_caps": 2, "model.caps_dim": 4, "model.conv_caps": 2,
         "data.batch_size": 4, "eval.batch_size": 8, "train.num_steps": 2,
         "train.log_every": 1, "train.eval_every": 0,
         "train.checkpoint_every": 2, "train.progress": False,
         # One schedule for all: equal programs share compilations (cache).
         "schedule.boundary_epochs": (1,)}


def _run(config, overrides, workdir):
  for path, value in {**_TINY, **overrides}.items():
    group, field = path.split(".")
    config[group][field] = value
  with tfds.testing.mock_data(num_examples=_N_MOCK):
    result = main.run(config, str(workdir))
  assert result.step == 2 and not result.preempted
  records = T.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2]
  assert all(r["loss"] == r["loss"] for r in train)  # finite, not NaN
  return result


def test_cifar10_row_runs_on_mock_data(tmp_path):
  result = _run(cifar10_simple.get_config(), {}, tmp_path)
  assert result.eval_metrics["count"] == _N_MOCK  # every test image once
  assert 0.0 <= result.eval_metrics["accuracy"] <= 1.0


def test_diverse_multimnist_row_runs_on_mock_data(tmp_path):
  result = _run(diverse_multimnist.get_config("matrix"),
                {"data.num_train_examples": 64, "data.epoch_examples": 64,
                 "data.num_test_examples": _N_MOCK}, tmp_path)
  assert result.eval_metrics["count"] == _N_MOCK
  assert 0.0 <= result.eval_metrics["set_accuracy"] <= 1.0


def test_offline_multi_digits_stand_in_runs(tmp_path):
  # 28-pixel digits on a 36x36 canvas: the same shapes as the row above, so
  # the compiled steps are shared through the compilation cache.
  result = _run(multi_digits.get_config(),
                {"data.image_size": 28, "data.num_train_examples": 64,
                 "data.num_test_examples": _N_MOCK}, tmp_path)
  assert result.eval_metrics["count"] == _N_MOCK
  assert 0.0 <= result.eval_metrics["set_accuracy"] <= 1.0


def test_paper_models_only_run_on_their_data(tmp_path):
  config = cifar10_simple.get_config()
  config.data.name = "cifar100"
  with (pytest.raises(ValueError, match="built for data.name in"),
        tfds.testing.mock_data(num_examples=_N_MOCK)):
    main.run(config, str(tmp_path))


# Parameters of the model each row builds (PyTorch's count: BatchNorm scale
# and bias, no running statistics), as the paper/authors' code reports them.
_ROW_PARAMS = {
    "cifar10_resnet": 1_828_817, "cifar10_simple": 561_297,
    "cifar100_resnet": 2_799_629, "cifar100_simple": 1_462_989,
    "cifar10_baseline_cnn": 18_919_434, "cifar100_baseline_cnn": 19_011_684,
    "cifar10_simple_iters:4": 561_297, "cifar10_simple_ablation:B": 561_297,
    "diverse_multimnist:matrix": 9_963_969,
    "diverse_multimnist:vector": 42_478_017,
    "diverse_multimnist:baseline_cnn": 19_553_162,
    "diverse_multimnist:baseline_cnn_learned_pooling": 42_490_762,
}


@pytest.mark.parametrize("row", sorted(_ROW_PARAMS) + [
    "cifar10_simple_ablation:A", "cifar10_simple_ablation:C"])
def test_rows_build_the_paper_models(row):
  import importlib

  import jax
  import numpy as np
  from flax import nnx

  module, _, variant = row.partition(":")
  get_config = importlib.import_module(
      f"experiments.tsai2020.configs.{module}").get_config
  config = get_config(variant) if variant else get_config()
  main.check_model(config)
  size = config.data.image_size
  shape = (size, size, 3 if config.data.name.startswith("cifar") else 1)
  n_classes = 100 if config.data.name == "cifar100" else 10
  model = nnx.eval_shape(
      lambda: main.make_model(config, shape, n_classes, nnx.Rngs(0)))
  if row in _ROW_PARAMS:
    params = nnx.state(model, nnx.Param)
    assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == (
        _ROW_PARAMS[row])
  if module == "cifar10_simple_iters":
    assert model.n_iters == 4
  if module == "cifar10_simple_ablation":  # one switch off the paper's method
    assert (not model.concurrent) == (variant == "B")
    assert model.activations == (variant == "C")
    assert all(layer.layer_norm == (variant != "A") for layer in model.layers)
