"""Offline digit datasets: UCI handwritten digits and an overlapping-digits set.

Nothing here downloads anything. The images are the 1,797 UCI handwritten
digits (8x8, 17 grey levels, 10 classes) that scikit-learn ships inside its
package (``sklearn.datasets.load_digits``), so demos and tests run offline.

- :class:`DigitsSource`: the digits themselves, with a fixed, seeded,
  class-stratified train/test split and an optional up-sampling (nearest or
  bilinear, in NumPy) so that capsule models with conv stems fit.
- :class:`MultiDigitsSource`: an analogue of Tsai et al.'s DiverseMultiMNIST
  (App. B.2) composed from those digits: with probability 1/6 one digit,
  shifted; otherwise two digits of different classes, each shifted, overlaid
  with a pixel-wise max; multi-hot labels. Train and test are composed from
  the disjoint train and test images of the split.
- :func:`batched_dataset` / :func:`batched_iterator`: a shuffled, batched
  ``grain`` pipeline whose iterator resumes exactly from ``get_state()``, each
  host reading only its own part of every global batch.

Both sources are grain random-access sources (``__len__`` and
``__getitem__``) whose records are ``(image, label)`` with ``image`` float32
``[H, W, 1]`` in ``[0, 1]``; every record is a pure function of the
constructor arguments and its index, so any access order, any number of
hosts and any restart see the same data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from capsjax import _shapes

N_CLASSES = 10
NATIVE_SIZE = 8  # UCI digits are 8x8
_SPLITS = ("train", "test")


@functools.lru_cache(maxsize=1)
def load_uci_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 UCI digits: images float32 ``[1797, 8, 8]`` in [0, 1], labels int32.

  The grey levels 0..16 are divided by 16. Read once per process and cached;
  treat the returned arrays as read-only.

  Raises:
    ImportError: if scikit-learn (which bundles the data) is not installed.
  """
  try:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "The offline digits come bundled with scikit-learn: "
        "pip install scikit-learn") from e
  d = load_digits()
  images = (np.asarray(d.images, np.float64) / 16.0).astype(np.float32)
  labels = np.asarray(d.target, np.int32)
  images.setflags(write=False)
  labels.setflags(write=False)
  return images, labels


def _interp_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
  """``[n_out, n_in]`` 1-D resampling weights with half-pixel centres."""
  centres = (np.arange(n_out) + 0.5) * (n_in / n_out)  # in input pixel units
  w = np.zeros((n_out, n_in), np.float64)
  rows = np.arange(n_out)
  if method == "nearest":
    w[rows, np.clip(np.floor(centres).astype(int), 0, n_in - 1)] = 1.0
    return w
  x = np.clip(centres - 0.5, 0.0, n_in - 1.0)  # edges repeat the border pixel
  i0 = np.floor(x).astype(int)
  i1 = np.minimum(i0 + 1, n_in - 1)
  frac = x - i0
  np.add.at(w, (rows, i0), 1.0 - frac)
  np.add.at(w, (rows, i1), frac)
  return w


def resize_images(images: np.ndarray, size: int | tuple[int, int],
                  method: str = "bilinear") -> np.ndarray:
  """Resizes ``[N, h, w]`` images to ``[N, H, W]`` (NumPy, float32 out).

  Half-pixel centres as in ``jax.image.resize``; ``bilinear`` clamps at the
  border and does no anti-aliasing (meant for up-sampling, where it equals
  ``jax.image.resize(..., 'linear')``). Bilinear weights are convex, so
  values in [0, 1] stay in [0, 1].

  Args:
    images: ``[N, h, w]`` array.
    size: ``H`` (square) or ``(H, W)``.
    method: ``"bilinear"`` or ``"nearest"``.

  Returns:
    ``[N, H, W]`` float32 array.
  """
  if method not in ("bilinear", "nearest"):
    raise ValueError(
        f"method must be 'bilinear' or 'nearest', got {method!r}.")
  _, h, w = _shapes.check_ndim("images", images, 3, "[N, h, w]")
  out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else size
  _shapes.check_positive_int("size", out_h)
  _shapes.check_positive_int("size", out_w)
  if (out_h, out_w) == (h, w):
    return np.asarray(images, np.float32).copy()
  a = _interp_matrix(h, out_h, method)
  b = _interp_matrix(w, out_w, method)
  out = np.einsum("Hh,nhw,Ww->nHW", a, np.asarray(images, np.float64), b)
  return out.astype(np.float32)


