r"""Tsai et al. (ICLR 2020): train a capsule network with inverted dot-product
attention routing.

  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/digits.py --workdir=/tmp/tsai_digits

Configs (see README.md): ``digits.py`` (offline, bundled UCI digits, 95.5 %
in ~2.5 min on a CPU), ``multi_digits.py`` (offline stand-in for
DiverseMultiMNIST), Table 1 (``cifar10_resnet.py``, ``cifar10_simple.py``,
``cifar100_resnet.py``, ``cifar100_simple.py``, ``cifar10_baseline_cnn.py``,
``cifar100_baseline_cnn.py``), Fig. 4 (``cifar10_simple_iters.py:N``,
``cifar10_simple_ablation.py:A|B|C``), Fig. 5 (``diverse_multimnist.py:
matrix|vector|baseline_cnn|baseline_cnn_learned_pooling``). The real-data
rows read TFDS datasets prepared once with ``python -m capsjax.data.prepare``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax
from flax import nnx

from capsjax import train as T
from capsjax.data import digits, multimnist, pipeline
from capsjax.evaluation import classification
from capsjax.models import tsai2020
from capsjax.nn.backbones import SimpleBackbone
from capsjax.train import entrypoint, optim
from experiments import _images

FIELDS = entrypoint.Fields(
    required=(
        "model.name", "model.n_iters", "data.name", "data.image_size",
        "data.batch_size", "optimiser.learning_rate", "optimiser.momentum",
        "optimiser.weight_decay", "schedule.boundary_epochs",
        "schedule.decay_factor", "eval.batch_size", "train.num_steps",
        "train.seed", "train.log_every", "train.eval_every",
        "train.checkpoint_every", "train.keep_checkpoints", "train.progress"),
    optional=("model.backbone_channels", "model.primary_caps", "model.caps_dim",
              "model.conv_caps", "model.concurrent", "model.layer_norm",
              "model.activations", "data.dir", "data.num_train_examples",
              "data.num_test_examples", "data.epoch_examples",
              "data.test_seed"))

# CapsNet constructors (model.n_iters routing iterations; the Fig. 4
# ablation switches apply) and baseline CNNs (no routing: model.n_iters is
# not read).
_CAPSNETS = {
    "cifar10_resnet": tsai2020.cifar10_resnet,
    "cifar100_resnet": tsai2020.cifar100_resnet,
    "cifar10_simple": tsai2020.cifar10_simple,
    "cifar100_simple": tsai2020.cifar100_simple,
    "multimnist_matrix": tsai2020.multimnist_matrix,
    "multimnist_vector": tsai2020.multimnist_vector,
}
_CNNS = {
    "cifar10_baseline_cnn": tsai2020.cifar10_baseline_cnn,
    "cifar100_baseline_cnn": tsai2020.cifar100_baseline_cnn,
    "multimnist_baseline_cnn": tsai2020.multimnist_baseline_cnn,
    "multimnist_baseline_cnn_learned_pooling": lambda rngs: (
        tsai2020.multimnist_baseline_cnn(learned_pooling=True, rngs=rngs)),
}
_OFFLINE = ("digits", "multi_digits")
_IMAGES = ("cifar10", "cifar100")      # capsjax.data.images datasets
_MULTILABEL = ("multi_digits", "diverse_multimnist")
DATASETS = _OFFLINE + _IMAGES + ("diverse_multimnist",)


class _Data(NamedTuple):
  """What ``run`` needs from a dataset.

  Attributes:
    train_iter: this host's endless, checkpointable training batches.
    eval_batches: ``() -> iterable`` of this host's padded eval batches.
    epoch_examples: examples per epoch of the learning-rate schedule.
    input_shape: ``(H, W, C)`` of the images.
    n_classes: number of classes.
  """
  train_iter: Any
  eval_batches: Callable[[], Any]
  epoch_examples: int
  input_shape: tuple[int, int, int]
  n_classes: int


def _data_dir(d) -> str | None:
  return d.get("dir", "") or None


def make_data(config) -> _Data:
  """The config's training iterator and evaluation batches.

  Raises:
    DatasetUnavailableError: a real dataset is not prepared (before anything
      is written to the workdir).
    ValueError: an unknown dataset, or an image size the data does not have.
  """
  d, seed = config.data, config.train.seed
  if d.name not in DATASETS:
    raise ValueError(f"config.data.name: got {d.name!r}, expected one of "
                     f"{list(DATASETS)}")
  if d.name == "digits" or d.name in _IMAGES:
    data = _images.image_data(config)
    return _Data(data.train_iter, lambda: data.eval_batches, data.num_train,
                 data.input_shape, data.num_classes)

  # Multilabel: overlapping digits, multi-hot targets.
  n_train, n_test = d.get("num_train_examples"), d.get("num_test_examples")
  test_seed = d.get("test_seed", 0)  # the test set does not move with the run's seed
  if d.name == "multi_digits":
    train_src = digits.MultiDigitsSource("train", num_examples=n_train,
                                         seed=seed, digit_size=d.image_size)
    test_src = digits.MultiDigitsSource("test", num_examples=n_test,
                                        seed=test_seed, digit_size=d.image_size)
  else:
    if d.image_size != multimnist.CANVAS_SIZE:
      raise ValueError(f"config.data.image_size: DiverseMultiMNIST images are "
                       f"{multimnist.CANVAS_SIZE}x{multimnist.CANVAS_SIZE}, "
                       f"got {d.image_size}.")
    train_src = multimnist.diverse_multimnist(
        "train", data_dir=_data_dir(d), num_examples=n_train, seed=seed)
    test_src = multimnist.diverse_multimnist(
        "test", data_dir=_data_dir(d), num_examples=n_test, seed=test_seed)
  size = train_src.canvas_size
  test = pipeline.eval_batches(test_src, config.eval.batch_size)
  return _Data(pipeline.batched_iterator(train_src, d.batch_size, seed=seed),
               lambda: test, d.get("epoch_examples", len(train_src)),
               (size, size, 1), digits.N_CLASSES)


# The data each paper constructor is built for (its classes and input size).
_MODEL_DATA = {"cifar10": ("cifar10",), "cifar100": ("cifar100",),
               "multimnist": ("diverse_multimnist",)}


def check_model(config) -> None:
  """Raises ``ValueError`` on an unknown model or a paper model on data it
  is not built for (before any data is read)."""
  name = config.model.name
  if name == "small":
    return
  if name not in _CNNS and name not in _CAPSNETS:
    raise ValueError(f"config.model.name: got {name!r}, expected one of "
                     f"{sorted(_CAPSNETS) + sorted(_CNNS) + ['small']}")
  for_data = _MODEL_DATA[name.split("_")[0]]
  if config.data.name not in for_data:
    raise ValueError(
        f"config.model.name={name!r} is built for data.name in {for_data}, "
        f"got {config.data.name!r} (model.name='small' fits any data).")


def make_model(config, input_shape: tuple[int, int, int], n_classes: int,
               rngs: nnx.Rngs) -> nnx.Module:
  """The config's network: a paper constructor, or ``"small"`` for digits."""
  m = config.model
  if m.name in _CNNS:
    return _CNNS[m.name](rngs=rngs)
  if m.name in _CAPSNETS:
    options = {k: m[k] for k in ("concurrent", "layer_norm", "activations")
               if k in m}
    return _CAPSNETS[m.name](image_size=input_shape[0], n_iters=m.n_iters,
                             rngs=rngs, **options)
  check_model(config)
  # The paper's simple-backbone CapsNet (Table 8) shrunk for small images.
  size = (input_shape[0] - 1) // 2 + 1
  return tsai2020.CapsNet(
      SimpleBackbone(input_shape[2], m.backbone_channels, 3, 2, 1, rngs=rngs),
      feature_channels=m.backbone_channels, feature_size=size,
      primary=tsai2020.PrimaryCapsuleSpec(m.primary_caps, m.caps_dim),
      capsules=[tsai2020.CapsuleLayerSpec("conv", m.conv_caps, m.caps_dim, 3, 2),
                tsai2020.CapsuleLayerSpec("fc", n_classes, m.caps_dim)],
      n_iters=m.n_iters, rngs=rngs)


