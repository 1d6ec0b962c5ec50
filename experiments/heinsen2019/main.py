r"""Heinsen (2019): train the smallNORB capsule network (Fig. 3).

  python -m experiments.heinsen2019.main \
      --config=experiments/heinsen2019/configs/digits.py --workdir=/tmp/heinsen

Configs: ``configs/digits.py`` (offline, bundled digits as "stereo pairs"),
``configs/smallnorb.py`` (Tab. 2, 99.1 %; needs smallNORB).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from capsjax import train as T
from capsjax.data import digits
from capsjax.models import heinsen2019
from capsjax.train import entrypoint, optim

FIELDS = entrypoint.Fields(
    required=(
        "model.n_objs", "model.n_parts", "model.d_chns", "model.n_iters",
        "data.name", "data.image_size", "data.batch_size", "data.mixup_alpha",
        "optimiser.lr_start", "optimiser.lr_peak", "optimiser.b1_start",
        "optimiser.b1_peak_factor", "schedule.warmup_frac", "eval.batch_size",
        "train.num_steps", "train.seed", "train.log_every", "train.eval_every",
        "train.checkpoint_every", "train.keep_checkpoints", "train.progress"),
    optional=("data.dir",))


def _stereo(images):
  # Digits are single images; the model takes a stereo pair as 2 channels.
  return np.concatenate([images, images], axis=-1)


def make_loss_fn(config):
  n_objs, alpha = config.model.n_objs, config.data.mixup_alpha

  def loss_fn(model, batch, rng):
    images, labels = batch
    targets = jax.nn.one_hot(labels, n_objs)
    if alpha > 0:  # Sec. 4.2: mixup with Beta(0.2, 0.2)
      images, targets = optim.mixup(rng, images, targets, alpha)
    logits = model(images).a_out  # cross-entropy on Softmax(a_out), Sec. 4.2
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

  return loss_fn


def metric_fn(model, batch):
  images, labels, valid = batch
  logits = model(images).a_out
  return {"accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * valid),
          "count": jnp.sum(valid)}


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  d, m, o = config.data, config.model, config.optimiser
  if d.name != "digits":
    entrypoint.require_dataset(
        d.name, d.get("dir", ""),
        ["smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat",
         "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat",
         "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat",
         "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat"],
        hint="smallNORB: https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/")
  mesh = T.make_mesh()
  train_src = digits.DigitsSource("train", image_size=d.image_size)
  test_src = digits.DigitsSource("test", image_size=d.image_size)
  train_iter = digits.batched_iterator(
      train_src, d.batch_size, seed=config.train.seed,
      transform=lambda r: (_stereo(r[0]), r[1]))
  test_batches = entrypoint.padded_batches(
      (_stereo(test_src.images), test_src.labels), config.eval.batch_size)
  tx, lr = optim.heinsen_optimizer(
      config.train.num_steps, lr_start=o.lr_start, lr_peak=o.lr_peak,
      b1_start=o.b1_start, b1_peak_factor=o.b1_peak_factor,
      warmup_frac=config.schedule.warmup_frac)

  def model(rngs):
    return heinsen2019.SmallNORBClassifier(m.n_objs, m.n_parts, m.d_chns,
                                           n_iters=m.n_iters, rngs=rngs)

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluate = T.make_evaluator(graphs.eval, metric_fn, lambda: test_batches,
                              mesh)
  return T.train(config.train, model, make_loss_fn(config), tx, train_iter,
                 evaluate, workdir, mesh=mesh, learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
