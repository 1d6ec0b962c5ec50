r"""Table 4, "C = 64": 64 capsules with d1 = 32, d2 = 256; text-to-video
retrieval YouCook2 R@1 18.1, R@10 46.1; MSR-VTT R@1 8.6, R@10 29.4 (memory 11.24 GB,
0.768 s/batch; C = 128, configs/howto100m.py: 19.3 / 9.3 R@1).

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/capsules_64.py \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_c64

Needs the HowTo100M features (no reader yet: the run stops with an error
naming them). Training as configs/howto100m.py (Sec. 4.1: 4 V100 GPUs,
20 epochs, batch 4096; time not stated).
"""

import ml_collections

from experiments.duarte2021.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  c.model.n_caps = 64           # Table 4: C = 64
  return c
