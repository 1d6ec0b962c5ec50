r"""Table 4: EncapNet on CIFAR-10, 4.55 % test error (no augmentation).

  python -m experiments.li2018.main --config=experiments/li2018/configs/cifar10.py \
      --config.data.dir=/path/to/cifar10 --workdir=/tmp/encapnet_cifar10

Needs CIFAR-10 in ``data.dir``; capsjax has no CIFAR-10 reader yet, so the
run stops with an error naming the files (use ``configs/digits.py`` offline).
Paper: 600 epochs at batch 128 (Sec. 5); their models trained on Titan X
GPUs (Sec. 3.1); time not stated -- expect days on one GPU (36.8M params).
"""

import ml_collections

_TRAIN_EXAMPLES = 50_000  # CIFAR-10 training images


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- model (Table 2 / Sec. 5.1: 18 layers, N = 3) ----------------------------
  c.model = ml_collections.ConfigDict()
  c.model.num_classes = 10
  c.model.n_caps = 32                  # official code: 32 capsules per position
  c.model.cap_dims = (2, 4, 8, 16)     # official code: module widths
  c.model.strides = (1, 2, 2, 2)
  c.model.n_type2 = 3                  # Sec. 5.1: N = 3
  c.model.feedback = True              # Sec. 3.2: feedback agreement unit
  c.model.epsilon = 1.0                # Sinkhorn entropic weight (official code)
  c.model.n_sinkhorn_iters = 10        # official code

  # --- loss (Sec. 3.2, "Overall Loss Function") ---------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.feedback_weight = 10.0        # lambda "set to be 10"
  c.loss.m_plus = 0.9                  # margin loss of [10] (Sabour et al.)
  c.loss.m_minus = 0.1
  c.loss.absent_weight = 0.5

  # --- data ----------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"
  c.data.dir = ""
  c.data.image_size = 32
  c.data.batch_size = 128              # Sec. 5: batch size 128

  # --- optimiser (Sec. 5, "Implementation Details") -----------------------------
  c.optimiser = ml_collections.ConfigDict()
  c.optimiser.learning_rate = 1e-4     # initial learning rate 0.0001
  c.optimiser.b1 = 0.9                 # Adam "with momentum 0.9"
  c.optimiser.weight_decay = 5e-4      # weight decay 5e-4

  # --- schedule -----------------------------------------------------------------
  num_epochs = 600                     # maximum epoch 600
  c.schedule = ml_collections.ConfigDict()
  c.schedule.boundary_epochs = (200, 300, 400)  # schedule [200, 300, 400]
  c.schedule.decay_factor = 0.1        # "reduced by 90 %"

  # --- eval ---------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 500

  # --- loop ---------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = num_epochs * (_TRAIN_EXAMPLES // c.data.batch_size)
  c.train.seed = 0
  c.train.log_every = 100
  c.train.eval_every = 10 * (_TRAIN_EXAMPLES // c.data.batch_size)
  c.train.checkpoint_every = 2000
  c.train.keep_checkpoints = 3
  c.train.progress = True
  return c
