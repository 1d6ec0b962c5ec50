"""Duarte et al.: the Table 3-sized synthetic config is synthetic.py with the
paper's routing-ablation capsule sizes and a longer schedule."""

from __future__ import annotations

import pytest

from capsjax.train import entrypoint
from experiments.duarte2021 import main
from experiments.duarte2021.configs import synthetic, synthetic_table3


def test_config_is_synthetic_py_at_table_3_sizes():
  t3, base = synthetic_table3.get_config(), synthetic.get_config()
  entrypoint.check_config(t3, main.FIELDS)
  assert synthetic_table3.OFFLINE and synthetic_table3.VARIANTS == synthetic.VARIANTS
  assert (t3.model.n_caps, t3.model.d1, t3.model.d2) == (64, 16, 16)
  assert t3.train.num_steps == 2000
  # Everything else (data, loss, optimiser, batches, evaluation) is synthetic.py's.
  for name in ("data", "loss", "optimiser", "schedule", "eval"):
    assert t3[name].to_dict() == base[name].to_dict()
  none = synthetic_table3.get_config("none")
  assert none.model.routing == "none" and none.model.n_caps == 64
  with pytest.raises(ValueError, match="variant"):
    synthetic_table3.get_config("bogus")
