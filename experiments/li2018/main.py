r"""Li et al. (ECCV 2018): train EncapNet (capConv/capFC + Sinkhorn feedback)
or the ResNet-18 it is compared with.

  python -m experiments.li2018.main \
      --config=experiments/li2018/configs/digits.py --workdir=/tmp/encapnet

Configs (see README.md): ``configs/digits.py`` (offline, bundled digits);
``configs/cifar10.py`` (Table 4, EncapNet, 4.55 % error),
``configs/cifar10_no_feedback.py`` (Table 3, 5.82 %),
``configs/table3.py:<row>`` and ``configs/table4.py:<row>`` (the other rows
of Tables 3 and 4 on CIFAR-10/100 and SVHN). Real-data configs read TFDS
``array_record`` files from ``data.dir``, prepared once with
``python -m capsjax.data.prepare --datasets=cifar10,cifar100,svhn_cropped
--data_dir=DIR``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from capsjax import losses
from capsjax import train as T
from capsjax.data import digits
from capsjax.models import li2018
from capsjax.train import entrypoint, optim
from experiments import _images

FIELDS = entrypoint.Fields(
    required=(
        "model.arch", "model.num_classes", "model.n_caps", "model.cap_dims",
        "model.strides", "model.n_type2", "model.feedback",
        "model.two_feedbacks", "model.epsilon", "model.n_sinkhorn_iters",
        "model.debiased", "model.detach_plan", "loss.kind",
        "loss.feedback_weight", "loss.m_plus", "loss.m_minus",
        "loss.absent_weight", "data.name", "data.image_size",
        "data.batch_size", "data.augment", "optimiser.learning_rate",
        "optimiser.b1", "optimiser.weight_decay", "schedule.boundary_epochs",
        "schedule.decay_factor", "eval.batch_size", "train.num_steps",
        "train.seed", "train.log_every", "train.eval_every",
        "train.checkpoint_every", "train.keep_checkpoints", "train.progress"),
    optional=("data.dir", "data.train_split", "data.test_split"))

ARCHS = ("encapnet", "resnet")
LOSSES = ("margin", "cross_entropy")


def make_loss_fn(config):
  c, n = config.loss, config.model.num_classes
  if c.kind not in LOSSES:
    raise ValueError(f"loss.kind must be one of {LOSSES}, got {c.kind!r}.")
  margin = jax.vmap(lambda v, t: losses.margin_loss(
      v, t, m_plus=c.m_plus, m_minus=c.m_minus, lam=c.absent_weight))

  def loss_fn(model, batch, rng):
    del rng
    images_, labels = batch
    out = model(images_)
    if c.kind == "margin":  # EncapNet: capsule lengths as class scores
      l_cls = jnp.mean(margin(out.logits, jax.nn.one_hot(labels, n)))
    else:  # the ResNet baseline's linear logits
      l_cls = optax.softmax_cross_entropy_with_integer_labels(
          out.logits, labels).mean()
    # Sec. 3.2 "Overall Loss Function": L_cls + lambda * sum of divergences.
    loss = l_cls + c.feedback_weight * out.aux_loss
    return loss, {"class_loss": l_cls, "feedback_loss": out.aux_loss,
                  "accuracy": jnp.mean(jnp.argmax(out.logits, -1) == labels)}

  return loss_fn


def metric_fn(model, batch):
  images_, labels, valid = batch
  logits = model(images_).logits
  return {"accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * valid),
          "count": jnp.sum(valid)}


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  d, m, o, s = config.data, config.model, config.optimiser, config.schedule
  if m.arch not in ARCHS:
    raise ValueError(f"model.arch must be one of {ARCHS}, got {m.arch!r}.")
  data = _images.image_data(config)
  train_iter, test_batches, n_train = data.train_iter, data.eval_batches, data.num_train
  in_features = data.input_shape[2]
  mesh = T.make_mesh()
  tx, lr = optim.li_optimizer(
      digits.steps_per_epoch(n_train, d.batch_size),
      learning_rate=o.learning_rate, b1=o.b1, weight_decay=o.weight_decay,
      boundary_epochs=tuple(s.boundary_epochs), decay_factor=s.decay_factor)
  sinkhorn = {"epsilon": m.epsilon, "n_sinkhorn_iters": m.n_sinkhorn_iters,
              "debiased": m.debiased, "detach_plan": m.detach_plan}

  def model(rngs):
    if m.arch == "resnet":
      return li2018.resnet18(
          m.num_classes, in_features=in_features, image_size=d.image_size,
          feedback=m.feedback, rngs=rngs, **sinkhorn)
    return li2018.encapnet18(
        m.num_classes, in_features=in_features, image_size=d.image_size,
        n_caps=m.n_caps, cap_dims=tuple(m.cap_dims), strides=tuple(m.strides),
        n_type2=m.n_type2, feedback=m.feedback,
        two_feedbacks=m.two_feedbacks, rngs=rngs, **sinkhorn)

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluate = T.make_evaluator(graphs.eval, metric_fn, lambda: test_batches,
                              mesh)
  return T.train(config.train, model, make_loss_fn(config), tx, train_iter,
                 evaluate, workdir, mesh=mesh, learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
