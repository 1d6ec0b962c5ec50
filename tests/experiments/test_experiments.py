"""The experiments layer: each paper's main.py from the command line (--help,
bad overrides) and in-process (a few steps of its offline config, tiny dims,
writing metrics.jsonl), and the config field checks."""

from __future__ import annotations

import glob
import importlib
import os
import subprocess
import sys

import ml_collections
import pytest

from capsjax import train as T
from capsjax.train import entrypoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPERS = ("heinsen2019", "tsai2020", "li2018", "duarte2021", "swetha2023")

# Each paper's offline config and the overrides that make it tiny.
TINY = {
    "tsai2020": ("digits", {"model.backbone_channels": 8, "model.primary_caps": 2,
                            "model.caps_dim": 4, "model.conv_caps": 2,
                            "data.image_size": 8, "data.batch_size": 8}),
    "heinsen2019": ("digits", {"model.n_parts": 2, "model.d_chns": 4,
                               "model.n_iters": 1, "data.image_size": 29,
                               "data.batch_size": 8}),
    "li2018": ("digits", {"model.n_caps": 2, "model.cap_dims": (2,),
                          "model.strides": (1,), "model.n_type2": 0,
                          "model.n_sinkhorn_iters": 2, "data.image_size": 8,
                          "data.batch_size": 8}),
    "duarte2021": ("synthetic", {"model.n_caps": 4, "model.d1": 4, "model.d2": 4,
                                 "model.d_embed": 8, "model.d_hidden": 8,
                                 "data.num_examples": 64,
                                 "data.batch_size": 16, "eval.num_examples": 32,
                                 "eval.batch_size": 32}),
    "swetha2023": ("synthetic", {"model.embed_dim": 8, "model.projection_dim": 8,
                                 "model.num_heads": 2, "model.n_anchors": 4,
                                 "loss.queue_len": 16, "loss.sk_iters": 3,
                                 "data.num_examples": 64,
                                 "data.synthetic.max_lens.video": 3,
                                 "data.synthetic.max_lens.audio": 3,
                                 "data.synthetic.max_lens.text": 3,
                                 "data.synthetic.min_lens.video": 1,
                                 "data.synthetic.min_lens.audio": 1,
                                 "data.synthetic.min_lens.text": 1,
                                 "data.batch_size": 8, "data.steps_per_epoch": 8,
                                 "eval.num_examples": 16, "eval.batch_size": 16}),
}
LOOP = {"train.num_steps": 2, "train.log_every": 1, "train.eval_every": 0,
        "train.checkpoint_every": 2, "train.progress": False}


def _config(paper: str, name: str) -> ml_collections.ConfigDict:
  """``name`` is a config module, or ``module:variant`` as on the command line."""
  module, _, variant = name.partition(":")
  get_config = importlib.import_module(
      f"experiments.{paper}.configs.{module}").get_config
  return get_config(variant) if variant else get_config()


def _tiny(paper: str) -> ml_collections.ConfigDict:
  name, overrides = TINY[paper]
  config = _config(paper, name)
  for path, value in {**overrides, **LOOP}.items():
    *groups, field = path.split(".")
    node = config
    for group in groups:
      node = node[group]
    node[field] = value
  return config


@pytest.fixture(scope="module")
def cli():
  """Runs every CLI check in parallel subprocesses (imports dominate)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  jobs = {p: [sys.executable, "-m", f"experiments.{p}.main", "--help"]
          for p in PAPERS}
  jobs["unknown_override"] = [
      sys.executable, "-m", "experiments.tsai2020.main",
      "--config=experiments/tsai2020/configs/digits.py", "--workdir=/nonexistent",
      "--config.model.n_iter=3"]
  jobs["no_workdir"] = [sys.executable, "-m", "experiments.tsai2020.main",
                        "--config=experiments/tsai2020/configs/digits.py"]
  procs = {k: subprocess.Popen(v, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
           for k, v in jobs.items()}
  # Generous: on a loaded machine seven imports of jax + flax take minutes.
  return {k: (p.wait(timeout=600), p.stdout.read()) for k, p in procs.items()}


@pytest.mark.parametrize("paper", PAPERS)
def test_help(cli, paper):
  rc, out = cli[paper]
  assert rc == 0 and "Traceback" not in out, out
  assert "--config:" in out and "--workdir:" in out, out
  assert "--config.train.num_steps" in out  # the overrides are explained
  assert f"experiments.{paper}.main" in out  # the module docstring's command


def test_cli_unknown_override_is_one_clear_error(cli):
  rc, out = cli["unknown_override"]
  assert rc == 1
  assert "Traceback" not in out
  assert "n_iter" in out and "n_iters" in out and "does not have" in out


def test_cli_workdir_is_required(cli):
  rc, out = cli["no_workdir"]
  assert rc == 1 and "workdir" in out and "Traceback" not in out


@pytest.mark.parametrize("paper", PAPERS)
def test_offline_config_runs_end_to_end(paper, tmp_path):
  main = importlib.import_module(f"experiments.{paper}.main")
  result = main.run(_tiny(paper), str(tmp_path))
  assert result.step == 2 and not result.preempted
  records = T.read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2]
  assert all(r["loss"] == r["loss"] for r in train)  # finite, not NaN
  assert [r["step"] for r in records if r["split"] == "eval"] == [2]
  metric = ("accuracy" if paper in ("heinsen2019", "tsai2020", "li2018")
            else "synthetic/t2v/R@1")
  assert 0.0 <= result.eval_metrics[metric] <= 1.0


def _paper_row_configs() -> list[tuple[str, str]]:
  """Every ``experiments/<paper>/configs/<name>.py`` except the offline ones,
  one case per entry of a module's ``VARIANTS`` (``name:variant``)."""
  offline = {(p, name) for p, (name, _) in TINY.items()}
  rows = []
  for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "*", "configs",
                                            "*.py"))):
    paper = os.path.basename(os.path.dirname(os.path.dirname(path)))
    name = os.path.splitext(os.path.basename(path))[0]
    if name != "__init__" and (paper, name) not in offline:
      module = importlib.import_module(f"experiments.{paper}.configs.{name}")
      if getattr(module, "OFFLINE", False):
        continue  # another offline stand-in; its paper's own test runs it
      variants = getattr(module, "VARIANTS", None)
      if variants:
        rows.extend((paper, f"{name}:{v}") for v in variants)
      else:
        rows.append((paper, name))
  return rows


