r"""Offline: EAO + Multi-SK + SSPC on synthetic tri-modal token sequences.

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/synthetic.py --workdir=/tmp/swetha_syn

Text, video and audio token sequences generated from shared latent concepts
(``capsjax.data.synthetic_multimodal.SyntheticTriModal``: random lengths
with padding masks, a concept label per clip), the paper's loss
(combinatorial contrastive + SSPC with a queue and Multi-SK) and regime
(Adam, x0.9 per epoch) at CPU size; evaluated by zero-shot retrieval and by
zero-shot k-means + Hungarian clustering of the concepts on 256 held-out
clips (chance R@1 = 0.4 %; clustering chance is about 1 / n_concepts =
10 % plus what the matching adds). No paper number: a stand-in that checks
the experiment end to end on a CPU (README, "Synthetic").
"""

import ml_collections

from capsjax.data import synthetic_multimodal
from experiments.swetha2023.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  # --- model: EAO's structure at CPU size -----------------------------------------
  c.model.text_dim = 24         # SyntheticTriModal's default widths
  c.model.video_dim = 64
  c.model.audio_dim = 32
  c.model.embed_dim = 32
  c.model.projection_dim = 48
  c.model.num_heads = 4
  c.model.n_anchors = 8
  c.loss.queue_len = 256

  # --- data: SyntheticTriModal's defaults (its docstring says why) ----------------
  c.data.name = "synthetic"
  del c.data["dir"]
  del c.data["split"]
  c.data.num_examples = 2048
  c.data.synthetic = ml_collections.ConfigDict(
      synthetic_multimodal.default_knobs())
  c.data.batch_size = 64
  c.data.steps_per_epoch = 2048 // 64
  c.optimiser.learning_rate = 1e-3

  # --- eval ----------------------------------------------------------------------
  c.eval.retrieval = ("synthetic/test",)
  c.eval.classification = ("synthetic/test",)
  c.eval.num_examples = 256
  c.eval.batch_size = 256

  # --- loop ----------------------------------------------------------------------
  c.train.num_steps = 300
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  c.train.log_every = 25
  return c
