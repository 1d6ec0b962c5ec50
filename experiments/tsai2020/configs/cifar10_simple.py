r"""Table 1 (App. Table 8 model): inverted dot-product attention routing,
simple backbone, CIFAR-10: 85.17 % test accuracy (0.56M parameters; the best
of 1-5 routing iterations; 85.05 % at the 2 used here, Fig. 4 table).

  python -m capsjax.data.prepare --datasets=cifar10 --data_dir=$HOME/tfds
  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/cifar10_simple.py \
      --config.data.dir=$HOME/tfds --workdir=/tmp/tsai_cifar10_simple

Data and training as ``configs/cifar10_resnet.py`` (App. A.1/A.2: batch
128, 350 epochs, 8-GPU machine; time not stated). Not run here (no CIFAR-10
and no GPU on the development machine).
"""

import ml_collections

from experiments.tsai2020.configs import cifar10_resnet


def get_config() -> ml_collections.ConfigDict:
  c = cifar10_resnet.get_config()
  # --- model (App. Table 8: 3x3 conv 3 -> 256, 32 primary capsules of 4x4) ---
  c.model.name = "cifar10_simple"
  return c