PAPER_ROWS = _paper_row_configs()


def test_every_paper_has_a_paper_row_config():
  assert {p for p, _ in PAPER_ROWS} == set(PAPERS)
  assert set(TINY) == set(PAPERS)  # every offline config runs in its own test


@pytest.mark.parametrize("paper,name", PAPER_ROWS)
def test_paper_config_without_data_stops_naming_the_dataset(paper, name, tmp_path):
  config = _config(paper, name)
  entrypoint.check_config(config, importlib.import_module(
      f"experiments.{paper}.main").FIELDS)  # every field the main reads
  main = importlib.import_module(f"experiments.{paper}.main")
  with pytest.raises(entrypoint.DatasetUnavailableError,
                     match=f"dataset '{config.data.name}'.*\n.*expected under"):
    main.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)  # stopped before writing anything


def test_missing_and_unknown_fields_are_named():
  main = importlib.import_module("experiments.tsai2020.main")
  config = _config("tsai2020", "digits")
  del config.model["n_iters"]
  config.optimiser.learnin_rate = 0.1
  with pytest.raises(entrypoint.ConfigFieldError) as e:
    main.run(config, "/nonexistent")
  message = str(e.value)
  assert "missing: model.n_iters" in message
  assert "unknown: optimiser.learnin_rate" in message


def test_config_paths_and_optional_fields():
  config = ml_collections.ConfigDict({"a": {"b": 1, "c": {"d": 2}}, "e": 3})
  assert sorted(entrypoint.config_paths(config)) == ["a.b", "a.c.d", "e"]
  fields = entrypoint.Fields(required=("a.b", "e"), optional=("a.c",))
  entrypoint.check_config(config, fields)  # a sub-config may be named whole
  with pytest.raises(entrypoint.ConfigFieldError, match="unknown: a.c.d"):
    entrypoint.check_config(config, entrypoint.Fields(required=("a.b", "e")))


def test_padded_batches_cover_every_example_once():
  import numpy as np
  x, y = np.arange(10.0)[:, None], np.arange(10)
  batches = entrypoint.padded_batches((x, y), 4)
  assert [b[0].shape for b in batches] == [(4, 1)] * 3
  valid = np.concatenate([b[2] for b in batches])
  assert valid.sum() == 10 and list(valid[10:]) == [0, 0]
  np.testing.assert_array_equal(np.concatenate([b[1] for b in batches])[:10], y)


def test_padded_batches_split_over_hosts_reassemble_the_global_batches():
  import numpy as np
  x, y = np.arange(10.0)[:, None], np.arange(10)
  single = entrypoint.padded_batches((x, y), 4, process_index=0, process_count=1)
  hosts = [entrypoint.padded_batches((x, y), 4, process_index=p, process_count=2)
           for p in range(2)]
  for k, whole in enumerate(single):
    # Process order, as global_batch concatenates the host slices.
    for field in range(3):
      joined = np.concatenate([hosts[p][k][field] for p in range(2)])
      np.testing.assert_array_equal(joined, whole[field])
  assert sum(b[2].sum() for h in hosts for b in h) == 10
  with pytest.raises(ValueError, match="divisible by the number of processes"):
    entrypoint.padded_batches((x, y), 5, process_index=0, process_count=2)


def test_config_variant_argument_is_checked():
  with pytest.raises(ValueError, match="routing must be one of"):
    _config("duarte2021", "routing:capsnet")
  assert _config("duarte2021", "routing:em").model.routing == "em"
  assert _config("duarte2021", "capsules:256").model.n_caps == 256
