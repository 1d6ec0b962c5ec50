"""capsjax.nn: Flax NNX layers, one per routing family, plus the papers' backbones.

Each layer owns its parameters with the paper's (or the authors' code's)
initialisation and ``jax.vmap``s its per-sample kernel over the batch.
"""

from capsjax.nn.backbones import (
    BaselineCNN,
    BasicBlock,
    MultiMNISTBaselineCNN,
    ResNetBackbone,
    SimpleBackbone,
)
from capsjax.nn.encapnet import CapConv, CapFC, ConvTranspose, FeedbackAgreement
from capsjax.nn.fusion import (
    FusionBlock,
    FusionTransformer,
    GatedEmbeddingUnit,
    masked_mean,
    timm_trunc_normal,
)
from capsjax.nn.heinsen import HeinsenRoutingLayer
from capsjax.nn.heinsen_stem import SmallNORBStem
from capsjax.nn.inverted_attention import (
    InvertedAttentionConv,
    InvertedAttentionFC,
    RoutedCapsules,
    tsai_weight_init,
)
from capsjax.nn.primary_capsules import PrimaryCapsules
from capsjax.nn.routing_baselines import (
    DynamicRoutingLayer,
    EMRoutingLayer,
    FCRoutingLayer,
    NoRoutingLayer,
    SetTransformerRoutingLayer,
)
from capsjax.nn.self_attention import Capsules, SelfAttentionRoutingLayer
from capsjax.nn.torch_init import (
    kaiming_normal,
    torch_batch_norm,
    torch_bias_init,
    torch_conv,
    torch_kernel_init,
    torch_linear,
)

__all__ = [
    "BaselineCNN",
    "BasicBlock",
    "CapConv",
    "CapFC",
    "Capsules",
    "DynamicRoutingLayer",
    "ConvTranspose",
    "EMRoutingLayer",
    "FCRoutingLayer",
    "FeedbackAgreement",
    "FusionBlock",
    "FusionTransformer",
    "GatedEmbeddingUnit",
    "HeinsenRoutingLayer",
    "InvertedAttentionConv",
    "InvertedAttentionFC",
    "MultiMNISTBaselineCNN",
    "NoRoutingLayer",
    "PrimaryCapsules",
    "ResNetBackbone",
    "RoutedCapsules",
    "SelfAttentionRoutingLayer",
    "SetTransformerRoutingLayer",
    "SimpleBackbone",
    "SmallNORBStem",
    "kaiming_normal",
    "masked_mean",
    "timm_trunc_normal",
    "torch_batch_norm",
    "torch_bias_init",
    "torch_conv",
    "torch_kernel_init",
    "torch_linear",
    "tsai_weight_init",
]
