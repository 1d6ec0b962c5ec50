r"""Offline: EAO + Multi-SK + SSPC on synthetic token features.

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/synthetic.py --workdir=/tmp/swetha_syn

The paper's three token modalities at small sizes (``main.SyntheticTokens``:
a shared latent per sample, random-length sequences with padding masks), the
paper's loss (contrastive + SSPC with a queue, Multi-SK) and regime (Adam,
x0.9 per epoch), text-to-video retrieval on 128 held-out samples. No paper
number: this config checks the experiment end to end anywhere.
"""

import ml_collections

from experiments.swetha2023.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  c.model.text_dim = 24
  c.model.video_dim = 32
  c.model.audio_dim = 16
  c.model.embed_dim = 32
  c.model.projection_dim = 48
  c.model.num_heads = 4
  c.model.n_anchors = 8
  c.loss.queue_len = 256
  c.data.name = "synthetic"
  del c.data["dir"]
  c.data.num_examples = 2048
  c.data.latent_dim = 16
  c.data.noise = 0.3
  c.data.n_tokens = 6
  c.data.batch_size = 64
  c.data.steps_per_epoch = 2048 // 64
  c.optimiser.learning_rate = 1e-3
  c.eval.num_examples = 128
  c.train.num_steps = 200
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.train.log_every = 25
  return c
