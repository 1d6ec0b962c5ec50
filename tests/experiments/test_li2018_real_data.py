"""Li et al.'s real-data path and table rows.

A Table 4 config (SVHN, with augmentation) trains 2 steps of a tiny EncapNet
on ``tfds.testing.mock_data`` through the real TFDS -> grain image pipeline
and evaluates on the test split; the Table 3/4 rows select the paper's
settings; both losses (EncapNet's margin, the ResNet's cross-entropy) match
hand-computed values."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from capsjax import train as T
from capsjax.models import li2018
from experiments.li2018 import main
from experiments.li2018.configs import table4

TINY = {"model.n_caps": 2, "model.cap_dims": (2,), "model.strides": (1,),
        "model.n_type2": 0, "model.n_sinkhorn_iters": 2,
        "data.batch_size": 8, "eval.batch_size": 8,
        "train.num_steps": 2, "train.log_every": 1, "train.eval_every": 0,
        "train.checkpoint_every": 2, "train.progress": False}


@pytest.mark.parametrize("row", ["svhn_plus"])
def test_table4_config_trains_on_mock_tfds_data(row, tmp_path):
  config = table4.get_config(row)
  for path, value in TINY.items():
    group, field = path.split(".")
    config[group][field] = value
  config.data.dir = str(tmp_path / "tfds")  # mock_data ignores it
  assert config.data.augment == "crop" and config.model.two_feedbacks
  workdir = tmp_path / "run"
  with tfds.testing.mock_data(num_examples=12):
    result = main.run(config, str(workdir))
  assert result.step == 2 and not result.preempted
  records = T.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2]
  assert all(r["loss"] == r["loss"] and r["feedback_loss"] > 0 for r in train)
  # Every one of the 12 test images counted once (2 padded batches of 8).
  assert result.eval_metrics["count"] == 12
  assert 0.0 <= result.eval_metrics["accuracy"] <= 1.0


def test_table_rows_select_the_paper_settings():
  from experiments.li2018.configs import cifar10, table3  # pylint: disable=g-import-not-at-top
  expected = {  # row: (TFDS name, classes, augmentation)
      "cifar10_plus": ("cifar10", 10, "crop_flip"),
      "cifar100": ("cifar100", 100, "none"),
      "cifar100_plus": ("cifar100", 100, "crop_flip"),
      "svhn": ("svhn_cropped", 10, "none"),
      "svhn_plus": ("svhn_cropped", 10, "crop"),
  }
  assert set(expected) == set(table4.VARIANTS)
  for row, want in expected.items():
    c = table4.get_config(row)
    assert (c.data.name, c.model.num_classes, c.data.augment) == want
  assert table4.get_config("svhn").train.num_steps == 600 * (73_257 // 128)
  base = cifar10.get_config()
  assert (base.data.augment, base.model.two_feedbacks) == ("none", True)
  resnet = table3.get_config("resnet")
  assert (resnet.model.arch, resnet.model.feedback,
          resnet.loss.feedback_weight) == ("resnet", False, 0.0)
  assert table3.get_config("resnet_ot").model.feedback
  assert not table3.get_config("d1_no_bias_fix").model.debiased
  assert not table3.get_config("d2_plan_gradient").model.detach_plan
  for module, bad in ((table3, "kl"), (table4, "cifar10_plusplus")):
    with pytest.raises(ValueError, match="row must be one of"):
      module.get_config(bad)


def test_loss_kinds_match_hand_computed_values():
  from experiments.li2018.configs import table3  # pylint: disable=g-import-not-at-top
  logits = np.array([[0.95, 0.3, 0.05], [0.2, 0.6, 0.0]], np.float32)
  labels = np.array([0, 2], np.int32)
  aux = np.float32(0.25)

  def model(_):
    return li2018.Li2018Output(logits=logits, aux_loss=aux, capsules=None)

  c = table3.get_config("resnet_ot")
  c.model.num_classes = 3
  loss, aux_out = main.make_loss_fn(c)(model, (None, labels), None)
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  ce = -np.mean(log_p[np.arange(2), labels])
  np.testing.assert_allclose(aux_out["class_loss"], ce, rtol=1e-6)
  np.testing.assert_allclose(loss, ce + 10.0 * 0.25, rtol=1e-6)
  np.testing.assert_allclose(aux_out["accuracy"], 0.5)

  c = table3.get_config("one_ot")
  c.model.num_classes = 3
  loss, aux_out = main.make_loss_fn(c)(model, (None, labels), None)
  # Sample 0: present 0.95 >= 0.9 (0); absent 0.3, 0.05: 0.5 * 0.2^2.
  # Sample 1: present 0.0: 0.9^2; absent 0.2, 0.6: 0.5 * (0.1^2 + 0.5^2).
  margin = (0.5 * 0.04 + 0.81 + 0.5 * (0.01 + 0.25)) / 2
  np.testing.assert_allclose(aux_out["class_loss"], margin, rtol=1e-5)
  np.testing.assert_allclose(loss, margin + 10.0 * 0.25, rtol=1e-5)
