"""DiverseMultiMNIST (Tsai et al., ICLR 2020, App. B.2), generated on the fly.

Each record is one 36x36 image: with probability 1/6 a single MNIST digit,
otherwise two digits of different classes overlaid; every 28x28 digit is
shifted by up to 4 pixels in each direction on the 36x36 canvas, and the
label is the multi-hot set of its digits' classes. The train split composes
only MNIST training digits, the test split only MNIST test digits (App. B.2:
"the training and the test images are from the disjoint set").

The paper generates every training image afresh (21M = 350 x 60,000 images,
App. B.1/B.2) and evaluates on 10,000 generated test images. Here record
``i`` is a pure function of ``(seed, split, i)`` (it is drawn from
``np.random.default_rng((seed, split, i))``), so a long virtual training set
(``num_examples=21_000_000``) never repeats an image, costs no memory, and
the grain pipeline over it shuffles, shards over hosts and resumes exactly
like any other source.

Overlay: Tsai et al. say they follow Sabour et al. (2017), whose MultiMNIST
adds the two shifted uint8 digits and clips at 255; ``overlay="sum_clip"``
does that on [0, 1] images (``"max"`` is the pixel-wise maximum of the
offline analogue :class:`capsjax.data.digits.MultiDigitsSource`, which draws
its records with the same shared function).

Records are ``(image, multi_hot)``: ``image`` float32 ``[36, 36, 1]`` in
``[0, 1]``, ``multi_hot`` float32 ``[10]`` with one or two ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from capsjax import _shapes
from capsjax.data import digits as digits_lib
from capsjax.data.errors import DatasetUnavailableError

__all__ = [
  "CANVAS_SIZE",
  "MAX_SHIFT",
  "MNIST_SIZE",
  "SINGLE_PROB",
  "TEST_EXAMPLES",
  "TRAIN_EXAMPLES_PER_EPOCH",
  "DiverseMultiMNISTSource",
  "diverse_multimnist",
  "mnist_source",
]

MNIST_SIZE = 28
MAX_SHIFT = 4                     # App. B.2: "shifted up to 4 pixels"
CANVAS_SIZE = MNIST_SIZE + 2 * MAX_SHIFT  # 36, App. B.2
SINGLE_PROB = 1.0 / 6.0           # App. B.2: single-digit probability 1/6
TRAIN_EXAMPLES_PER_EPOCH = 60_000  # App. B.1: one "step" is 60,000 images
TEST_EXAMPLES = 10_000            # App. B.2: 10,000 test images per evaluation
_SPLITS = ("train", "test")


def mnist_source(split: str, *, data_dir: str | None) -> Sequence[Any]:
  """The prepared TFDS ``mnist`` split as a random-access source.

  Records are TFDS dicts: ``image`` uint8 ``[28, 28, 1]``, ``label`` int.

  Raises:
    DatasetUnavailableError: when the prepared files are absent (naming the
      ``prepare`` command).
  """
  from capsjax.data import images  # pylint: disable=g-import-not-at-top
  return images.tfds_source("mnist", split, data_dir=data_dir)


class DiverseMultiMNISTSource:
  """DiverseMultiMNIST records composed from an MNIST split.

  Record ``i``: ``rng = np.random.default_rng((seed, split_code, i))``; a
  first digit uniform among the split's images; with probability
  ``1 - single_prob`` a second digit uniform among the images of the other
  classes; a shift ``(dy, dx)``, each uniform in ``[-max_shift, max_shift]``,
  per digit (:func:`capsjax.data.digits.draw_multi_digit_recipe`); the
  shifted digits overlaid on a zero canvas
  (:func:`capsjax.data.digits.overlay_digits`).

  Attributes:
    split: ``"train"`` or ``"test"``.
    num_examples: the number of records.
    seed: the composition seed.
    canvas_size: ``28 + 2 * max_shift`` (36 by default).
  """

  def __init__(self, mnist: Sequence[Mapping[str, Any]], split: str, *,
               num_examples: int | None = None, seed: int = 0,
               single_prob: float = SINGLE_PROB, max_shift: int = MAX_SHIFT,
               overlay: str = "sum_clip"):
    """Builds the source.

    Args:
      mnist: the MNIST split to compose from, a random-access source of
        ``{"image": uint8 [28, 28, 1], "label": int}`` records (e.g.
        :func:`mnist_source`); train records must come from the MNIST train
        split and test records from the test split.
      split: ``"train"`` or ``"test"`` (part of every record's seed).
      num_examples: number of records (default 60,000 for train, one of the
        paper's "steps"; 10,000 for test, App. B.2).
      seed: the composition seed; the same seed gives the same records.
      single_prob: probability of a one-digit image (paper: 1/6).
      max_shift: largest shift in pixels along each axis (paper: 4).
      overlay: ``"sum_clip"`` (Sabour et al.) or ``"max"``.

    Raises:
      ValueError: on a bad argument, or an MNIST split with fewer than two
        classes.
    """
    if split not in _SPLITS:
      raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    if num_examples is None:
      num_examples = TRAIN_EXAMPLES_PER_EPOCH if split == "train" else TEST_EXAMPLES
    _shapes.check_positive_int("num_examples", num_examples)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
    if not 0.0 <= single_prob <= 1.0:
      raise ValueError(f"single_prob must be in [0, 1], got {single_prob!r}.")
    if isinstance(max_shift, bool) or not isinstance(
        max_shift, (int, np.integer)) or max_shift < 0:
      raise ValueError(f"max_shift must be an integer >= 0, got {max_shift!r}.")
    if overlay not in ("sum_clip", "max"):
      raise ValueError(
          f"overlay must be 'sum_clip' or 'max', got {overlay!r}.")
    if len(mnist) < 2:
      raise ValueError(f"mnist: need at least 2 images, got {len(mnist)}.")
    self._mnist = mnist
    self.split = split
    self._split_code = _SPLITS.index(split)
    self.num_examples = int(num_examples)
    self.seed = int(seed)
    self.single_prob = float(single_prob)
    self.max_shift = int(max_shift)
    self.overlay = overlay
    self.canvas_size = MNIST_SIZE + 2 * self.max_shift

  def __len__(self) -> int:
    return self.num_examples

  def _read(self, position: int) -> tuple[np.ndarray, int]:
    record = self._mnist[position]
    image = np.asarray(record["image"])
    if image.shape != (MNIST_SIZE, MNIST_SIZE, 1):
      raise ValueError(f"mnist image {position}: expected shape "
                       f"{(MNIST_SIZE, MNIST_SIZE, 1)}, got {image.shape}.")
    return (image.astype(np.float32) / 255.0, int(record["label"]))

  def _compose(self, index: int) -> tuple[digits_lib.MultiDigitsRecipe,
                                          list[np.ndarray]]:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(
          f"index {index} out of range for {self.num_examples} records.")
    rng = np.random.default_rng((self.seed, self._split_code, index))
    read: dict[int, tuple[np.ndarray, int]] = {}  # each MNIST record once

    def record(position: int) -> tuple[np.ndarray, int]:
      if position not in read:
        read[position] = self._read(position)
      return read[position]

    recipe = digits_lib.draw_multi_digit_recipe(
        rng, len(self._mnist), lambda p: record(p)[1],
        single_prob=self.single_prob, max_shift=self.max_shift)
    return recipe, [record(p)[0] for p in recipe.positions]

  def recipe(self, index: int) -> digits_lib.MultiDigitsRecipe:
    """The MNIST positions, classes and shifts of record ``index``."""
    return self._compose(index)[0]

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    recipe, images = self._compose(index)
    canvas = digits_lib.overlay_digits(images, recipe.shifts, self.max_shift,
                                       mode=self.overlay)
    return canvas, digits_lib.multi_hot(recipe.classes)

  def __repr__(self) -> str:
    return (f"DiverseMultiMNISTSource(split={self.split!r}, "
            f"n={self.num_examples}, seed={self.seed}, "
            f"canvas={self.canvas_size}, overlay={self.overlay!r})")


def diverse_multimnist(split: str, *, data_dir: str | None,
                       num_examples: int | None = None, seed: int = 0,
                       **options: Any) -> DiverseMultiMNISTSource:
  """DiverseMultiMNIST over the prepared TFDS ``mnist`` split of ``split``.

  Args:
    split: ``"train"`` (composed from MNIST train) or ``"test"`` (MNIST
      test).
    data_dir: the TFDS data directory holding the prepared ``mnist``
      (``python -m capsjax.data.prepare --datasets=mnist --data_dir=DIR``).
    num_examples, seed, **options: as :class:`DiverseMultiMNISTSource`.

  Raises:
    DatasetUnavailableError: when MNIST is not prepared in ``data_dir``.
  """
  try:
    mnist = mnist_source(split, data_dir=data_dir)
  except DatasetUnavailableError as e:
    # One message whose first line names this dataset, then MNIST's details.
    first, _, rest = str(e).partition("\n")
    raise DatasetUnavailableError(
        "dataset 'diverse_multimnist' is generated on the fly from MNIST, "
        f"and {first}\n{rest}") from e
  return DiverseMultiMNISTSource(mnist, split, num_examples=num_examples,
                                 seed=seed, **options)
