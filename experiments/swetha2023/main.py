r"""Swetha et al. (ICCV 2023): train EAO + Multi-SK with the SSPC loss.

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/synthetic.py --workdir=/tmp/swetha

Configs: ``configs/synthetic.py`` (offline: synthetic tri-modal token
sequences, ``capsjax.data.synthetic_multimodal``), ``configs/howto100m.py``
(supplement Tables 5-7 "Ours"), ``classification.py`` (Table 1),
``msvd.py`` (Table 2), ``clip.py:<backbones>`` (Table 3),
``text_video.py`` (Table 4), ``loss_coefficients.py:<row>`` (Table 5),
``sspc_terms.py:<row>`` (Table 6), ``multi_sk.py:<approach>`` (Table 7); the
real-data configs read features converted with ``python -m
capsjax.data.multimodal convert``.

Evaluation (every ``eval_every`` steps and at the end): per retrieval set
``<dataset>``, zero-shot retrieval by cosine similarity, text to video
(``<dataset>/t2v/...``), text to the fused video+audio embedding of EAO
(``t2va``) and the reverse directions (``v2t``, ``va2t``), R@1/5/10 as
fractions, MedR and MeanR 1-based; per classification set, the zero-shot
k-means + Hungarian accuracy of the mean of the L2-normalised video and
audio embeddings (``<dataset>/accuracy``, suppl. Sec. 1.1). The final
summary line prints them all.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from capsjax import evaluation
from capsjax import train as T
from capsjax.data import multimodal, pipeline
from capsjax.models import swetha2023 as S
from capsjax.train import entrypoint, optim
from experiments import _multimodal

FIELDS = entrypoint.Fields(
    required=(
        "model.text_dim", "model.video_dim", "model.audio_dim",
        "model.embed_dim", "model.projection_dim", "model.depth",
        "model.num_heads", "model.n_anchors", "loss.lambda_nce",
        "loss.lambda_sspc", "loss.cross_modal_weight",
        "loss.modality_specific_weight", "loss.temperature",
        "loss.sspc_temperature", "loss.sk_eps", "loss.sk_iters",
        "loss.sk_discrete", "loss.required_fraction", "loss.queue_len",
        "data.name", "data.modalities", "data.batch_size",
        "data.steps_per_epoch", "optimiser.learning_rate",
        "schedule.decay_rate", "eval.retrieval", "eval.classification",
        "eval.batch_size", "train.num_steps", "train.seed", "train.log_every",
        "train.eval_every", "train.checkpoint_every",
        "train.keep_checkpoints", "train.progress"),
    # Real-data rows name data.dir / data.split; the synthetic config names
    # the generator's knobs and the number of clips per split.
    optional=("data.dir", "data.split", "data.num_examples", "data.synthetic",
              "eval.num_examples"))


class QueueVar(nnx.Variable):
  """The SSPC queue: model state that is neither a parameter nor trained."""


class WithQueue(nnx.Module):
  """The model plus its SSPC queue, so the queue travels in the train state
  (``model_state``), is checkpointed with it and is updated by each step."""

  def __init__(self, model: S.Swetha2023Model, queue: S.SSPCQueue):
    self.model = model
    self.queue = QueueVar(queue)

  def __call__(self, b):
    return self.model(b["text"], b["text_mask"], b["video"], b["video_mask"],
                      b["audio"], b["audio_mask"])


def loss_weights(modalities) -> tuple[dict[str, float], tuple]:
  """The contrastive and SSPC weights restricted to ``modalities``.

  Every pair or term that involves a modality not trained on gets weight 0
  (Table 4's text-video model keeps t-v and the text/video SSPC terms).
  """
  keep = set(modalities)
  unknown = keep - set(S.MODALITIES)
  if unknown or not {"text", "video"} <= keep:
    raise ValueError(f"data.modalities must hold text and video, out of "
                     f"{S.MODALITIES}; got {tuple(modalities)}.")
  parts = {"tv": "tv", "ta": "ta", "va": "va", "t_va": "tva", "v_ta": "tva",
           "a_tv": "tva"}
  letters = {m[0] for m in keep}
  contrastive = {k: (w if set(parts[k]) <= letters else 0.0)
                 for k, w in S.AUTHORS_CONTRASTIVE_WEIGHTS.items()}
  sspc = tuple(
      tuple(w if S.MODALITIES[r % 3] in keep and S.MODALITIES[c] in keep
            else 0.0 for c, w in enumerate(row))
      for r, row in enumerate(S.AUTHORS_SSPC_WEIGHTS))
  return contrastive, sspc


def _record_transform(config, parts):
  """Per-record: EAO's token normalisation, and empty audio when absent."""
  modalities = tuple(config.data.modalities)
  audio_dim = config.model.audio_dim

  def transform(record):
    if parts:
      record = multimodal.normalize_record(record, parts=parts)
    out = dict(record)
    if "audio" not in modalities:
      # The model takes three modalities; an all-masked audio sequence is
      # skipped by every loss term whose weight is not already 0.
      out["audio"] = np.zeros((1, audio_dim), np.float32)
      out["audio_mask"] = np.zeros((1,), bool)
    return out

  return transform


def _sources(config):
  """``(train source, {eval name: source}, record transform)``."""
  d, m = config.data, config.model
  dims = {"text": m.text_dim, "video": m.video_dim, "audio": m.audio_dim}
  fields = {"text": "model.text_dim", "video": "model.video_dim",
            "audio": "model.audio_dim"}
  modalities = tuple(d.modalities)
  eval_names = (*config.eval.retrieval, *config.eval.classification)
  if d.name == "synthetic":
    knobs = dict(d.synthetic)
    synth_dims = {k: dims[k] for k in modalities}
    lens = {k: {mm: knobs[k][mm] for mm in modalities}
            for k in ("min_lens", "max_lens")}
    knobs.update(lens)
    train, evals = _multimodal.synthetic_splits(config, synth_dims, eval_names,
                                                knobs)
    return train, evals, _record_transform(config, None)
  train_name = f"{d.name}/{d.split}"
  opened = _multimodal.open_feature_splits(
      d.dir, list(dict.fromkeys([train_name, *eval_names])), dataset=d.name,
      modalities=modalities)
  for source in opened.values():
    _multimodal.check_dims(source, {k: (dims[k], fields[k])
                                    for k in modalities})
  for name in config.eval.classification:
    if opened[name].labels is None:
      raise ValueError(f"{opened[name].directory}: eval.classification needs "
                       "class labels (convert with --label_key).")
  # EAO normalises each video token's 2D and 3D parts.
  parts = {"video": opened[train_name].parts["video"]}
  evals = {name: opened[name] for name in eval_names}
  return opened[train_name], evals, _record_transform(config, parts)


def embed_fn(model, batch):
  """Joint-space embeddings (and labels, when present) of a global batch."""
  out = model(batch)
  emb = {"text": out.text, "video": out.video, "audio": out.audio}
  if out.video_audio is not None:
    emb["video_audio"] = out.video_audio
  if "label" in batch:
    emb["label"] = batch["label"]
  return emb


def evaluate_set(embeddings, name: str, *, task: str, modalities,
                 num_queries: int | None = None, seed: int = 0):
  """The numbers of one evaluation set (``task``: retrieval/classification)."""
  dataset = name.split("/")[0]
  if task == "classification":
    # Suppl. Sec. 1.1: "we average the representations from video and audio".
    parts = [embeddings["video"]] + (
        [embeddings["audio"]] if "audio" in modalities else [])
    features = evaluation.fuse_embeddings(parts)
    return {f"{dataset}/accuracy": evaluation.zero_shot_cluster_accuracy(
        features, embeddings["label"], seed=seed)}
  text = embeddings["text"]
  out = _multimodal.retrieval_numbers(f"{dataset}/t2v", text,
                                      embeddings["video"],
                                      num_queries=num_queries)
  if "audio" in modalities and "video_audio" in embeddings:
    out.update(_multimodal.retrieval_numbers(
        f"{dataset}/t2va", text, embeddings["video_audio"],
        num_queries=num_queries))
  return out


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  m, c = config.model, config.loss
  modalities = tuple(config.data.modalities)
  contrastive_weights, sspc_weights = loss_weights(modalities)
  train_src, eval_srcs, transform = _sources(config)
  mesh = T.make_mesh()

  def train_record(r):
    out = transform(r)
    out.pop("label", None)
    return out

  train_iter = pipeline.batched_iterator(train_src, config.data.batch_size,
                                         seed=config.train.seed,
                                         transform=train_record)
  tx, lr = optim.swetha_optimizer(config.data.steps_per_epoch,
                                  learning_rate=config.optimiser.learning_rate,
                                  decay_rate=config.schedule.decay_rate)

  def model(rngs):
    net = S.Swetha2023Model(
        text_dim=m.text_dim, video_dim=m.video_dim, audio_dim=m.audio_dim,
        embed_dim=m.embed_dim, projection_dim=m.projection_dim, depth=m.depth,
        num_heads=m.num_heads, n_anchors=m.n_anchors, rngs=rngs)
    return WithQueue(net, S.init_sspc_queue(m.embed_dim, m.projection_dim,
                                            queue_len=c.queue_len))

  def loss_fn(model, batch, rng):
    del rng
    out = S.swetha2023_loss(
        model(batch), model.queue.get_value(), lambda_nce=c.lambda_nce,
        lambda_sspc=c.lambda_sspc, cross_modal_weight=c.cross_modal_weight,
        modality_specific_weight=c.modality_specific_weight,
        contrastive_weights=contrastive_weights, sspc_weights=sspc_weights,
        temperature=c.temperature, sspc_temperature=c.sspc_temperature,
        sk_eps=c.sk_eps, sk_iters=c.sk_iters,
        required_fraction=c.required_fraction, sk_discrete=c.sk_discrete)
    model.queue.set_value(out.queue)
    return out.loss, {k: out.metrics[k] for k in
                      ("contrastive", "sspc", "sspc_active")}

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  embed = _multimodal.make_embedder(graphs.eval, embed_fn, mesh)
  tasks = {}  # eval set -> its tasks (a set may serve both)
  for task, names in (("retrieval", config.eval.retrieval),
                      ("classification", config.eval.classification)):
    for name in names:
      tasks.setdefault(name, []).append(task)
  eval_batches = {
      name: _multimodal.padded_eval_batches(src, config.eval.batch_size,
                                            transform)
      for name, src in eval_srcs.items()}

  def evaluate(state):
    out = {}
    for name, batches in eval_batches.items():
      embeddings = embed(state, batches())
      for task in tasks[name]:
        out.update(evaluate_set(
            embeddings, name, task=task, modalities=modalities,
            seed=config.train.seed,
            num_queries=getattr(eval_srcs[name], "num_queries", None)))
    return out

  return T.train(config.train, model, loss_fn, tx, train_iter, evaluate,
                 workdir, mesh=mesh, learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
