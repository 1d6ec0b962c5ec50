r"""Table 6, "Not Shared": routing layer and ``f_out`` per modality; text-to-video
retrieval YouCook2 R@1 16.8, R@5 35.4, R@10 44.6, MedR 15; MSR-VTT R@1 9.5,
R@5 22.8, R@10 30.3, MedR 30.5 ("Shared": 19.3 / 9.6 R@1).

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/not_shared.py \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_not_shared

Needs the HowTo100M features (no reader yet: the run stops with an error
naming them). Training as ``configs/howto100m.py`` (Sec. 4.1: 4 V100 GPUs,
20 epochs, batch 4096; time not stated).
"""

import ml_collections

from experiments.duarte2021.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  c.model.shared = False        # Table 6 "Not Shared"
  return c
