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
- :func:`batched_dataset` / :func:`batched_iterator` /
  :func:`steps_per_epoch`: re-exported from :mod:`capsjax.data.pipeline`
  (where the generic grain helpers live) so older imports keep working.

Both sources are grain random-access sources (``__len__`` and
``__getitem__``) whose records are ``(image, label)`` with ``image`` float32
``[H, W, 1]`` in ``[0, 1]``; every record is a pure function of the
constructor arguments and its index, so any access order, any number of
hosts and any restart see the same data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from capsjax import _shapes

# Re-exported: these lived here before capsjax.data.pipeline existed.
from capsjax.data.pipeline import batched_dataset, batched_iterator, steps_per_epoch

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


# Shared with capsjax.data.multimnist (DiverseMultiMNIST on real MNIST): the
# draw of a record's digits and shifts, and the compositing.


def draw_multi_digit_recipe(
    rng: np.random.Generator,
    n_images: int,
    label_of: Callable[[int], int],
    *,
    single_prob: float,
    max_shift: int,
    other_class: Callable[[np.random.Generator, int], int] | None = None,
) -> MultiDigitsRecipe:
  """Draws one DiverseMultiMNIST-style record (Tsai et al., App. B.2).

  A first digit uniformly among ``n_images``; with probability
  ``1 - single_prob`` a second one of a different class; then a shift
  ``(dy, dx)`` per digit, each uniform in ``[-max_shift, max_shift]``.

  Args:
    rng: the record's generator (seeded by the caller from its index).
    n_images: number of digit images to draw from.
    label_of: ``position -> class``.
    single_prob: probability of a one-digit record.
    max_shift: largest shift along each axis.
    other_class: ``(rng, first_class) -> position`` of a digit of another
      class, uniform among them; by default, uniform positions are drawn
      until one has another class (which is the same distribution and reads
      no label table up front).

  Returns:
    The :class:`MultiDigitsRecipe`.
  """
  first = int(rng.integers(n_images))
  first_class = int(label_of(first))
  positions, classes = [first], [first_class]
  if rng.random() >= single_prob:
    if other_class is not None:
      second = int(other_class(rng, first_class))
    else:
      second = int(rng.integers(n_images))
      while int(label_of(second)) == first_class:
        second = int(rng.integers(n_images))
    positions.append(second)
    classes.append(int(label_of(second)))
  s = int(max_shift)
  shifts = tuple(
      (int(rng.integers(-s, s + 1)), int(rng.integers(-s, s + 1)))
      for _ in positions)
  return MultiDigitsRecipe(tuple(positions), tuple(classes), shifts)


_OVERLAYS = ("max", "sum_clip")


def overlay_digits(digits: Sequence[np.ndarray],
                   shifts: Sequence[tuple[int, int]], max_shift: int, *,
                   mode: str = "max") -> np.ndarray:
  """Shifts each digit on a zero canvas and overlays them.

  Digit ``k`` (``[d, d, c]`` in [0, 1]) goes to rows ``max_shift + dy`` ..
  ``+ d`` and columns ``max_shift + dx`` .. ``+ d`` of a ``[d + 2 max_shift,
  d + 2 max_shift, c]`` canvas.

  Args:
    digits: one or more ``[d, d, c]`` float images of the same shape.
    shifts: ``(dy, dx)`` per digit, each in ``[-max_shift, max_shift]``.
    max_shift: the canvas margin.
    mode: ``"max"`` (pixel-wise maximum) or ``"sum_clip"`` (sum clipped to
      1: Sabour et al.'s MultiMNIST adds the two uint8 digits and clips at
      255, which Tsai et al. follow).

  Returns:
    The float32 canvas.
  """
  if mode not in _OVERLAYS:
    raise ValueError(f"mode must be one of {_OVERLAYS}, got {mode!r}.")
  if len(digits) != len(shifts) or not digits:
    raise ValueError(f"need one shift per digit, got {len(digits)} digits "
                     f"and {len(shifts)} shifts.")
  d, _, c = np.shape(digits[0])
  size = d + 2 * max_shift
  canvas = np.zeros((size, size, c), np.float32)
  for digit, (dy, dx) in zip(digits, shifts):
    if max(abs(dy), abs(dx)) > max_shift:
      raise ValueError(f"shift {(dy, dx)} exceeds max_shift={max_shift}.")
    y0, x0 = max_shift + dy, max_shift + dx
    window = canvas[y0:y0 + d, x0:x0 + d]
    if mode == "max":
      np.maximum(window, digit, out=window)
    else:
      window += digit
  if mode == "sum_clip":
    np.minimum(canvas, 1.0, out=canvas)
  return canvas


def multi_hot(classes: Sequence[int], n_classes: int = N_CLASSES) -> np.ndarray:
  """float32 ``[n_classes]`` with ones at ``classes``."""
  target = np.zeros(n_classes, np.float32)
  target[list(classes)] = 1.0
  return target


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

    def other_class(rng: np.random.Generator, first_class: int) -> int:
      others = self._others[first_class]
      return int(others[rng.integers(len(others))])

    return draw_multi_digit_recipe(
        rng, len(labels), labels.__getitem__, single_prob=self.single_prob,
        max_shift=self.max_shift, other_class=other_class)

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    r = self.recipe(index)
    canvas = overlay_digits([self.digits.images[p] for p in r.positions],
                            r.shifts, self.max_shift, mode="max")
    return canvas, multi_hot(r.classes)

  def __repr__(self) -> str:
    return (f"MultiDigitsSource(n={self.num_examples}, seed={self.seed}, "
            f"canvas={self.canvas_size}, max_shift={self.max_shift})")


__all__ = [
  "NATIVE_SIZE",
  "N_CLASSES",
  "DigitsSource",
  "MultiDigitsRecipe",
  "MultiDigitsSource",
  "batched_dataset",
  "batched_iterator",
  "draw_multi_digit_recipe",
  "load_uci_digits",
  "multi_hot",
  "overlay_digits",
  "resize_images",
  "split_indices",
  "steps_per_epoch",
]
