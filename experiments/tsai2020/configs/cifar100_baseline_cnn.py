r"""Table 1 (App. Table 3 model): baseline CNN (simple), CIFAR-100: 62.30 %
test accuracy (19.01M parameters).

  python -m capsjax.data.prepare --datasets=cifar100 --data_dir=$HOME/tfds
  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/cifar100_baseline_cnn.py \
      --config.data.dir=$HOME/tfds --workdir=/tmp/tsai_cifar100_cnn

Trained like the CapsNets (App. A.1; see ``configs/cifar10_baseline_cnn.py``).
Paper: 8-GPU machine, time not stated. Not run here (no CIFAR-100 and no
GPU on the development machine).
"""

import ml_collections

from experiments.tsai2020.configs import cifar10_resnet


def get_config() -> ml_collections.ConfigDict:
  c = cifar10_resnet.get_config()
  # --- model (App. Table 3) ------------------------------------------------------
  c.model.name = "cifar100_baseline_cnn"
  c.model.n_iters = 0           # not read: a CNN has no routing
  # --- data ----------------------------------------------------------------------
  c.data.name = "cifar100"
  return c
