"""Image data for the experiments: the bundled digits or a TFDS dataset.

Shared by the Heinsen, Tsai and Li experiments, whose configs name their
data the same way (``data.name``, ``data.image_size``, ``data.batch_size``,
``data.dir``, ``eval.batch_size`` and optionally ``data.train_split``,
``data.test_split``, ``data.augment``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from capsjax.data import digits, images
from capsjax.train import entrypoint


class ImageData(NamedTuple):
  """What an image experiment trains and evaluates on."""
  train_iter: Any                  # resumable grain iterator of (images, labels)
  eval_batches: Any                # padded (images, labels, valid) batches
  num_train: int                   # training examples (one epoch)
  input_shape: tuple[int, int, int]  # (H, W, C) of the model's input
  num_classes: int


def image_data(config, *,
               digits_images: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> ImageData:
  """The config's training iterator and evaluation batches.

  Args:
    config: the experiment config; ``data.name`` is ``"digits"`` (bundled,
      offline) or a dataset of :mod:`capsjax.data.images`.
    digits_images: optional map of the digits' images ``[..., H, W, 1]`` to
      the model's input (e.g. a stereo pair), applied to training records and
      to the test set alike.

  Raises:
    DatasetUnavailableError: the TFDS dataset is not prepared. The training
      split is opened first, so a run stops before writing anything.
    ValueError: ``data.image_size`` is not the dataset's.
  """
  d, seed = config.data, config.train.seed
  if d.name == "digits":
    train_src = digits.DigitsSource("train", image_size=d.image_size)
    test_src = digits.DigitsSource("test", image_size=d.image_size)
    to_input = digits_images or (lambda x: x)
    train_iter = digits.batched_iterator(
        train_src, d.batch_size, seed=seed,
        transform=None if digits_images is None
        else lambda r: (to_input(r[0]), r[1]))
    test_images = to_input(test_src.images)
    test_batches = entrypoint.padded_batches(
        (test_images, test_src.labels), config.eval.batch_size)
    return ImageData(train_iter, test_batches, len(train_src),
                     tuple(test_images.shape[1:]), digits.N_CLASSES)

  spec = images.spec(d.name)
  if spec.shape[:2] != (d.image_size, d.image_size):
    raise ValueError(f"config.data.image_size is {d.image_size}, but {d.name} "
                     f"images are {spec.shape[0]}x{spec.shape[1]}.")
  data_dir = d.get("dir", "") or None
  train_split = d.get("train_split", "train")
  train_iter = images.image_iterator(
      d.name, train_split, data_dir=data_dir, batch_size=d.batch_size,
      seed=seed, train=True, augment=d.get("augment", None))
  test_batches = images.image_eval_batches(
      d.name, d.get("test_split", "test"), data_dir=data_dir,
      batch_size=config.eval.batch_size)
  return ImageData(train_iter, test_batches,
                   images.num_examples(d.name, train_split, data_dir=data_dir),
                   tuple(spec.shape), spec.num_classes)
