r"""Supplement Table 2, zero-shot text-to-video retrieval on MSVD (R152+RX101
video features): R@5 51.6, R@10 66.6, MedR 5, MeanR 24.9 (EAO: 50.4 / 64 /
5 / 25.9).

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/msvd.py \
      --config.data.dir=/path/to/features --workdir=/tmp/swetha_msvd

Compare with the eval keys ``msvd/t2va/...``. The training run is
configs/howto100m.py's. Needs the converted HowTo100M and MSVD test features
in ``data.dir`` (else the run stops naming them).
"""

import ml_collections

from experiments.swetha2023.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  c.eval.retrieval = ("msvd/test",)   # Table 2
  return c
