"""capsjax.data: input pipelines (host-side NumPy and grain).

So far: offline digit datasets for demos and tests (:mod:`capsjax.data.digits`).
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
