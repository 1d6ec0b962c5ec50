"""Image classification datasets read with ``tfds.data_source`` and grain.

The papers' image datasets -- CIFAR-10/100, SVHN (cropped digits),
smallNORB and MNIST -- prepared once as TFDS ``array_record`` files by
``python -m capsjax.data.prepare`` (which needs TensorFlow) and read here
without TensorFlow (``tfds.data_source``; PNG decoding uses Pillow):

- :func:`tfds_source`: the random-access source of one split; raises
  :class:`~capsjax.data.errors.DatasetUnavailableError` naming the prepare
  command when the prepared files are absent (it never downloads).
- :func:`image_iterator`: a resumable, host-sharded training (or plain)
  iterator of ``(images float32 [B, H, W, C], labels int32 [B])``.
- :func:`image_eval_batches`: padded evaluation batches
  ``(images, labels, valid)``, every example counted once.
- :func:`num_examples`, :func:`spec`, :data:`DATASETS`.

Per dataset (:data:`DATASETS`):

============  ==========  =======  ======================================
name          image       classes  training augmentation (default)
============  ==========  =======  ======================================
cifar10       32x32x3     10       pad 4 + random crop 32, horizontal flip
cifar100      32x32x3     100      pad 4 + random crop 32, horizontal flip
svhn_cropped  32x32x3     10       pad 4 + random crop 32 (no flip)
smallnorb     96x96x2     5        pad 16 + random crop 96 (no flip)
mnist         28x28x1     10       none
============  ==========  =======  ======================================

- CIFAR and SVHN images are normalised per channel, ``(x / 255 - mean) /
  std``, with the mean and (population) standard deviation of each
  dataset's *training* split pixels (:data:`CIFAR10_MEAN` etc.); the pad-4
  crop + flip is the standard CIFAR "+" augmentation, the one Tsai et al.'s
  (2020) public code uses for CIFAR (their paper does not state it). Li et al. (2018, Table 4) train their plain
  EncapNet rows without augmentation (``augment="none"``) and their "+" rows
  with "mild augmentation" they do not specify; we take pad-4 crop + flip for
  CIFAR, and pad-4 crop alone for SVHN (a flipped digit is another symbol).
- smallNORB: the stereo pair (TFDS ``image`` and ``image2``) as the two
  channels, scaled to [0, 1] with no mean/std (Heinsen's model starts with
  BatchNorm and appends its own coordinate channels:
  :class:`capsjax.models.heinsen2019.SmallNORBClassifier`); labels are the
  5 categories (``label_category``). Training: "16 pixels of padding on
  each side ... randomly crop them to 96x96 ... We do not use any other image
  processing" (Heinsen 2019, smallNORB experiment); test: the whole image.
- MNIST: ``[0, 1]``, one channel (the digits that DiverseMultiMNIST
  composes; it shifts them itself).

Padding pixels are 0 before normalisation (a black border, as a
zero-padded ``RandomCrop``). Crops and flips are drawn from a generator
seeded by ``(seed, position in the global stream)``
(:func:`capsjax.data.pipeline.record_rng`), so an iterator restored from
``get_state()`` continues with identical batches and any number of hosts
sees the same augmented global batches. Evaluation never augments.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import grain
import numpy as np

from capsjax import _shapes
from capsjax.data import pipeline
from capsjax.data.errors import DatasetUnavailableError

__all__ = [
  "AUGMENTATIONS",
  "CIFAR10_MEAN",
  "CIFAR10_STD",
  "CIFAR100_MEAN",
  "CIFAR100_STD",
  "DATASETS",
  "SVHN_MEAN",
  "SVHN_STD",
  "ImageSpec",
  "augment_image",
  "image_eval_batches",
  "image_iterator",
  "num_examples",
  "prepare_command",
  "spec",
  "tfds_source",
]

# Per-channel (R, G, B) mean and population std of the training split's
# pixels scaled to [0, 1], as commonly quoted for these datasets (e.g. in
# torchvision training recipes); not recomputed by capsjax.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)

# "none": no augmentation; "crop": pad + random crop back to the input size;
# "crop_flip": that and a horizontal flip with probability 1/2.
AUGMENTATIONS = ("none", "crop", "crop_flip")


class ImageSpec(NamedTuple):
  """How one TFDS image dataset becomes ``(image, label)`` records.

  Attributes:
    image_keys: TFDS features stacked along channels (smallNORB's stereo
      pair is two).
    label_key: the TFDS feature used as the class label.
    shape: ``(H, W, C)`` of the returned images.
    num_classes: number of classes.
    mean: per-channel mean subtracted after scaling to [0, 1] (``None``:
      keep [0, 1]).
    std: per-channel std divided by (``None`` with ``mean``).
    pad: pixels of zero padding on each side before a random crop.
    augment: default training augmentation, one of :data:`AUGMENTATIONS`.
  """
  image_keys: tuple[str, ...]
  label_key: str
  shape: tuple[int, int, int]
  num_classes: int
  mean: tuple[float, ...] | None
  std: tuple[float, ...] | None
  pad: int
  augment: str


DATASETS: dict[str, ImageSpec] = {
    "cifar10": ImageSpec(("image",), "label", (32, 32, 3), 10, CIFAR10_MEAN,
                         CIFAR10_STD, 4, "crop_flip"),
    "cifar100": ImageSpec(("image",), "label", (32, 32, 3), 100, CIFAR100_MEAN,
                          CIFAR100_STD, 4, "crop_flip"),
    "svhn_cropped": ImageSpec(("image",), "label", (32, 32, 3), 10, SVHN_MEAN,
                              SVHN_STD, 4, "crop"),
    "smallnorb": ImageSpec(("image", "image2"), "label_category", (96, 96, 2),
                           5, None, None, 16, "crop"),
    "mnist": ImageSpec(("image",), "label", (28, 28, 1), 10, None, None, 0,
                       "none"),
}


def spec(name: str) -> ImageSpec:
  """The :class:`ImageSpec` of dataset ``name`` (a key of :data:`DATASETS`)."""
  if name not in DATASETS:
    raise ValueError(
        f"name must be one of {sorted(DATASETS)}, got {name!r}.")
  return DATASETS[name]


def prepare_command(names: str | list[str], data_dir: str | None) -> str:
  """The shell command that prepares ``names`` under ``data_dir``."""
  names = [names] if isinstance(names, str) else list(names)
  cmd = ("pip install 'capsjax[prepare]' && python -m capsjax.data.prepare "
         f"--datasets={','.join(names)}")
  return cmd + (f" --data_dir={data_dir}" if data_dir else "")


def tfds_source(name: str, split: str, *, data_dir: str | None) -> Any:
  """The random-access source of one prepared split (no download, no TF).

  Args:
    name: a key of :data:`DATASETS` (any TFDS name works, but only those
      have a record format here).
    split: a TFDS split, e.g. ``"train"``, ``"test"`` or ``"train+extra"``.
    data_dir: the TFDS data directory given to ``prepare`` (``None``: TFDS's
      default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

  Returns:
    ``tfds.data_source(name, split=split, data_dir=data_dir,
    download=False)``: records are dicts of NumPy arrays.

  Raises:
    DatasetUnavailableError: the split is not prepared (in ``array_record``
      format) under ``data_dir``; the message gives the prepare command.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    # download=False: a missing dataset must stop here, never start a
    # download (offline it retries for minutes).
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except (NotImplementedError, FileNotFoundError, AssertionError, KeyError,
          ValueError, OSError) as e:
    root = os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR")
        or os.path.join("~", "tensorflow_datasets"))
    if not os.path.isdir(os.path.join(root, name)):
      # TFDS's own message for an absent dataset talks of file formats.
      cause = f"there is no {os.path.join(root, name)!r}"
    else:
      cause = f"TFDS said: {type(e).__name__}: {e}"
    raise DatasetUnavailableError(
        f"dataset {name!r} (split {split!r}) cannot be read:\n"
        f"  expected under {root!r} as TFDS array_record files ({cause}).\n"
        f"  Prepare it once (needs TensorFlow and a download):\n"
        f"    {prepare_command(name, data_dir)}\n"
        f"  then pass the same directory as data.dir."
    ) from e


