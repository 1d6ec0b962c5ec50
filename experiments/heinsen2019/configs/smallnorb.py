r"""Tab. 2: the smallNORB model, 99.1 % test accuracy (272K parameters).

  pip install 'capsjax[prepare]'   # TensorFlow, for the one-off preparation
  python -m capsjax.data.prepare --datasets=smallnorb --data_dir=/data/tfds
  python -m experiments.heinsen2019.main \
      --config=experiments/heinsen2019/configs/smallnorb.py \
      --config.data.dir=/data/tfds --workdir=/tmp/heinsen_smallnorb

Reads TFDS ``smallnorb`` (``array_record``) from ``data.dir``, as
``capsjax.data.images``: the stereo pair as two channels in [0, 1], the 5
categories; training images padded by 16 and randomly cropped back to
96x96 (Sec. 4.2), test images whole. Paper: 50 epochs of 24,300 stereo
pairs, batch 20 (60,750 steps). Hardware and time are not stated in the
paper (the author trained on one GPU); expect hours on one modern GPU.
"""

import ml_collections

_TRAIN_EXAMPLES = 24_300  # Sec. 4: 24,300 training pairs


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- model (Fig. 3) ----------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.n_objs = 5            # five toy classes
  c.model.n_parts = 64          # Fig. 3 (d): 64 part capsules
  c.model.d_chns = 64           # Fig. 3 (c): 64 output channels
  c.model.n_iters = 3           # authors' code default

  # --- data --------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = "smallnorb"
  c.data.dir = ""               # TFDS data_dir given to capsjax.data.prepare
  c.data.image_size = 96        # Sec. 4: non-downsampled 96x96 pairs
  c.data.batch_size = 20        # Sec. 4.2: batch size of 20
  c.data.mixup_alpha = 0.2      # Sec. 4.2: mixup, Beta(0.2, 0.2)

  # --- optimiser (Sec. 4.2: RAdam, one-cycle on lr and beta1) -------------------
  c.optimiser = ml_collections.ConfigDict()
  c.optimiser.lr_start = 1e-5
  c.optimiser.lr_peak = 5e-4
  c.optimiser.b1_start = 0.999
  c.optimiser.b1_peak_factor = 0.9

  # --- schedule ------------------------------------------------------------------
  num_epochs = 50               # Sec. 4.2 / Tab. 2: 50 epochs
  c.schedule = ml_collections.ConfigDict()
  c.schedule.warmup_frac = 0.1  # Sec. 4.2: over the first 10 % of iterations

  # --- eval ----------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 100

  # --- loop ----------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = num_epochs * (_TRAIN_EXAMPLES // c.data.batch_size)
  c.train.seed = 0
  c.train.log_every = 100
  c.train.eval_every = _TRAIN_EXAMPLES // c.data.batch_size  # every epoch
  c.train.checkpoint_every = 2000
  c.train.keep_checkpoints = 3
  c.train.progress = True
  return c
