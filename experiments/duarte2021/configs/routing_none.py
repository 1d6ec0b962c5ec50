r"""Table 3, "No Routing": C = 64 capsules, d1 = d2 = 16, routing "none";
text-to-video retrieval YouCook2 R@1 15.3, R@10 41.9; MSR-VTT R@1 7.6, R@10 30.1
(memory 9.12 GB, 0.687 s/batch).

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/routing_none.py \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_routing_none

Needs the HowTo100M features (no reader yet: the run stops with an error
naming them). Training as configs/howto100m.py (Sec. 4.1: 4 V100 GPUs,
20 epochs, batch 4096; time not stated).
"""

import ml_collections

from experiments.duarte2021.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  # --- model (Table 3 caption; Sec. 4.4: smaller so EM's 4x4 matrices fit) ---
  c.model.n_caps = 64           # "C = 64 number of capsules"
  c.model.d1 = 16               # "d1 = d2 = 16"
  c.model.d2 = 16
  c.model.routing = "none"
  return c
