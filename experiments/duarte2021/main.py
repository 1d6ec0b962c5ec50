r"""Duarte et al. (2021): train the multimodal capsule network with MMS loss.

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/synthetic.py --workdir=/tmp/duarte

Configs: ``configs/synthetic.py`` (offline: synthetic tri-modal clips,
``capsjax.data.synthetic_multimodal``), ``configs/howto100m.py`` (Tables 1,
4, 5, 6 "Ours"), ``routing.py:<routing>`` (Table 3), ``capsules.py:<C>``
(Table 4), ``baselines.py:{fc,self_attention}`` (Tables 1, 5),
``not_shared.py`` (Table 6), ``s3dg.py`` (Table 1, S3D-G); the real-data
configs read features converted with ``python -m capsjax.data.multimodal
convert``. The routing-vs-baseline comparison on synthetic data is
``python -m experiments.duarte2021.compare``.

Evaluation (every ``eval_every`` steps and at the end), per evaluation set
``<dataset>``: zero-shot retrieval by cosine similarity, text to video
(``<dataset>/t2v/...``, the paper's "VT"), text to video+audio (``t2va``,
"VAT": the target is the mean of the L2-normalised video and audio
embeddings) and the reverse directions (``v2t``, ``va2t``); R@1, R@5, R@10
as fractions, MedR and MeanR 1-based. The final summary line prints them all.
"""

from __future__ import annotations

import functools

from flax import nnx

from capsjax import evaluation
from capsjax import train as T
from capsjax.data import multimodal, pipeline
from capsjax.models import duarte2021
from capsjax.train import entrypoint, optim
from experiments import _multimodal

MODALITIES = ("video", "audio", "text")
ARCHITECTURES = ("capsules", "fc", "self_attention")

FIELDS = entrypoint.Fields(
    required=(
        "model.architecture", "model.n_caps", "model.d1", "model.d2",
        "model.d_embed", "model.d_hidden", "model.routing", "model.shared",
        "model.pool", "model.input_dims", "model.qkv_layers",
        "model.qkv_hidden", "model.qkv_activation",
        "loss.margin", "data.name", "data.batch_size",
        "optimiser.learning_rate", "schedule.final_fraction",
        "eval.retrieval", "eval.batch_size", "train.num_steps", "train.seed",
        "train.log_every", "train.eval_every", "train.checkpoint_every",
        "train.keep_checkpoints", "train.progress"),
    # Real-data rows name data.dir / data.split; the synthetic config names
    # the generator's knobs and the number of clips per split.
    optional=("data.dir", "data.split", "data.num_examples", "data.synthetic",
              "eval.num_examples"))


def make_model(m, rngs: nnx.Rngs) -> nnx.Module:
  """The config's model: the capsule network or a Table 5 baseline."""
  dims = dict(m.input_dims)
  if m.architecture == "capsules":
    # The qkv fields shape the self-attention routing's h_Q, h_K, h_V; the
    # other routings ignore them.
    return duarte2021.MultimodalCapsuleNetwork(
        dims, n_caps=m.n_caps, d1=m.d1, d2=m.d2, d_embed=m.d_embed,
        routing=m.routing, shared=m.shared, pool=m.pool, d_hidden=m.d_hidden,
        qkv_layers=m.qkv_layers, qkv_hidden=m.qkv_hidden,
        qkv_activation=m.qkv_activation, rngs=rngs)
  if m.architecture == "fc":
    # Hidden width C * d1: the capsule model's primary layer (Sec. 4.4).
    return duarte2021.FCBaseline(dims, d_hidden=m.n_caps * m.d1,
                                 d_embed=m.d_embed, rngs=rngs)
  if m.architecture == "self_attention":
    # N = C tokens ("N = 128 so that it is as similar to the number of
    # capsules"), attention width d2 as the routing's.
    return duarte2021.SelfAttentionBaseline(
        dims, n_tokens=m.n_caps, d2=m.d2, d_embed=m.d_embed,
        d_hidden=m.d_hidden, rngs=rngs)
  raise ValueError(f"model.architecture must be one of {ARCHITECTURES}, got "
                   f"{m.architecture!r}.")


def _sources(config):
  """``(train source, {eval name: source}, record transform)``."""
  d = config.data
  dims = dict(config.model.input_dims)
  if d.name == "synthetic":
    train, evals = _multimodal.synthetic_splits(
        config, dims, config.eval.retrieval, dict(d.synthetic))
    return train, evals, multimodal.pool_record
  train_name = f"{d.name}/{d.split}"
  opened = _multimodal.open_feature_splits(
      d.dir, [train_name, *config.eval.retrieval], dataset=d.name,
      modalities=MODALITIES)
  for source in opened.values():
    _multimodal.check_dims(source, {m: (dims[m], f"model.input_dims.{m}")
                                    for m in MODALITIES})
  # AVLnet normalises the pooled 2D and 3D video features block by block.
  parts = {"video": opened[train_name].parts["video"]}
  transform = functools.partial(multimodal.pool_record, parts=parts)
  evals = {name: opened[name] for name in config.eval.retrieval}
  return opened[train_name], evals, transform


def _inputs(record):
  """The model's inputs: the modality vectors (no label, no mask)."""
  return {m: record[m] for m in MODALITIES if m in record}


def embed_fn(model, batch):
  """Joint-space embeddings of every modality of a global batch."""
  out = model(_inputs(batch))
  return {m: out[m].embedding for m in MODALITIES}


def retrieval_eval(embeddings, name: str, num_queries: int | None = None):
  """t2v / v2t and t2va / va2t numbers of one evaluation set."""
  dataset = name.split("/")[0]
  text, video = embeddings["text"], embeddings["video"]
  video_audio = evaluation.fuse_embeddings([video, embeddings["audio"]])
  return {
      **_multimodal.retrieval_numbers(f"{dataset}/t2v", text, video,
                                      num_queries=num_queries),
      **_multimodal.retrieval_numbers(f"{dataset}/t2va", text, video_audio,
                                      num_queries=num_queries)}


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  m = config.model
  if m.architecture not in ARCHITECTURES:
    raise ValueError(f"model.architecture must be one of {ARCHITECTURES}, "
                     f"got {m.architecture!r}.")
  train_src, eval_srcs, transform = _sources(config)
  mesh = T.make_mesh()
  train_iter = pipeline.batched_iterator(
      train_src, config.data.batch_size, seed=config.train.seed,
      transform=lambda r: _inputs(transform(r)))
  tx, lr = optim.duarte_optimizer(config.train.num_steps,
                                  learning_rate=config.optimiser.learning_rate,
                                  final_fraction=config.schedule.final_fraction)

  def model(rngs):
    return make_model(m, rngs)

  def loss_fn(model, batch, rng):
    del rng
    return duarte2021.duarte2021_loss(model(batch),
                                      margin=config.loss.margin), {}

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  embed = _multimodal.make_embedder(graphs.eval, embed_fn, mesh)
  eval_batches = {
      name: _multimodal.padded_eval_batches(
          src, config.eval.batch_size, lambda r: _inputs(transform(r)))
      for name, src in eval_srcs.items()}

  def evaluate(state):
    out = {}
    for name, batches in eval_batches.items():
      num_queries = getattr(eval_srcs[name], "num_queries", None)
      out.update(retrieval_eval(embed(state, batches()), name, num_queries))
    return out

  return T.train(config.train, model, loss_fn, tx, train_iter, evaluate,
                 workdir, mesh=mesh, learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
