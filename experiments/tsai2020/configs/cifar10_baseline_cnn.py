r"""Table 1 (App. Table 2 model): baseline CNN (simple), CIFAR-10: 87.10 %
test accuracy (18.92M parameters).

  python -m capsjax.data.prepare --datasets=cifar10 --data_dir=$HOME/tfds
  python -m experiments.tsai2020.main \
      --config=experiments/tsai2020/configs/cifar10_baseline_cnn.py \
      --config.data.dir=$HOME/tfds --workdir=/tmp/tsai_cifar10_cnn

Three 3x3 stride-2 convolutions of 1024 channels and a linear classifier,
trained like the CapsNets (App. A.1: "SGD with learning rate 0.1 for our
proposed method, baseline CNN, and ResNet-18"; same schedule, batch and
augmentation). Paper: 8-GPU machine, time not stated. Not run here (no
CIFAR-10 and no GPU on the development machine).
"""

import ml_collections

from experiments.tsai2020.configs import cifar10_resnet


def get_config() -> ml_collections.ConfigDict:
  c = cifar10_resnet.get_config()
  # --- model (App. Table 2) ------------------------------------------------------
  c.model.name = "cifar10_baseline_cnn"
  c.model.n_iters = 0           # not read: a CNN has no routing
  return c
