"""capsjax.data: input pipelines (host-side NumPy and grain).

- :mod:`capsjax.data.digits`: offline digit datasets for demos and tests.
- :mod:`capsjax.data.pipeline`: generic sharded, resumable grain pipelines.
- :mod:`capsjax.data.images`: the papers' image datasets (CIFAR-10/100,
  SVHN, smallNORB, MNIST) read from TFDS ``array_record`` files prepared by
  ``python -m capsjax.data.prepare``.
- :mod:`capsjax.data.multimnist`: DiverseMultiMNIST composed on the fly from
  MNIST (Tsai et al., App. B.2).
- :mod:`capsjax.data.sst`, :mod:`capsjax.data.sst_embed`,
  :mod:`capsjax.data.embedded_text`: SST trees, the frozen-transformer
  embedding step and the sharded embeddings it writes (Heinsen).
- :mod:`capsjax.data.multimodal` (import it directly; it is also the
  ``python -m capsjax.data.multimodal`` converter), and
  :mod:`capsjax.data.synthetic_multimodal`: per-clip video/audio/text
  features on disk, with converters from the public releases, and synthetic
  tri-modal clips (Duarte et al., Swetha et al.).
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
from capsjax.data.embedded_text import EmbeddedTextSource
from capsjax.data.errors import DatasetUnavailableError
from capsjax.data.images import (
    image_eval_batches,
    image_iterator,
    num_examples,
    tfds_source,
)
from capsjax.data.multimnist import DiverseMultiMNISTSource, diverse_multimnist
from capsjax.data.pipeline import eval_batches
from capsjax.data.sst import SSTExample, sst_examples, task_labels
from capsjax.data.synthetic_multimodal import SyntheticTriModal

__all__ = [
    "NATIVE_SIZE",
    "N_CLASSES",
    "DatasetUnavailableError",
    "DigitsSource",
    "DiverseMultiMNISTSource",
    "EmbeddedTextSource",
    "MultiDigitsRecipe",
    "MultiDigitsSource",
    "SSTExample",
    "SyntheticTriModal",
    "batched_dataset",
    "batched_iterator",
    "diverse_multimnist",
    "eval_batches",
    "image_eval_batches",
    "image_iterator",
    "load_uci_digits",
    "num_examples",
    "resize_images",
    "split_indices",
    "sst_examples",
    "steps_per_epoch",
    "task_labels",
    "tfds_source",
]
