"""Synthetic tri-modal clips with known shared concepts (offline stand-in).

A stand-in for pre-extracted video / audio / text features (HowTo100M,
YouCook2, MSR-VTT), in the record layout of
:class:`capsjax.data.multimodal.FeatureClipSource`, for running the
multimodal experiments end to end without the real data. It is **not** a
proxy for the papers' numbers.

Generative model. Fixed per ``seed``: ``n_concepts`` concept centres ``c_k ~
N(0, I_latent)`` and, per modality ``m``, a random two-layer map ``g_m(h) =
tanh(h W_m + b_m) V_m`` (``W_m`` Gaussian with variance ``1 / fan_in``,
``V_m`` with variance ``1 / width``). Clip ``i`` of a split, from
``np.random.default_rng((seed, split, i))``:

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
    "SyntheticTriModal",
    "TriModalLatent",
    "default_knobs",
]

DEFAULT_DIMS = {"video": 64, "audio": 32, "text": 24}
DEFAULT_MIN_LENS = {"video": 4, "audio": 4, "text": 2}
DEFAULT_MAX_LENS = {"video": 16, "audio": 24, "text": 12}


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
               seed: int = 0):
    """Builds the source.

    Args:
      split: ``"train"``, ``"test"`` or another name (its own stream).
      num_examples: clips in this split.
      dims: ``{modality: feature width}``; default :data:`DEFAULT_DIMS`.
      min_lens, max_lens: valid-token count range per modality (defaults
        :data:`DEFAULT_MIN_LENS`, :data:`DEFAULT_MAX_LENS`; ``max_lens`` is
        also the padded length).
      n_concepts: number of concepts (classes).
      latent_dim: size of the shared latent ``z``.
      concept_spread: std of a clip's latent around its concept centre
        (centres have std 1); 0 makes all clips of a concept identical.
      distractor_dims: size of each modality's private nuisance (0: none).
      noise: std of the Gaussian noise added to every feature.
      observed_fraction: probability that a token sees a latent coordinate.
      distractor_tokens: probability that a token shows an unrelated latent.
      hidden_multiplier: hidden width of the maps, times the feature width.
      seed: seeds the concepts, maps and every clip.
    """
    dims = dict(DEFAULT_DIMS if dims is None else dims)
    min_lens = dict(DEFAULT_MIN_LENS if min_lens is None else min_lens)
    max_lens = dict(DEFAULT_MAX_LENS if max_lens is None else max_lens)
    if not dims:
      raise ValueError("dims must name at least one modality.")
    for name, value in (("num_examples", num_examples),
                        ("n_concepts", n_concepts), ("latent_dim", latent_dim),
                        ("hidden_multiplier", hidden_multiplier)):
      _shapes.check_positive_int(name, value)
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
    # The fixed world: concepts and maps depend on the seed only.
    world = np.random.default_rng((seed, 0x5EED))
    self.centers = world.normal(size=(n_concepts, latent_dim))
    fan_in = latent_dim + distractor_dims
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

  def _draw(self, rng: np.random.Generator) -> TriModalLatent:
    label = int(rng.integers(self.n_concepts))
    z = self.centers[label] + self.concept_spread * rng.normal(
        size=self.latent_dim)
    nuisance = {m: rng.normal(size=self.distractor_dims) for m in self.dims}
    lengths = {m: int(rng.integers(self.min_lens[m], self.max_lens[m] + 1))
               for m in self.dims}
    return TriModalLatent(label, z, nuisance, lengths)

  def latent(self, index: int) -> TriModalLatent:
    """The ground truth of clip ``index`` (concept, shared latent, ...)."""
    return self._draw(self._rng(index))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
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
    return (f"SyntheticTriModal(split={self.split!r}, n={self.num_examples}, "
            f"dims={self.dims}, n_concepts={self.n_concepts})")


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
