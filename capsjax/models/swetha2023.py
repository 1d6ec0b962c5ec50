"""Swetha et al. (2023): Multi-SK anchors on the Everything-At-Once model.

The model (:class:`Swetha2023Model`) is Everything-At-Once (EAO, Shvetsova et
al. 2022): per-modality gated token projections + LayerNorm, one shared fusion
transformer run on each modality alone and on each pair of modalities
concatenated, masked averaging, and per-modality gated projections to the
joint space; the fused pairs ``va, ta, tv`` are the mean of the two
L2-normalised projections. On top of it, Swetha et al. learn **anchors** for
each modality in the input feature space (the averaged projected tokens,
before fusion) and in the joint space, and measure cosine similarities of the
samples to them.

The loss (:func:`swetha2023_loss`) is

``lambda_nce * L_contrastive + lambda_sspc * L_sspc``  (suppl. Table 5)

- ``L_contrastive`` (:func:`combinatorial_contrastive_loss`): EAO's
  combinatorial NormSoftmax loss over t-v, t-a, v-a, t-va, v-ta, a-tv, a
  weighted mean over the pairs;
- ``L_sspc`` (:func:`sspc_loss`): the semantic-structure-preserving
  consistency loss. For an input-space modality ``m`` and a joint-space
  embedding of modality ``n``, both measured against ``m``'s anchors (input
  anchors on one side, joint anchors on the other), each side's similarities
  must predict the Multi-SK assignment (``capsjax.ot.multi_sk_assignment``)
  computed from the other side, over a **queue** of recent samples plus the
  batch. ``m == n`` are the modality-specific (MS) terms, ``m != n`` the
  cross-modal (CM) ones (suppl. Table 6).

**The queue is explicit state.** :class:`SSPCQueue` holds the L2-normalised
input-space and joint-space embeddings of the last ``queue_len`` samples
(not their similarities: as in the authors' code, the queued embeddings are
compared with the *current* anchors at every step) and a counter. Create it
with :func:`init_sspc_queue`, pass it to :func:`swetha2023_loss`, and carry
the queue it returns to the next step (e.g. in the train state, next to the
parameters). The update is first-in first-out with a fixed size, and the
SSPC term is zero until ``queue_len`` real samples have been pushed (the
authors' warm-up), so the initial contents never reach a loss.

Defaults are the authors' ``configs/pretraining/resnet_tva.yaml``: fusion
width 4096, 64 heads, MLP ratio 1, depth 1, joint space 6144, 64 anchors per
modality, queue 5500, Multi-SK with 50 % required anchors, eps 0.07, 20
iterations; NormSoftmax temperature 0.05.

References:
  M. Swetha, M. N. Rizve, N. Shvetsova, H. Kuehne, M. Shah. Preserving
  Modality Structure Improves Multi-Modal Learning. ICCV 2023 (seed
  ``002_8eb46ad2b36ae05b.txt``: the supplement, Tables 5-6, Sec. 3); official
  code Swetha5/Multi_Sinkhorn_Knopp (``everything_at_once/model/
  fusion_model.py``, ``everything_at_once/loss/combinatorial_loss.py``).
  N. Shvetsova et al. Everything at Once -- Multi-modal Fusion Transformer for
  Video Retrieval. CVPR 2022.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from capsjax import _shapes
from capsjax.nn.fusion import FusionTransformer, GatedEmbeddingUnit, masked_mean
from capsjax.ot import multi_sk_assignment

__all__ = [
    "AUTHORS_CONTRASTIVE_WEIGHTS",
    "AUTHORS_SSPC_WEIGHTS",
    "MODALITIES",
    "SSPCQueue",
    "Swetha2023Loss",
    "Swetha2023Model",
    "Swetha2023Output",
    "combinatorial_contrastive_loss",
    "init_sspc_queue",
    "norm_softmax_loss",
    "sspc_loss",
    "swetha2023_loss",
    "swetha2023_tva",
    "swetha2023_tva_per_modality",
    "update_sspc_queue",
]

MODALITIES = ("text", "video", "audio")

# EAO's contrastive pairs: (name, first embedding, second embedding).
_PAIRS = (("tv", "text", "video"), ("ta", "text", "audio"),
          ("va", "video", "audio"), ("t_va", "text", "video_audio"),
          ("v_ta", "video", "text_audio"), ("a_tv", "audio", "text_video"))

# EAO's fused pairs: (modalities of the fusion pass, output field).
_FUSED = ((("text", "video"), "text_video"), (("text", "audio"), "text_audio"),
          (("video", "audio"), "video_audio"))

# CombinatorialLoss weights: the same in the authors' resnet_tva.yaml and in
# EAO's everything_at_once_tva.yaml.
AUTHORS_CONTRASTIVE_WEIGHTS = {"tv": 1.0, "ta": 0.1, "va": 0.1,
                               "t_va": 0.1, "v_ta": 0.1, "a_tv": 0.1}

# The official ``c_loss_{r}_{c}`` (resnet_tva.yaml), row r = 1..6, column
# c = 1..3 for text, video, audio. Rows 1-3 (input modality m = r): m's
# input-space similarities predict the Multi-SK targets of modality c's
# joint embedding against m's joint anchors. Rows 4-6 (joint modality
# n = r - 3): n's joint embedding against c's joint anchors predicts the
# targets of c's input-space similarities. Audio terms are weighted 0.1.
AUTHORS_SSPC_WEIGHTS = ((1.0, 1.0, 0.1), (1.0, 1.0, 0.1), (0.1, 0.1, 0.1),
                        (1.0, 1.0, 0.1), (1.0, 1.0, 0.1), (0.1, 0.1, 0.1))


def _l2_normalize(x: jax.Array, eps: float) -> jax.Array:
  """``x / max(|x|, eps)`` over the last axis, with finite gradients at 0."""
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  pos = sq > 0
  norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1)), 0)
  return x / jnp.maximum(norm, eps)


# The official code normalises with F.normalize (eps 1e-12) for anchors and
# for the queued/anchor-compared embeddings, and with its own
# normalize_embeddings (eps 1e-8) for the fused pairs and the similarity
# matrices of the contrastive loss.
_normalize = functools.partial(_l2_normalize, eps=1e-12)
_normalize_embeddings = functools.partial(_l2_normalize, eps=1e-8)


class Swetha2023Output(NamedTuple):
  """What :class:`Swetha2023Model` returns (all batch-first, ``B`` samples).

  Attributes:
    text, video, audio: ``[B, D]`` joint-space embeddings (gated projection
      outputs, not normalised; the official ``*_embed``).
    text_video, text_audio, video_audio: ``[B, D]`` fused-pair embeddings,
      the mean of the two L2-normalised projections of a joint fusion pass;
      ``None`` for the per-modality variant.
    nonempty: modality -> ``[B]`` bool, whether the sample had any real
      token of that modality (the contrastive loss skips the others).
    input_embed: modality -> ``[B, d_model]`` L2-normalised masked mean of the
      projected tokens (the input feature space of the anchors).
    joint_embed: modality -> ``[B, D]`` L2-normalised joint embedding.
    input_anchors: modality -> ``[K_m, d_model]`` L2-normalised anchors.
    joint_anchors: modality -> ``[K_m, D]`` L2-normalised anchors.
    input_sim: modality m -> ``[B, K_m]`` cosine similarity of
      ``input_embed[m]`` to ``input_anchors[m]``.
    joint_sim: modality n -> modality m -> ``[B, K_m]`` cosine similarity of
      ``joint_embed[n]`` to ``joint_anchors[m]``.
  """
  text: jax.Array
  video: jax.Array
  audio: jax.Array
  text_video: jax.Array | None
  text_audio: jax.Array | None
  video_audio: jax.Array | None
  nonempty: dict[str, jax.Array]
  input_embed: dict[str, jax.Array]
  joint_embed: dict[str, jax.Array]
  input_anchors: dict[str, jax.Array]
  joint_anchors: dict[str, jax.Array]
  input_sim: dict[str, jax.Array]
  joint_sim: dict[str, dict[str, jax.Array]]


class Swetha2023Model(nnx.Module):
  """The EAO fusion model with Multi-SK anchors (Swetha et al. 2023).

  Call it with the token sequences and masks of the three modalities; it
  returns a :class:`Swetha2023Output`, which :func:`swetha2023_loss` consumes.
  Audio enters as token features (the DAVEnet-v2 output, 4096-d, 1.5 tokens a
  second): the trainable DAVEnet audio CNN of the authors' code is not part of
  this model. No positional embeddings and no CLS token (the authors'
  settings).
  """

  def __init__(self, *, text_dim: int = 300, video_dim: int = 4096,
               audio_dim: int = 4096, embed_dim: int = 4096,
               projection_dim: int = 6144, depth: int = 1, num_heads: int = 64,
               mlp_ratio: float = 1.0, n_anchors: int | Sequence[int] = 64,
               shared_fusion: bool = True, dropout_rate: float = 0.0,
               attention_dropout_rate: float = 0.0, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      text_dim: text token width (word2vec: 300).
      video_dim: video token width (ResNet-152 + ResNeXt-101: 4096).
      audio_dim: audio token width (DAVEnet-v2: 4096).
      embed_dim: fusion transformer width ``d_model`` (4096).
      projection_dim: joint space width ``D`` (6144).
      depth, num_heads, mlp_ratio: fusion transformer (1, 64, 1).
      n_anchors: anchors per modality (64), or three counts for text, video,
        audio (the official ``anc_len_txt/vid/aud``).
      shared_fusion: True for EAO (one transformer, fused pairs computed);
        False for the authors' released ``TransformerPerModalityModel2``
        (a transformer per modality, no fused pairs).
      dropout_rate, attention_dropout_rate: fusion transformer dropout (0).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``None`` infers it.
      param_dtype: parameter dtype.
      rngs: random streams (``params``; ``dropout`` when a rate is > 0).
    """
    for name, value in (("text_dim", text_dim), ("video_dim", video_dim),
                        ("audio_dim", audio_dim), ("embed_dim", embed_dim),
                        ("projection_dim", projection_dim)):
      _shapes.check_positive_int(name, value)
    if isinstance(n_anchors, Sequence):
      if len(n_anchors) != 3:
        raise ValueError(f"n_anchors must be an int or three ints (text, video,"
                         f" audio), got {n_anchors!r}.")
      counts = tuple(n_anchors)
    else:
      counts = (n_anchors,) * 3
    for c in counts:
      _shapes.check_positive_int("n_anchors", c)
    self.in_dims = dict(zip(MODALITIES, (text_dim, video_dim, audio_dim)))
    self.embed_dim, self.projection_dim = embed_dim, projection_dim
    self.shared_fusion = shared_fusion
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    self.token_proj = nnx.Dict({
        m: GatedEmbeddingUnit(self.in_dims[m], embed_dim, **kw)
        for m in MODALITIES})
    self.token_norm = nnx.Dict({
        m: nnx.LayerNorm(embed_dim, epsilon=1e-6, use_fast_variance=False,
                         **kw) for m in MODALITIES})
    fusion_kw = dict(depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                     dropout_rate=dropout_rate,
                     attention_dropout_rate=attention_dropout_rate, **kw)
    if shared_fusion:
      self.fusion = FusionTransformer(embed_dim, **fusion_kw)
    else:
      self.fusion = nnx.Dict({m: FusionTransformer(embed_dim, **fusion_kw)
                              for m in MODALITIES})
    self.proj = nnx.Dict({
        m: GatedEmbeddingUnit(embed_dim, projection_dim, **kw)
        for m in MODALITIES})
    # The official ClusterAssignments: nn.init.normal_ on a [K, d] weight.
    # (Its unused bias and frozen ``anc_dist`` buffer are not kept.)
    normal = jax.nn.initializers.normal(1.0)
    self.input_anchors = nnx.Dict({
        m: nnx.Param(normal(rngs.params(), (k, embed_dim), param_dtype))
        for m, k in zip(MODALITIES, counts)})
    self.joint_anchors = nnx.Dict({
        m: nnx.Param(normal(rngs.params(), (k, projection_dim), param_dtype))
        for m, k in zip(MODALITIES, counts)})

  def _tokens(self, modality: str, x, mask):
    # The official code fills empty sequences with the (text) fusion
    # transformer's masking token in both variants.
    masking = self.fusion if self.shared_fusion else self.fusion["text"]
    b = jnp.shape(x)[0]
    _shapes.check_shape(modality, x, (b, None, self.in_dims[modality]),
                        f"[B, n_{modality}, {modality}_dim]")
    _shapes.check_shape(f"{modality}_mask", mask, (b, jnp.shape(x)[1]),
                        f"[B, n_{modality}]")
    # Padded features are zeroed first, so any value there (NaN included)
    # leaves every output and gradient unchanged.
    x = jnp.where(jnp.asarray(mask, bool)[..., None], jnp.asarray(x), 0)
    tokens = self.token_norm[modality](self.token_proj[modality](x))
    return masking.fill_empty(tokens, mask)

  def __call__(self, text: jax.typing.ArrayLike, text_mask: jax.typing.ArrayLike,
               video: jax.typing.ArrayLike, video_mask: jax.typing.ArrayLike,
               audio: jax.typing.ArrayLike, audio_mask: jax.typing.ArrayLike
               ) -> Swetha2023Output:
    """Embeds a batch.

    Args:
      text: ``[B, n_text, text_dim]`` word features.
      text_mask: ``[B, n_text]`` True for real tokens.
      video: ``[B, n_video, video_dim]`` clip features.
      video_mask: ``[B, n_video]``.
      audio: ``[B, n_audio, audio_dim]`` audio token features.
      audio_mask: ``[B, n_audio]``.

    Returns:
      A :class:`Swetha2023Output`.
    """
    inputs = {"text": (text, text_mask), "video": (video, video_mask),
              "audio": (audio, audio_mask)}
    b = jnp.shape(text)[0]
    for m in ("video", "audio"):
      if jnp.shape(inputs[m][0])[:1] != (b,):
        raise ValueError(f"{m} must have the batch size of text ({b}), got "
                         f"shape {jnp.shape(inputs[m][0])}.")
    tok, msk, nonempty = {}, {}, {}
    for m in MODALITIES:
      tok[m], msk[m], nonempty[m] = self._tokens(m, *inputs[m])

    # EAO's fusion passes: each modality alone, then each pair (shared
    # fusion only). Shared, the passes run as one call on their tokens laid
    # end to end, each pass a segment that attends only to itself: the same
    # result as separate calls, with one trace of the transformer.
    means = {}  # (pass, modality) -> [B, d_model]
    if self.shared_fusion:
      passes = [(m,) for m in MODALITIES] + [pair for pair, _ in _FUSED]
      x = jnp.concatenate([tok[m] for g in passes for m in g], axis=1)
      mask = jnp.concatenate([msk[m] for g in passes for m in g], axis=1)
      segments = np.concatenate([np.full(tok[m].shape[1], i, np.int32)
                                 for i, g in enumerate(passes) for m in g])
      y = self.fusion(x, mask, segments)
      start = 0
      for g in passes:
        for m in g:
          n = tok[m].shape[1]
          means[g, m] = masked_mean(y[:, start:start + n], msk[m])
          start += n
    else:
      for m in MODALITIES:
        means[(m,), m] = masked_mean(self.fusion[m](tok[m], msk[m]), msk[m])
    # One projection call per modality over all its passes.
    projected = {}
    for m in MODALITIES:
      keys = [k for k in means if k[1] == m]
      stacked = self.proj[m](jnp.stack([means[k] for k in keys]))
      projected.update(zip(keys, stacked))
    joint = {m: projected[(m,), m] for m in MODALITIES}
    pairs = {name: None for _, name in _FUSED}
    if self.shared_fusion:
      for (first, second), name in _FUSED:
        pairs[name] = (
            _normalize_embeddings(projected[(first, second), first])
            + _normalize_embeddings(projected[(first, second), second])) / 2

    input_embed = {m: _normalize(masked_mean(tok[m], msk[m]))
                   for m in MODALITIES}
    joint_embed = {m: _normalize(joint[m]) for m in MODALITIES}
    input_anchors = {m: _normalize(self.input_anchors[m][...]).astype(
        input_embed[m].dtype) for m in MODALITIES}
    joint_anchors = {m: _normalize(self.joint_anchors[m][...]).astype(
        joint_embed[m].dtype) for m in MODALITIES}
    input_sim = {m: input_embed[m] @ input_anchors[m].T for m in MODALITIES}
    joint_sim = {n: {m: joint_embed[n] @ joint_anchors[m].T
                     for m in MODALITIES} for n in MODALITIES}
    return Swetha2023Output(
        text=joint["text"], video=joint["video"], audio=joint["audio"],
        text_video=pairs["text_video"], text_audio=pairs["text_audio"],
        video_audio=pairs["video_audio"], nonempty=nonempty,
        input_embed=input_embed, joint_embed=joint_embed,
        input_anchors=input_anchors, joint_anchors=joint_anchors,
        input_sim=input_sim, joint_sim=joint_sim)


