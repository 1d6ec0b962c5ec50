r"""Supplement Table 6, the cross-modal (CM) and modality-specific (MS) SSPC
terms switched on or off, selected by the config argument ``cm<0|1>_ms<0|1>``.

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/sspc_terms.py:cm1_ms0 \
      --config.data.dir=/path/to/features --workdir=/tmp/swetha_cm1_ms0

Zero-shot retrieval R@10 the supplement reports (eval keys
``<dataset>/t2va/R@10``):

  cm1_ms1   MSR-VTT 34.5   YouCook2 50.1   ("Ours" = configs/howto100m.py)
  cm0_ms1   MSR-VTT 31.8   YouCook2 48.3
  cm1_ms0   MSR-VTT 32.4   YouCook2 46.7

Needs the converted HowTo100M, MSR-VTT and YouCook2 features in ``data.dir``
(else the run stops naming them). Training as configs/howto100m.py.
"""

import ml_collections

from experiments.swetha2023.configs import howto100m

# variant -> (cross_modal_weight, modality_specific_weight), Table 6's rows.
_ROWS = {"cm1_ms1": (1.0, 1.0), "cm0_ms1": (0.0, 1.0), "cm1_ms0": (1.0, 0.0)}
VARIANTS = tuple(_ROWS)


def get_config(row: str = "cm1_ms1") -> ml_collections.ConfigDict:
  if row not in _ROWS:
    raise ValueError(f"row must be one of {VARIANTS}, got {row!r}.")
  c = howto100m.get_config()
  (c.loss.cross_modal_weight,
   c.loss.modality_specific_weight) = _ROWS[row]       # Table 6
  return c
