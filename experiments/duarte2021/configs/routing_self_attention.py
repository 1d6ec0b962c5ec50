r"""Table 3, "Self-Attention (ours)": C = 64 capsules, d1 = d2 = 16, routing "self_attention";
text-to-video retrieval YouCook2 R@1 18.6, R@10 44.0; MSR-VTT R@1 8.7, R@10 31.6
(memory 9.11 GB, 0.722 s/batch).

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/routing_self_attention.py \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_routing_self_attention

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
  c.model.routing = "self_attention"
  return c
