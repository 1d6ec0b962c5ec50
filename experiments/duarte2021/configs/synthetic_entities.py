r"""Offline, pre-registered: the capsule network on multi-entity synthetic clips.

  python -m experiments.duarte2021.compare \
      --config=experiments/duarte2021/configs/synthetic_entities.py \
      --workdir=/tmp/duarte_ent --seeds=0,1,2

``configs/synthetic.py`` (same model, loss, optimiser, batches, steps and
evaluation; the same variants, e.g. ``synthetic_entities.py:none``) with the
generator's entity structure: a clip is a set of 1-3 present entities of 16
types, each with its own 4-d property vector, shown by every modality
(``SyntheticTriModal(structure="entities")``, its docstring has the design,
written before any comparison run). The question: with data built from the
capsule premise (Duarte et al. Sec. 3.1: a capsule is an entity's
properties and its existence probability), does self-attention routing beat
no routing? The entity knobs are the generator's defaults (not tuned to
this comparison; README, "Multi-entity synthetic clips (pre-registered)").
Chance R@1 = 1/256 = 0.4 %; ``label`` (for clustering) is the type of a
clip's first-drawn entity.
"""

import ml_collections

from experiments.duarte2021.configs import synthetic

VARIANTS = synthetic.VARIANTS
# A stand-in, not a paper row: runs anywhere, needs no dataset.
OFFLINE = True


def get_config(variant: str = "self_attention") -> ml_collections.ConfigDict:
  c = synthetic.get_config(variant)
  # The generator's defaults (default_knobs(): n_entity_types=16, type_dim=8,
  # prop_dim=4, max_entities=3, noise 0.3, 10 % background tokens, 8 private
  # dims per modality), only the structure switched.
  c.data.synthetic.structure = "entities"
  return c
