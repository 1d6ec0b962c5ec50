r"""Table 4, the capsule-count sweep: C capsules with d1 = 32, d2 = 256,
selected by the config argument (C = 128 is also configs/howto100m.py).

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/capsules.py:32 \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_capsules_32

Text-to-video(+audio) retrieval the paper reports (YouCook2 R@1 / R@10;
MSR-VTT R@1 / R@10; memory; time per batch on its V100s):

  C = 32    18.5 / 45.0   8.0 / 29.2   9.15 GB   0.730 s
  C = 64    18.1 / 46.1   8.6 / 29.4  11.24 GB   0.768 s
  C = 128   19.3 / 47.3   9.3 / 30.9  15.97 GB   0.879 s
  C = 256   18.7 / 46.5   8.7 / 30.5  27.98 GB   1.096 s

Compare with the eval keys ``<dataset>/t2va/R@1`` and ``.../R@10``. Needs
the converted HowTo100M / YouCook2 / MSR-VTT features in ``data.dir`` (else
the run stops naming them). Training as configs/howto100m.py (4 V100 GPUs,
20 epochs, batch 4096).
"""

import ml_collections

from experiments.duarte2021.configs import howto100m

VARIANTS = ("32", "64", "128", "256")


def get_config(n_caps: str = "64") -> ml_collections.ConfigDict:
  if str(n_caps) not in VARIANTS:
    raise ValueError(f"n_caps must be one of {VARIANTS}, got {n_caps!r}.")
  c = howto100m.get_config()
  c.model.n_caps = int(n_caps)  # Table 4: C
  return c
