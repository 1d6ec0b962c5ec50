r"""Tsai et al. (ICLR 2020): train a capsule network with inverted dot-product
attention routing.

  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/digits.py --workdir=/tmp/tsai_digits

Configs: ``configs/digits.py`` (offline, bundled UCI digits, 95.5 % in ~2.5 min on
a CPU), ``configs/cifar10_resnet.py`` (Table 1; needs CIFAR-10).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from flax import nnx

from capsjax import train as T
from capsjax.data import digits
from capsjax.models import tsai2020
from capsjax.nn.backbones import SimpleBackbone
from capsjax.train import entrypoint, optim

FIELDS = entrypoint.Fields(
    required=(
        "model.name", "model.n_iters", "data.name", "data.image_size",
        "data.batch_size", "optimiser.learning_rate", "optimiser.momentum",
        "optimiser.weight_decay", "schedule.boundary_epochs",
        "schedule.decay_factor", "eval.batch_size", "train.num_steps",
        "train.seed", "train.log_every", "train.eval_every",
        "train.checkpoint_every", "train.keep_checkpoints", "train.progress"),
    optional=("model.backbone_channels", "model.primary_caps", "model.caps_dim",
              "model.conv_caps", "data.dir"))

_PAPER_MODELS = {"cifar10_resnet": tsai2020.cifar10_resnet,
                 "cifar10_simple": tsai2020.cifar10_simple}


def make_model(config, rngs: nnx.Rngs) -> tsai2020.CapsNet:
  """The config's network: a paper constructor, or ``"small"`` for digits."""
  m = config.model
  if m.name in _PAPER_MODELS:
    return _PAPER_MODELS[m.name](image_size=config.data.image_size,
                                 n_iters=m.n_iters, rngs=rngs)
  if m.name != "small":
    raise ValueError(f"config.model.name: got {m.name!r}, expected one of "
                     f"{sorted(_PAPER_MODELS) + ['small']}")
  # The paper's simple-backbone CapsNet (Table 8) shrunk for 16x16 digits.
  size = (config.data.image_size - 1) // 2 + 1
  return tsai2020.CapsNet(
      SimpleBackbone(1, m.backbone_channels, 3, 2, 1, rngs=rngs),
      feature_channels=m.backbone_channels, feature_size=size,
      primary=tsai2020.PrimaryCapsuleSpec(m.primary_caps, m.caps_dim),
      capsules=[tsai2020.CapsuleLayerSpec("conv", m.conv_caps, m.caps_dim, 3, 2),
                tsai2020.CapsuleLayerSpec("fc", digits.N_CLASSES, m.caps_dim)],
      n_iters=m.n_iters, rngs=rngs)


def loss_fn(model, batch, rng):
  del rng
  images, labels = batch
  logits = model(images).logits  # multiclass cross-entropy (Sec. 4.2)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def metric_fn(model, batch):
  images, labels, valid = batch
  logits = model(images).logits
  return {"accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * valid),
          "count": jnp.sum(valid)}


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  d = config.data
  if d.name != "digits":
    entrypoint.require_dataset(
        d.name, d.get("dir", ""), ["cifar-10-batches-py/data_batch_1",
                                   "cifar-10-batches-py/test_batch"],
        hint="CIFAR-10, python version: https://www.cs.toronto.edu/~kriz/")
  mesh = T.make_mesh()
  train_src = digits.DigitsSource("train", image_size=d.image_size)
  test_src = digits.DigitsSource("test", image_size=d.image_size)
  train_iter = digits.batched_iterator(train_src, d.batch_size,
                                       seed=config.train.seed)
  test_batches = entrypoint.padded_batches(
      (test_src.images, test_src.labels), config.eval.batch_size)
  eval_batches = lambda: test_batches

  o, s = config.optimiser, config.schedule
  tx, lr = optim.tsai_optimizer(
      digits.steps_per_epoch(len(train_src), d.batch_size),
      learning_rate=o.learning_rate, momentum=o.momentum,
      weight_decay=o.weight_decay, boundary_epochs=tuple(s.boundary_epochs),
      decay_factor=s.decay_factor)
  model = lambda rngs: make_model(config, rngs)
  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluate = T.make_evaluator(graphs.eval, metric_fn, eval_batches, mesh)
  return T.train(config.train, model, loss_fn, tx, train_iter, evaluate,
                 workdir, mesh=mesh, learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
