r"""Supplement Table 1, zero-shot action classification on HMDB and UCF-101:
the average of each clip's video and audio embeddings, k-means with k = the
number of classes, clusters matched one-to-one to classes (Hungarian), on
the full datasets (suppl. Sec. 1.1).

  python -m experiments.swetha2023.main \
      --config=experiments/swetha2023/configs/classification.py \
      --config.data.dir=/path/to/features --workdir=/tmp/swetha_cls

Accuracy the supplement reports (eval keys ``<dataset>/accuracy``):

  Ours   HMDB 37.5   UCF-101 64.8      (EAO: 35.4 / 64.0)

The training run is configs/howto100m.py's (reuse its workdir to evaluate a
trained model: the loop resumes and re-reports). Needs the converted
HowTo100M features and HMDB / UCF-101 clip features with class labels in
``data.dir`` (else the run stops naming them).
"""

import ml_collections

from experiments.swetha2023.configs import howto100m


def get_config() -> ml_collections.ConfigDict:
  c = howto100m.get_config()
  c.eval.retrieval = ()
  c.eval.classification = ("hmdb/all", "ucf101/all")   # Table 1: full sets
  return c
