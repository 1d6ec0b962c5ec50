"""Smoke tests of benchmarks/models.py, resources.py and op_profile.py.

They run one tiny row through each script's functions (compiling, running a
step once, formatting and plotting), so the scripts cannot rot; nothing is
timed. The scripts import their siblings as top-level modules (``harness``,
``models``), so the benchmarks folder goes on ``sys.path``.
"""

from __future__ import annotations

import gzip
import importlib
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.models import duarte2021

_BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def scripts():
  sys.path.insert(0, str(_BENCHMARKS))
  try:
    return (importlib.import_module("harness"), importlib.import_module("models"),
            importlib.import_module("resources"))
  finally:
    sys.path.remove(str(_BENCHMARKS))


def _tiny_dynamic(rngs):
  # Table 3's dynamic-routing model shrunk: C=4, d1=d2=4, D=8.
  return duarte2021.duarte2021_routing_ablation("dynamic", n_caps=4, d1=4, d2=4,
                                                d_embed=8, rngs=rngs)


# Hand count for _tiny_dynamic with inputs video 4096, audio 1024, text 300:
# primary poses sum_m (n_m * C*d1 + C*d1), activations sum_m (n_m * C + C),
# dynamic routing W [C, C, d1, d2], f_out (C*d2 * D + D).
_N_IN = 4096 + 1024 + 300
_TINY_PARAMS = (_N_IN * 16 + 3 * 16) + (_N_IN * 4 + 3 * 4) + 4 * 4 * 4 * 4 + (16 * 8 + 8)


def test_time_state_step_threads_the_donated_state(scripts):
  harness, _, _ = scripts
  calls = jax.jit(lambda s, x: (s + x, None), donate_argnums=0)
  seconds, state = harness.time_state_step(calls, jnp.zeros(()), jnp.ones(()),
                                           min_time=0.0, min_reps=3, max_reps=3)
  assert float(state) == 4.0  # one warm-up call + 3 timed, each on the last state
  assert seconds >= 0.0


def test_models_paper_cases_and_one_tiny_row(scripts):
  harness, models, _ = scripts
  cases = {c.name: c.batch for c in models.paper_cases()}
  # The papers' batch sizes (Heinsen Fig. 3, Tsai A.1, Li Sec. 5, Duarte
  # Sec. 4.1, EAO's config for Swetha).
  assert cases == {"heinsen2019_smallnorb": 20, "tsai2020_cifar10_resnet": 128,
                   "tsai2020_cifar10_simple": 128, "li2018_encapnet18": 128,
                   "duarte2021": 4096, "swetha2023_tva": 224}
  assert models.scaled_batch(20, 1 / 16) == 1 and models.scaled_batch(4096, 1 / 16) == 256

  host_batch = models._duarte_inputs(dict(duarte2021.DEFAULT_INPUT_DIMS))(
      np.random.default_rng(0), 4)
  m = models.measure_model(
      _tiny_dynamic, host_batch, models._duarte_loss,
      models.optim.duarte_optimizer(10)[0],
      forward=lambda model, b: {k: v.embedding for k, v in model(b).items()},
      time_train=True, time_inference=False, min_time=0.0)
  assert m.params == _TINY_PARAMS and m.batch == 4
  # The step's arguments hold at least the parameters and Adam's two moments.
  assert m.train.peak_bytes >= 3 * 4 * _TINY_PARAMS
  assert m.train.flops > 0 and m.infer.flops > 0 and m.infer_s is None
  assert m.train_s is not None and m.train_s >= 0.0


def test_resources_cases_tiny_row_table_and_plot(scripts, tmp_path):
  _, _, resources = scripts
  names = [c.name for c in resources.resource_cases()]
  assert names == (
      [f"table3/{r}" for r in ("none", "dynamic", "em", "set_transformer",
                               "self_attention")]
      + [f"table4/C={c}" for c in (32, 64, 128, 256)]
      + [f"fig4/iters={n}" for n in (1, 2, 3, 4, 5)])
  case = resources.ResourceCase("table3/tiny", "table3", "tiny", 0, "duarte",
                                _tiny_dynamic, "train", 20.5, 1.534)
  r = resources.measure_case(case, 4, time_it=False)
  assert r["params"] == _TINY_PARAMS and r["seconds"] is None
  assert r["train_mib"] * 2**20 >= 3 * 4 * _TINY_PARAMS
  row = resources.table_row(case, r)
  assert row[:5] == ["table3", "tiny", "0.109M", "4 (paper 4096)", "train"]
  assert row[5] == "-" and row[-2:] == [20.5, 1.534]
  # Two rows of one figure, the second with twice the first's numbers.
  other = dict(r, seconds=2.0, train_mib=2 * r["train_mib"])
  path = tmp_path / "resources.png"
  assert resources.plot([(case, dict(r, seconds=1.0)), (case, other)], str(path))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert resources._relative([2.0, 3.0, None]) == pytest.approx([1.0, 1.5, np.nan],
                                                                 nan_ok=True)


def test_op_profile_sums_durations_per_xla_operation(tmp_path):
  sys.path.insert(0, str(_BENCHMARKS))
  try:
    op_profile = importlib.import_module("op_profile")
  finally:
    sys.path.remove(str(_BENCHMARKS))
  # A hand-written trace: two runs of one fusion over 2 calls, a dot, and
  # runtime events that are not operations of the program.
  events = [{"ph": "X", "name": "add_fusion", "dur": 1000},
            {"ph": "X", "name": "add_fusion", "dur": 3000},
            {"ph": "X", "name": "dot.1", "dur": 500},
            {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 9999},
            {"ph": "X", "name": "$api.py:2479 block_until_ready", "dur": 9999},
            {"ph": "i", "name": "marker"}]
  trace = tmp_path / "t.json.gz"
  with gzip.open(trace, "wt") as f:
    json.dump({"traceEvents": events}, f)
  assert op_profile.op_times(str(trace), calls=2) == [
      ("add_fusion", 2.0, 1.0), ("dot.1", 0.25, 0.5)]
  # The profiler really writes a trace that parses (names depend on XLA).
  fn = jax.jit(lambda x: jnp.sin(x) * 2.0)
  real = op_profile.profile(fn, (jnp.ones(4096),), 1, str(tmp_path / "trace"))
  assert op_profile.op_times(real, calls=1)


def test_kernels_iteration_rows_run_with_and_without_remat():
  sys.path.insert(0, str(_BENCHMARKS))
  try:
    kernels = importlib.import_module("kernels")
  finally:
    sys.path.remove(str(_BENCHMARKS))
  for remat in (False, True):
    cases = kernels._iteration_cases(2, remat)
    assert [family for family, _ in cases] == ["dynamic", "em", "heinsen (votes)"]
    for _, case in cases:
      row = kernels.run_case(case, 1 / 16, 0.0, copy_gbps=1.0)
      assert row[2] == 1 and row[5] > 0 and row[6] > 0   # batch, fwd+bwd ms, peak MiB
