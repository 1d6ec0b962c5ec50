r"""Heinsen (2019): the smallNORB (Fig. 3) and SST (Fig. 5) capsule networks.

  python -m experiments.heinsen2019.main \
      --config=experiments/heinsen2019/configs/digits.py --workdir=/tmp/heinsen

Configs: ``configs/digits.py`` (offline, bundled digits as "stereo pairs"),
``configs/smallnorb.py`` (Tab. 2, 99.1 %; TFDS smallNORB prepared with
``python -m capsjax.data.prepare --datasets=smallnorb --data_dir=DIR``),
``configs/sst5r.py`` (Tab. 3, 58.5 %) and ``configs/sst2r.py`` (Tab. 4,
95.6 %) on GPT-2-large embeddings of SST written by
``python -m capsjax.data.sst_embed --model=gpt2-large --trees_dir=...
--out_dir=DIR``. See README.md, "Reproducing".

SST configs may leave two loop fields to the data: ``train.num_steps = 0``
trains ``train.num_epochs`` passes over the training phrases and
``train.eval_every = -1`` evaluates once per epoch (the number of phrases is
read from the embeddings' index). SST evaluation reports test accuracy as
``accuracy`` and dev accuracy as ``dev_accuracy``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from capsjax import train as T
from capsjax.data import embedded_text, pipeline
from capsjax.models import heinsen2019
from capsjax.train import entrypoint, optim
from experiments import _images

_COMMON = (
    "model.n_iters", "data.name", "data.batch_size", "data.mixup_alpha",
    "optimiser.lr_start", "optimiser.lr_peak", "optimiser.b1_start",
    "optimiser.b1_peak_factor", "schedule.warmup_frac", "eval.batch_size",
    "train.num_steps", "train.seed", "train.log_every", "train.eval_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.progress")
_IMAGE = ("model.n_objs", "model.n_parts", "model.d_chns", "data.image_size")
_SST = ("model.n_classes", "model.n_parts", "model.d_inp", "model.d_cap",
        "data.dir", "data.task", "data.embedding_model", "data.max_tokens",
        "train.num_epochs")
# What each kind of config must hold exactly (checked in run()), and their
# union for the command line's first check.
IMAGE_FIELDS = entrypoint.Fields(required=_COMMON + _IMAGE,
                                 optional=("data.dir",))
SST_FIELDS = entrypoint.Fields(required=_COMMON + _SST)
FIELDS = entrypoint.Fields(
    required=_COMMON,
    optional=tuple(sorted(set(_IMAGE + _SST) | {"data.dir"})))

SST_TASKS = {"sst5": 5, "sst2": 2}


def _stereo(images_):
  # Digits are single images; the model takes a stereo pair as 2 channels.
  return np.concatenate([images_, images_], axis=-1)


# ----------------------------------------------------------------- losses


def _cross_entropy(logits, targets, labels):
  # Cross-entropy on Softmax(a_out) (Sec. 4.2); accuracy on the true labels.
  loss = optax.softmax_cross_entropy(logits, targets).mean()
  return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def make_loss_fn(config):
  """Image models: cross-entropy with mixup Beta(0.2, 0.2) (Sec. 4.2)."""
  n_objs, alpha = config.model.n_objs, config.data.mixup_alpha

  def loss_fn(model, batch, rng):
    images_, labels = batch
    targets = jax.nn.one_hot(labels, n_objs)
    if alpha > 0:
      images_, targets = optim.mixup(rng, images_, targets, alpha)
    return _cross_entropy(model(images_).a_out, targets, labels)

  return loss_fn


def make_sst_loss_fn(config):
  """SST: as for images, mixing embeddings **and** token masks (Fig. 5(d))."""
  n_classes, alpha = config.model.n_classes, config.data.mixup_alpha

  def loss_fn(model, batch, rng):
    embs, mask, labels = batch
    embs = embs.astype(jnp.float32)  # stored as float16
    targets = jax.nn.one_hot(labels, n_classes)
    if alpha > 0:
      # The same lam and permutation for mask and embeddings; the mixed mask
      # in [0, 1] becomes finite logits in the model.
      (mask, embs), targets = optim.mixup(rng, (mask, embs), targets, alpha)
    return _cross_entropy(model(embs, mask).a_out, targets, labels)

  return loss_fn


def metric_fn(model, batch):
  images_, labels, valid = batch
  logits = model(images_).a_out
  return {"accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * valid),
          "count": jnp.sum(valid)}


def sst_metric_fn(model, batch):
  embs, mask, labels, valid = batch
  # Padding rows of the last batch have no token at all; give them one so
  # their (ignored) outputs stay finite.
  mask = mask.at[:, 0].set(jnp.where(valid > 0, mask[:, 0], 1.0))
  logits = model(embs.astype(jnp.float32), mask).a_out
  return {"accuracy": jnp.sum((jnp.argmax(logits, -1) == labels) * valid),
          "count": jnp.sum(valid)}


# ----------------------------------------------------------------- data


def _image_data(config):
  """``(train_iter, eval_batches)``: digits as stereo pairs, or smallNORB.

  smallNORB trains with its default augmentation in ``capsjax.data.images``:
  pad 16 + random 96x96 crop (Sec. 4.2).
  """
  data = _images.image_data(config, digits_images=_stereo)
  if data.input_shape[2] != 2:
    raise ValueError(f"{config.data.name} images have {data.input_shape[2]} "
                     "channels; the smallNORB model takes stereo pairs (2).")
  return data.train_iter, data.eval_batches


def _sst_sources(config):
  """``{split: EmbeddedTextSource}`` for train, dev and test."""
  d = config.data
  if d.task not in SST_TASKS:
    raise ValueError(f"data.task must be one of {sorted(SST_TASKS)}, got "
                     f"{d.task!r}.")
  if config.model.n_classes != SST_TASKS[d.task]:
    raise ValueError(f"model.n_classes is {config.model.n_classes}, but "
                     f"{d.task} has {SST_TASKS[d.task]} classes.")
  index = embedded_text.read_index(d.dir)  # missing: names the embed command
  stored = os.path.basename(index["model"].rstrip("/"))
  if stored != d.embedding_model:
    raise ValueError(
        f"data.dir holds {index['model']!r} embeddings, but "
        f"data.embedding_model is {d.embedding_model!r}.")
  max_tokens = d.max_tokens or None  # 0: the longest record of any split
  return {s: embedded_text.EmbeddedTextSource(d.dir, s, label_set=d.task,
                                              max_tokens=max_tokens)
          for s in ("train", "dev", "test")}


def _sst_loop_config(config, n_train: int) -> dict:
  """``config.train`` with the data-derived step counts filled in."""
  loop = config.train.to_dict()
  steps = pipeline.steps_per_epoch(n_train, config.data.batch_size)
  if loop["num_steps"] == 0:
    loop["num_steps"] = loop["num_epochs"] * steps
  if loop["eval_every"] == -1:
    loop["eval_every"] = steps
  return loop


# ----------------------------------------------------------------- run


def _optimizer(config, num_steps):
  o = config.optimiser
  return optim.heinsen_optimizer(
      num_steps, lr_start=o.lr_start, lr_peak=o.lr_peak,
      b1_start=o.b1_start, b1_peak_factor=o.b1_peak_factor,
      warmup_frac=config.schedule.warmup_frac)


def run_images(config, workdir: str) -> T.TrainResult:
  """The smallNORB model on digits or smallNORB."""
  entrypoint.check_config(config, IMAGE_FIELDS, reader=__name__)
  m = config.model
  train_iter, test_batches = _image_data(config)
  mesh = T.make_mesh()
  tx, lr = _optimizer(config, config.train.num_steps)

  def model(rngs):
    return heinsen2019.SmallNORBClassifier(m.n_objs, m.n_parts, m.d_chns,
                                           n_iters=m.n_iters, rngs=rngs)

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluate = T.make_evaluator(graphs.eval, metric_fn, lambda: test_batches,
                              mesh)
  return T.train(config.train, model, make_loss_fn(config), tx, train_iter,
                 evaluate, workdir, mesh=mesh, learning_rate_fn=lr)


def run_sst(config, workdir: str) -> T.TrainResult:
  """The SST model on stored transformer embeddings (Sec. 5)."""
  entrypoint.check_config(config, SST_FIELDS, reader=__name__)
  d, m = config.data, config.model
  sources = _sst_sources(config)
  train_src = sources["train"]
  loop = _sst_loop_config(config, len(train_src))
  train_iter = pipeline.batched_iterator(train_src, d.batch_size,
                                         seed=loop["seed"])
  eval_sets = {name: pipeline.eval_batches(sources[name],
                                           config.eval.batch_size)
               for name in ("dev", "test")}
  mesh = T.make_mesh()
  tx, lr = _optimizer(config, loop["num_steps"])

  def model(rngs):
    return heinsen2019.SSTClassifier(
        m.n_classes, train_src.n_layers, train_src.d_emb, d_inp=m.d_inp,
        d_cap=m.d_cap, n_parts=m.n_parts, n_iters=m.n_iters, rngs=rngs)

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluators = {name: T.make_evaluator(graphs.eval, sst_metric_fn,
                                       lambda b=batches: b, mesh)
                for name, batches in eval_sets.items()}

  def evaluate(state):
    # Test accuracy is the paper's number; dev is what Supp. Fig. 8 tracks.
    dev = evaluators["dev"](state)
    return {**evaluators["test"](state),
            **{f"dev_{k}": v for k, v in dev.items()}}

  return T.train(loop, model, make_sst_loss_fn(config), tx, train_iter,
                 evaluate, workdir, mesh=mesh, learning_rate_fn=lr)


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  if config.data.name == "sst":
    return run_sst(config, workdir)
  return run_images(config, workdir)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
