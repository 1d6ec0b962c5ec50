"""Metric output: ``metrics.jsonl``, TensorBoard event files, a progress bar.

Only process 0 writes; on other processes every method is a no-op.

TensorBoard files are written by a small built-in encoder
(:class:`EventFileWriter`) rather than a library: ``tensorboardX`` and
``tensorboard`` are not dependencies of capsjax, ``flax.metrics.tensorboard``
imports TensorFlow, and clu's writers need TensorFlow or tensorboardX too. The
format is simple and stable: a TFRecord file (length, masked CRC-32C of the
length, payload, masked CRC-32C of the payload) of ``tensorflow.Event``
protocol buffers, each holding a ``simple_value`` scalar summary. TensorBoard
reads them from ``--logdir=WORKDIR``.

The progress bar is ``tqdm`` (installed with tensorflow-datasets); without it
a plain line is printed at each update.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["EventFileWriter", "MetricWriter", "Progress", "crc32c", "read_metrics"]


# ---------------------------------------------------------------- CRC-32C ---

def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
    table.append(c)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of ``data``, as TFRecord files use it."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------- protocol buffer encoding ---

def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint((number << 3) | wire_type) + payload


def _bytes_field(number: int, data: bytes) -> bytes:
  return _field(number, 2, _varint(len(data)) + data)


def _event(wall_time: float, step: int, *, file_version: str | None = None,
           scalars: Mapping[str, float] | None = None) -> bytes:
  # tensorflow/core/util/event.proto: Event{1: double wall_time, 2: int64
  # step, 3: string file_version, 5: Summary summary}; summary.proto:
  # Summary{1: repeated Value value}, Value{1: string tag, 2: float
  # simple_value}.
  msg = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
  if file_version is not None:
    msg += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode())
                     + _field(2, 5, struct.pack("<f", value)))
        for tag, value in scalars.items())
    msg += _bytes_field(5, values)
  return msg


class EventFileWriter:
  """Appends scalar summaries to a new TensorBoard event file in ``logdir``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}."
            f"{os.getpid()}.capsjax")
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "wb")
    self._write(_event(time.time(), 0, file_version="brain.Event:2"))

  def _write(self, record: bytes) -> None:
    header = struct.pack("<Q", len(record))
    self._file.write(header + struct.pack("<I", _masked_crc(header)) + record
                     + struct.pack("<I", _masked_crc(record)))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes ``{tag: value}`` at ``step``."""
    if step < 0:
      raise ValueError(f"step: got {step}, expected >= 0")
    self._write(_event(time.time(), step, scalars=values))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


# --------------------------------------------------------------- writers ---

def _json_value(v: Any) -> Any:
  v = float(v)
  return v if math.isfinite(v) else str(v)  # JSON has no NaN/Inf


class MetricWriter:
  """Writes metric records to ``workdir/metrics.jsonl`` and TensorBoard.

  Each record is one JSON line ``{"step": s, "split": name, key: value, ...}``
  (``split`` is ``train``, ``eval`` or ``perf``; non-finite values are written
  as the strings ``"nan"``/``"inf"``); in TensorBoard the tags are
  ``split/key``.

  Args:
    workdir: the run directory.
    enabled: whether to write at all (default: only on process 0).
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = None
    self._events = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(self.path, "a")
      self._events = EventFileWriter(workdir)

  def truncate_after(self, step: int) -> None:
    """Drops records past ``step``, left by a run killed after its last save.

    A resumed run recomputes those steps, so ``metrics.jsonl`` then reads
    like one uninterrupted run.
    """
    if not self.enabled:
      return
    self._jsonl.close()
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          if json.loads(line)["step"] <= step:
            kept.append(line)
        except (ValueError, KeyError):  # a line cut short by a kill
          continue
    with open(self.path, "w") as f:
      f.writelines(kept)
    self._jsonl = open(self.path, "a")

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    """Writes one record of scalars."""
    if not self.enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    record = {"step": int(step), "split": split,
              **{k: _json_value(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._events.scalars(int(step), {f"{split}/{k}": v for k, v in values.items()})

  def flush(self) -> None:
    if self.enabled:
      self._jsonl.flush()
      self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()
      self.enabled = False


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]



class Progress:
  """A terminal progress bar with the loss and examples per second.

  Args:
    total: the last step.
    initial: the step the run starts from (after a resume).
    enabled: default only on process 0; also off when False is passed.
  """

  def __init__(self, total: int, initial: int = 0, *, enabled: bool | None = None):
    self.enabled = (jax.process_index() == 0) if enabled is None else enabled
    self.total = total
    self.step = initial
    self._bar = None
    if self.enabled:
      try:
        # The terminal bar, also in notebooks: tqdm.auto's widget needs
        # ipywidgets, which a local Jupyter may lack.
        import tqdm  # pylint: disable=g-import-not-at-top
        self._bar = tqdm.tqdm(total=total, initial=initial, unit="step",
                              dynamic_ncols=True, file=sys.stderr)
      except ImportError:
        pass

  def update(self, step: int, loss: float, examples_per_sec: float) -> None:
    """Moves the bar to ``step`` and shows the latest numbers."""
    if not self.enabled:
      return
    text = f"loss={loss:.4g} ex/s={examples_per_sec:,.0f}"
    if self._bar is not None:
      self._bar.set_postfix_str(text, refresh=False)
      self._bar.update(step - self.step)
    else:
      print(f"step {step}/{self.total} {text}", file=sys.stderr, flush=True)
    self.step = step

  def write(self, line: str) -> None:
    """Prints a line without breaking the bar."""
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(line, file=sys.stderr)
    else:
      print(line, file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
