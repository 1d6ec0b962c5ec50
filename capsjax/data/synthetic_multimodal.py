"""Synthetic tri-modal clips with known shared concepts (offline stand-in).

A stand-in for pre-extracted video / audio / text features (HowTo100M,
YouCook2, MSR-VTT), in the record layout of
:class:`capsjax.data.multimodal.FeatureClipSource`, for running the
multimodal experiments end to end without the real data. It is **not** a
proxy for the papers' numbers.

Generative model (``structure="latent"``, the default). Fixed per ``seed``:
``n_concepts`` concept centres ``c_k ~ N(0, I_latent)`` and, per modality
``m``, a random two-layer map ``g_m(h) = tanh(h W_m + b_m) V_m`` (``W_m``
Gaussian with variance ``1 / fan_in``, ``V_m`` with variance ``1 / width``).
Clip ``i`` of a split, from ``np.random.default_rng((seed, split, i))``:

1. its concept ``y ~ U{0..n_concepts-1}`` (the label) and its latent ``z = c_y
   + concept_spread * e``, ``e ~ N(0, I_latent)``: what all its modalities
   share (the concept part makes same-class clips alike, the clip part makes
   each clip retrievable);
2. per modality, a private nuisance ``u_m ~ N(0, I_distractor_dims)`` that
   the other modalities do not see (e.g. a speaker's voice, the lighting);
3. per modality, a sequence of ``T_m ~ U{min_len..max_len}`` valid tokens.
   Token ``t`` is ``g_m([z * o_t, u_m]) + noise * eps_t``, where ``o_t``
   keeps each latent coordinate with probability ``observed_fraction`` (a
   token sees only part of the clip: the tokens must be pooled), except
   that with probability ``distractor_tokens`` the token shows an unrelated
   random latent instead of ``z`` (background; it must be ignored).
4. tokens past ``T_m`` are zero and masked out.

Retrieval (text -> video) needs a model to undo two different nonlinear
maps, separate ``z`` from the private nuisance, pool partial views and skip
distractors; the concept label gives zero-shot clustering a ground truth.

Defaults and why (measured with ``dims`` / lengths at their defaults, 256
test clips, chance R@1 = 0.004): 10 concepts, ``latent_dim=16``,
``concept_spread=1.0`` (concept and clip parts of equal variance:
across-concept retrieval is easy, within-concept hard; k-means on the true
latents finds the concepts with accuracy ~0.8), ``distractor_dims=8`` private
coordinates per modality, ``noise=0.3``, 70 % of the latent coordinates seen
per token, 10 % distractor tokens, lengths video 4..16, audio 4..24, text
2..12. Text -> video R@1 on the test split: true latents 1.0; ridge
regression from pooled text to pooled video fitted on 4,096 training clips
0.12; a two-layer MLP per modality on the pooled features trained with a
contrastive loss 0.28 on 32,768 training clips (it overfits 4,096: best 0.16).
So retrieval is learnable, a linear or pooled model is far from solving it,
and more data helps (clips are generated on the fly: ``num_examples`` is
free). A harder setting that was tried (noise 0.5, 50 % seen, 20 %
distractors, 16 private dims) left the MLP at R@1 0.01 (4,096 clips).

Entity structure (``structure="entities"``; pre-registered). The capsule
premise (Duarte et al. 2021, Sec. 3.1: a capsule's pose "represents an
entity's properties" and its activation "the probability that the given
entity/object exists within the input"): a clip is a *set* of present
entities, each with its own properties, and every modality shows them.
Fixed per ``seed``: ``n_entity_types`` type vectors ``t_k ~ N(0,
I_type_dim)`` and per modality a random two-layer map ``g_m`` of the same
kind as above (input ``[t, a, u_m]``, fan-in ``type_dim + prop_dim +
distractor_dims``). Clip ``i`` of a split, from ``np.random.default_rng((seed,
split, i))``:

1. the number of present entities ``S ~ U{1..max_entities}``, ``S``
   distinct types drawn uniformly without replacement (in draw order), and
   per present entity its own property vector ``a_j ~ N(0, I_prop_dim)``:
   the set ``{(type, property)}`` is what all modalities share;
2. per modality, the private nuisance ``u_m ~ N(0, I_distractor_dims)`` and
   ``T_m ~ U{min_len..max_len}`` valid tokens, as above;
3. token ``t`` of modality ``m``: with probability ``distractor_tokens`` a
   background token (an unrelated entity: a uniformly random type of all
   ``n_entity_types`` and a fresh property ``a ~ N(0, I_prop_dim)``), else
   one of the clip's ``S`` entities chosen uniformly (``j``); the token is
   ``g_m([t_type, a, u_m]) + noise * eps_t``;
4. tokens past ``T_m`` are zero and masked out;
5. ``label`` = the type of the *first-drawn* entity (a ground truth for
   zero-shot clustering with ``n_entity_types`` classes; a clip may show
   other types too, so it is a noisy one).

Retrieval then requires matching the *set* of (type, property) pairs
across modalities. ``n_concepts``, ``latent_dim``, ``concept_spread`` and
``observed_fraction`` are not used in this mode (a token sees all of its
entity); ``noise``, ``distractor_tokens``, ``distractor_dims``, the lengths,
the widths and ``hidden_multiplier`` mean the same as above. Defaults:
``n_entity_types=16``, ``type_dim=8``, ``prop_dim=4``, ``max_entities=3``,
and the shared knobs at their defaults above (``noise=0.3``, 10 %
background tokens, 8 private dims). The ground truth of a clip is
:meth:`SyntheticTriModal.latent` (a :class:`TriModalEntities`) and the
entity each token shows :meth:`SyntheticTriModal.token_sources`.

The pre-registered use (Duarte et al.'s self-attention routing vs no
routing, ``experiments/duarte2021/configs/synthetic_entities.py``): this
design was written before any comparison run and is not changed after
seeing one; one sanity run (true latents vs a linear model on pooled
features) was allowed to adjust the noise level only, once (see the
README, "Multi-entity synthetic clips (pre-registered)"). That run, at the
defaults (256 test clips, chance R@1 = 0.004): text -> video R@1 from the
true latents (each clip's set of (type, [1, property]) as a 16 x 5 vector,
cosine) 1.0; from only the entities each modality's tokens show 0.93 (the
text of 16 % of the clips misses one of its entities; R@10 1.0); ridge
regression from max-pooled text to max-pooled video fitted on 4,096
training clips 0.020 (R@10 0.12; the same probe on ``"latent"`` clips:
0.063). Learnable, far from solved by a linear map: the noise stayed 0.3
(the rule fixed before the run: change it only if the ridge R@1 were above
0.5 or below 0.01).

Splits: ``"train"`` and ``"test"`` (and any other name) use independent
streams of clips but share the concepts and maps, so a model trained on one
transfers to the other; every record is a pure function of ``(seed, split,
index)`` and the constructor arguments.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from capsjax import _shapes

__all__ = [
    "DEFAULT_DIMS",
    "DEFAULT_MAX_LENS",
    "DEFAULT_MIN_LENS",
    "STRUCTURES",
    "SyntheticTriModal",
    "TriModalEntities",
    "TriModalLatent",
    "default_knobs",
]

DEFAULT_DIMS = {"video": 64, "audio": 32, "text": 24}
DEFAULT_MIN_LENS = {"video": 4, "audio": 4, "text": 2}
DEFAULT_MAX_LENS = {"video": 16, "audio": 24, "text": 12}
# "latent": one continuous latent per clip; "entities": a set of entities.
STRUCTURES = ("latent", "entities")


class TriModalLatent(NamedTuple):
  """The ground truth of one clip.

  Attributes:
    label: its concept.
    z: ``[latent_dim]`` its shared latent.
    nuisance: modality -> ``[distractor_dims]`` private latent.
    lengths: modality -> number of valid tokens.
  """
  label: int
  z: np.ndarray
  nuisance: dict[str, np.ndarray]
  lengths: dict[str, int]


class TriModalEntities(NamedTuple):
  """The ground truth of one clip of ``structure="entities"``.

  Attributes:
    label: the type of its first-drawn entity (``types[0]``).
    types: ``[S]`` the distinct types of its present entities, in draw order.
    properties: ``[S, prop_dim]`` each present entity's property vector.
    nuisance: modality -> ``[distractor_dims]`` private latent.
    lengths: modality -> number of valid tokens.
  """
  label: int
  types: np.ndarray
  properties: np.ndarray
  nuisance: dict[str, np.ndarray]
  lengths: dict[str, int]


def _split_id(split: str) -> int:
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty string, got {split!r}.")
  return {"train": 0, "test": 1}.get(split, zlib.crc32(split.encode()) + 2)


class SyntheticTriModal:
  """Synthetic video / audio / text token sequences (see the module docstring).

  A grain random-access source; ``source[i]`` is ``{m: float32 [L_m, d_m],
  f"{m}_mask": bool [L_m], "label": int32 []}`` for ``m`` in ``dims``, with
  ``L_m = max_lens[m]``.
  """

  def __init__(self, split: str = "train", *, num_examples: int,
               dims: Mapping[str, int] | None = None,
               min_lens: Mapping[str, int] | None = None,
               max_lens: Mapping[str, int] | None = None,
               n_concepts: int = 10, latent_dim: int = 16,
               concept_spread: float = 1.0, distractor_dims: int = 8,
               noise: float = 0.3, observed_fraction: float = 0.7,
               distractor_tokens: float = 0.1, hidden_multiplier: int = 2,
               structure: str = "latent", n_entity_types: int = 16,
               type_dim: int = 8, prop_dim: int = 4, max_entities: int = 3,
               seed: int = 0):
    """Builds the source.

    Args:
      split: ``"train"``, ``"test"`` or another name (its own stream).
      num_examples: clips in this split.
      dims: ``{modality: feature width}``; default :data:`DEFAULT_DIMS`.
      min_lens, max_lens: valid-token count range per modality (defaults
        :data:`DEFAULT_MIN_LENS`, :data:`DEFAULT_MAX_LENS`; ``max_lens`` is
        also the padded length).
      n_concepts: number of concepts (classes); ``"latent"`` only.
      latent_dim: size of the shared latent ``z``; ``"latent"`` only.
      concept_spread: std of a clip's latent around its concept centre
        (centres have std 1); 0 makes all clips of a concept identical;
        ``"latent"`` only.
      distractor_dims: size of each modality's private nuisance (0: none).
      noise: std of the Gaussian noise added to every feature.
      observed_fraction: probability that a token sees a latent coordinate;
        ``"latent"`` only.
      distractor_tokens: probability that a token shows an unrelated latent
        (``"entities"``: an unrelated entity).
      hidden_multiplier: hidden width of the maps, times the feature width.
      structure: ``"latent"`` (one continuous latent per clip) or
        ``"entities"`` (a set of present entities; module docstring).
      n_entity_types: number of entity types (the labels); ``"entities"``.
      type_dim: size of each type vector; ``"entities"``.
      prop_dim: size of each entity's property vector; ``"entities"``.
      max_entities: a clip has 1..max_entities distinct entities (at most
        ``n_entity_types``); ``"entities"``.
      seed: seeds the concepts (types), maps and every clip.
    """
    if structure not in STRUCTURES:
      raise ValueError(f"structure must be one of {STRUCTURES}, got "
                       f"{structure!r}.")
    dims = dict(DEFAULT_DIMS if dims is None else dims)
    min_lens = dict(DEFAULT_MIN_LENS if min_lens is None else min_lens)
    max_lens = dict(DEFAULT_MAX_LENS if max_lens is None else max_lens)
    if not dims:
      raise ValueError("dims must name at least one modality.")
    for name, value in (("num_examples", num_examples),
                        ("n_concepts", n_concepts), ("latent_dim", latent_dim),
                        ("hidden_multiplier", hidden_multiplier),
                        ("n_entity_types", n_entity_types),
                        ("type_dim", type_dim), ("prop_dim", prop_dim),
                        ("max_entities", max_entities)):
      _shapes.check_positive_int(name, value)
    if max_entities > n_entity_types:
      raise ValueError(f"max_entities = {max_entities} exceeds n_entity_types "
                       f"= {n_entity_types}: a clip's entity types are "
                       "distinct.")
    if distractor_dims < 0:
      raise ValueError(f"distractor_dims must be >= 0, got {distractor_dims}.")
    for name, value in (("concept_spread", concept_spread), ("noise", noise)):
      if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}.")
    for name, value in (("observed_fraction", observed_fraction),
                        ("distractor_tokens", distractor_tokens)):
      if not 0 <= value <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    if observed_fraction == 0:
      raise ValueError("observed_fraction must be > 0: tokens would carry no "
                       "information about the clip.")
    for m, d in dims.items():
      _shapes.check_positive_int(f"dims[{m!r}]", d)
      for lens, what in ((min_lens, "min_lens"), (max_lens, "max_lens")):
        if m not in lens:
          raise ValueError(f"{what} lacks modality {m!r}.")
        _shapes.check_positive_int(f"{what}[{m!r}]", lens[m])
      if min_lens[m] > max_lens[m]:
        raise ValueError(f"min_lens[{m!r}] = {min_lens[m]} exceeds "
                         f"max_lens[{m!r}] = {max_lens[m]}.")

    self.split, self.split_id = split, _split_id(split)
    self.num_examples, self.seed = num_examples, seed
    self.dims, self.min_lens, self.max_lens = dims, min_lens, max_lens
    self.n_concepts, self.latent_dim = n_concepts, latent_dim
    self.concept_spread, self.distractor_dims = concept_spread, distractor_dims
    self.noise, self.observed_fraction = noise, observed_fraction
    self.distractor_tokens = distractor_tokens
    self.structure, self.n_entity_types = structure, n_entity_types
    self.type_dim, self.prop_dim = type_dim, prop_dim
    self.max_entities = max_entities
    # The fixed world: concepts (entity types) and maps depend on the seed
    # only. ``centers`` (latent) / ``type_vectors`` (entities); the other is
    # None.
    world = np.random.default_rng((seed, 0x5EED))
    if structure == "latent":
      self.centers = world.normal(size=(n_concepts, latent_dim))
      self.type_vectors = None
      fan_in = latent_dim + distractor_dims
    else:
      self.centers = None
      self.type_vectors = world.normal(size=(n_entity_types, type_dim))
      fan_in = type_dim + prop_dim + distractor_dims
    self.maps = {}
    for m, d in dims.items():
      width = hidden_multiplier * d
      self.maps[m] = (world.normal(size=(fan_in, width)) / np.sqrt(fan_in),
                      0.1 * world.normal(size=width),
                      world.normal(size=(width, d)) / np.sqrt(width))

  def __len__(self) -> int:
    return self.num_examples

  def _rng(self, index: int) -> np.random.Generator:
    index = int(index)
    if not 0 <= index < self.num_examples:
      raise IndexError(f"clip {index} out of range for {self.num_examples}.")
    return np.random.default_rng((self.seed, self.split_id, index))

  def _draw(self, rng: np.random.Generator
            ) -> TriModalLatent | TriModalEntities:
    if self.structure == "entities":
      return self._draw_entities(rng)
    label = int(rng.integers(self.n_concepts))
    z = self.centers[label] + self.concept_spread * rng.normal(
        size=self.latent_dim)
    nuisance = {m: rng.normal(size=self.distractor_dims) for m in self.dims}
    lengths = {m: int(rng.integers(self.min_lens[m], self.max_lens[m] + 1))
               for m in self.dims}
    return TriModalLatent(label, z, nuisance, lengths)

  def _draw_entities(self, rng: np.random.Generator) -> TriModalEntities:
    count = int(rng.integers(1, self.max_entities + 1))
    types = rng.choice(self.n_entity_types, size=count, replace=False)
    properties = rng.normal(size=(count, self.prop_dim))
    nuisance = {m: rng.normal(size=self.distractor_dims) for m in self.dims}
    lengths = {m: int(rng.integers(self.min_lens[m], self.max_lens[m] + 1))
               for m in self.dims}
    return TriModalEntities(int(types[0]), types, properties, nuisance,
                            lengths)

  def latent(self, index: int) -> TriModalLatent | TriModalEntities:
    """The ground truth of clip ``index``: a :class:`TriModalLatent`
    (concept, shared latent, ...) or, for ``structure="entities"``, a
    :class:`TriModalEntities` (types and properties of its entities, ...)."""
    return self._draw(self._rng(index))

  def token_sources(self, index: int) -> dict[str, np.ndarray]:
    """``structure="entities"``: per modality, ``int [T_m]``: the position
    in ``latent(index).types`` of the entity each valid token shows, -1 for
    a background token."""
    if self.structure != "entities":
      raise ValueError("token_sources needs structure='entities', this "
                       f"source has {self.structure!r}.")
    return self._entity_clip(index)[1]

  def _map(self, m: str, h: np.ndarray) -> np.ndarray:
    w, b, v = self.maps[m]
    return np.tanh(h @ w + b) @ v

  def _pad(self, m: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, length = len(x), self.max_lens[m]
    features = np.zeros((length, x.shape[1]), np.float32)
    features[:t] = x
    mask = np.zeros(length, bool)
    mask[:t] = True
    return features, mask

  def _entity_clip(self, index: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(record, token sources)`` of clip ``index`` (entities)."""
    rng = self._rng(index)
    truth = self._draw_entities(rng)
    count = len(truth.types)
    record, sources = {}, {}
    for m, d in self.dims.items():
      t = truth.lengths[m]
      slot = rng.integers(count, size=t)
      background = rng.random(t) < self.distractor_tokens
      other_type = rng.integers(self.n_entity_types, size=t)
      other_prop = rng.normal(size=(t, self.prop_dim))
      kind = np.where(background, other_type, truth.types[slot])
      prop = np.where(background[:, None], other_prop,
                      truth.properties[slot])
      h = np.concatenate(
          [self.type_vectors[kind], prop,
           np.broadcast_to(truth.nuisance[m], (t, self.distractor_dims))],
          axis=1)
      x = self._map(m, h) + self.noise * rng.normal(size=(t, d))
      record[m], record[f"{m}_mask"] = self._pad(m, x)
      sources[m] = np.where(background, -1, slot)
    record["label"] = np.int32(truth.label)
    return record, sources

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if self.structure == "entities":
      return self._entity_clip(index)[0]
    rng = self._rng(index)
    truth = self._draw(rng)
    record = {}
    for m, d in self.dims.items():
      t, length = truth.lengths[m], self.max_lens[m]
      seen = rng.random((t, self.latent_dim)) < self.observed_fraction
      # Distractor tokens show a random clip of a random concept instead.
      other = (self.centers[rng.integers(self.n_concepts, size=t)]
               + self.concept_spread * rng.normal(size=(t, self.latent_dim)))
      distract = rng.random(t) < self.distractor_tokens
      shown = np.where(distract[:, None], other, truth.z[None])
      h = np.concatenate(
          [shown * seen, np.broadcast_to(truth.nuisance[m],
                                         (t, self.distractor_dims))], axis=1)
      w, b, v = self.maps[m]
      x = np.tanh(h @ w + b) @ v + self.noise * rng.normal(size=(t, d))
      features = np.zeros((length, d), np.float32)
      features[:t] = x
      mask = np.zeros(length, bool)
      mask[:t] = True
      record[m], record[f"{m}_mask"] = features, mask
    record["label"] = np.int32(truth.label)
    return record

  def __repr__(self) -> str:
    kind = (f"n_concepts={self.n_concepts}" if self.structure == "latent"
            else f"structure='entities', n_entity_types={self.n_entity_types}")
    return (f"SyntheticTriModal(split={self.split!r}, n={self.num_examples}, "
            f"dims={self.dims}, {kind})")


def default_knobs() -> dict[str, object]:
  """:class:`SyntheticTriModal`'s generator settings and their defaults.

  Everything but the split, the size and the widths (``dims``): what an
  experiment config stores as ``data.synthetic``, so configs start from the
  generator's own defaults instead of copies of them.
  """
  params = inspect.signature(SyntheticTriModal.__init__).parameters
  knobs = {name: p.default for name, p in params.items()
           if p.kind is p.KEYWORD_ONLY and name not in ("num_examples", "dims")}
  knobs["min_lens"] = dict(DEFAULT_MIN_LENS)
  knobs["max_lens"] = dict(DEFAULT_MAX_LENS)
  return knobs
