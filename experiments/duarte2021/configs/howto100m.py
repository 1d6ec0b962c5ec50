r"""Table 1, "Ours, VT, R152+RX101": zero-shot text-to-video retrieval on
YouCook2 after training on HowTo100M: R@1 9.0, R@5 23.2, R@10 32.5, MedR 30.

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/howto100m.py \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_ht100m

Needs the pre-extracted HowTo100M and YouCook2 features in ``data.dir``;
capsjax has no reader for them yet, so the run stops with an error naming
them (use ``configs/synthetic.py`` offline). Paper (Sec. 4.1): 4 V100 GPUs,
20 epochs, batch 4096; time not stated.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- model (Sec. 4.1) --------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.n_caps = 128          # "number of capsules to C = 128"
  c.model.d1 = 32               # primary pose size d1 = 32
  c.model.d2 = 256              # secondary pose size d2 = 256
  c.model.d_embed = 4096        # joint representation D = 4096
  c.model.routing = "self_attention"  # Sec. 3.2
  c.model.shared = True         # Table 6 "Shared"
  # Sec. 4.1: 4096-d video (R152 + RX101), word2vec text (300), DAVEnet audio.
  c.model.input_dims = ml_collections.ConfigDict(
      {"video": 4096, "audio": 1024, "text": 300})

  # --- loss ----------------------------------------------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.margin = 0.001         # Sec. 4.1: MMS delta = 0.001

  # --- data ----------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = "howto100m"
  c.data.dir = ""
  c.data.batch_size = 4096      # Sec. 4.1: batch size of 4096

  # --- optimiser (Sec. 4.1: Adam, lr 0.001, cosine schedule) ---------------------
  c.optimiser = ml_collections.ConfigDict()
  c.optimiser.learning_rate = 1e-3

  # --- schedule ------------------------------------------------------------------
  num_epochs = 20               # Sec. 4.1: 20 epochs
  # Sec. 4.1 gives 1.2M videos, not the number of clips; an epoch here is
  # 1.2M samples.
  steps_per_epoch = 1_200_000 // 4096
  c.schedule = ml_collections.ConfigDict()
  c.schedule.final_fraction = 0.0  # plain cosine decay to 0

  # --- eval ------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.num_examples = 3350    # YouCook2 validation clips

  # --- loop ------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = num_epochs * steps_per_epoch
  c.train.seed = 0
  c.train.log_every = 50
  c.train.eval_every = steps_per_epoch
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3
  c.train.progress = True
  return c
