r"""Downloads and prepares the papers' image datasets as TFDS array_record files.

  pip install 'capsjax[prepare]'      # TensorFlow (CPU) + importlib_resources
  python -m capsjax.data.prepare --datasets=cifar10,cifar100 \
      --data_dir=$HOME/tensorflow_datasets

Run once per machine (or on a shared disk); training then reads the files
with ``tfds.data_source`` (:mod:`capsjax.data.images`) and never imports
TensorFlow. ``--datasets`` takes any of ``cifar10``, ``cifar100``,
``svhn_cropped``, ``smallnorb`` and ``mnist`` (or ``all``). Each runs
``tfds.builder(name, data_dir=DIR).download_and_prepare(
file_format="array_record")``: the random-access format grain needs (the
TFDS default, TFRecord, cannot be read by index). Sizes to download:
CIFAR-10 ~163 MiB, CIFAR-100 ~161 MiB, SVHN ~1.5 GiB (with ``extra``),
smallNORB ~251 MiB, MNIST ~11 MiB.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from typing import Any

from capsjax.data.images import DATASETS

__all__ = ["FILE_FORMAT", "main", "parse_datasets", "prepare"]

FILE_FORMAT = "array_record"


def parse_datasets(text: str) -> list[str]:
  """``"cifar10, mnist"`` -> ``["cifar10", "mnist"]``; ``"all"`` -> every one.

  Raises:
    ValueError: an unknown or repeated name, or none at all.
  """
  names = [t.strip() for t in text.split(",") if t.strip()]
  if names == ["all"]:
    return list(DATASETS)
  if not names:
    raise ValueError("--datasets is empty: name at least one of "
                     f"{', '.join(DATASETS)} (or 'all').")
  unknown = [n for n in names if n not in DATASETS]
  if unknown:
    raise ValueError(f"unknown dataset(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(DATASETS)} (or 'all').")
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"dataset(s) named twice: {', '.join(repeated)}.")
  return names


def _require_tensorflow() -> None:
  """Stops with the install command when TensorFlow is missing.

  TFDS's builders need it to download and encode the images.
  """
  missing = [m for m in ("tensorflow", "importlib_resources")
             if importlib.util.find_spec(m) is None]
  if missing:
    raise ImportError(
        f"preparing TFDS datasets needs {' and '.join(missing)}: "
        "pip install 'capsjax[prepare]' (training does not need them).")


def prepare(names: Sequence[str], data_dir: str | None, *,
            builder: Callable[..., Any] | None = None,
            log: Callable[[str], None] = print) -> None:
  """Downloads and prepares each dataset in ``names`` under ``data_dir``.

  Args:
    names: dataset names (keys of :data:`capsjax.data.images.DATASETS`).
    data_dir: the TFDS data directory (``None``: TFDS's default).
    builder: ``tfds.builder`` (injectable for tests).
    log: where progress lines go.
  """
  if builder is None:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder
  for name in names:
    log(f"preparing {name} in {data_dir or 'the default TFDS data_dir'} "
        f"({FILE_FORMAT}) ...")
    b = builder(name, data_dir=data_dir)
    b.download_and_prepare(file_format=FILE_FORMAT)
    log(f"prepared {name}")


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status."""
  parser = argparse.ArgumentParser(
      prog="python -m capsjax.data.prepare",
      description="Download and prepare image datasets as TFDS array_record "
                  "files for capsjax.data.images.")
  parser.add_argument(
      "--datasets", required=True,
      help=f"comma-separated names from {', '.join(DATASETS)}, or 'all'")
  parser.add_argument(
      "--data_dir", default=None,
      help="TFDS data directory (default ~/tensorflow_datasets); pass the "
           "same directory to training as data.dir")
  args = parser.parse_args(argv)
  try:
    names = parse_datasets(args.datasets)
  except ValueError as e:
    parser.error(str(e))
  try:
    _require_tensorflow()
  except ImportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  prepare(names, args.data_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
