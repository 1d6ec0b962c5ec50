"""One process of a multi-process check started by ``launch/local_multiprocess.sh``.

``python -m tests.launch.dist_check [--fail_process=K] [--devices=D]``:
initialises through :func:`capsjax.train.maybe_initialize_distributed` (from
the launcher's environment), then checks that every process sees the same
world (process count, global devices, the other processes' indices via
``process_allgather``) and that a jitted sum over a batch sharded across the
processes' devices is right. Prints ``dist_check ok ...`` and exits 0;
``--fail_process=K`` makes process ``K`` exit with status 3 instead of
joining, to test that the launcher stops the others.
"""

from __future__ import annotations

import os
import sys
import time


def main(argv: list[str]) -> int:
  fail_process, devices = None, 1
  for arg in argv:
    name, _, value = arg.partition("=")
    if name == "--fail_process":
      fail_process = int(value)
    elif name == "--devices":
      devices = int(value)
    else:
      print(f"unknown argument {arg!r}", file=sys.stderr)
      return 2
  import jax  # pylint: disable=g-import-not-at-top

  if fail_process is not None and os.environ.get("JAX_PROCESS_ID") == str(fail_process):
    # After the (slow) jax import, so the other processes are already
    # waiting for this one in jax.distributed.initialize().
    time.sleep(1.0)
    print(f"process {fail_process} failing on purpose", flush=True)
    return 3

  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  from capsjax import train as T  # pylint: disable=g-import-not-at-top

  assert T.maybe_initialize_distributed(), "jax.distributed was not initialised"
  n = int(os.environ["JAX_NUM_PROCESSES"])
  me = jax.process_index()
  assert jax.process_count() == n, (jax.process_count(), n)
  assert me == int(os.environ["JAX_PROCESS_ID"]), me
  assert jax.local_device_count() == devices, jax.local_device_count()
  assert jax.device_count() == n * devices, jax.device_count()

  # Host-side exchange: every process contributes (index + 1).
  gathered = multihost_utils.process_allgather(np.asarray([me + 1], np.int32))
  assert sorted(np.ravel(gathered).tolist()) == list(range(1, n + 1)), gathered

  # Device-side reduction over a batch sharded across all processes' devices:
  # each process supplies its own rows (value = global row index).
  mesh = T.make_mesh()
  rows = 2 * devices
  local = np.arange(me * rows, (me + 1) * rows, dtype=np.float32)[:, None]
  batch = T.global_batch(local, mesh)
  assert batch.shape == (n * rows, 1), batch.shape
  total = jax.jit(jnp.sum, out_shardings=T.replicated(mesh))(batch)
  expected = float(np.arange(n * rows).sum())
  got = float(np.asarray(total.addressable_data(0)))
  assert got == expected, (got, expected)
  print(f"dist_check ok: process {me} of {jax.process_count()}, "
        f"{jax.device_count()} devices, sum {got:g}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
