r"""Offline stand-in for DiverseMultiMNIST: overlapping UCI digits.

  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/multi_digits.py \
      --workdir=/tmp/tsai_multi_digits

A stand-in, not the paper's data: ``capsjax.data.MultiDigitsSource``
composes the 1,797 UCI digits bundled with scikit-learn (up-sampled to
16x16) the way App. B.2 composes MNIST (1/6 single digits, 5/6 two digits
of different classes, each shifted up to 2 px -- 4 px scaled to the digit
size -- on a 20x20 canvas, overlaid by pixel-wise max); train composites use
only the training digits, the 2,000 test composites only the held-out ones.
Model: the small CapsNet of ``configs/digits.py``; loss: binary
cross-entropy over the 10 classes (Sec. 4.2); metric: set accuracy (the
predicted set, the classes among the two highest logits with logit > 0,
must equal the true set; Sec. 6).

The paper's DiverseMultiMNIST row (``configs/diverse_multimnist.py``) reports
80.59-85.74 % for its CapsNets; this stand-in's number is not comparable.
Measured: 43.15 % set accuracy on the 2,000 test composites after 1,248
steps (36.0 % at step 624), 59 s wall on a quiet 2-core CPU (2026-11-22;
43.65 % and 18 min on a shared machine before the conv kernel's rewrite).
"""

import ml_collections

from experiments.tsai2020.configs import digits

OFFLINE = True  # a stand-in, not a paper row: runs anywhere, needs no dataset


def get_config() -> ml_collections.ConfigDict:
  c = digits.get_config()

  # --- data ----------------------------------------------------------------
  c.data.name = "multi_digits"
  c.data.image_size = 16            # digit size; the canvas is 16 + 2 * 2
  c.data.num_train_examples = 10_000
  c.data.num_test_examples = 2_000
  c.data.test_seed = 0              # the test composites do not move with train.seed

  # --- schedule ----------------------------------------------------------------
  # Epochs of 10,000 composites (312 steps); x0.1 for the last one.
  num_epochs = 4
  c.schedule.boundary_epochs = (3,)

  # --- eval / loop -------------------------------------------------------------
  c.eval.batch_size = 500           # 2,000 test composites: 4 batches
  c.train.num_steps = num_epochs * (c.data.num_train_examples // c.data.batch_size)
  c.train.eval_every = 312
  c.train.checkpoint_every = 312
  return c
