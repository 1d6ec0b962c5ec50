r"""Li et al. (ECCV 2018): train EncapNet (capConv/capFC + Sinkhorn feedback).

  python -m experiments.li2018.main \
      --config=experiments/li2018/configs/digits.py --workdir=/tmp/encapnet

Configs: ``configs/digits.py`` (offline, bundled digits),
``configs/cifar10.py`` (Table 4, EncapNet: 4.55 % error; needs CIFAR-10).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax import losses
from capsjax import train as T
from capsjax.data import digits
from capsjax.models import li2018
from capsjax.train import entrypoint, optim

FIELDS = entrypoint.Fields(
    required=(
        "model.num_classes", "model.n_caps", "model.cap_dims", "model.strides",
        "model.n_type2", "model.feedback", "model.epsilon",
        "model.n_sinkhorn_iters", "loss.feedback_weight", "loss.m_plus",
        "loss.m_minus", "loss.absent_weight", "data.name", "data.image_size",
        "data.batch_size", "optimiser.learning_rate", "optimiser.b1",
        "optimiser.weight_decay", "schedule.boundary_epochs",
        "schedule.decay_factor", "eval.batch_size", "train.num_steps",
        "train.seed", "train.log_every", "train.eval_every",
        "train.checkpoint_every", "train.keep_checkpoints", "train.progress"),
    optional=("data.dir",))


def make_loss_fn(config):
  c, n = config.loss, config.model.num_classes
  margin = jax.vmap(lambda v, t: losses.margin_loss(
      v, t, m_plus=c.m_plus, m_minus=c.m_minus, lam=c.absent_weight))

  def loss_fn(model, batch, rng):
    del rng
    images, labels = batch
    out = model(images)
    l_margin = jnp.mean(margin(out.logits, jax.nn.one_hot(labels, n)))
    # Sec. 3.2 "Overall Loss Function": L_margin + lambda * sum of divergences.
    loss = l_margin + c.feedback_weight * out.aux_loss
    return loss, {"margin_loss": l_margin, "feedback_loss": out.aux_loss,
                  "accuracy": jnp.mean(jnp.argmax(out.logits, -1) == labels)}

  return loss_fn


def metric_fn(model, batch):
  images, labels, valid = batch
  logits = model(images).logits
  return {"accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * valid),
          "count": jnp.sum(valid)}


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  d, m, o, s = config.data, config.model, config.optimiser, config.schedule
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
  tx, lr = optim.li_optimizer(
      digits.steps_per_epoch(len(train_src), d.batch_size),
      learning_rate=o.learning_rate, b1=o.b1, weight_decay=o.weight_decay,
      boundary_epochs=tuple(s.boundary_epochs), decay_factor=s.decay_factor)

  def model(rngs):
    return li2018.encapnet18(
        m.num_classes, in_features=1, image_size=d.image_size, n_caps=m.n_caps,
        cap_dims=tuple(m.cap_dims), strides=tuple(m.strides),
        n_type2=m.n_type2, feedback=m.feedback, epsilon=m.epsilon,
        n_sinkhorn_iters=m.n_sinkhorn_iters, rngs=rngs)

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluate = T.make_evaluator(graphs.eval, metric_fn, lambda: test_batches,
                              mesh)
  return T.train(config.train, model, make_loss_fn(config), tx, train_iter,
                 evaluate, workdir, mesh=mesh, learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
