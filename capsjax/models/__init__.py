"""capsjax.models: each paper's networks, one constructor per configuration.

Each paper's module (``capsjax.models.tsai2020`` ...) holds its constructors;
the most used names are re-exported here.
"""

from capsjax.models import duarte2021, heinsen2019, li2018, swetha2023, tsai2020

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
    "duarte2021",
    "heinsen2019",
    "li2018",
    "swetha2023",
    "tsai2020",
    "SSTClassifier",
    "SmallNORBClassifier",
    "add_coord_channels",
    "mask_logits",
    "smallnorb_model",
    "sst2r_model",
    "sst5r_model",
    "sst_model",
]
