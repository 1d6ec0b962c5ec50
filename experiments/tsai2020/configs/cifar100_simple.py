r"""Table 1 (App. Table 9 model): inverted dot-product attention routing,
simple backbone, CIFAR-100: 57.32 % test accuracy (1.46M parameters; the best
of 1-5 routing iterations).

  python -m capsjax.data.prepare --datasets=cifar100 --data_dir=$HOME/tfds
  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/cifar100_simple.py \
      --config.data.dir=$HOME/tfds --workdir=/tmp/tsai_cifar100_simple

Training as ``configs/cifar10_resnet.py`` (App. A.1/A.2; 8-GPU machine,
time not stated). Not run here (no CIFAR-100 and no GPU on the development
machine).
"""

import ml_collections

from experiments.tsai2020.configs import cifar10_resnet


def get_config() -> ml_collections.ConfigDict:
  c = cifar10_resnet.get_config()
  # --- model (App. Table 9: 3x3 conv 3 -> 128, 32 primary capsules of 6x6) ---
  c.model.name = "cifar100_simple"
  # --- data ----------------------------------------------------------------------
  c.data.name = "cifar100"
  return c
