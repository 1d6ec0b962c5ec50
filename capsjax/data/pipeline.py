"""Generic grain pipelines: sharded, resumable training batches and padded
evaluation batches over any random-access source.

- :func:`batched_dataset` / :func:`batched_iterator`: a shuffled, repeated,
  batched ``grain`` pipeline; each host reads only its own rows of every
  global batch, and the iterator resumes exactly from ``get_state()``.
  Per-record random augmentation (``random_transform``) is seeded by the
  record's position in the global stream, so it is the same whatever the
  number of hosts and after any restart.
- :func:`eval_batches`: this host's part of every padded evaluation batch,
  streamed from the source (``(*fields, valid)``, each example counted once),
  the streaming counterpart of
  :func:`capsjax.train.entrypoint.padded_batches`.
- :func:`steps_per_epoch`.

A source is anything with ``__len__`` and ``__getitem__`` (a grain
random-access source), e.g. :class:`capsjax.data.digits.DigitsSource` or
``tfds.data_source(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from capsjax import _shapes

__all__ = [
    "batched_dataset",
    "batched_iterator",
    "eval_batches",
    "steps_per_epoch",
]

_DEFAULT_READ = {"num_threads": 2, "prefetch_buffer_size": 16}
# Mixed into the per-record augmentation seed so it never coincides with the
# shuffle's stream for the same config seed.
_AUGMENT_STREAM = 0x5EED


def _process_info(process_index: int | None,
                  process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  _shapes.check_positive_int("process_count", process_count)
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index must be in [0, {process_count}), got {process_index}.")
  return int(process_index), int(process_count)


def record_rng(seed: int, position: int) -> np.random.Generator:
  """The generator that augments the record at ``position`` of the stream.

  ``position`` counts records of the shuffled, repeated global stream (epoch
  ``e``, slot ``i`` is ``e * len(source) + i``), so a record gets a new
  augmentation every epoch, and the same one on every host and every restart.
  """
  return np.random.default_rng((_AUGMENT_STREAM, int(seed), int(position)))


def batched_dataset(
    source: Sequence[Any] | Any,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    transform: Callable[[Any], Any] | None = None,
    random_transform: Callable[[Any, np.random.Generator], Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
  """This host's batches of a shuffled, repeated, batched grain pipeline.

  ``MapDataset.source(source).shuffle(seed).repeat(num_epochs).map(transform)``
  is one global stream (reshuffled every epoch); global batch ``g`` holds its
  elements ``[g * batch_size, (g + 1) * batch_size)``. Process ``p`` of ``n``
  gets rows ``[p * b, (p + 1) * b)`` of every global batch, ``b =
  batch_size / n``, and reads only those elements: it batches the stream by
  ``b`` and keeps every ``n``-th batch from the ``p``-th. So the per-host
  batches, placed in process order with
  ``jax.make_array_from_process_local_data``, form exactly the global batch
  one process would read, whatever the number of hosts; hosts read disjoint
  elements. ``process_index`` / ``process_count`` default to
  ``jax.process_index()`` / ``jax.process_count()``.

  Args:
    source: a random-access source (``__len__``, ``__getitem__``), e.g.
      :class:`~capsjax.data.digits.DigitsSource`.
    batch_size: the **global** batch size, divisible by the process count.
    seed: the shuffle seed (the config seed); epochs are reshuffled. Also
      seeds ``random_transform``.
    shuffle: shuffle (training) or keep the source order (evaluation).
    num_epochs: passes over the source; ``None`` repeats forever.
    drop_remainder: drop the last incomplete global batch. Must be True on
      several processes (their batches must have equal sizes).
    transform: optional per-record function, applied before batching.
    random_transform: optional ``f(record, rng)`` applied after
      ``transform`` (e.g. random crops); ``rng`` is :func:`record_rng` of
      ``seed`` and the record's position in the global stream, so results
      do not depend on hosts, threads or restarts.
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).

  Returns:
    A ``grain.MapDataset`` of this host's batches (tuples of stacked arrays
    for tuple records).
  """
  _shapes.check_positive_int("batch_size", batch_size)
  if num_epochs is not None:
    _shapes.check_positive_int("num_epochs", num_epochs)
  p, n = _process_info(process_index, process_count)
  if batch_size % n:
    raise ValueError(
        f"batch_size (global) = {batch_size} must be divisible by the "
        f"number of processes {n}.")
  if n > 1 and not drop_remainder:
    raise ValueError(
        "drop_remainder=False needs a single process: hosts' last batches "
        "would differ in size; pad the evaluation set instead.")
  ds = grain.MapDataset.source(source)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  if transform is not None:
    ds = ds.map(transform)
  if random_transform is not None:
    ds = ds.map_with_index(
        lambda i, record: random_transform(record, record_rng(seed, i)))
  if n == 1:
    return ds.batch(batch_size, drop_remainder=drop_remainder)
  local = batch_size // n
  n_global = len(ds) // batch_size
  return ds.batch(local, drop_remainder=True)[:n_global * n][p::n]


def batched_iterator(
    source: Sequence[Any] | Any,
    batch_size: int,
    *,
    read_options: grain.ReadOptions | None = None,
    **kwargs: Any,
) -> grain.DatasetIterator:
  """An iterator over :func:`batched_dataset`; checkpointable and resumable.

  ``it.get_state()`` after ``k`` batches, restored with ``set_state`` on a
  fresh iterator built with the same arguments, yields the same next batch
  (grain stores the position, and every record is a pure function of its
  index). Save it next to the model state (``grain.checkpoint`` with orbax).

  Args:
    source: as in :func:`batched_dataset`.
    batch_size: the global batch size.
    read_options: grain prefetch options (default 2 threads, 16 batches).
    **kwargs: the keyword arguments of :func:`batched_dataset`.

  Returns:
    ``iter(batched_dataset(...).to_iter_dataset(read_options))``.
  """
  ds = batched_dataset(source, batch_size, **kwargs)
  if read_options is None:
    read_options = grain.ReadOptions(**_DEFAULT_READ)
  return iter(ds.to_iter_dataset(read_options))


class _PaddedSource:
  """``source`` followed by zero records, each record ``(*fields, valid)``."""

  def __init__(self, source: Any, n_padded: int,
               transform: Callable[[Any], Any] | None):
    self._source = source
    self._n = len(source)
    self._n_padded = n_padded
    self._transform = transform

  def __len__(self) -> int:
    return self._n_padded

  def _fields(self, index: int) -> tuple[Any, ...]:
    record = self._source[index]
    if self._transform is not None:
      record = self._transform(record)
    if not isinstance(record, tuple):
      record = (record,)
    return record

  def __getitem__(self, index: int) -> tuple[Any, ...]:
    index = int(index)
    if index < self._n:
      return (*self._fields(index), np.float32(1.0))
    # Padding: zeros shaped like a real record, so every batch has one shape.
    template = self._fields(0)
    zeros = tuple(np.zeros_like(np.asarray(f)) for f in template)
    return (*zeros, np.float32(0.0))


def eval_batches(
    source: Sequence[Any] | Any,
    batch_size: int,
    *,
    transform: Callable[[Any], Any] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
  """This host's padded evaluation batches, streamed from ``source``.

  The source (in its own order, after ``transform``) is padded with zero
  records up to a multiple of ``batch_size``; every global batch is
  ``(*fields, valid)`` with ``valid`` a float32 ``[B]`` mask (1 for real
  examples, 0 for padding), so a ``metric_fn`` that weights by ``valid`` and
  counts ``sum(valid)`` sees every example exactly once, and every batch has
  the same shape (one compilation). Host ``p`` of ``n`` gets rows
  ``[p * b, (p + 1) * b)`` of each global batch (``b = batch_size // n``),
  reading only those records: the same batches as
  :func:`capsjax.train.entrypoint.padded_batches` over the whole arrays,
  without holding the eval set in memory.

  Args:
    source: a random-access source.
    batch_size: examples per global batch; divisible by the process count.
    transform: optional ``record -> tuple of arrays`` (e.g. decode and
      normalise); a non-tuple result counts as one field.
    process_index, process_count: default ``jax.process_index()`` and
      ``jax.process_count()``.
    read_options: grain prefetch options (default 2 threads, 16 batches).

  Returns:
    A re-iterable ``grain.IterDataset`` of ``ceil(N / batch_size)`` tuples
    ``(*fields, valid)`` of NumPy arrays with ``b`` rows each; iterate it
    once per evaluation.
  """
  _shapes.check_positive_int("batch_size", batch_size)
  p, n = _process_info(process_index, process_count)
  if batch_size % n:
    raise ValueError(f"batch_size ({batch_size}) must be divisible by the "
                     f"number of processes ({n}).")
  if len(source) == 0:
    raise ValueError("source: the evaluation set is empty.")
  n_padded = -(-len(source) // batch_size) * batch_size
  padded = _PaddedSource(source, n_padded, transform)
  ds = batched_dataset(padded, batch_size, shuffle=False, num_epochs=1,
                       process_index=p, process_count=n)
  if read_options is None:
    read_options = grain.ReadOptions(**_DEFAULT_READ)
  return ds.to_iter_dataset(read_options)


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
  """Full global batches per epoch: ``n_examples // batch_size`` (>= 1)."""
  _shapes.check_positive_int("n_examples", n_examples)
  _shapes.check_positive_int("batch_size", batch_size)
  steps = n_examples // batch_size
  if steps < 1:
    raise ValueError(
        f"batch_size {batch_size} is larger than the dataset ({n_examples}).")
  return steps
