"""Tests of the launch scripts in ``launch/``.

``local_multiprocess.sh`` really runs: two ``jax.distributed`` processes on
this machine (``tests/launch/dist_check.py``) must see one world of two
processes and agree on a cross-process sum, and a failing process must make
the launcher stop the other and exit with its status. The TPU pod and SLURM
scripts cannot run here (no TPU, no cluster): they are syntax-checked with
``bash -n`` and run against fake ``gcloud`` / ``scontrol`` / ``srun``
commands that execute what they were asked to locally, so the environment
each process would get (coordinator, process count and index) is checked.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

_REPO = pathlib.Path(__file__).resolve().parents[2]
_LAUNCH = _REPO / "launch"
_TIMEOUT_S = 240


def _env(**extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHON"] = sys.executable
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(_REPO), os.environ.get("PYTHONPATH")) if p)
  # conftest's fast-compile flags and compilation cache, for the workers too.
  import jax  # pylint: disable=g-import-not-at-top
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
            "CAPSJAX_DISTRIBUTED"):
    env.pop(k, None)
  env.update(extra)
  return env


def _run(args, env, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(args, cwd=_REPO, env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True,
                        timeout=_TIMEOUT_S, check=False, **kwargs)


def test_two_local_processes_form_one_world():
  # Two simulated CPU devices per process: 4 global devices, a batch sharded
  # over both processes' devices.
  proc = _run(["bash", str(_LAUNCH / "local_multiprocess.sh"), "2",
               "tests.launch.dist_check", "--devices=2"],
              _env(DEVICES_PER_PROCESS="2"))
  assert proc.returncode == 0, proc.stdout[-4000:]
  for i in range(2):
    assert (f"[{i}] dist_check ok: process {i} of 2, 4 devices, sum 28"
            in proc.stdout), proc.stdout[-4000:]


def test_a_failing_process_stops_the_others():
  # Process 1 exits with 3 while process 0 waits for it in
  # jax.distributed.initialize(): without the launcher stopping it, process
  # 0 would wait for minutes and this would time out.
  proc = _run(["bash", str(_LAUNCH / "local_multiprocess.sh"), "2",
               "tests.launch.dist_check", "--fail_process=1"], _env(GRACE="5"))
  assert proc.returncode == 3, proc.stdout[-4000:]
  assert "[1] process 1 failing on purpose" in proc.stdout, proc.stdout
  assert "dist_check ok" not in proc.stdout, proc.stdout


def test_local_launcher_rejects_bad_arguments():
  script = str(_LAUNCH / "local_multiprocess.sh")
  usage = _run(["bash", script], _env())
  assert usage.returncode == 2 and "Usage:" in usage.stdout, usage.stdout
  bad = _run(["bash", script, "two", "tests.launch.dist_check"], _env())
  assert bad.returncode == 2 and "N: got 'two'" in bad.stdout, bad.stdout


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sbatch",
                                    "local_multiprocess.sh"])
def test_scripts_parse(script):
  proc = _run(["bash", "-n", str(_LAUNCH / script)], _env())
  assert proc.returncode == 0, proc.stdout


def _fake_bin(tmp_path: pathlib.Path, **scripts: str) -> str:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, body in scripts.items():
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    path.chmod(0o755)
  return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def _json_lines(text: str) -> list[dict]:
  return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_tpu_pod_script_runs_the_module_on_every_worker(tmp_path):
  # Fake gcloud: records its arguments, then runs --command here, twice
  # (two "workers"), as `ssh --worker=all` would on every host.
  log = tmp_path / "gcloud_args"
  path = _fake_bin(tmp_path, gcloud=f"""
      printf '%s\\n' "$@" >> {log}
      for arg in "$@"; do
        case $arg in --command=*) cmd=${{arg#--command=}};; esac
      done
      bash -c "$cmd" && bash -c "$cmd"
      """)
  flag = "--config.name=two words"
  proc = _run(["bash", str(_LAUNCH / "tpu_pod.sh"), "tests.launch.echo_env",
               "--workdir=gs://b/run", flag],
              _env(PATH=path, TPU_NAME="pod", ZONE="zone-a", PROJECT="proj",
                   REPO_DIR=str(_REPO)))
  assert proc.returncode == 0, proc.stdout
  args = log.read_text().splitlines()
  assert args[:6] == ["compute", "tpus", "tpu-vm", "ssh", "pod", "--zone=zone-a"]
  assert "--project=proj" in args and "--worker=all" in args, args
  runs = _json_lines(proc.stdout)
  assert len(runs) == 2, proc.stdout
  for run in runs:
    assert run["argv"] == ["--workdir=gs://b/run", flag], run
    assert run["CAPSJAX_DISTRIBUTED"] == "1", run
    assert run["cwd"] == str(_REPO), run
  missing = _run(["bash", str(_LAUNCH / "tpu_pod.sh"), "tests.launch.echo_env"],
                 _env(PATH=path, ZONE="zone-a"))
  assert missing.returncode != 0 and "TPU_NAME" in missing.stdout, missing.stdout


def test_slurm_script_gives_each_task_its_process_id(tmp_path):
  # Fake scontrol lists two hosts; fake srun starts SLURM_NTASKS local tasks.
  path = _fake_bin(
      tmp_path,
      scontrol="""
      [[ "$1 $2" == "show hostnames" ]] || exit 1
      printf 'gpu-node-a\\ngpu-node-b\\n'
      """,
      srun="""
      while [[ $1 == --* ]]; do shift; done
      for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" & done
      wait
      """)
  env = _env(PATH=path, SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu-node-[a-b]",
             SLURM_NTASKS="3", SLURM_JOB_NUM_NODES="2")
  proc = _run(["bash", str(_LAUNCH / "slurm_gpu.sbatch"), "tests.launch.echo_env",
               "--config=c.py", "--workdir=/shared/run"], env)
  assert proc.returncode == 0, proc.stdout
  runs = sorted(_json_lines(proc.stdout), key=lambda r: r["JAX_PROCESS_ID"])
  assert [r["JAX_PROCESS_ID"] for r in runs] == ["0", "1", "2"], proc.stdout
  for run in runs:
    assert run["JAX_COORDINATOR_ADDRESS"] == "gpu-node-a:24242", run
    assert run["JAX_NUM_PROCESSES"] == "3", run
    assert run["argv"] == ["--config=c.py", "--workdir=/shared/run"], run
