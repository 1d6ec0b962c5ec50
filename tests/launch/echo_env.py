"""Prints the launch environment and arguments as one JSON line (no jax).

``python -m tests.launch.echo_env ARGS...``: what the TPU and SLURM launch
scripts' tests run in place of an experiment, under fake ``gcloud`` /
``srun`` / ``scontrol`` commands.
"""

from __future__ import annotations

import json
import os
import sys

_KEYS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
         "CAPSJAX_DISTRIBUTED")

if __name__ == "__main__":
  line = json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
                     **{k: os.environ.get(k) for k in _KEYS}}) + "\n"
  # One write: tasks started side by side share the pipe, and a short
  # write() is atomic, so lines never interleave.
  os.write(1, line.encode())
