"""One data-parallel device mesh over every device of every host.

capsjax trains by sharding, not by hand (ARCHITECTURE.md): a single
:class:`jax.sharding.Mesh` with one ``data`` axis spans all devices of all
processes; a batch is split over that axis (``P('data')``), everything else
(parameters, optimiser state, RNG) is replicated, and ``jax.jit`` inserts the
gradient all-reduce. Multi-host start-up goes through
:func:`maybe_initialize_distributed`, and each process contributes only its
own slice of the global batch (:func:`global_batch`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
  "DATA_AXIS",
  "data_sharding",
  "global_batch",
  "make_mesh",
  "maybe_initialize_distributed",
  "process_batch_size",
  "replicated",
]

DATA_AXIS = "data"

# Environment variables read by `maybe_initialize_distributed` (the launch
# scripts set them). JAX itself reads JAX_COORDINATOR_ADDRESS; the process
# count and index are capsjax's convention, mirroring jax.distributed's args.
_ENV_FORCE = "CAPSJAX_DISTRIBUTED"        # "1": call initialize() (auto-detect)
_ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"  # host:port of process 0
_ENV_NUM = "JAX_NUM_PROCESSES"
_ENV_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r}: expected an "
                     "integer") from None


def maybe_initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
  """Calls ``jax.distributed.initialize()`` when this is a multi-process run.

  Must run before anything touches a JAX device. A run counts as
  multi-process when any of these holds (checked in this order):

  1. ``num_processes > 1`` is passed (with ``coordinator_address`` and
     ``process_id``, e.g. from command-line flags);
  2. the environment has ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
     (> 1) and ``JAX_PROCESS_ID`` (the local launcher's convention);
  3. ``CAPSJAX_DISTRIBUTED=1``: JAX's own cluster auto-detection (TPU VM pod,
     SLURM, Open MPI, Kubernetes) supplies everything;
  4. a SLURM job step with more than one task (``SLURM_NTASKS > 1``) or an
     Open MPI run with more than one rank, which JAX detects by itself.

  ``CAPSJAX_DISTRIBUTED=0`` disables all of this. A single-process run is left
  untouched.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: total number of processes.
    process_id: index of this process, in ``[0, num_processes)``.

  Returns:
    True if JAX's distributed runtime is (now) initialised.
  """
  if jax.distributed.is_initialized():
    return True
  force = os.environ.get(_ENV_FORCE, "").strip()
  if force == "0":
    return False
  kwargs: dict[str, Any] = {}
  if num_processes is not None and num_processes > 1:
    kwargs = dict(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
  elif (_env_int(_ENV_NUM) or 1) > 1:
    kwargs = dict(coordinator_address=os.environ.get(_ENV_ADDRESS),
                  num_processes=_env_int(_ENV_NUM),
                  process_id=_env_int(_ENV_ID))
  elif force == "1" or ((_env_int("SLURM_NTASKS") or 1) > 1
        or (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1):
    kwargs = {}
  else:
    return False
  missing = [k for k, v in kwargs.items() if v is None]
  if missing:
    raise ValueError(
        f"multi-process run requested but {', '.join(missing)} is not set: "
        "pass coordinator_address, num_processes and process_id (or set "
        f"{_ENV_ADDRESS}, {_ENV_NUM} and {_ENV_ID}).")
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed initialised: process %d of %d, %d local / %d "
               "global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D ``('data',)`` mesh over ``devices`` (default: all global devices).

  Devices are ordered by (process, id) so that each process owns one
  contiguous block of the ``data`` axis, which is what
  :func:`global_batch` assumes. The mesh uses Auto axis types (not the
  Explicit default of ``jax.make_mesh``, see ENVIRONMENT.md).
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("devices: got an empty list, expected at least one")
  devices.sort(key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of everything but the batch: a full copy on each device."""
  return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """The batch sharding: leading axis split over ``data``."""
  return NamedSharding(mesh, P(DATA_AXIS))


def process_batch_size(global_batch_size: int, mesh: Mesh | None = None) -> int:
  """The number of examples each process must supply per global batch.

  Args:
    global_batch_size: examples per step over all devices.
    mesh: the training mesh (default :func:`make_mesh`).

  Returns:
    ``global_batch_size // process_count``.

  Raises:
    ValueError: if the global batch does not split evenly over the devices.
  """
  mesh = make_mesh() if mesh is None else mesh
  n_dev = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n_dev:
    raise ValueError(
        f"global_batch_size: got {global_batch_size}, expected a positive "
        f"multiple of the number of devices ({n_dev})")
  return global_batch_size // jax.process_count()


def global_batch(host_batch: Any, mesh: Mesh) -> Any:
  """Assembles each process's host batch into one global, sharded batch.

  Every leaf of ``host_batch`` (a pytree of NumPy arrays, e.g. a dict) holds
  this process's examples on its leading axis; the result holds all
  processes' examples, process 0's first, sharded over ``data``. On one
  process this is a sharded ``device_put``.

  Args:
    host_batch: pytree of arrays ``[b_local, ...]``, the same ``b_local`` in
      every leaf and every process.
    mesh: the training mesh.

  Returns:
    The same pytree of ``jax.Array`` ``[b_local * process_count, ...]``.
  """
  sharding = data_sharding(mesh)
  n_local = sum(d.process_index == jax.process_index()
                for d in mesh.devices.flat)

  def place(path, x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % n_local:
      name = jax.tree_util.keystr(path) or "host_batch"
      raise ValueError(
          f"{name}: got shape {x.shape}, expected a leading batch axis "
          f"divisible by this process's {n_local} device(s)")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree_util.tree_map_with_path(place, host_batch)