def swetha2023_tva(**kwargs) -> Swetha2023Model:
  """EAO + Multi-SK on text/video/audio (HowTo100M features), shared fusion.

  The paper's model (ICCV 2023, Sec. 3; EAO's architecture): word2vec text
  (300), ResNet-152 + ResNeXt-101 video (4096), DAVEnet-v2 audio tokens
  (4096), fusion width 4096 (64 heads, MLP ratio 1, depth 1), joint space
  6144, 64 anchors per modality. Keyword arguments override
  :class:`Swetha2023Model`'s (``rngs`` is required).
  """
  return Swetha2023Model(**{"shared_fusion": True, **kwargs})


def swetha2023_tva_per_modality(**kwargs) -> Swetha2023Model:
  """The authors' released configuration (``resnet_tva.yaml``).

  ``TransformerPerModalityModel2``: the same sizes as :func:`swetha2023_tva`
  but one fusion transformer per modality and no fused pairs, so the
  contrastive loss covers t-v, t-a and v-a only.
  """
  return Swetha2023Model(**{**kwargs, "shared_fusion": False})


# ----------------------------------------------------------------------------
# The functional queue.
# ----------------------------------------------------------------------------


class SSPCQueue(NamedTuple):
  """The SSPC memory: L2-normalised embeddings of the last samples (a pytree).

  Attributes:
    input: modality -> ``[queue_len, d_model]`` input-space embeddings.
    joint: modality -> ``[queue_len, D]`` joint-space embeddings.
    count: ``[]`` int32, real samples pushed so far (saturates at
      ``queue_len``); rows older than ``count`` are placeholders. The SSPC
      loss is active once ``count == queue_len``.
  """
  input: dict[str, jax.Array]
  joint: dict[str, jax.Array]
  count: jax.Array


