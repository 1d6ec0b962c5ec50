r"""Tab. 3: SST-5/R, 58.5 % test accuracy (root sentences, 5 classes).

  python -m capsjax.data.sst_embed --model=gpt2-large \
      --trees_dir=/data/sst/trees --out_dir=/data/sst/gpt2-large --device=cuda
  python -m experiments.heinsen2019.main \
      --config=experiments/heinsen2019/configs/sst5r.py \
      --config.data.dir=/data/sst/gpt2-large --workdir=/tmp/heinsen_sst5r

The SST model of Fig. 5 (140,480 parameters on GPT-2-large's 37 layers x
1280) over frozen embeddings of every token and layer, stored once by
``capsjax.data.sst_embed`` (see README.md, "Reproducing": ~140 GB in
float16). Trained on every unique phrase of the training trees, evaluated
on the root sentences (test: the paper's number, dev: Supp. Fig. 8). The
regime is the smallNORB one (Sec. 5.2: "the same ... except that we train
the SST model for only 3 epochs"). Hardware and time are not stated in the
paper; the training run reads ~130 MB of embeddings per step of 20
phrases (padded to the longest record), expect about an hour on one GPU
after the embedding step (README.md).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- model (Fig. 5) ----------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.n_classes = 5         # SST-5/R: five labels
  c.model.n_parts = 64          # Fig. 5(e): 64 part capsules
  c.model.d_inp = 64            # Fig. 5(c): affine map m -> 64
  c.model.d_cap = 2             # Fig. 5(e): capsules of shape 1 x 2
  c.model.n_iters = 3           # authors' code default
  # n_layers and d_emb (37 x 1280 for GPT-2-large) come from the embeddings.

  # --- data ----------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = "sst"
  c.data.dir = ""               # the sst_embed --out_dir
  c.data.task = "sst5"          # label set: sst5 (0..4) or sst2 (no neutral)
  c.data.embedding_model = "gpt2-large"  # Sec. 5.1.2: GPT-2 large, frozen
  c.data.max_tokens = 0         # pad length; 0: the longest record of any split
  c.data.batch_size = 20        # Sec. 4.2 regime: batch size of 20
  c.data.mixup_alpha = 0.2      # Sec. 4.2 regime: mixup, Beta(0.2, 0.2); the
                                # token mask mixes too (Fig. 5(d))

  # --- optimiser (Sec. 4.2: RAdam, one-cycle on lr and beta1) -------------------
  c.optimiser = ml_collections.ConfigDict()
  c.optimiser.lr_start = 1e-5
  c.optimiser.lr_peak = 5e-4
  c.optimiser.b1_start = 0.999
  c.optimiser.b1_peak_factor = 0.9

  # --- schedule ------------------------------------------------------------------
  c.schedule = ml_collections.ConfigDict()
  c.schedule.warmup_frac = 0.1  # Sec. 4.2: over the first 10 % of iterations

  # --- eval ----------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 20        # authors' notebook: batches of 20 everywhere

  # --- loop ----------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 3        # Sec. 5.2: 3 epochs
  c.train.num_steps = 0         # 0: num_epochs passes over the phrases
  c.train.seed = 0
  c.train.log_every = 100
  c.train.eval_every = -1       # -1: once per epoch (Supp. Fig. 8)
  c.train.checkpoint_every = 2000
  c.train.keep_checkpoints = 3
  c.train.progress = True
  return c
