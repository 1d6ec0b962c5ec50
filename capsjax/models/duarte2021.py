"""The multimodal capsule network of Duarte et al. (2021) and its baselines.

:class:`MultimodalCapsuleNetwork` (Sec. 3.1, Fig. 1): per modality ``m``
(video, audio, text: pre-extracted feature vectors), a linear layer gives
``C`` primary poses ``x_i [d1]`` and a linear layer + sigmoid their
activations ``p_i``; a routing layer (self-attention, Eqs. 1, 2, 6, or a
Table 3 baseline) turns them into ``C`` secondary capsules ``(x̂_i, p̂_i)``;
the activation-weighted capsules ``p̂_i x̂_i`` are concatenated and mapped by
the linear ``f_out`` to the ``D``-dimensional joint space (Eq. 3). With
``shared=True`` (the paper) the routing layer and ``f_out`` are shared by the
modalities; ``shared=False`` is the ablation of Table 6. Training minimises
:func:`duarte2021_loss`, the MMS loss summed over the modality pairs (Eq. 5).

Choices where the paper is silent (its code is not public):

* Eq. (3) writes ``f_out(p̂_i x_i)``; by default its ``x_i`` is read as the
  secondary pose ``x̂_i``, as in Eq. (2), whose surrounding text says
  "secondary capsule layer's poses, x̂" (``f_out``: ``C * d2 * D``
  weights). ``pool="primary"`` is the literal equation, which Fig. 1's
  caption also describes ("higher-level activations, which are used to
  weight capsule features"): the primary poses ``x_i`` weighted by the
  routed ``p̂_i`` (``f_out``: ``C * d1 * D``). Measured on the synthetic
  clips (``experiments/duarte2021/README.md``): the routing's attention
  stays near uniform, so with the default the secondary capsules all
  collapse to one vector and retrieval is far below no routing, while with
  ``pool="primary"`` the routing beats no routing at Table 3's sizes
  trained 2,000 steps (text-to-video R@1 14.2 vs 12.1 %). The default is
  kept for now so that parameter counts and benchmark figures stay
  comparable; prefer ``pool="primary"``.
* ``h_Q, h_K, h_V`` (Sec. 3.1: "using two linear layers for all functions
  h"): two linear layers each, ``d1 -> d2 -> d2``, no nonlinearity between
  (the literal text; App. B: "linear projections"); ``qkv_layers=1`` (one
  affine map) and ``qkv_activation="relu"`` are the other readings. On the
  synthetic data neither reading makes the routing beat "no routing"
  (``experiments/duarte2021/README.md``).
* Initialisation: PyTorch defaults throughout (``torch.nn.Linear``:
  weights and biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; LayerNorm 1, 0).
* Input sizes: video 4096 (ResNet-152 + ResNeXt-101 features, Sec. 4.1),
  text 300 (word2vec, max-pooled), audio 1024 (DAVEnet's output channels,
  mean-pooled over time as in the AVLnet code the paper builds on) — all
  arguments.
* Similarities are cosine (embeddings L2-normalised before the dot product),
  as in the MMS code the paper uses; ``normalize=False`` gives Eq. (4)'s raw
  dot product.

Table 5's two baselines without capsules are :class:`FCBaseline` and
:class:`SelfAttentionBaseline`. Every model returns a dict ``{modality:
ModalityOutput}`` for the modalities it is given.

References:
  K. Duarte, B. Chen, N. Shvetsova, A. Rouditchenko, S. Thomas, A. Liu,
  D. Harwath, J. Glass, H. Kuehne, M. Shah. Routing with Self-Attention for
  Multimodal Capsule Networks. 2021. Sec. 3, 4.1, 4.4, App. A, B; Tables 1, 3-6.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax.losses import mms_loss
from capsjax.nn.torch_init import torch_linear
from capsjax.nn.routing_baselines import (
    DynamicRoutingLayer,
    EMRoutingLayer,
    FCRoutingLayer,
    NoRoutingLayer,
    SetTransformerRoutingLayer,
)
from capsjax.nn.self_attention import SelfAttentionRoutingLayer

__all__ = [
    "DEFAULT_INPUT_DIMS",
    "DEFAULT_PAIRS",
    "ROUTINGS",
    "FCBaseline",
    "ModalityOutput",
    "MultimodalCapsuleNetwork",
    "SelfAttentionBaseline",
    "duarte2021",
    "duarte2021_capsules",
    "duarte2021_dynamic_routing",
    "duarte2021_em_routing",
    "duarte2021_fc_baseline",
    "duarte2021_loss",
    "duarte2021_no_routing",
    "duarte2021_not_shared",
    "duarte2021_routing_ablation",
    "duarte2021_self_attention_baseline",
    "duarte2021_set_transformer_routing",
    "duarte2021_small_self_attention",
]

DEFAULT_INPUT_DIMS = {"video": 4096, "audio": 1024, "text": 300}
# Eq. (5): L = L_va + L_ta + L_vt.
DEFAULT_PAIRS = (("video", "audio"), ("text", "audio"), ("video", "text"))
ROUTINGS = ("self_attention", "none", "dynamic", "em", "set_transformer", "fc")


class ModalityOutput(NamedTuple):
  """What a model returns for one modality.

  Attributes:
    embedding: ``[b, D]`` the joint-space embedding ``f_m`` (Eq. 3), not
      normalised.
    poses: ``[b, C, d]`` secondary capsule poses (``None`` for the
      capsule-free baselines).
    activations: ``[b, C]`` secondary activations ``p̂_i`` (``None`` for the
      baselines).
    primary_activations: ``[b, C]`` primary activations ``p_i`` (``None`` for
      the baselines).
  """

  embedding: jax.Array
  poses: jax.Array | None = None
  activations: jax.Array | None = None
  primary_activations: jax.Array | None = None


def _check_input_dims(input_dims: Mapping[str, int]) -> dict[str, int]:
  input_dims = dict(input_dims)
  if not input_dims:
    raise ValueError("input_dims must name at least one modality, got {}.")
  for name, dim in input_dims.items():
    _shapes.check_positive_int(f"input_dims[{name!r}]", dim)
  return input_dims


def _check_inputs(inputs: Mapping[str, ArrayLike],
                  input_dims: Mapping[str, int]) -> int:
  """Validates ``{modality: [b, n_m]}``; returns ``b``."""
  if not inputs:
    raise ValueError("inputs must hold at least one modality, got none.")
  batch = None
  for name, x in inputs.items():
    if name not in input_dims:
      raise ValueError(
          f"inputs has an unknown modality {name!r}; this model takes "
          f"{sorted(input_dims)}.")
    _shapes.check_shape(f"inputs[{name!r}]", x, (batch, input_dims[name]),
                        f"[b, {name}_dim]")
    batch = jnp.shape(x)[0]
  return batch


def _per_modality(make, names: Sequence[str], shared: bool):
  """One module for all modalities, or an ``nnx.Dict`` of one per modality."""
  return make() if shared else nnx.Dict({m: make() for m in names})


def _pick(module, name: str):
  return module[name] if isinstance(module, nnx.Dict) else module


class MultimodalCapsuleNetwork(nnx.Module):
  """The multimodal capsule network, Sec. 3.1 (see the module docstring).

  Parameters per modality ``m`` (input size ``n_m``): ``primary_poses[m]``
  ``Linear(n_m, C*d1)`` and ``primary_activations[m]`` ``Linear(n_m, C)``;
  ``routing`` (one layer, or one per modality with ``shared=False``) and
  ``f_out`` ``Linear(C*d_pool, D)`` (idem), where ``d_pool`` is the routing
  layer's output pose size (``pool="secondary"``) or ``d1``
  (``pool="primary"``).

  Routing choices (``routing=``): ``"self_attention"`` (the paper),
  ``"none"``, ``"dynamic"``, ``"em"`` (needs ``d1 = d2 = s*s``),
  ``"set_transformer"`` (Table 3) and ``"fc"``; see
  ``capsjax.nn.routing_baselines`` for each design. ``"none"`` keeps the
  primary poses, so its ``d_pool`` is ``d1``.
  """

  def __init__(
      self,
      input_dims: Mapping[str, int] | None = None,
      *,
      n_caps: int = 128,
      d1: int = 32,
      d2: int = 256,
      d_embed: int = 4096,
      routing: str = "self_attention",
      shared: bool = True,
      pool: str = "secondary",
      n_heads: int = 4,
      d_hidden: int = 1024,
      dropout_rate: float = 0.1,
      n_iters: int = 3,
      qkv_layers: int = 2,
      qkv_hidden: int | None = None,
      qkv_activation: str | None = None,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Creates the model.

    Args:
      input_dims: ``{modality: feature size}``; default
        :data:`DEFAULT_INPUT_DIMS` (video 4096, audio 1024, text 300).
      n_caps: number of capsules ``C`` (paper 128; Table 3: 64; Table 4: 32-256).
      d1: primary pose size (paper 32; Table 3: 16).
      d2: secondary pose size (paper 256; Table 3: 16).
      d_embed: joint space size ``D`` (paper 4096).
      routing: one of :data:`ROUTINGS`.
      shared: share the routing layer and ``f_out`` across modalities
        (paper: True; Table 6 "Not Shared": False).
      pool: ``"secondary"`` (``f_out(p̂_i x̂_i)``) or ``"primary"``
        (``f_out(p̂_i x_i)``, the literal Eq. 3).
      n_heads, d_hidden, dropout_rate: of the self-attention and Set
        Transformer routing (heads and rate are not in the paper: 4 and 0.1);
        ``d_hidden`` is also the MLP width of ``routing="none"``.
      n_iters: iterations of dynamic and EM routing.
      qkv_layers, qkv_hidden, qkv_activation: the maps ``h_Q, h_K, h_V`` of
        the self-attention routing (:class:`SelfAttentionRoutingLayer`):
        linear layers per map (default 2, "using two linear layers for all
        functions h", Sec. 3.1), the width between them (``None``: ``d2``)
        and the nonlinearity there (default ``None``: none, the literal
        text; or ``"relu"``). Read only by ``routing="self_attention"``.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``None``: inferred.
      param_dtype: parameter dtype.
      rngs: random streams (``params``; ``dropout`` when ``dropout_rate > 0``).

    Raises:
      ValueError: on an unknown ``routing`` or ``pool``, a non-positive size,
        or sizes the chosen routing cannot take.
    """
    input_dims = _check_input_dims(DEFAULT_INPUT_DIMS if input_dims is None
                                   else input_dims)
    for name, value in (("n_caps", n_caps), ("d1", d1), ("d2", d2),
                        ("d_embed", d_embed)):
      _shapes.check_positive_int(name, value)
    if routing not in ROUTINGS:
      raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}.")
    if pool not in ("secondary", "primary"):
      raise ValueError(f"pool must be 'secondary' or 'primary', got {pool!r}.")
    if qkv_layers not in (1, 2):
      raise ValueError(f"qkv_layers must be 1 or 2, got {qkv_layers!r}.")
    if routing == "em" and d1 != d2:
      raise ValueError(
          f"routing='em' keeps the pose size (matrix capsules): d1 must equal "
          f"d2, got d1={d1}, d2={d2}.")
    self.input_dims = input_dims
    self.modalities = tuple(input_dims)
    self.n_caps, self.d1, self.d2, self.d_embed = n_caps, d1, d2, d_embed
    self.routing_name, self.shared, self.pool = routing, shared, pool
    self.dtype = dtype
    lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    self.primary_poses = nnx.Dict(
        {m: torch_linear(n, n_caps * d1, **lin) for m, n in input_dims.items()})
    self.primary_activations = nnx.Dict(
        {m: torch_linear(n, n_caps, **lin) for m, n in input_dims.items()})

    def make_routing():
      if routing == "self_attention":
        return SelfAttentionRoutingLayer(
            d1, d2, n_heads=n_heads, d_hidden=d_hidden,
            dropout_rate=dropout_rate, qkv_layers=qkv_layers,
            qkv_hidden=qkv_hidden, qkv_activation=qkv_activation, **lin)
      if routing == "none":
        return NoRoutingLayer(d1, d_hidden=d_hidden, **lin)
      if routing == "dynamic":
        return DynamicRoutingLayer(n_caps, d1, n_caps, d2, n_iters=n_iters, **lin)
      if routing == "em":
        return EMRoutingLayer(n_caps, d1, n_caps, n_iters=n_iters, **lin)
      if routing == "set_transformer":
        return SetTransformerRoutingLayer(
            d1, n_caps, d2, n_heads=n_heads, d_hidden=d_hidden,
            dropout_rate=dropout_rate, **lin)
      return FCRoutingLayer(n_caps, d1, n_caps, d2, **lin)

    self.routing = _per_modality(make_routing, self.modalities, shared)
    d_route = _pick(self.routing, self.modalities[0]).d_out
    self.d_pool = d_route if pool == "secondary" else d1
    self.f_out = _per_modality(
        lambda: torch_linear(n_caps * self.d_pool, d_embed, **lin),
        self.modalities, shared)

  def __call__(self, inputs: Mapping[str, ArrayLike]) -> dict[str, ModalityOutput]:
    """Embeds each given modality.

    Args:
      inputs: ``{modality: [b, n_m]}`` for any subset of the modalities
        (e.g. only video and text at test time).

    Returns:
      ``{modality: ModalityOutput}`` with ``embedding [b, D]``, ``poses
      [b, C, d]``, ``activations [b, C]``, ``primary_activations [b, C]``.

    Raises:
      ValueError: on an unknown modality or a wrong shape.
    """
    b = _check_inputs(inputs, self.input_dims)
    names = list(inputs)
    poses, acts = [], []
    for m in names:
      x = jnp.asarray(inputs[m])
      poses.append(self.primary_poses[m](x).reshape(b, self.n_caps, self.d1))
      acts.append(jax.nn.sigmoid(self.primary_activations[m](x)))
    if self.shared:
      # One routing and one f_out call on the modalities stacked along the
      # batch: the same function, traced once.
      groups = [(names, jnp.concatenate(poses), jnp.concatenate(acts))]
    else:
      groups = [([m], p, a) for m, p, a in zip(names, poses, acts, strict=True)]
    outputs = {}
    for group, p, a in groups:
      routed = _pick(self.routing, group[0])(p, a)
      pooled = routed.poses if self.pool == "secondary" else p
      weighted = routed.activations[..., None] * pooled        # p̂_i x̂_i
      emb = _pick(self.f_out, group[0])(weighted.reshape(len(group) * b, -1))
      for k, m in enumerate(group):                              # Eq. (3)
        part = slice(k * b, (k + 1) * b)
        outputs[m] = ModalityOutput(emb[part], routed.poses[part],
                                    routed.activations[part], a[part])
    return outputs