def init_sspc_queue(input_dim: int = 4096, joint_dim: int = 6144, *,
                    queue_len: int = 5500,
                    dtype: Any = jnp.float32) -> SSPCQueue:
  """An empty queue (zeros; the authors' ``torch.rand`` contents never reach a
  loss, since the loss waits for ``queue_len`` real samples).

  Args:
    input_dim: ``d_model``, the model's ``embed_dim`` (4096).
    joint_dim: ``D``, the model's ``projection_dim`` (6144).
    queue_len: queued samples (the authors' 5500).
    dtype: storage dtype.

  Returns:
    An :class:`SSPCQueue` with ``count = 0``.
  """
  for name, value in (("input_dim", input_dim), ("joint_dim", joint_dim),
                      ("queue_len", queue_len)):
    _shapes.check_positive_int(name, value)
  return SSPCQueue(
      input={m: jnp.zeros((queue_len, input_dim), dtype) for m in MODALITIES},
      joint={m: jnp.zeros((queue_len, joint_dim), dtype) for m in MODALITIES},
      count=jnp.zeros((), jnp.int32))


def _check_queue(queue: SSPCQueue, out: Swetha2023Output) -> int:
  _shapes.check_shape("queue.count", queue.count, (), "[]")
  queue_len = _shapes.check_ndim("queue.input['text']", queue.input["text"], 2,
                                 "[queue_len, d_model]")[0]
  for space, embeds in (("input", out.input_embed), ("joint", out.joint_embed)):
    for m in MODALITIES:
      d = jnp.shape(embeds[m])[-1]
      _shapes.check_shape(f"queue.{space}['{m}']", getattr(queue, space)[m],
                          (queue_len, d), "[queue_len, d]")
  return int(queue_len)


