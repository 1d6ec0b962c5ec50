"""Duarte et al.: the pre-registered multi-entity config builds, reaches the
generator as ``structure="entities"`` and trains a few steps end to end
(tiny dims, as ``test_experiments.TINY["duarte2021"]``)."""

from __future__ import annotations

import os

import pytest

from capsjax import train as T
from capsjax.train import entrypoint
from experiments import _multimodal
from experiments.duarte2021 import compare, main
from experiments.duarte2021.configs import synthetic, synthetic_entities

TINY = {"model.n_caps": 4, "model.d1": 4, "model.d2": 4, "model.d_embed": 8,
        "model.d_hidden": 8, "data.num_examples": 64, "data.batch_size": 16,
        "eval.num_examples": 32, "eval.batch_size": 32, "train.num_steps": 2,
        "train.log_every": 1, "train.eval_every": 0,
        "train.checkpoint_every": 2, "train.progress": False}


def _set(config, path, value):
  *groups, field = path.split(".")
  node = config
  for g in groups:
    node = node[g]
  node[field] = value


def test_config_is_synthetic_py_with_the_entity_structure():
  ent, base = synthetic_entities.get_config(), synthetic.get_config()
  entrypoint.check_config(ent, main.FIELDS)
  assert synthetic_entities.OFFLINE and synthetic_entities.VARIANTS == synthetic.VARIANTS
  assert ent.data.synthetic.structure == "entities"
  # Everything else, model and loop included, is synthetic.py's.
  ent.data.synthetic.structure = "latent"
  assert ent.to_dict() == base.to_dict()
  none = synthetic_entities.get_config("none")
  assert none.model.routing == "none"
  assert none.data.synthetic.structure == "entities"
  with pytest.raises(ValueError, match="variant"):
    synthetic_entities.get_config("bogus")


def test_sources_are_entity_clips():
  config = synthetic_entities.get_config()
  config.data.num_examples = 4
  config.eval.num_examples = 4
  train, evals = _multimodal.synthetic_splits(
      config, config.model.input_dims, config.eval.retrieval,
      dict(config.data.synthetic))
  for src in (train, *evals.values()):
    assert src.structure == "entities" and len(src.latent(0).types) >= 1


@pytest.mark.parametrize("variant", ["self_attention", "none"])
def test_runs_two_steps(variant, tmp_path):
  config = compare.variant_config(synthetic_entities.get_config(), variant)
  for path, value in TINY.items():
    _set(config, path, value)
  result = main.run(config, str(tmp_path))
  assert result.step == 2 and not result.preempted
  records = T.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
  assert 0.0 <= result.eval_metrics["synthetic/t2v/R@1"] <= 1.0