def split_indices(labels: np.ndarray, test_fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A class-stratified, seeded train/test split of ``range(len(labels))``.

  Per class, in class order, one ``np.random.default_rng(seed)`` permutes the
  class's indices and the first ``round(test_fraction * n_class)`` go to test.

  Returns:
    ``(train_ids, test_ids)``: sorted, disjoint int64 arrays whose union is
    every index.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(
        f"test_fraction must be in (0, 1), got {test_fraction!r}.")
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    ids = rng.permutation(np.flatnonzero(labels == c))
    n_test = round(test_fraction * ids.size)
    test.append(ids[:n_test])
    train.append(ids[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _check_split(split: str) -> int:
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
  return _SPLITS.index(split)


class DigitsSource:
  """UCI handwritten digits as a grain random-access source.

  Records are ``(image, label)``: ``image`` float32 ``[S, S, 1]`` in [0, 1]
  (``S = image_size``), ``label`` an int32 class in ``0..9``.

  Attributes:
    images: ``[N, S, S, 1]`` float32, the split's images, resized.
    labels: ``[N]`` int32.
    source_ids: ``[N]`` indices of these images among all 1,797 digits.
  """

  def __init__(self, split: str = "train", *, image_size: int = NATIVE_SIZE,
               resize_method: str = "bilinear", test_fraction: float = 0.2,
               split_seed: int = 0):
    """Builds the split.

    Args:
      split: ``"train"`` or ``"test"``.
      image_size: side of the returned images (8 keeps the originals; e.g.
        16 or 28 up-samples).
      resize_method: ``"bilinear"`` or ``"nearest"``.
      test_fraction: fraction of each class held out for test (default 20 %:
        1,437 train / 360 test images).
      split_seed: seed of the split; the same seed gives the same split.
    """
    which = _check_split(split)
    _shapes.check_positive_int("image_size", image_size)
    images, labels = load_uci_digits()
    ids = split_indices(labels, test_fraction, split_seed)[which]
    self.source_ids = ids
    self.labels = labels[ids].copy()
    self.images = resize_images(images[ids], image_size, resize_method)[..., None]
    self.image_size = image_size

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.int32]:
    return self.images[index], self.labels[index]

  def __repr__(self) -> str:
    return (f"DigitsSource(n={len(self)}, image_size={self.image_size})")


class MultiDigitsRecipe(NamedTuple):
  """How one :class:`MultiDigitsSource` record is composed.

  Attributes:
    positions: indices into the source split (``DigitsSource`` of the same
      split), one or two.
    classes: the digits' classes (distinct when two).
    shifts: ``(dy, dx)`` per digit, each in ``[-max_shift, max_shift]``.
  """
  positions: tuple[int, ...]
  classes: tuple[int, ...]
  shifts: tuple[tuple[int, int], ...]


class MultiDigitsSource:
  """Overlapping digits, a small analogue of DiverseMultiMNIST.

  Tsai et al. (App. B.2) shift 28x28 MNIST digits by up to 4 pixels on a
  36x36 canvas; with probability 1/6 the image holds one digit, otherwise two
  digits of different classes overlaid. Here the digits are UCI digits
  resized to ``digit_size`` and shifted by up to ``max_shift`` pixels
  (default ``round(4 * digit_size / 28)``, the same fraction of the digit)
  on a canvas of ``digit_size + 2 * max_shift``; overlapping pixels take the
  max. Record ``i`` is drawn from ``np.random.default_rng((seed, split, i))``,
  so it does not depend on access order. The train split composes only
  train images and the test split only test images of the same
  ``(test_fraction, split_seed)`` split, which are disjoint.

  Records are ``(image, labels)``: ``image`` float32 ``[C, C, 1]`` in [0, 1]
  and ``labels`` a float32 multi-hot ``[10]`` with one or two ones.
  """

  def __init__(self, split: str = "train", *, num_examples: int | None = None,
               seed: int = 0, digit_size: int = 16,
               max_shift: int | None = None, single_prob: float = 1.0 / 6.0,
               resize_method: str = "bilinear", test_fraction: float = 0.2,
               split_seed: int = 0):
    """Builds the composite dataset.

    Args:
      split: ``"train"`` or ``"test"``.
      num_examples: number of composite records (default 10,000 for train,
        2,000 for test).
      seed: seed of the composition; the same seed gives the same records.
      digit_size: side of each digit after resizing the 8x8 originals.
      max_shift: largest shift in pixels along each axis.
      single_prob: probability of a one-digit image (paper: 1/6).
      resize_method: ``"bilinear"`` or ``"nearest"``.
      test_fraction: as in :class:`DigitsSource`.
      split_seed: as in :class:`DigitsSource`.
    """
    self._split_code = _check_split(split)
    if num_examples is None:
      num_examples = 10_000 if split == "train" else 2_000
    _shapes.check_positive_int("num_examples", num_examples)
    _shapes.check_positive_int("digit_size", digit_size)
    if max_shift is None:
      max_shift = round(4 * digit_size / 28)
    if isinstance(max_shift, bool) or not isinstance(
        max_shift, (int, np.integer)) or max_shift < 0:
      raise ValueError(
          f"max_shift must be an integer >= 0, got {max_shift!r}.")
    if not 0.0 <= single_prob <= 1.0:
      raise ValueError(f"single_prob must be in [0, 1], got {single_prob!r}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
    self.digits = DigitsSource(split, image_size=digit_size,
                               resize_method=resize_method,
                               test_fraction=test_fraction,
                               split_seed=split_seed)
    self.num_examples = int(num_examples)
    self.seed = int(seed)
    self.digit_size = digit_size
    self.max_shift = int(max_shift)
    self.canvas_size = digit_size + 2 * self.max_shift
    self.single_prob = float(single_prob)
    labels = self.digits.labels
    # Positions of the digits of any other class, per class.
    self._others = [np.flatnonzero(labels != c) for c in range(N_CLASSES)]

  def __len__(self) -> int:
    return self.num_examples

  def recipe(self, index: int) -> MultiDigitsRecipe:
    """The digits, classes and shifts of record ``index``."""
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(
          f"index {index} out of range for {self.num_examples} records.")
    rng = np.random.default_rng((self.seed, self._split_code, index))
    labels = self.digits.labels
    first = int(rng.integers(len(labels)))
    positions = [first]
    if rng.random() >= self.single_prob:
      others = self._others[labels[first]]
      positions.append(int(others[rng.integers(len(others))]))
    s = self.max_shift
    shifts = tuple(
        (int(rng.integers(-s, s + 1)), int(rng.integers(-s, s + 1)))
        for _ in positions)
    return MultiDigitsRecipe(tuple(positions),
                             tuple(int(labels[p]) for p in positions), shifts)

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    r = self.recipe(index)
    canvas = np.zeros((self.canvas_size, self.canvas_size, 1), np.float32)
    d = self.digit_size
    for pos, (dy, dx) in zip(r.positions, r.shifts):
      y0, x0 = self.max_shift + dy, self.max_shift + dx
      window = canvas[y0:y0 + d, x0:x0 + d]
      np.maximum(window, self.digits.images[pos], out=window)
    target = np.zeros(N_CLASSES, np.float32)
    target[list(r.classes)] = 1.0
    return canvas, target

  def __repr__(self) -> str:
    return (f"MultiDigitsSource(n={self.num_examples}, seed={self.seed}, "
            f"canvas={self.canvas_size}, max_shift={self.max_shift})")


# --------------------------------------------------------------------------
# grain pipeline
# --------------------------------------------------------------------------

_DEFAULT_READ = {"num_threads": 2, "prefetch_buffer_size": 16}


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


def batched_dataset(
    source: Sequence[Any] | Any,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    transform: Callable[[Any], Any] | None = None,
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
      :class:`DigitsSource`.
    batch_size: the **global** batch size, divisible by the process count.
    seed: the shuffle seed (the config seed); epochs are reshuffled.
    shuffle: shuffle (training) or keep the source order (evaluation).
    num_epochs: passes over the source; ``None`` repeats forever.
    drop_remainder: drop the last incomplete global batch. Must be True on
      several processes (their batches must have equal sizes).
    transform: optional per-record function, applied before batching.
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
    read_options: grain prefetch options (default 2 threads, 16 batches:
      the records are cheap).
    **kwargs: the keyword arguments of :func:`batched_dataset`.

  Returns:
    ``iter(batched_dataset(...).to_iter_dataset(read_options))``.
  """
  ds = batched_dataset(source, batch_size, **kwargs)
  if read_options is None:
    read_options = grain.ReadOptions(**_DEFAULT_READ)
  return iter(ds.to_iter_dataset(read_options))


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
  """Full global batches per epoch: ``n_examples // batch_size`` (>= 1)."""
  _shapes.check_positive_int("n_examples", n_examples)
  _shapes.check_positive_int("batch_size", batch_size)
  steps = n_examples // batch_size
  if steps < 1:
    raise ValueError(
        f"batch_size {batch_size} is larger than the dataset ({n_examples}).")
  return steps


__all__ = [
  "NATIVE_SIZE",
  "N_CLASSES",
  "DigitsSource",
  "MultiDigitsRecipe",
  "MultiDigitsSource",
  "batched_dataset",
  "batched_iterator",
  "load_uci_digits",
  "resize_images",
  "split_indices",
  "steps_per_epoch",
]