def update_sspc_queue(queue: SSPCQueue, out: Swetha2023Output) -> SSPCQueue:
  """Pushes the batch's embeddings: first in, first out, size fixed.

  The oldest ``B`` rows drop out at the front and the batch (without
  gradient) is appended at the end, as the official in-place shift does.

  Args:
    queue: the current :class:`SSPCQueue`.
    out: the model's output for the batch.

  Returns:
    The new queue (``count`` increased by ``B``, saturating at the length).
  """
  queue_len = _check_queue(queue, out)

  def push(old, new):
    new = jax.lax.stop_gradient(new).astype(old.dtype)
    return jnp.concatenate([old, new], axis=0)[-queue_len:]

  b = jnp.shape(out.input_embed["text"])[0]
  return SSPCQueue(
      input={m: push(queue.input[m], out.input_embed[m]) for m in MODALITIES},
      joint={m: push(queue.joint[m], out.joint_embed[m]) for m in MODALITIES},
      count=jnp.minimum(queue.count + b, queue_len).astype(jnp.int32))


# ----------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------


def _check_nonnegative(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value >= 0):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def _check_positive(name: str, value) -> None:
  _check_nonnegative(name, value)
  if value == 0:
    raise ValueError(f"{name} must be > 0, got {value!r}.")


def norm_softmax_loss(S: jax.typing.ArrayLike,
                      valid: jax.typing.ArrayLike | None = None, *,
                      temperature: float = 0.05) -> jax.Array:
  """EAO's NormSoftmax loss on a similarity matrix, over the valid samples.

  ``-mean_i log softmax_j(S_ij / T)_ii - mean_j log softmax_i(S_ij / T)_jj``
  (the official ``NormSoftmaxLoss``), restricted to the samples with
  ``valid`` True (the official code drops the others from the batch first).
  No valid sample gives 0.

  Args:
    S: ``[B, B]`` cosine similarities, positives on the diagonal.
    valid: ``[B]`` bool, or ``None`` for all.
    temperature: ``T`` (0.05).

  Returns:
    A scalar.
  """
  _check_positive("temperature", temperature)
  b = _shapes.check_ndim("S", S, 2, "[B, B]")[0]
  _shapes.check_shape("S", S, (b, b), "[B, B]")
  S = jnp.asarray(S)
  valid = (jnp.ones((b,), bool) if valid is None
           else jnp.asarray(valid, bool))
  _shapes.check_shape("valid", valid, (b,), "[B]")
  logits = S / temperature
  both = valid[:, None] & valid[None, :]
  # Invalid entries get a large finite negative: exp underflows to exactly 0,
  # and rows of invalid samples (weighted 0 below) stay finite.
  logits = jnp.where(both, logits, jnp.finfo(logits.dtype).min)
  w = valid.astype(logits.dtype)
  n = jnp.maximum(jnp.sum(w), 1)
  rows = jnp.diagonal(jax.nn.log_softmax(logits, axis=1))
  cols = jnp.diagonal(jax.nn.log_softmax(logits, axis=0))
  return -(jnp.sum(w * rows) + jnp.sum(w * cols)) / n


