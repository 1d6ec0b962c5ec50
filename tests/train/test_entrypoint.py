"""The experiment entrypoint's bookkeeping: the resolved config is saved."""

import json
import os

import ml_collections

from capsjax.train import entrypoint


def _config(steps: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {"train": {"num_steps": steps, "seed": 0}, "model": {"name": "small"}})


def test_save_config_writes_every_field(tmp_path):
  path = entrypoint.save_config(_config(10), str(tmp_path), source="a.py")
  with open(path) as f:
    saved = json.load(f)
  assert saved == {"source": "a.py", "config": {
      "train": {"num_steps": 10, "seed": 0}, "model": {"name": "small"}}}
  # Read back as a config, it equals the original.
  assert ml_collections.ConfigDict(saved["config"]) == _config(10)


def test_resume_with_same_config_keeps_one_file(tmp_path):
  entrypoint.save_config(_config(10), str(tmp_path))
  entrypoint.save_config(_config(10), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_resume_with_changed_config_keeps_the_old_one(tmp_path):
  entrypoint.save_config(_config(10), str(tmp_path))
  entrypoint.save_config(_config(20), str(tmp_path))
  entrypoint.save_config(_config(30), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["config.1.json", "config.2.json",
                                          "config.json"]
  steps = []
  for name in ("config.1.json", "config.2.json", "config.json"):
    with open(tmp_path / name) as f:
      steps.append(json.load(f)["config"]["train"]["num_steps"])
  assert steps == [10, 20, 30]
