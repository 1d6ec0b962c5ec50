r"""Table 3, "Set Transformer": C = 64 capsules, d1 = d2 = 16, routing "set_transformer";
text-to-video retrieval YouCook2 R@1 16.5, R@10 40.0; MSR-VTT R@1 8.4, R@10 30.0
(memory 9.11 GB, 0.707 s/batch).

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/routing_set_transformer.py \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_routing_set_transformer

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
  c.model.routing = "set_transformer"
  return c
