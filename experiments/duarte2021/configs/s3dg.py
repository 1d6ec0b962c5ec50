r"""Table 1, "Ours VT, S3D-G" and "Ours VAT, S3D-G": the paper's model on S3D-G
video features (1024-d, the MIL-NCE network's output) instead of R152+RX101.

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/s3dg.py \
      --config.data.dir=/path/to/s3dg_features --workdir=/tmp/duarte_s3dg

The paper's retrieval, R@1 / R@5 / R@10 / MedR:

  VT  (eval key t2v)   YouCook2 14.7 / 36.2 / 47.9 / 12   MSR-VTT 8.3 / 19.0 / 27.5 / 42
  VAT (eval key t2va)  YouCook2 23.0 / 43.3 / 53.8 / 8    MSR-VTT 8.7 / 19.3 / 28.3 / 40

Needs HowTo100M / YouCook2 / MSR-VTT features converted with S3D-G video
features in ``data.dir`` (else the run stops naming them). Training as
configs/howto100m.py (4 V100 GPUs, 20 epochs, batch 4096).
"""

import ml_collections

from experiments.duarte2021.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  # Table 1 "S3D-G" visual backbone: 1024-d video features (the S3D-G
  # embedding of MIL-NCE); audio and text as in the R152+RX101 rows.
  c.model.input_dims.video = 1024
  return c