def combinatorial_contrastive_loss(
    out: Swetha2023Output, *,
    weights: Mapping[str, float] = AUTHORS_CONTRASTIVE_WEIGHTS,
    temperature: float = 0.05) -> tuple[jax.Array, dict[str, jax.Array]]:
  """EAO's combinatorial loss: weighted mean of NormSoftmax over the pairs.

  ``sum_p w_p L_p / sum_p w_p`` over the pairs t-v, t-a, v-a, t-va, v-ta,
  a-tv (keys ``tv, ta, va, t_va, v_ta, a_tv`` of ``weights``) that have a
  nonzero weight and whose embeddings exist; each ``L_p`` uses the samples
  where every modality involved is non-empty (official ``CombinatorialLoss``).

  Args:
    out: the model's output.
    weights: pair name -> weight >= 0 (default: the authors').
    temperature: NormSoftmax temperature (0.05).

  Returns:
    ``(loss, per_pair)``; ``per_pair`` maps each pair used to its loss.
  """
  unknown = set(weights) - {p[0] for p in _PAIRS}
  if unknown:
    raise ValueError(f"weights has unknown pairs {sorted(unknown)}; expected "
                     f"keys among {[p[0] for p in _PAIRS]}.")
  used = []  # (name, first, second, weight) of the pairs that count
  for name, first, second in _PAIRS:
    w = weights.get(name, 0.0)
    _check_nonnegative(f"weights['{name}']", w)
    if w > 0 and getattr(out, first) is not None and (
        getattr(out, second) is not None):
      used.append((name, first, second, w))
  if not used:
    raise ValueError("weights gives no pair with a nonzero weight whose "
                     "embeddings the model produces.")

  def valid(first, second):
    v = out.nonempty[first]
    for m in second.split("_"):
      v = v & out.nonempty[m]
    return v

  # The pairs are stacked and run through one vmapped NormSoftmax (a smaller
  # program to compile than one loss per pair).
  a = jnp.stack([getattr(out, f) for _, f, _, _ in used]).astype(jnp.float32)
  b = jnp.stack([getattr(out, s) for _, _, s, _ in used]).astype(jnp.float32)
  sims = jnp.einsum("pid,pjd->pij", _normalize_embeddings(a),
                    _normalize_embeddings(b))
  losses = jax.vmap(functools.partial(norm_softmax_loss,
                                      temperature=temperature))(
      sims, jnp.stack([valid(f, s) for _, f, s, _ in used]))
  w = jnp.asarray([u[3] for u in used], jnp.float32)
  per_pair = {u[0]: losses[i] for i, u in enumerate(used)}
  return jnp.sum(w * losses) / sum(u[3] for u in used), per_pair


