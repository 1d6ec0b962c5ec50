"""Building blocks of the Everything-At-Once (EAO) multi-modal fusion model.

Shvetsova et al. (2022) embed video, audio and text token sequences into one
joint space: each modality's tokens go through a gated projection
(:class:`GatedEmbeddingUnit`: a linear layer followed by context gating) and a
LayerNorm, one **shared** fusion transformer (:class:`FusionTransformer`,
pre-norm ViT blocks, depth 1) attends over the tokens of one modality or of
several concatenated modalities, the output tokens of each modality are
averaged over its unmasked positions (:func:`masked_mean`), and a second gated
projection maps that average to the joint space. Swetha et al. (2023) train
this model with their Multi-SK anchor loss (``capsjax.models.swetha2023``).

Token sequences are ``[..., n_tok, d]`` with a boolean mask ``[..., n_tok]``
(True = real token). A masked-out token never changes the output at any other
position nor any masked mean, whatever its values (NaN included: the
transformer zeroes padded tokens on entry).

Initialisation follows the authors' code: the gated units keep PyTorch's
``nn.Linear`` default (Kaiming-uniform with ``a = sqrt(5)``, i.e.
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, bias likewise); the fusion transformer
applies timm's ``_init_vit_weights`` (linear weights ``trunc_normal(std=.02)``
with timm's absolute cut-offs ``[-2, 2]``, zero biases); LayerNorms have scale
1, bias 0 and eps 1e-6; the masking token is ``trunc_normal(std=.02)``.

References:
  N. Shvetsova, B. Chen, A. Rouditchenko, S. Thomas, B. Kingsbury, R. Feris,
  D. Harwath, J. Glass, H. Kuehne. Everything at Once -- Multi-modal Fusion
  Transformer for Video Retrieval. CVPR 2022 (official code
  ``everything_at_once/model/utils/{layers,fusion_transformer}.py``, the same
  files in Swetha5/Multi_Sinkhorn_Knopp).
  A. Miech, I. Laptev, J. Sivic. Learning a Text-Video Embedding from
  Incomplete and Heterogeneous Data. 2018 (the gated embedding unit).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from capsjax import _shapes
from capsjax.nn.torch_init import torch_linear

__all__ = [
    "FusionBlock",
    "FusionTransformer",
    "GatedEmbeddingUnit",
    "masked_mean",
    "timm_trunc_normal",
]


def timm_trunc_normal(std: float = 0.02) -> nnx.Initializer:
  """timm's ``trunc_normal_(std=std)``: ``N(0, std^2)`` cut at ``[-2, 2]``.

  timm's cut-offs are absolute values, not multiples of ``std`` (so for
  ``std = .02`` this is a normal truncated at 100 sigma), unlike
  ``jax.nn.initializers.truncated_normal``.
  """

  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.truncated_normal(key, -2.0 / std, 2.0 / std,
                                             shape, dtype)

  return init


def _vit_linear(in_features: int, out_features: int, *, use_bias: bool = True,
                dtype: Any, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  """A linear layer with timm's ``_init_vit_weights`` initialisation."""
  return nnx.Linear(in_features, out_features, use_bias=use_bias,
                    kernel_init=timm_trunc_normal(0.02),
                    bias_init=jax.nn.initializers.zeros, dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)


def _layer_norm(dim: int, *, dtype: Any, param_dtype: Any,
                rngs: nnx.Rngs) -> nnx.LayerNorm:
  """``nn.LayerNorm(dim, eps=1e-6)`` (two-pass variance, as PyTorch)."""
  return nnx.LayerNorm(dim, epsilon=1e-6, use_fast_variance=False, dtype=dtype,
                       param_dtype=param_dtype, rngs=rngs)


def _check_tokens(tokens, mask, dim: int) -> None:
  shape = tuple(jnp.shape(tokens))
  if len(shape) < 2 or shape[-1] != dim:
    raise ValueError(
        f"tokens must have shape [..., n_tok, d] = [..., *, {dim}], got {shape}.")
  _shapes.check_shape("mask", mask, shape[:-1], "[..., n_tok]")


def _visible(mask, segment_ids) -> jax.Array:
  """``[..., n_q, n_k]`` attention pattern: key real and in the query's segment."""
  mask = jnp.asarray(mask, bool)
  visible = mask[..., None, :]
  if segment_ids is not None:
    _shapes.check_shape("segment_ids", segment_ids, (mask.shape[-1],),
                        "[n_tok]")
    seg = jnp.asarray(segment_ids)
    visible = visible & (seg[:, None] == seg[None, :])
  return visible


