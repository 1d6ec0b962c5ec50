"""capsjax.models: each paper's networks, one constructor per configuration."""

from capsjax.models.heinsen2019 import (
    SmallNORBClassifier,
    SSTClassifier,
    add_coord_channels,
    mask_logits,
    smallnorb_model,
    sst2r_model,
    sst5r_model,
    sst_model,
)

__all__ = [
    "SSTClassifier",
    "SmallNORBClassifier",
    "add_coord_channels",
    "mask_logits",
    "smallnorb_model",
    "sst2r_model",
    "sst5r_model",
    "sst_model",
]