class FCBaseline(nnx.Module):
  """Table 5's "Fully Connected" baseline: two linear layers per modality.

  "Takes the input features and passes them through two fully connected
  layers." Design: ``f_m(x) = Linear_2(relu(Linear_1^m(x)))`` with the first
  layer per modality (the input sizes differ) of width ``d_hidden`` (default
  4096 = ``C * d1``, the width of the capsule model's primary layer) and the
  second, ``d_hidden -> D``, shared like ``f_out``. ``torch.nn.Linear`` init.
  """

  def __init__(self, input_dims: Mapping[str, int] | None = None, *,
               d_hidden: int = 4096, d_embed: int = 4096, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    input_dims = _check_input_dims(DEFAULT_INPUT_DIMS if input_dims is None
                                   else input_dims)
    _shapes.check_positive_int("d_hidden", d_hidden)
    _shapes.check_positive_int("d_embed", d_embed)
    self.input_dims, self.modalities = input_dims, tuple(input_dims)
    lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.fc1 = nnx.Dict(
        {m: torch_linear(n, d_hidden, **lin) for m, n in input_dims.items()})
    self.fc2 = torch_linear(d_hidden, d_embed, **lin)

  def __call__(self, inputs: Mapping[str, ArrayLike]) -> dict[str, ModalityOutput]:
    """``{modality: [b, n_m]}`` → ``{modality: ModalityOutput(embedding [b, D])}``."""
    _check_inputs(inputs, self.input_dims)
    return {m: ModalityOutput(self.fc2(jax.nn.relu(self.fc1[m](jnp.asarray(x)))))
            for m, x in inputs.items()}


class SelfAttentionBaseline(nnx.Module):
  """Table 5's "Self-Attention" baseline: attention without capsule structure.

  "We take the input features and group the activations into N equal length
  vectors [N = 128] ... used as the sequence for a self-attention layer,
  which is followed by a fully-connected layer." Design: the input ``[n_m]``
  is zero-padded to ``N * ceil(n_m / N)`` (text: 300 -> 384) and cut into
  ``N`` tokens of ``t_m = ceil(n_m / N)`` features; the self-attention layer
  is the routing block of the paper (App. B: ``h_Q, h_K, h_V: t_m -> d2``,
  two linear layers each as in the capsule model,
  multi-head attention, LayerNorm, MLP, residual, LayerNorm) with all
  activations 1 and no activation head, one per modality (the token sizes
  differ); the flattened tokens ``[N * d2]`` go through a shared linear map
  to ``D``. So it differs from the capsule model only by the capsule
  structure (learned primary capsules, activations, Eq. 2 weighting).
  """

  def __init__(self, input_dims: Mapping[str, int] | None = None, *,
               n_tokens: int = 128, d2: int = 256, d_embed: int = 4096,
               n_heads: int = 4, d_hidden: int = 1024,
               dropout_rate: float = 0.1, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    input_dims = _check_input_dims(DEFAULT_INPUT_DIMS if input_dims is None
                                   else input_dims)
    for name, value in (("n_tokens", n_tokens), ("d2", d2), ("d_embed", d_embed)):
      _shapes.check_positive_int(name, value)
    self.input_dims, self.modalities = input_dims, tuple(input_dims)
    self.n_tokens, self.d2 = n_tokens, d2
    self.token_dims = {m: -(-n // n_tokens) for m, n in input_dims.items()}
    lin = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention = nnx.Dict({
        m: SelfAttentionRoutingLayer(
            t, d2, n_heads=n_heads, d_hidden=d_hidden,
            dropout_rate=dropout_rate, activation_head=False, **lin)
        for m, t in self.token_dims.items()})
    self.fc = torch_linear(n_tokens * d2, d_embed, **lin)

  def __call__(self, inputs: Mapping[str, ArrayLike]) -> dict[str, ModalityOutput]:
    """``{modality: [b, n_m]}`` → ``{modality: ModalityOutput(embedding [b, D])}``."""
    b = _check_inputs(inputs, self.input_dims)
    outputs = {}
    for m, x in inputs.items():
      x = jnp.asarray(x)
      t = self.token_dims[m]
      x = jnp.pad(x, ((0, 0), (0, self.n_tokens * t - x.shape[1])))
      tokens = x.reshape(b, self.n_tokens, t)
      out = self.attention[m](tokens, jnp.ones((b, self.n_tokens), tokens.dtype))
      outputs[m] = ModalityOutput(self.fc(out.poses.reshape(b, -1)))
    return outputs


def duarte2021_loss(
    outputs: Mapping[str, ModalityOutput | ArrayLike],
    *,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    margin: float = 0.001,
    normalize: bool = True,
) -> jax.Array:
  """The training loss, Eq. (5): ``sum over pairs (m, n) of mms_loss(S_mn)``.

  ``S_mn[i, j] = <e_m(i), e_n(j)>`` over the batch, with the embeddings
  L2-normalised first when ``normalize`` (cosine similarity); MMS (Eq. 4)
  with ``δ = margin`` (Sec. 4.1: 0.001) is
  :func:`capsjax.losses.mms_loss`.

  Args:
    outputs: ``{modality: ModalityOutput or embedding [b, D]}``, e.g. a
      model's output.
    pairs: the modality pairs; default ``(v, a), (t, a), (v, t)``.
    margin: the MMS margin ``δ``.
    normalize: L2-normalise the embeddings (cosine similarity).

  Returns:
    The scalar loss, in float32 (or float64 for float64 embeddings).

  Raises:
    ValueError: on an empty ``pairs``, a pair naming a missing modality, or
      embeddings of different shapes.
  """
  if not pairs:
    raise ValueError("pairs must name at least one pair of modalities, got none.")
  emb = {}
  for m, out in outputs.items():
    e = jnp.asarray(out.embedding if isinstance(out, ModalityOutput) else out)
    _shapes.check_ndim(f"outputs[{m!r}]", e, 2, "[b, D]")
    # The loss is computed in at least float32 (bfloat16 embeddings too).
    e = e.astype(jnp.promote_types(e.dtype, jnp.float32))
    if normalize:
      # The floor keeps a zero embedding's norm (and its gradient) finite.
      e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, -1, keepdims=True), 1e-24))
    emb[m] = e
  total = 0.0
  for a, c in pairs:
    for m in (a, c):
      if m not in emb:
        raise ValueError(
            f"pairs names modality {m!r}, which outputs lacks (it has "
            f"{sorted(emb)}).")
    _shapes.check_shape(f"outputs[{c!r}]", emb[c], emb[a].shape, "[b, D]")
    total = total + mms_loss(emb[a] @ emb[c].T, margin=margin)
  return total


# ----------------------------------------------------------------------------
# Constructors, one per configuration of the paper's tables.
# ----------------------------------------------------------------------------


def duarte2021(*, rngs: nnx.Rngs, **kwargs) -> MultimodalCapsuleNetwork:
  """The paper's model (Sec. 4.1): C=128, d1=32, d2=256, D=4096, shared.

  Tables 1 and 5 "Ours" (VT: evaluate with video and text only; the S3D-G
  rows: ``input_dims={"video": 1024, ...}``), Table 4 ``C = 128`` and
  Table 6 "Shared". ``kwargs`` override :class:`MultimodalCapsuleNetwork`'s.
  """
  return MultimodalCapsuleNetwork(rngs=rngs, **kwargs)


def duarte2021_not_shared(*, rngs: nnx.Rngs, **kwargs) -> MultimodalCapsuleNetwork:
  """Table 6 "Not Shared": routing and ``f_out`` per modality."""
  return MultimodalCapsuleNetwork(rngs=rngs, **{"shared": False, **kwargs})


def duarte2021_capsules(n_caps: int, *, rngs: nnx.Rngs,
                        **kwargs) -> MultimodalCapsuleNetwork:
  """Table 4: ``C`` in {32, 64, 128, 256} capsules, d1=32, d2=256."""
  return MultimodalCapsuleNetwork(rngs=rngs, **{"n_caps": n_caps, **kwargs})


def duarte2021_routing_ablation(routing: str, *, rngs: nnx.Rngs,
                                **kwargs) -> MultimodalCapsuleNetwork:
  """Table 3: C=64 capsules, d1=d2=16, with the given routing.

  ``routing``: ``"none"``, ``"dynamic"``, ``"em"``, ``"set_transformer"``
  or ``"self_attention"`` (the table's rows), or ``"fc"``.
  """
  config = {"n_caps": 64, "d1": 16, "d2": 16, "routing": routing, **kwargs}
  return MultimodalCapsuleNetwork(rngs=rngs, **config)


def duarte2021_no_routing(*, rngs: nnx.Rngs, **kwargs) -> MultimodalCapsuleNetwork:
  """Table 3 "No Routing"."""
  return duarte2021_routing_ablation("none", rngs=rngs, **kwargs)


def duarte2021_dynamic_routing(*, rngs: nnx.Rngs, **kwargs) -> MultimodalCapsuleNetwork:
  """Table 3 "Dynamic Routing"."""
  return duarte2021_routing_ablation("dynamic", rngs=rngs, **kwargs)


def duarte2021_em_routing(*, rngs: nnx.Rngs, **kwargs) -> MultimodalCapsuleNetwork:
  """Table 3 "EM Routing" (4x4 matrix capsules)."""
  return duarte2021_routing_ablation("em", rngs=rngs, **kwargs)


def duarte2021_set_transformer_routing(*, rngs: nnx.Rngs,
                                       **kwargs) -> MultimodalCapsuleNetwork:
  """Table 3 "Set Transformer"."""
  return duarte2021_routing_ablation("set_transformer", rngs=rngs, **kwargs)


def duarte2021_small_self_attention(*, rngs: nnx.Rngs,
                                    **kwargs) -> MultimodalCapsuleNetwork:
  """Table 3 "Self-Attention (ours)" (C=64, d1=d2=16)."""
  return duarte2021_routing_ablation("self_attention", rngs=rngs, **kwargs)


def duarte2021_fc_baseline(*, rngs: nnx.Rngs, **kwargs) -> FCBaseline:
  """Tables 1 and 5 "FC Baseline" / "Fully Connected"."""
  return FCBaseline(rngs=rngs, **kwargs)


def duarte2021_self_attention_baseline(*, rngs: nnx.Rngs,
                                       **kwargs) -> SelfAttentionBaseline:
  """Tables 1 and 5 "Self-Attention Baseline" (N = 128 tokens)."""
  return SelfAttentionBaseline(rngs=rngs, **kwargs)
