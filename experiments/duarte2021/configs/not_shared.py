r"""Table 6, "Not Shared": routing layer and ``f_out`` per modality.

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/not_shared.py \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_not_shared

The paper's text-to-video(+audio) retrieval, R@1 / R@5 / R@10 / MedR (eval
keys ``<dataset>/t2va/...``):

  Not Shared  YouCook2 16.8 / 35.4 / 44.6 / 15   MSR-VTT 9.5 / 22.8 / 30.3 / 30.5
  Shared      YouCook2 19.3 / 37.8 / 47.3 / 13   MSR-VTT 9.6 / 22.6 / 32.0 / 32
              (configs/howto100m.py)

Needs the converted features in ``data.dir`` (else the run stops naming
them). Training as configs/howto100m.py (4 V100 GPUs, 20 epochs, batch 4096).
"""

import ml_collections

from experiments.duarte2021.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  c.model.shared = False        # Table 6 "Not Shared"
  return c
