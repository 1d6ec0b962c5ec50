r"""Tables 1 and 5, the baselines without capsules, selected by the config
argument: ``fc`` ("Fully Connected": two linear layers per modality) and
``self_attention`` (the input cut into N = 128 tokens, one self-attention
layer, a linear map; no capsule structure).

  python -m experiments.duarte2021.main \
      --config=experiments/duarte2021/configs/baselines.py:fc \
      --config.data.dir=/path/to/features --workdir=/tmp/duarte_fc

The paper's text-to-video+audio retrieval (VAT), R@1 / R@5 / R@10 / MedR (eval
keys ``<dataset>/t2va/...``):

  fc              YouCook2 15.5 / 31.0 / 40.0 / 22   MSR-VTT 7.8 / 17.8 / 25.2 / 50
  self_attention  YouCook2 13.8 / 29.3 / 36.2 / 34   MSR-VTT 8.9 / 22.3 / 30.1 / 41
  (Ours           YouCook2 19.3 / 37.8 / 47.3 / 13   MSR-VTT 9.3 / 21.4 / 30.9 / 37,
                  configs/howto100m.py)

Needs the converted features in ``data.dir`` (else the run stops naming
them). Training as configs/howto100m.py (4 V100 GPUs, 20 epochs, batch 4096).
"""

import ml_collections

from experiments.duarte2021.configs import howto100m

VARIANTS = ("fc", "self_attention")


def get_config(baseline: str = "fc") -> ml_collections.ConfigDict:
  if baseline not in VARIANTS:
    raise ValueError(f"baseline must be one of {VARIANTS}, got {baseline!r}.")
  c = howto100m.get_config()
  # Table 5; the widths are capsjax's reading of Sec. 4.4 (see
  # capsjax.models.duarte2021.FCBaseline / SelfAttentionBaseline): the FC
  # hidden width is C * d1 = 4096, the attention uses N = 128 tokens of d2 =
  # 256 ("N = 128 so that it is as similar to the number of capsules").
  c.model.architecture = baseline
  return c
