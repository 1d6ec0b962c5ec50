"""Data parallelism: 8 simulated devices and 2 ``jax.distributed`` processes
train the same as 1 device (the subprocess side is ``tests/train/worker.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from capsjax import train as T
from tests.train import tiny, worker

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TIMEOUT = 300  # seconds; the machine may be busy


def _env(**extra) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = _REPO + os.pathsep + env.get("PYTHONPATH", "")
  # Share conftest's persistent compilation cache with the workers.
  import jax  # pylint: disable=g-import-not-at-top
  env.setdefault("CAPSJAX_TEST_CACHE", jax.config.jax_compilation_cache_dir or "")
  env.update(extra)
  return env


def _check(proc: subprocess.CompletedProcess) -> None:
  assert proc.returncode == 0, (
      f"worker failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")


def test_eight_devices_match_one(tmp_path):
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  proc = subprocess.run(
      [sys.executable, "-m", "tests.train.worker", "devices", str(tmp_path)],
      cwd=_REPO, env=_env(XLA_FLAGS=flags.strip()), capture_output=True,
      text=True, timeout=_TIMEOUT)
  _check(proc)
  out = json.loads((tmp_path / "devices.json").read_text())
  assert out["n_devices"] == 8
  for name, n in (("one", 1), ("eight", 8)):
    assert out[f"{name}_batch_spec"] == "P('data',)"
    assert out[f"{name}_batch_devices"] == n
    assert out[f"{name}_state_replicated"]
    assert out[f"{name}_donated"], "the train step must donate the old state"
    assert out[f"{name}_compiles_first"] > 0  # the counter does see compiles
    assert out[f"{name}_compiles_after_first"] == 0, "train step recompiled"
  # One train step at a time: same losses and parameters within 1e-5.
  np.testing.assert_allclose(out["step_losses"]["eight"], out["step_losses"]["one"],
                             rtol=1e-5)
  assert out["step_param_rel_err"] < 1e-5
  assert out["eval"]["eight"] == pytest.approx(out["eval"]["one"], rel=1e-5)
  # The whole loop, with checkpoints, and a restore onto 8 devices.
  np.testing.assert_allclose(out["loop_losses"]["eight"], out["loop_losses"]["one"],
                             rtol=1e-5)
  assert out["loop_param_rel_err"] < 1e-5
  assert out["restored_step"] == 6 and out["restored_replicated"]
  assert out["restored_rel_err"] == 0.0


def test_two_processes_match_one(tmp_path):
  """Two local processes (one CPU device each) joined by
  ``jax.distributed.initialize`` on 127.0.0.1 train like one process."""
  port = portpicker.pick_unused_port()
  multi = tmp_path / "multi"
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.train.worker", "process", str(i), "2",
       str(port), str(multi)],
      cwd=_REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=_TIMEOUT)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, text in zip(procs, outputs):
    assert p.returncode == 0, f"process failed (exit {p.returncode}):\n{text[-4000:]}"

  single = tmp_path / "single"
  result = worker.run_tiny(T, tiny, str(single))
  final = np.load(multi / "final.npz")
  assert int(final["n_global_devices"]) == 2
  ours = tiny.flat_params(result.state)
  for k, v in ours.items():
    scale = max(np.max(np.abs(v)), 1e-30)
    assert np.max(np.abs(final[k] - v)) / scale < 1e-5, k
  assert float(final["eval_correct"]) == pytest.approx(result.eval_metrics["correct"])

  def train_records(workdir):
    return [r for r in T.read_metrics(str(workdir / "metrics.jsonl"))
            if r["split"] == "train"]

  multi_rec, single_rec = train_records(multi), train_records(single)
  assert [r["step"] for r in multi_rec] == [r["step"] for r in single_rec] == list(range(1, 7))
  np.testing.assert_allclose([r["loss"] for r in multi_rec],
                             [r["loss"] for r in single_rec], rtol=1e-5)
  # Both processes saved their input position in each checkpoint.
  assert sorted(os.listdir(multi / "checkpoints" / "6" / "data")) == [
      "commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
