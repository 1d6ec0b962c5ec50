r"""Supplement Table 3, the model on CLIP features (ViT-B/32: one 512-d
feature per second of video; text either word2vec or one 512-d CLIP feature
per word), selected by the config argument.

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/clip.py:clip_word2vec \
      --config.data.dir=/path/to/clip_features --workdir=/tmp/swetha_clip

Zero-shot retrieval on MSR-VTT the supplement reports, R@5 / R@10 / MedR /
MeanR (eval keys ``msrvtt/t2va/...``):

  clip_word2vec   35.1 / 45.1 / 13 / 67.2   (EAO: 33.8 / 43.4 / 14 / 72.3)
  clip_clip       39.7 / 49.3 / 10 / 63.3   (EAO: 36.7 / 49.1 / 10 / 66.7)

Needs HowTo100M and MSR-VTT features converted with the CLIP extractors in
``data.dir`` (else the run stops naming them). Training as
configs/howto100m.py.
"""

import ml_collections

from experiments.swetha2023.configs import howto100m

# variant -> text token width: word2vec 300, CLIP 512 (suppl. Sec. 1.3).
_TEXT_DIMS = {"clip_word2vec": 300, "clip_clip": 512}
VARIANTS = tuple(_TEXT_DIMS)


def get_config(backbones: str = "clip_word2vec") -> ml_collections.ConfigDict:
  if backbones not in _TEXT_DIMS:
    raise ValueError(f"backbones must be one of {VARIANTS}, got {backbones!r}.")
  c = howto100m.get_config()
  c.model.video_dim = 512                    # CLIP ViT-B/32, one per second
  c.model.text_dim = _TEXT_DIMS[backbones]   # Table 3 "Text BB"
  c.eval.retrieval = ("msrvtt/test",)        # Table 3: MSR-VTT
  return c
