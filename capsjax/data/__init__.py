"""capsjax.data: input pipelines (host-side NumPy and grain).

- :mod:`capsjax.data.digits`: offline digit datasets for demos and tests.
- :mod:`capsjax.data.pipeline`: generic sharded, resumable grain pipelines.
- :mod:`capsjax.data.images`: the papers' image datasets (CIFAR-10/100,
  SVHN, smallNORB, MNIST) read from TFDS ``array_record`` files prepared by
  ``python -m capsjax.data.prepare``.
"""

from capsjax.data.digits import (
    N_CLASSES,
    NATIVE_SIZE,
    DigitsSource,
    MultiDigitsRecipe,
    MultiDigitsSource,
    batched_dataset,
    batched_iterator,
    load_uci_digits,
    resize_images,
    split_indices,
    steps_per_epoch,
)
from capsjax.data.errors import DatasetUnavailableError
from capsjax.data.images import (
    image_eval_batches,
    image_iterator,
    num_examples,
    tfds_source,
)
from capsjax.data.pipeline import eval_batches

__all__ = [
    "NATIVE_SIZE",
    "N_CLASSES",
    "DatasetUnavailableError",
    "DigitsSource",
    "MultiDigitsRecipe",
    "MultiDigitsSource",
    "batched_dataset",
    "batched_iterator",
    "eval_batches",
    "image_eval_batches",
    "image_iterator",
    "load_uci_digits",
    "num_examples",
    "resize_images",
    "split_indices",
    "steps_per_epoch",
    "tfds_source",
]
