r"""Duarte et al. (2021): train the multimodal capsule network with MMS loss.

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/synthetic.py --workdir=/tmp/duarte

Configs: ``configs/synthetic.py`` (offline: random features with a shared
latent, text-to-video retrieval on held-out samples), ``configs/howto100m.py``
(Table 1 "Ours VT", YouCook2 zero-shot; needs the HowTo100M features).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from capsjax import train as T
from capsjax.data import digits
from capsjax.models import duarte2021
from capsjax.train import entrypoint, optim

FIELDS = entrypoint.Fields(
    required=(
        "model.n_caps", "model.d1", "model.d2", "model.d_embed",
        "model.routing", "model.shared", "model.input_dims", "loss.margin",
        "data.name", "data.batch_size", "optimiser.learning_rate",
        "schedule.final_fraction", "eval.num_examples", "train.num_steps",
        "train.seed", "train.log_every", "train.eval_every",
        "train.checkpoint_every", "train.keep_checkpoints", "train.progress"),
    optional=("data.dir", "data.num_examples", "data.latent_dim",
              "data.noise"))


class SyntheticMultimodal:
  """Random features of video, audio and text sharing one latent per sample.

  Sample ``i`` draws ``z ~ N(0, I_k)`` from ``default_rng((seed, split, i))``
  and gives each modality ``m`` the features ``tanh(z A_m) + noise * eps``
  with a fixed random ``A_m [k, n_m]``: the modalities of one sample agree,
  those of different samples do not, so retrieval can be learnt.
  """

  def __init__(self, input_dims, num_examples: int, *, latent_dim: int,
               noise: float, split: int, seed: int = 0):
    rng = np.random.default_rng((seed, 99))
    self.proj = {m: rng.normal(size=(latent_dim, n)) / np.sqrt(latent_dim)
                 for m, n in input_dims.items()}
    self.n, self.k, self.noise = num_examples, latent_dim, noise
    self.split, self.seed = split, seed

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i):
    rng = np.random.default_rng((self.seed, self.split, int(i)))
    z = rng.normal(size=self.k)
    return {m: (np.tanh(z @ a) + self.noise * rng.normal(size=a.shape[1])
                ).astype(np.float32) for m, a in self.proj.items()}


def metric_fn(model, batch):
  """Text-to-video retrieval over the batch (the whole eval set)."""
  out = model({m: batch[m] for m in ("video", "text")})
  v, t = out["video"].embedding, out["text"].embedding
  v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
  sim = t @ v.T                               # [query text, video]
  rank = jnp.sum(sim > jnp.diag(sim)[:, None], axis=1)  # 0 = first
  n = jnp.asarray(sim.shape[0], jnp.float32)
  # Sums over queries; the evaluator divides by count. MedR is exact only
  # because the eval set is one batch.
  return {"R@1": jnp.sum(rank < 1), "R@5": jnp.sum(rank < 5),
          "R@10": jnp.sum(rank < 10), "MedR": jnp.median(rank + 1.0) * n,
          "count": n}


def run(config, workdir: str) -> T.TrainResult:
  """Trains ``config`` in ``workdir`` and returns the loop's result."""
  entrypoint.check_config(config, FIELDS, reader=__name__)
  d, m = config.data, config.model
  if d.name != "synthetic":
    entrypoint.require_dataset(
        d.name, d.get("dir", ""),
        [("HowTo100M training features (video: ResNet-152 + ResNeXt-101, "
          "4096-d; audio: DAVEnet; text: word2vec, as released with AVLnet)"),
         "YouCook2 validation clip features (same extractors)"])
  dims = dict(m.input_dims)
  mk = {"latent_dim": d.latent_dim, "noise": d.noise,
        "seed": config.train.seed}
  train_src = SyntheticMultimodal(dims, d.num_examples, split=0, **mk)
  eval_src = SyntheticMultimodal(dims, config.eval.num_examples, split=1, **mk)
  eval_batch = {k: np.stack([eval_src[i][k] for i in range(len(eval_src))])
                for k in dims}
  mesh = T.make_mesh()
  train_iter = digits.batched_iterator(train_src, d.batch_size,
                                       seed=config.train.seed)
  tx, lr = optim.duarte_optimizer(config.train.num_steps,
                                  learning_rate=config.optimiser.learning_rate,
                                  final_fraction=config.schedule.final_fraction)

  def model(rngs):
    return duarte2021.MultimodalCapsuleNetwork(
        dims, n_caps=m.n_caps, d1=m.d1, d2=m.d2, d_embed=m.d_embed,
        routing=m.routing, shared=m.shared, rngs=rngs)

  def loss_fn(model, batch, rng):
    del rng
    return duarte2021.duarte2021_loss(model(batch),
                                      margin=config.loss.margin), {}

  graphs, _, _ = T.split_model(nnx.eval_shape(lambda: model(nnx.Rngs(0))))
  evaluate = T.make_evaluator(graphs.eval, metric_fn, lambda: [eval_batch],
                              mesh)
  return T.train(config.train, model, loss_fn, tx, train_iter, evaluate,
                 workdir, mesh=mesh, learning_rate_fn=lr)


if __name__ == "__main__":
  entrypoint.main(run, fields=FIELDS)
