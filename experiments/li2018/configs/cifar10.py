r"""Table 4: EncapNet on CIFAR-10, 4.55 % test error (no augmentation).

  python -m capsjax.data.prepare --datasets=cifar10 --data_dir=$DATA
  python -m experiments.li2018.main --config=experiments/li2018/configs/cifar10.py \
      --config.data.dir=$DATA --workdir=/tmp/encapnet_cifar10

The paper's final 18-layer model (Sec. 5.1): master/aide v3 capConv blocks
with skip connections and two OT (Sinkhorn feedback) units per module, "4.55 %
vs 4.58 % with one OT". Table 4 marks augmented rows with + / ++, so this
plain row trains on un-augmented images (``data.augment = "none"``); images
are normalised per channel (capsjax.data.images). Needs CIFAR-10 prepared in
``data.dir`` (else the run stops naming the prepare command). Paper: 600
epochs at batch 128 (Sec. 5) on Titan X GPUs (Sec. 3.1); training time not
stated -- expect days on one GPU (36.8M parameters, several Sinkhorn
divergences per step). The other Table 3/4 rows: ``table3.py``,
``table4.py``.
"""

import ml_collections

_TRAIN_EXAMPLES = 50_000  # CIFAR-10 training images


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- model (Table 2 / Sec. 5.1: 18 layers, N = 3) ----------------------------
  c.model = ml_collections.ConfigDict()
  c.model.arch = "encapnet"            # or "resnet": Sec. 5.1's ResNet-18
  c.model.num_classes = 10
  c.model.n_caps = 32                  # official code: 32 capsules per position
  c.model.cap_dims = (2, 4, 8, 16)     # official code: module widths
  c.model.strides = (1, 2, 2, 2)
  c.model.n_type2 = 3                  # Sec. 5.1: N = 3
  c.model.feedback = True              # Sec. 3.2: feedback agreement unit
  c.model.two_feedbacks = True         # Sec. 5.1: "two OTs" per module, 4.55 %
  c.model.epsilon = 1.0                # Sinkhorn entropic weight (official code)
  c.model.n_sinkhorn_iters = 10        # official code
  c.model.debiased = True              # Sec. 3.2: bias fix, 2W(P,Q)-W(P,P)-W(Q,Q)
  c.model.detach_plan = True           # Sec. 3.2: no gradient through the plan

  # --- loss (Sec. 3.2, "Overall Loss Function") ---------------------------------
  c.loss = ml_collections.ConfigDict()
  c.loss.kind = "margin"               # margin loss on capsule lengths
  c.loss.feedback_weight = 10.0        # lambda "set to be 10"
  c.loss.m_plus = 0.9                  # margin loss of [10] (Sabour et al.)
  c.loss.m_minus = 0.1
  c.loss.absent_weight = 0.5

  # --- data ----------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"              # TFDS name (capsjax.data.images)
  c.data.dir = ""                      # TFDS data_dir of `prepare` ("": ~/tensorflow_datasets)
  c.data.train_split = "train"         # 50,000 images
  c.data.test_split = "test"           # 10,000 images
  c.data.image_size = 32
  c.data.augment = "none"              # Table 4: plain row, no augmentation
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
  c.eval.batch_size = 500              # single centre view, no test-time crops

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