def masked_mean(tokens: jax.typing.ArrayLike,
                mask: jax.typing.ArrayLike) -> jax.Array:
  """Average of the unmasked tokens (the official ``get_average``).

  ``sum_n mask_n x_n / (sum_n mask_n + 1e-5)``; the ``1e-5`` is the official
  code's, so an all-masked sequence gives 0 rather than NaN.

  Args:
    tokens: ``[..., n_tok, d]`` token features.
    mask: ``[..., n_tok]`` True for real tokens.

  Returns:
    ``[..., d]`` in the dtype of ``tokens``.
  """
  tokens = jnp.asarray(tokens)
  _check_tokens(tokens, mask, tokens.shape[-1])
  mask = jnp.asarray(mask, bool)
  # where, not a product: a NaN or inf in a padded token must not leak.
  total = jnp.sum(jnp.where(mask[..., None], tokens, 0), axis=-2)
  count = jnp.sum(mask, axis=-1, keepdims=True).astype(tokens.dtype)
  return total / (count + 1e-5)


class GatedEmbeddingUnit(nnx.Module):
  """Linear layer + context gating: ``y = W x + b``, ``y * sigmoid(W_g y + b_g)``.

  The official ``GatedEmbeddingUnit`` (its ReLU removed, as in EAO): EAO uses
  it per token to project each modality's features to the fusion width, and
  on the averaged fusion output to project to the joint space. Acts on the
  last axis, so it takes ``[..., in_features]``.
  """

  def __init__(self, in_features: int, out_features: int, *,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the unit.

    Args:
      in_features: input width.
      out_features: output width.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``None`` infers it.
      param_dtype: parameter dtype.
      rngs: random streams (``params``).
    """
    _shapes.check_positive_int("in_features", in_features)
    _shapes.check_positive_int("out_features", out_features)
    self.in_features = in_features
    self.fc = torch_linear(in_features, out_features, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs)
    self.gate = torch_linear(out_features, out_features, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
    """Maps ``[..., in_features]`` to ``[..., out_features]``."""
    shape = tuple(jnp.shape(x))
    if not shape or shape[-1] != self.in_features:
      raise ValueError(f"x must have shape [..., in_features] = "
                       f"[..., {self.in_features}], got {shape}.")
    y = self.fc(x)
    return y * jax.nn.sigmoid(self.gate(y))


class FusionBlock(nnx.Module):
  """A pre-norm transformer block with a key mask (official ``FusionBlock``).

  ``x += Attn(LN(x), mask)``; ``x += MLP(LN(x))`` with a GELU MLP of width
  ``mlp_ratio * dim``. The attention is timm's: one fused ``qkv`` projection
  (output laid out ``[3, heads, head_dim]``, so PyTorch weights port by
  transposing), scale ``head_dim ** -0.5``, masked keys excluded from every
  softmax. Stochastic depth is not implemented (the authors' rate is 0).
  """

  def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
               qkv_bias: bool = True, dropout_rate: float = 0.0,
               attention_dropout_rate: float = 0.0, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    """Builds the block.

    Args:
      dim: token width.
      num_heads: attention heads; must divide ``dim``.
      mlp_ratio: MLP hidden width over ``dim`` (timm's ``int(dim * ratio)``).
      qkv_bias: whether the ``qkv`` projection has a bias.
      dropout_rate: dropout after the attention projection and in the MLP.
      attention_dropout_rate: dropout on the attention weights.
      dtype: computation dtype; ``None`` infers it.
      param_dtype: parameter dtype.
      rngs: random streams (``params``, and ``dropout`` when a rate is > 0).
    """
    _shapes.check_positive_int("dim", dim)
    _shapes.check_positive_int("num_heads", num_heads)
    if dim % num_heads:
      raise ValueError(
          f"num_heads must divide dim, got dim={dim}, num_heads={num_heads}.")
    hidden = int(dim * mlp_ratio)
    if hidden < 1:
      raise ValueError(f"mlp_ratio must give a hidden width >= 1, got "
                       f"int({dim} * {mlp_ratio}) = {hidden}.")
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dim, self.num_heads = dim, num_heads
    self.norm1 = _layer_norm(dim, **kw)
    self.qkv = _vit_linear(dim, 3 * dim, use_bias=qkv_bias, **kw)
    self.proj = _vit_linear(dim, dim, **kw)
    self.norm2 = _layer_norm(dim, **kw)
    self.fc1 = _vit_linear(dim, hidden, **kw)
    self.fc2 = _vit_linear(hidden, dim, **kw)
    # A rate of 0 needs no random stream (so a model without dropout can be
    # built from a ``params``-only Rngs, e.g. by ``nnx.bridge.to_linen``).
    self.attention_dropout = nnx.Dropout(
        attention_dropout_rate, rngs=rngs if attention_dropout_rate else None)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs if dropout_rate else None)

  def _attention(self, x: jax.Array, visible: jax.Array) -> jax.Array:
    *batch, n_tok, dim = x.shape
    head_dim = dim // self.num_heads
    qkv = self.qkv(x).reshape(*batch, n_tok, 3, self.num_heads, head_dim)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    logits = jnp.einsum("...qhc,...khc->...hqk", q, k) * head_dim ** -0.5
    # A large finite negative rather than -inf: a fully masked row (which the
    # EAO model never produces) then stays finite, and so do its gradients.
    # The softmax runs in at least float32 (bfloat16 logits lose the ranks).
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    logits = jnp.where(visible[..., None, :, :], logits,
                       jnp.finfo(logits.dtype).min)
    attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    attn = self.attention_dropout(attn)
    out = jnp.einsum("...hqk,...khc->...qhc", attn, v)
    return self.dropout(self.proj(out.reshape(*batch, n_tok, dim)))

  def __call__(self, x: jax.typing.ArrayLike, mask: jax.typing.ArrayLike,
               segment_ids: jax.typing.ArrayLike | None = None) -> jax.Array:
    """Applies the block.

    Args:
      x: ``[..., n_tok, dim]`` tokens.
      mask: ``[..., n_tok]`` True for real tokens; False tokens are not
        attended to.
      segment_ids: optional ``[n_tok]`` ints: a token attends only to tokens
        of its own segment, so one call runs several independent sequences
        laid end to end (``None``: one sequence).

    Returns:
      ``[..., n_tok, dim]``.
    """
    _check_tokens(x, mask, self.dim)
    visible = _visible(mask, segment_ids)
    x = jnp.asarray(x)
    x = x + self._attention(self.norm1(x), visible)
    h = self.dropout(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False))
    return x + self.dropout(self.fc2(h))


class FusionTransformer(nnx.Module):
  """EAO's fusion transformer: ``depth`` :class:`FusionBlock` s and a masking token.

  The model calls it on the tokens of one modality, or of several modalities
  concatenated along ``n_tok`` (EAO's fused pairs), and splits the output
  back. Before that, :meth:`fill_empty` puts the learned masking token in the
  first position of a sequence that has no real token, as the official
  ``_check_and_fix_if_input_empty`` does, so every sequence attends to
  something. The official module also builds a final LayerNorm it never
  applies (``self.norm``, "TODO: not needed"); it is left out here.
  """

  def __init__(self, dim: int = 4096, *, depth: int = 1, num_heads: int = 64,
               mlp_ratio: float = 1.0, qkv_bias: bool = True,
               dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    """Builds the transformer (defaults: the authors' ``resnet_tva.yaml``).

    Args:
      dim: token width (4096).
      depth: number of blocks (1).
      num_heads: attention heads per block (64).
      mlp_ratio: MLP width over ``dim`` (1).
      qkv_bias: whether ``qkv`` has a bias (True).
      dropout_rate: dropout after attention and in the MLP (0).
      attention_dropout_rate: dropout on the attention weights (0).
      dtype: computation dtype; ``None`` infers it.
      param_dtype: parameter dtype.
      rngs: random streams.
    """
    _shapes.check_positive_int("depth", depth)
    self.dim = dim
    self.masking_token = nnx.Param(
        timm_trunc_normal(0.02)(rngs.params(), (dim,), param_dtype))
    self.blocks = nnx.List([
        FusionBlock(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                    dropout_rate=dropout_rate,
                    attention_dropout_rate=attention_dropout_rate, dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)
        for _ in range(depth)])

  def fill_empty(self, tokens: jax.typing.ArrayLike, mask: jax.typing.ArrayLike
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gives every all-masked sequence one real token: the masking token.

    Args:
      tokens: ``[..., n_tok, dim]``.
      mask: ``[..., n_tok]`` True for real tokens.

    Returns:
      ``(tokens, mask, nonempty)``: the tokens with the masking token in
      position 0 of each empty sequence, the mask with that position set,
      and ``nonempty [...]``, whether the sequence had a real token.
    """
    tokens = jnp.asarray(tokens)
    _check_tokens(tokens, mask, self.dim)
    mask = jnp.asarray(mask, bool)
    nonempty = jnp.any(mask, axis=-1)
    token = self.masking_token[...].astype(tokens.dtype)
    first = jnp.where(nonempty[..., None], tokens[..., 0, :], token)
    tokens = tokens.at[..., 0, :].set(first)
    mask = mask.at[..., 0].set(mask[..., 0] | ~nonempty)
    return tokens, mask, nonempty

  def __call__(self, tokens: jax.typing.ArrayLike, mask: jax.typing.ArrayLike,
               segment_ids: jax.typing.ArrayLike | None = None) -> jax.Array:
    """Runs the blocks.

    Args:
      tokens: ``[..., n_tok, dim]`` (one modality or several concatenated).
      mask: ``[..., n_tok]`` True for real tokens.
      segment_ids: optional ``[n_tok]`` ints; tokens attend only within their
        segment, so several fusion passes can run as one call (the model runs
        EAO's six passes this way: same result, one trace).

    Returns:
      ``[..., n_tok, dim]`` output tokens (masked positions are computed but
      meaningless).
    """
    _check_tokens(tokens, mask, self.dim)
    _visible(mask, segment_ids)  # validates segment_ids before any work
    # Padded tokens are zeroed: their values (even NaN) then cannot reach a
    # real token through the attention's zero weights.
    x = jnp.where(jnp.asarray(mask, bool)[..., None], jnp.asarray(tokens), 0)
    for block in self.blocks:
      x = block(x, mask, segment_ids)
    return x