def num_examples(name: str, split: str, *, data_dir: str | None) -> int:
  """Number of records of a prepared split (see :func:`tfds_source`)."""
  return len(tfds_source(name, split, data_dir=data_dir))


def _extract(s: ImageSpec) -> Callable[[dict[str, Any]], tuple[np.ndarray, np.int32]]:
  """``record -> (uint8 image [H, W, C], int32 label)``."""
  h, w, c = s.shape

  def extract(record: dict[str, Any]) -> tuple[np.ndarray, np.int32]:
    parts = [np.asarray(record[k]) for k in s.image_keys]
    parts = [p[..., None] if p.ndim == 2 else p for p in parts]
    image = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    if image.shape != (h, w, c):
      raise ValueError(f"expected images of shape {(h, w, c)}, got "
                       f"{image.shape} (features {s.image_keys}).")
    return image, np.int32(record[s.label_key])

  return extract


def _normalise(s: ImageSpec) -> Callable[[tuple[np.ndarray, np.int32]],
                                         tuple[np.ndarray, np.int32]]:
  """``(uint8 image, label) -> (float32 normalised image, label)``."""
  mean = None if s.mean is None else np.asarray(s.mean, np.float32)
  std = None if s.std is None else np.asarray(s.std, np.float32)

  def normalise(record):
    image, label = record
    x = np.asarray(image, np.float32) * np.float32(1.0 / 255.0)
    if mean is not None:
      x = (x - mean) / std
    return x, label

  return normalise


