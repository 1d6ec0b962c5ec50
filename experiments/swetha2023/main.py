r"""Swetha et al. (ICCV 2023): train EAO + Multi-SK with the SSPC loss.

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/synthetic.py --workdir=/tmp/swetha

Configs: ``configs/synthetic.py`` (offline: random token features sharing a
latent per sample), ``configs/howto100m.py`` (supplement Table 5 "Ours",
MSR-VTT zero-shot; needs the HowTo100M features).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from capsjax import train as T
from capsjax.data import digits
from capsjax.models import swetha2023 as S
from capsjax.train import entrypoint, optim

FIELDS = entrypoint.Fields(
    required=(
        "model.text_dim", "model.video_dim", "model.audio_dim",
        "model.embed_dim", "model.projection_dim", "model.depth",
        "model.num_heads", "model.n_anchors", "loss.lambda_nce",
        "loss.lambda_sspc", "loss.temperature", "loss.sspc_temperature",
        "loss.sk_eps", "loss.sk_iters", "loss.required_fraction",
        "loss.queue_len", "data.name", "data.batch_size",
        "data.steps_per_epoch", "optimiser.learning_rate",
        "schedule.decay_rate", "eval.num_examples", "train.num_steps",
        "train.seed", "train.log_every", "train.eval_every",
        "train.checkpoint_every", "train.keep_checkpoints", "train.progress"),
    optional=("data.dir", "data.num_examples", "data.latent_dim",
              "data.noise", "data.n_tokens"))


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


class SyntheticTokens:
  """Random token sequences of text, video and audio sharing a latent.

  Sample ``i`` draws ``z ~ N(0, I_k)`` and, per modality, a random number of
  real tokens (>= 1; the rest padding); token ``t`` is
  ``tanh(z A_m + 0.5 eps_t) + noise * eps'`` with fixed random ``A_m``.
  """

  def __init__(self, dims, n_tokens: int, num_examples: int, *,
               latent_dim: int, noise: float, split: int, seed: int = 0):
    rng = np.random.default_rng((seed, 98))
    self.proj = {m: rng.normal(size=(latent_dim, n)) / np.sqrt(latent_dim)
                 for m, n in dims.items()}
    self.t, self.n, self.k, self.noise = n_tokens, num_examples, latent_dim, noise
    self.split, self.seed = split, seed

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i):
    rng = np.random.default_rng((self.seed, self.split, int(i)))
    z = rng.normal(size=self.k)
    out = {}
    for m, a in self.proj.items():
      h = z @ a + 0.5 * rng.normal(size=(self.t, a.shape[1]))
      x = np.tanh(h) + self.noise * rng.normal(size=h.shape)
      mask = np.arange(self.t) < rng.integers(1, self.t + 1)
      out[m] = (x * mask[:, None]).astype(np.float32)
      out[m + "_mask"] = mask
    return out


def metric_fn(model, batch):
  """Text-to-video retrieval over the batch (the whole eval set)."""
  out = model(batch)
  v = out.video / jnp.linalg.norm(out.video, axis=-1, keepdims=True)
  t = out.text / jnp.linalg.norm(out.text, axis=-1, keepdims=True)
  sim = t @ v.T
  rank = jnp.sum(sim > jnp.diag(sim)[:, None], axis=1)
  n = jnp.asarray(sim.shape[0], jnp.float32)
  # MedR/MeanR exact only because the eval set is one batch.
  return {"R@1": jnp.sum(rank < 1), "R@5": jnp.sum(rank < 5),
          "R@10": jnp.sum(rank < 10), "MedR": jnp.median(rank + 1.0) * n,
          "MeanR": jnp.sum(rank + 1.0), "count": n}


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  d, m, c = config.data, config.model, config.loss
  if d.name != "synthetic":
    entrypoint.require_dataset(
        d.name, d.get("dir", ""),
        [("HowTo100M token features (text: word2vec 300-d per word; video: "
          "ResNet-152 + ResNeXt-101 4096-d per clip; audio: DAVEnet-v2 "
          "tokens), as prepared for Everything-At-Once"),
         "MSR-VTT test features (same extractors)"])
  dims = {"text": m.text_dim, "video": m.video_dim, "audio": m.audio_dim}
  mk = {"latent_dim": d.latent_dim, "noise": d.noise,
        "seed": config.train.seed}
  train_src = SyntheticTokens(dims, d.n_tokens, d.num_examples, split=0, **mk)
  eval_src = SyntheticTokens(dims, d.n_tokens, config.eval.num_examples,
                             split=1, **mk)
  records = [eval_src[i] for i in range(len(eval_src))]
  eval_batch = {k: np.stack([r[k] for r in records]) for k in records[0]}
  mesh = T.make_mesh()
  train_iter = digits.batched_iterator(train_src, d.batch_size,
                                       seed=config.train.seed)
  tx, lr = optim.swetha_optimizer(d.steps_per_epoch,
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
        lambda_sspc=c.lambda_sspc, temperature=c.temperature,
        sspc_temperature=c.sspc_temperature, sk_eps=c.sk_eps,
        sk_iters=c.sk_iters, required_fraction=c.required_fraction)
    model.queue.set_value(out.queue)
    return out.loss, {k: out.metrics[k] for k in
                      ("contrastive", "sspc", "sspc_active")}

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluate = T.make_evaluator(graphs.eval, metric_fn, lambda: [eval_batch],
                              mesh)
  return T.train(config.train, model, loss_fn, tx, train_iter, evaluate,
                 workdir, mesh=mesh, learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
