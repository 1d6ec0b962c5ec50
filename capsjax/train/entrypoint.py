"""The one absl entrypoint shared by every ``experiments/<paper>/main.py``.

An experiment's ``main.py`` defines ``run(config, workdir)`` and ends with::

  if __name__ == "__main__":
    entrypoint.main(run, fields=FIELDS)

which gives it these flags:

* ``--config=path/to/config.py`` (required): a Python file whose
  ``get_config()`` returns an ``ml_collections.ConfigDict``;
  ``--config=file.py:arg`` passes ``arg`` to ``get_config(arg)``, and any
  field can be overridden on the command line, ``--config.train.num_steps=10``
  (the config is locked: overriding a field that does not exist is an error).
* ``--workdir=DIR`` (required): checkpoints, ``metrics.jsonl`` and TensorBoard
  events; rerunning with the same ``DIR`` resumes.

Before calling ``run`` it initialises ``jax.distributed`` on multi-process
launches (:func:`capsjax.train.maybe_initialize_distributed`), logs the
process index and the devices, and checks the config against the fields the
experiment reads (:func:`check_config`), so a missing or misspelt field stops
the run at once with a message naming it.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

# Defined with the data readers; re-exported here so old imports keep working.
from capsjax.data.errors import DatasetUnavailableError

__all__ = [
    "ConfigFieldError",
    "DatasetUnavailableError",
    "Fields",
    "check_config",
    "config_paths",
    "main",
    "padded_batches",
    "require_dataset",
]

_FLAGS = flags.FLAGS


class ConfigFieldError(ValueError):
  """A config lacks a field the experiment reads, or has one it does not know."""


class Fields(NamedTuple):
  """The dotted config paths an experiment reads.

  Attributes:
    required: every config must have these.
    optional: a config may have these (e.g. only real-data rows have
      ``data.dir``).
  """
  required: tuple[str, ...]
  optional: tuple[str, ...] = ()


def config_paths(config: Any, prefix: str = "") -> list[str]:
  """The dotted paths of every leaf of a (nested) ``ConfigDict`` or mapping.

  An empty sub-config counts as a leaf (so it can be required or flagged).
  """
  out = []
  for key in config:
    value = config[key]
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)) and len(value):
      out.extend(config_paths(value, path + "."))
    else:
      out.append(path)
  return out


def check_config(config: Any, fields: Fields, *, source: str = "config",
                 reader: str = "this experiment") -> None:
  """Checks that ``config`` has exactly the fields ``reader`` reads.

  Args:
    config: the experiment's ``ConfigDict``.
    fields: the required and optional dotted paths.
    source: what to call the config in messages (e.g. its file name).
    reader: what to call the code that reads it (e.g. its module).

  Raises:
    ConfigFieldError: naming every missing required field and every field
      that is neither required nor optional.
  """
  have = set(config_paths(config))
  known = set(fields.required) | set(fields.optional)
  # A required/optional path may name a whole sub-config (e.g. "model.kwargs").
  def covered(path: str) -> bool:
    return any(path == k or path.startswith(k + ".") for k in known)

  def present(path: str) -> bool:
    return any(h == path or h.startswith(path + ".") for h in have)

  missing = sorted(p for p in fields.required if not present(p))
  unknown = sorted(p for p in have if not covered(p))
  if not (missing or unknown):
    return
  lines = [f"{source} does not match the fields {reader} reads:"]
  if missing:
    lines.append("  missing: " + ", ".join(missing)
                 + " (add them to get_config())")
  if unknown:
    lines.append("  unknown: " + ", ".join(unknown)
                 + " (misspelt? remove them or rename them)")
  lines.append("  expected fields: " + ", ".join(sorted(known)))
  raise ConfigFieldError("\n".join(lines))


def require_dataset(name: str, directory: str, files: Iterable[str], *,
                    hint: str = "") -> None:
  """Stops with one clear error: real dataset ``name`` is not readable here.

  capsjax reads the real datasets of the papers' tables only through the data
  issue's readers, which do not exist yet; until they do, a config naming a
  real dataset stops here, listing the files it needs and whether they were
  found, instead of silently training on something else.

  Args:
    name: the dataset (e.g. ``"smallnorb"``).
    directory: the config's ``data.dir``.
    files: the files (relative to ``directory``) the run needs.
    hint: where to obtain them.

  Raises:
    DatasetUnavailableError: always.
  """
  files = list(files)
  found = [f for f in files
           if directory and os.path.exists(os.path.join(directory, f))]
  lines = [f"dataset {name!r} is needed by this config but cannot be read:"]
  if found == files:
    lines.append(f"  its files are in {directory!r}, but capsjax has no "
                 f"reader for {name!r} yet (the real-data pipelines are a "
                 "separate piece of work);")
  else:
    where = repr(directory) if directory else "(config.data.dir is empty)"
    lines.append(f"  expected under {where}: "
                 + ", ".join(f for f in files if f not in found)
                 + (" (missing)" if directory else ""))
  if hint:
    lines.append(f"  {hint}")
  lines.append("  To try the experiment offline, use the config that trains on "
               "generated / bundled data (see the experiment's README).")
  raise DatasetUnavailableError("\n".join(lines))


def padded_batches(arrays: Sequence[Any], batch_size: int, *,
                   process_index: int | None = None,
                   process_count: int | None = None) -> list[tuple[Any, ...]]:
  """This host's evaluation batches over whole arrays, the last zero-padded.

  Every global batch is ``(*arrays_slice, valid)`` with ``valid`` a float32
  ``[B]`` mask (1 for real examples, 0 for padding), so a ``metric_fn`` that
  weights by ``valid`` and counts ``sum(valid)`` sees every example exactly
  once and every batch has the same shape (one compilation). With several
  processes, host ``p`` returns rows ``[p * b, (p + 1) * b)`` of each global
  batch (``b = batch_size // process_count``): the slices that
  ``capsjax.train.global_batch`` reassembles in process order, so every
  example is still counted once.

  Args:
    arrays: arrays with the same leading size ``N`` (the whole eval set).
    batch_size: examples per global batch; divisible by ``process_count``.
    process_index, process_count: default ``jax.process_index()`` and
      ``jax.process_count()``.

  Returns:
    ``ceil(N / batch_size)`` tuples of NumPy arrays with ``b`` rows each.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  if process_count is None:
    process_count = jax.process_count()
  if process_index is None:
    process_index = jax.process_index()
  if batch_size % process_count:
    raise ValueError(f"batch_size ({batch_size}) must be divisible by the "
                     f"number of processes ({process_count}).")
  rows = batch_size // process_count
  lo, hi = process_index * rows, (process_index + 1) * rows
  n = len(arrays[0])
  out = []
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    pad = batch_size - (stop - start)
    batch = []
    for a in arrays:
      part = np.asarray(a[start:stop])
      if pad:
        part = np.concatenate([part, np.zeros((pad,) + part.shape[1:],
                                              part.dtype)])
      batch.append(part[lo:hi])
    valid = np.zeros(batch_size, np.float32)
    valid[:stop - start] = 1.0
    out.append((*batch, valid[lo:hi]))
  return out


CONFIG_FILE = "config.json"


def save_config(config: ml_collections.ConfigDict, workdir: str, *,
                source: str = "--config") -> str:
  """Writes the run's resolved config to ``workdir/config.json``.

  The file records every field after command-line overrides, so a run can be
  read back or repeated later (``ml_collections.ConfigDict(json.load(f))``).
  On a resumed run whose config differs from the saved one, the old file is
  kept as ``config.<n>.json`` and the differing fields are logged: resuming
  with changed hyper-parameters is allowed (e.g. more steps) but never silent.

  Args:
    config: the resolved config.
    workdir: the run directory (exists).
    source: where the config came from, recorded in the file.

  Returns:
    The path written.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = {"source": source, "config": json.loads(config.to_json_best_effort())}
  if os.path.exists(path):
    with open(path) as f:
      try:
        old = json.load(f)
      except json.JSONDecodeError:
        old = None
    if old == new:
      return path
    if old is not None:
      changed = sorted(
          k for k in set(_flatten(old.get("config", {})))
          | set(_flatten(new["config"]))
          if _flatten(old.get("config", {})).get(k, "<absent>")
          != _flatten(new["config"]).get(k, "<absent>"))
      logging.warning("resuming in %s with a config that differs from the "
                      "saved one in: %s", workdir, ", ".join(changed) or
                      "(source only)")
    n = 1
    while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
      n += 1
    os.replace(path, os.path.join(workdir, f"config.{n}.json"))
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(new, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
  return path


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
  return out


def _define_flags() -> None:
  if "config" not in _FLAGS:
    config_flags.DEFINE_config_file(
        "config", None,
        "Path to the experiment config, a Python file whose get_config() "
        "returns an ml_collections.ConfigDict (file.py:arg passes arg to "
        "get_config). Override any field with --config.<group>.<field>=value, "
        "e.g. --config.train.num_steps=100; fields that do not exist are "
        "rejected.",
        lock_config=True)
  if "workdir" not in _FLAGS:
    flags.DEFINE_string(
        "workdir", None,
        "Directory for checkpoints, metrics.jsonl and TensorBoard events. "
        "Rerunning with the same directory resumes the run.")
  flags.mark_flags_as_required(["config", "workdir"])
  # Key flags of the program's main module, so plain --help lists them.
  main_module = sys.argv[0]
  for name in ("config", "workdir"):
    _FLAGS.register_key_flag_for_module(main_module, _FLAGS[name])


class _LibraryInfoFilter(std_logging.Filter):
  """Drops INFO records from libraries whose chatter would bury the run's own.

  orbax logs several INFO lines per checkpoint; its warnings and errors still
  show, and ``--verbosity`` / ``--logtostderr`` work as usual for the rest.
  """

  _QUIET = (os.sep + "orbax" + os.sep,)

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        part in record.pathname for part in self._QUIET)


def main(run: Callable[[ml_collections.ConfigDict, str], Any], *,
         fields: Fields, argv: Sequence[str] | None = None) -> None:
  """Parses the flags and calls ``run(config, workdir)`` (the absl app).

  Args:
    run: the experiment: ``run(config, workdir)``.
    fields: the config fields ``run`` reads (checked before it is called).
    argv: command line (default ``sys.argv``).
  """
  _define_flags()
  reader = getattr(run, "__module__", "this experiment")
  std_logging.getLogger("absl").addFilter(_LibraryInfoFilter())

  def app_main(args: Sequence[str]) -> None:
    if len(args) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(args[1:])}")
    from capsjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    mesh_lib.maybe_initialize_distributed()
    import jax  # pylint: disable=g-import-not-at-top
    config = _FLAGS.config
    source = _FLAGS["config"].config_filename or "--config"
    try:
      check_config(config, fields, source=source, reader=reader)
    except ConfigFieldError as e:
      # One message, no traceback: this is the user's to fix.
      sys.exit(f"error: {e}")
    logging.info("process %d of %d; %d local device(s): %s; %d global",
                 jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.local_devices(),
                 jax.device_count())
    logging.info("config (%s):\n%s", source, config)
    workdir = _FLAGS.workdir
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
      save_config(config, workdir, source=source)
    try:
      run(config, workdir)
    except DatasetUnavailableError as e:
      sys.exit(f"error: {e}")

  app.run(app_main, argv=argv, flags_parser=_parse_flags)


_HELP_FLAGS = frozenset({"-h", "-?", "--help", "--helpshort", "--helpfull",
                         "--helpxml"})


def _parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's parse; a flag error (a required flag missing, a --config
  override of a field the config lacks) exits with one message (status 1),
  not a traceback."""
  try:
    return _FLAGS(argv)
  except SystemExit as e:
    # absl's --help / --helpfull print the flags and exit with status 1;
    # asking for help is not a failure.
    if e.code == 1 and any(a in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:  # e.g. a required flag not given
    sys.exit(f"error: {e}\nRun with --help for the flags.")
  except (AttributeError, KeyError) as e:
    detail = str(e.args[0] if e.args else e).strip("'\"").replace("\\n", " ")
    detail = " ".join(detail.replace("\\'", "'").split())
    sys.exit(f"error: --config override of a field the config does not "
             f"have: {detail}. Only the fields that the config file's "
             "get_config() defines can be set; see the file for their names.")
