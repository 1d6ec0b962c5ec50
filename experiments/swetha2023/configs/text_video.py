r"""Supplement Table 4, the text-video only model (trained without audio):
zero-shot text-to-video retrieval on MSR-VTT R@1 11.4, R@5 26.6, R@10 36.3,
MedR 22 (EAO: 9.6 / 26.1 / 36.1 / 23).

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/text_video.py \
      --config.data.dir=/path/to/features --workdir=/tmp/swetha_tv

Compare with the eval keys ``msrvtt/t2v/...``. Without audio the
contrastive loss keeps only the text-video pair and the SSPC loss only its
text and video terms (the audio branch of the model is then unused). Needs
the converted HowTo100M and MSR-VTT features in ``data.dir`` (else the run
stops naming them). Training as configs/howto100m.py.
"""

import ml_collections

from experiments.swetha2023.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  c.data.modalities = ("text", "video")   # Table 4: text-video only
  c.eval.retrieval = ("msrvtt/test",)     # Table 4: MSR-VTT
  return c