def augment_image(image: np.ndarray, rng: np.random.Generator, *, pad: int,
                  flip: bool) -> np.ndarray:
  """Pad-and-random-crop (and optionally flip) one ``[H, W, C]`` image.

  The image is zero-padded by ``pad`` pixels on each side and an ``H x W``
  window taken at offsets ``(dy, dx)`` drawn uniformly from ``[0, 2 pad]``
  (``rng.integers`` twice, rows first); then, if ``flip``, it is mirrored
  left-right when ``rng.random() < 0.5``. So pixel ``(y, x)`` of the result
  is input pixel ``(y + dy - pad, x + dx - pad)`` (0 outside).

  Args:
    image: ``[H, W, C]`` array (any dtype).
    rng: the record's generator.
    pad: padding on each side (>= 0).
    flip: whether to draw a horizontal flip.

  Returns:
    ``[H, W, C]`` array of ``image``'s dtype.
  """
  h, w, _ = _shapes.check_ndim("image", image, 3, "[H, W, C]")
  if pad < 0:
    raise ValueError(f"pad must be >= 0, got {pad}.")
  out = image
  if pad:
    dy, dx = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = padded[dy:dy + h, dx:dx + w]
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def _check_augment(s: ImageSpec, augment: str | None) -> str:
  augment = s.augment if augment is None else augment
  if augment not in AUGMENTATIONS:
    raise ValueError(
        f"augment must be one of {AUGMENTATIONS} or None, got {augment!r}.")
  if augment != "none" and s.pad == 0:
    raise ValueError(f"augment={augment!r} needs a crop padding, and this "
                     "dataset has none (use 'none').")
  return augment


def image_iterator(
    name: str,
    split: str,
    *,
    data_dir: str | None,
    batch_size: int,
    seed: int,
    train: bool,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    augment: str | None = None,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
  """A resumable grain iterator of this host's ``(images, labels)`` batches.

  Built on :func:`capsjax.data.pipeline.batched_iterator`: shuffled with
  ``seed`` and reshuffled every epoch when ``train`` (else in source order),
  repeated ``num_epochs`` times (``None``: forever), this host's rows of
  every global batch. Save ``it.get_state()`` with the model to resume
  exactly.

  Args:
    name: a key of :data:`DATASETS`.
    split: the TFDS split.
    data_dir: the TFDS data directory (see :func:`tfds_source`).
    batch_size: the **global** batch size.
    seed: shuffle and augmentation seed.
    train: shuffle and augment (``False``: neither).
    num_epochs: passes over the split.
    process_index, process_count: this host (default: jax's).
    augment: training augmentation, one of :data:`AUGMENTATIONS`; ``None``
      takes the dataset's default (module docstring). Ignored when
      ``train`` is False.
    read_options: grain prefetch options (default 2 threads, 16 batches).

  Returns:
    A ``grain.DatasetIterator`` of ``(images float32 [b, H, W, C],
    labels int32 [b])``, ``b = batch_size / process_count``.

  Raises:
    DatasetUnavailableError: the split is not prepared.
  """
  s = spec(name)
  augment = _check_augment(s, augment) if train else "none"
  source = tfds_source(name, split, data_dir=data_dir)
  extract, normalise = _extract(s), _normalise(s)
  if augment == "none":
    transform = lambda r: normalise(extract(r))
    random_transform = None
  else:
    transform = extract
    flip = augment == "crop_flip"

    def random_transform(record, rng):
      image, label = record
      return normalise((augment_image(image, rng, pad=s.pad, flip=flip),
                        label))

  return pipeline.batched_iterator(
      source, batch_size, seed=seed, shuffle=train, num_epochs=num_epochs,
      transform=transform, random_transform=random_transform,
      process_index=process_index, process_count=process_count,
      read_options=read_options)


def image_eval_batches(
    name: str,
    split: str,
    *,
    data_dir: str | None,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
  """This host's padded evaluation batches ``(images, labels, valid)``.

  No augmentation, source order, the last global batch zero-padded with
  ``valid = 0`` rows (:func:`capsjax.data.pipeline.eval_batches`); iterate
  the result once per evaluation.

  Args:
    name: a key of :data:`DATASETS`.
    split: the TFDS split (e.g. ``"test"``).
    data_dir: the TFDS data directory.
    batch_size: examples per global batch (divisible by the process count).
    process_index, process_count: this host (default: jax's).

  Returns:
    A re-iterable of ``(images float32 [b, H, W, C], labels int32 [b],
    valid float32 [b])``.

  Raises:
    DatasetUnavailableError: the split is not prepared.
  """
  s = spec(name)
  source = tfds_source(name, split, data_dir=data_dir)
  extract, normalise = _extract(s), _normalise(s)
  return pipeline.eval_batches(
      source, batch_size, transform=lambda r: normalise(extract(r)),
      process_index=process_index, process_count=process_count)
