r"""Fig. 4 ablations (Sec. 5, "Ablation Study"): the simple-backbone CapsNet
on CIFAR-10 with one part of the routing changed, one variant per ablation
(the config argument); the routing iterations default to 2 and any of the
paper's 1-5 is ``--config.model.n_iters=N``.

  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/cifar10_simple_ablation.py:A \
      --config.model.n_iters=4 \
      --config.data.dir=$HOME/tfds --workdir=/tmp/tsai_cifar10_ablation_A4

  A: without Layer Normalization in the routing (model.layer_norm=False)
  B: sequential instead of concurrent routing (model.concurrent=False)
  C: with capsule activations, as in EM routing (model.activations=True)

Test accuracy the paper reports (Fig. 4; * a uniform prediction):

  iterations   1        2        3        4        5         std
  A            66.83 %  65.83 %  66.22 %  77.03 %  10.00 %*  23.96 %
  B            84.24 %  83.35 %  80.21 %  83.37 %  82.07 %    1.40 %
  C            82.55 %  83.12 %  82.13 %  82.38 %  81.97 %    0.40 %
  (ours        84.24 %  85.05 %  84.83 %  85.17 %  85.09 %    0.34 %)

The authors released no code for A's and C's exact form: see
``capsjax.models.tsai2020.CapsNet`` and ``capsjax.nn.inverted_attention``
for the design chosen. Data and training as ``configs/cifar10_simple.py``
(App. A.1/A.2; 8-GPU machine, time not stated). Not run here (no CIFAR-10
and no GPU on the development machine).
"""

import ml_collections

from experiments.tsai2020.configs import cifar10_simple

VARIANTS = ("A", "B", "C")


def get_config(ablation: str = "A") -> ml_collections.ConfigDict:
  if ablation not in VARIANTS:
    raise ValueError(f"ablation must be one of {VARIANTS}, got {ablation!r}.")
  c = cifar10_simple.get_config()
  # --- model (Fig. 4 ablations; each switch keeps the paper's method when True
  # for layer_norm/concurrent and False for activations) -------------------------
  c.model.layer_norm = ablation != "A"
  c.model.concurrent = ablation != "B"
  c.model.activations = ablation == "C"
  return c