def _bce_exp_logits(sim: jax.Array, target: jax.Array,
                    temperature: float) -> jax.Array:
  """Official ``calculate_cost``: mean BCE-with-logits of ``exp(sim / T)``.

  The logits ``x = exp(sim / T)`` are positive, so
  ``BCE = x - x y + log(1 + exp(-x))``.
  """
  x = jnp.exp(sim / temperature)
  return jnp.mean(x - x * target + jnp.log1p(jnp.exp(-x)))


def sspc_loss(out: Swetha2023Output, queue: SSPCQueue, *,
              weights: Sequence[Sequence[float]] = AUTHORS_SSPC_WEIGHTS,
              cross_modal_weight: float = 1.0,
              modality_specific_weight: float = 1.0,
              temperature: float = 0.1, eps: float = 0.07, n_iters: int = 20,
              required_fraction: float = 0.5, discrete: bool = True
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The SSPC loss with Multi-SK targets (official ``AncSimilarityLoss``).

  For input modality ``m`` and joint modality ``n`` (anchors of ``m`` on
  both sides), with ``T_in[m] = MSK([Q_in[m] A_in[m]^T; input_sim[m]])`` and
  ``T_joint[n, m] = MSK([Q_joint[n] A_joint[m]^T; joint_sim[n][m]])`` the
  Multi-SK assignments (:func:`capsjax.ot.multi_sk_assignment`) of the queued
  embeddings (against the current anchors, no gradient) stacked on the batch,
  restricted to the batch rows:

  - row ``m`` of ``weights`` (0-2), column ``n``:
    ``BCE(exp(input_sim[m] / T), T_joint[n, m])``;
  - row ``3 + n`` (3-5), column ``m``:
    ``BCE(exp(joint_sim[n][m] / T), T_in[m])``,

  each scaled by its weight and by ``modality_specific_weight`` when
  ``m == n`` or ``cross_modal_weight`` otherwise (suppl. Table 6), and
  summed. The sum counts only once the queue is full (``queue.count ==
  queue_len``, checked before this batch is pushed); before, it is 0.

  Args:
    out: the model's output for the batch.
    queue: the queue *before* this batch is pushed.
    weights: ``[6][3]`` pair weights, the official ``c_loss_{r}_{c}``
      (default: the authors'); a 0 skips the term's Multi-SK.
    cross_modal_weight: CM switch/scale (1).
    modality_specific_weight: MS switch/scale (1).
    temperature: the ``0.1`` inside the official ``calculate_cost``.
    eps, n_iters, required_fraction: Multi-SK (0.07, 20, 0.5).
    discrete: Multi-SK's channel damping: True for suppl. Table 7's
      "Approach 1" (the paper's), False for "Approach 2".

  Returns:
    ``(loss, per_term)``, ``per_term`` keyed ``loss_pair_{r}_{c}``
    (1-based, as in the official logs; weighted, before the warm-up gate).
  """
  _check_queue(queue, out)
  if len(weights) != 6 or any(len(row) != 3 for row in weights):
    raise ValueError(f"weights must be 6 rows of 3 numbers (the official "
                     f"c_loss_r_c), got {weights!r}.")
  for row in weights:
    for w in row:
      _check_nonnegative("weights", w)
  _check_nonnegative("cross_modal_weight", cross_modal_weight)
  _check_nonnegative("modality_specific_weight", modality_specific_weight)
  _check_positive("temperature", temperature)

  # (row, col, prediction, target key, scale) of every term with weight > 0.
  terms = []
  for i, m in enumerate(MODALITIES):
    for j, n in enumerate(MODALITIES):
      scale = modality_specific_weight if m == n else cross_modal_weight
      if weights[i][j] * scale > 0:
        terms.append((i, j, out.input_sim[m], ("joint", n, m),
                      weights[i][j] * scale))
      if weights[3 + j][i] * scale > 0:
        terms.append((3 + j, i, out.joint_sim[n][m], ("input", m, m),
                      weights[3 + j][i] * scale))
  if not terms:
    return jnp.zeros((), jnp.float32), {}

  # Multi-SK inputs [queue_len + B, K] of each target needed, then one
  # vmapped Multi-SK per anchor count (one program, not up to twelve).
  def sk_input(key):
    space, n, m = key
    if space == "input":
      queued, anchors, batch = (queue.input[n], out.input_anchors[m],
                                out.input_sim[m])
    else:
      queued, anchors, batch = (queue.joint[n], out.joint_anchors[m],
                                out.joint_sim[n][m])
    queued_sim = queued.astype(jnp.float32) @ anchors.astype(jnp.float32).T
    return jax.lax.stop_gradient(
        jnp.concatenate([queued_sim, batch.astype(jnp.float32)], axis=0))

  keys = sorted({t[3] for t in terms})
  b = jnp.shape(out.input_sim["text"])[0]
  sk = jax.vmap(functools.partial(
      multi_sk_assignment, eps=eps, n_iters=n_iters,
      required_fraction=required_fraction, discrete=discrete))
  targets = {}
  for group in _group_by_anchors(keys, lambda k: out.input_anchors[k[2]]):
    assigned = sk(jnp.stack([sk_input(k) for k in group]))
    targets.update(zip(group, jax.lax.stop_gradient(assigned[:, -b:])))

  # The terms are stacked per anchor count: one cost computation each.
  total, per_term = 0.0, {}
  for group in _group_by_anchors(terms, lambda t: t[2]):
    preds = jnp.stack([t[2] for t in group]).astype(jnp.float32)
    costs = jax.vmap(functools.partial(_bce_exp_logits,
                                       temperature=temperature))(
        preds, jnp.stack([targets[t[3]] for t in group]))
    costs = costs * jnp.asarray([t[4] for t in group], jnp.float32)
    for t, c in zip(group, costs):
      per_term[f"loss_pair_{t[0] + 1}_{t[1] + 1}"] = c
    total = total + jnp.sum(costs)
  active = queue.count >= queue.input["text"].shape[0]
  return jnp.where(active, total, 0.0), per_term


def _group_by_anchors(items, array_of):
  """Splits ``items`` into lists whose arrays share their last axis (``K``)."""
  groups: dict[int, list] = {}
  for item in items:
    groups.setdefault(jnp.shape(array_of(item))[-1], []).append(item)
  return list(groups.values())


class Swetha2023Loss(NamedTuple):
  """What :func:`swetha2023_loss` returns.

  Attributes:
    loss: scalar ``lambda_nce * contrastive + lambda_sspc * sspc``.
    queue: the :class:`SSPCQueue` with this batch pushed: pass it to the
      next step.
    metrics: scalars: ``contrastive``, ``sspc``, ``sspc_active`` and each
      contrastive pair's and SSPC term's loss.
  """
  loss: jax.Array
  queue: SSPCQueue
  metrics: dict[str, jax.Array]


def swetha2023_loss(out: Swetha2023Output, queue: SSPCQueue, *,
                    lambda_nce: float = 1.0, lambda_sspc: float = 1.0,
                    cross_modal_weight: float = 1.0,
                    modality_specific_weight: float = 1.0,
                    contrastive_weights: Mapping[str, float] = (
                        AUTHORS_CONTRASTIVE_WEIGHTS),
                    sspc_weights: Sequence[Sequence[float]] = (
                        AUTHORS_SSPC_WEIGHTS),
                    temperature: float = 0.05, sspc_temperature: float = 0.1,
                    sk_eps: float = 0.07, sk_iters: int = 20,
                    required_fraction: float = 0.5,
                    sk_discrete: bool = True) -> Swetha2023Loss:
  """The full training loss of Swetha et al. (2023), and the queue update.

  ``lambda_nce * L_contrastive + lambda_sspc * L_sspc``: Table 5's
  coefficients (default 1 and 1, the paper's best), Table 6's CM / MS
  switches (default both on). The official code names them ``alpha_closs``
  and ``beta_loss``.

  Args:
    out: the model's output for the batch.
    queue: the queue before this batch (from :func:`init_sspc_queue` or the
      previous step).
    lambda_nce, lambda_sspc: the loss coefficients (1, 1).
    cross_modal_weight, modality_specific_weight: the SSPC CM / MS scales
      (1, 1; 0 removes them).
    contrastive_weights: see :func:`combinatorial_contrastive_loss`.
    sspc_weights: see :func:`sspc_loss`.
    temperature: NormSoftmax temperature (0.05).
    sspc_temperature: temperature inside the SSPC cost (0.1).
    sk_eps, sk_iters, required_fraction: Multi-SK (0.07, 20, 0.5).
    sk_discrete: Multi-SK's channel damping (True: "Approach 1", the
      paper's; False: "Approach 2", suppl. Table 7).

  Returns:
    A :class:`Swetha2023Loss` ``(loss, queue, metrics)``.
  """
  _check_nonnegative("lambda_nce", lambda_nce)
  _check_nonnegative("lambda_sspc", lambda_sspc)
  contrastive, pairs = combinatorial_contrastive_loss(
      out, weights=contrastive_weights, temperature=temperature)
  sspc, terms = sspc_loss(
      out, queue, weights=sspc_weights, cross_modal_weight=cross_modal_weight,
      modality_specific_weight=modality_specific_weight,
      temperature=sspc_temperature, eps=sk_eps, n_iters=sk_iters,
      required_fraction=required_fraction, discrete=sk_discrete)
  active = queue.count >= queue.input["text"].shape[0]
  metrics = {"contrastive": contrastive, "sspc": sspc,
             "sspc_active": active, **pairs, **terms}
  return Swetha2023Loss(loss=lambda_nce * contrastive + lambda_sspc * sspc,
                        queue=update_sspc_queue(queue, out), metrics=metrics)
