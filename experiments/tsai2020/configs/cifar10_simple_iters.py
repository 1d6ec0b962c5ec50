r"""Fig. 4 (bottom-left table), "Inverted Dot-Product Attention" row: the
simple-backbone CapsNet on CIFAR-10 with 1 to 5 routing iterations, one
variant per iteration count (the config argument).

  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/cifar10_simple_iters.py:3 \
      --config.data.dir=$HOME/tfds --workdir=/tmp/tsai_cifar10_simple_iters3

Test accuracy the paper reports (Fig. 4):

  iterations   1        2        3        4        5        std
  ours         84.24 %  85.05 %  84.83 %  85.17 %  85.09 %  0.34 %

Data (``python -m capsjax.data.prepare --datasets=cifar10
--data_dir=$HOME/tfds``) and training as ``configs/cifar10_simple.py``
(App. A.1/A.2: batch 128, 350 epochs; Fig. 4's memory/time panel uses an
8-GPU machine). Not run here (no CIFAR-10 and no GPU on the development
machine).
"""

import ml_collections

from experiments.tsai2020.configs import cifar10_simple

VARIANTS = ("1", "2", "3", "4", "5")


def get_config(n_iters: str = "2") -> ml_collections.ConfigDict:
  if n_iters not in VARIANTS:
    raise ValueError(f"n_iters must be one of {VARIANTS}, got {n_iters!r}.")
  c = cifar10_simple.get_config()
  # --- model (Fig. 4: routing iterations 1-5) -----------------------------------
  c.model.n_iters = int(n_iters)
  return c