def _logits(out: Any) -> Any:
  # CapsNet returns a CapsNetOutput; the baseline CNNs return the logits.
  return out.logits if isinstance(out, tsai2020.CapsNetOutput) else out


def loss_fn(model, batch, rng):
  """Multiclass cross-entropy (Sec. 4.2) for integer labels."""
  del rng
  images_, labels = batch
  logits = _logits(model(images_))
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def multilabel_loss_fn(model, batch, rng):
  """Binary cross-entropy over the classes (Sec. 4.2, multilabel), averaged
  over classes and examples (PyTorch's ``BCEWithLogitsLoss`` default)."""
  del rng
  images_, multi_hot = batch
  logits = _logits(model(images_))
  loss = optax.sigmoid_binary_cross_entropy(logits, multi_hot).mean()
  return loss, {"set_accuracy": classification.set_accuracy(logits, multi_hot)}


def metric_fn(model, batch):
  images_, labels, valid = batch
  logits = _logits(model(images_))
  return {"accuracy": jnp.sum(classification.top1_correct(logits, labels)
                              * valid),
          "count": jnp.sum(valid)}


def multilabel_metric_fn(model, batch):
  images_, multi_hot, valid = batch
  logits = _logits(model(images_))
  return {"set_accuracy": jnp.sum(
      classification.set_correct(logits, multi_hot) * valid),
          "count": jnp.sum(valid)}


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  check_model(config)
  data = make_data(config)  # a missing dataset stops here, before any write
  multilabel = config.data.name in _MULTILABEL
  mesh = T.make_mesh()
  o, s = config.optimiser, config.schedule
  tx, lr = optim.tsai_optimizer(
      pipeline.steps_per_epoch(data.epoch_examples, config.data.batch_size),
      learning_rate=o.learning_rate, momentum=o.momentum,
      weight_decay=o.weight_decay, boundary_epochs=tuple(s.boundary_epochs),
      decay_factor=s.decay_factor)
  model = lambda rngs: make_model(config, data.input_shape, data.n_classes, rngs)
  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluate = T.make_evaluator(
      graphs.eval, multilabel_metric_fn if multilabel else metric_fn,
      data.eval_batches, mesh)
  return T.train(config.train, model,
                 multilabel_loss_fn if multilabel else loss_fn, tx,
                 data.train_iter, evaluate, workdir, mesh=mesh,
                 learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
