r"""Ablation: EncapNet on CIFAR-10 without the feedback agreement unit
(Sec. 3.2), i.e. the master/aide network trained with the margin loss only.

  python -m experiments.li2018.main \
      --config=experiments/li2018/configs/cifar10_no_feedback.py \
      --config.data.dir=$DATA --workdir=/tmp/encapnet_nofb

Paper, Table 3 (18 layers, CIFAR-10): 5.82 % test error without the OT
(Sinkhorn feedback) unit, case (7) (master/aide v3 + skip connections), vs
4.55 % with two OT units (``configs/cifar10.py``). Needs CIFAR-10 prepared in
``data.dir`` (``python -m capsjax.data.prepare --datasets=cifar10
--data_dir=$DATA``). Training as ``configs/cifar10.py`` (600 epochs at batch
128, no augmentation; time not stated).
"""

import ml_collections

from experiments.li2018.configs import cifar10


def get_config() -> ml_collections.ConfigDict:
  c = cifar10.get_config()
  # --- model -----------------------------------------------------------------
  c.model.feedback = False       # Sec. 3.2: drop the feedback agreement unit
  c.model.two_feedbacks = False
  # --- loss --------------------------------------------------------------------
  c.loss.feedback_weight = 0.0   # no Sinkhorn divergences to weight
  return c
