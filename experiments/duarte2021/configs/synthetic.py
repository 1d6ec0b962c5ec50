r"""Offline: the multimodal capsule network on synthetic features.

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/synthetic.py --workdir=/tmp/duarte_syn

Three modalities with the paper's structure (video, audio, text feature
vectors) but small sizes, generated from a shared latent per sample
(``main.SyntheticMultimodal``); trained with the paper's loss and regime
(MMS, Adam 1e-3, cosine) and evaluated by text-to-video retrieval on 256
held-out samples (chance R@1 = 0.4 %). No paper number: this config checks
the experiment end to end anywhere; a few minutes on a CPU.
"""

import ml_collections

from experiments.duarte2021.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  c.model.n_caps = 16
  c.model.d1 = 8
  c.model.d2 = 16
  c.model.d_embed = 64
  c.model.input_dims = ml_collections.ConfigDict(
      {"video": 64, "audio": 32, "text": 24})
  c.data.name = "synthetic"
  del c.data["dir"]
  c.data.num_examples = 4096
  c.data.latent_dim = 16
  c.data.noise = 0.3
  c.data.batch_size = 128
  c.eval.num_examples = 256
  c.train.num_steps = 300
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.train.log_every = 25
  return c
