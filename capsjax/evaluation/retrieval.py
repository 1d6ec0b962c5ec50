"""Zero-shot retrieval metrics: R@1, R@5, R@10, median and mean rank.

The protocol of Duarte et al. (2021, Sec. 4.2) and Swetha et al. (2023):
``N`` queries (e.g. YouCook2 / MSR-VTT captions) and ``N`` targets (their
clips), query ``i``'s only correct target is target ``i``; each query ranks
all targets by similarity, and the metrics summarise the rank of the correct
one.

Ranks (0-based position of the correct target in the query's descending
order of similarity):

* ``ties="average"`` (default): a correct target tied with ``t`` others gets
  the mean of the ``t + 1`` positions the tie spans, i.e. the expected rank
  under a random order of the tied targets. This is the default of the
  Everything-At-Once evaluation code (``break_ties='averaging'``), which
  Swetha et al. use. A tie at the top then is not a hit at R@1 (0.5 > 0).
* ``ties="pessimistic"``: the correct target comes after every target with an
  equal score (the worst position); never overstates a model.
* ``ties="optimistic"``: before them (the best position; EAO's
  ``'optimistically'``; what AVLnet's code gives when ties are absent).

With continuous embeddings ties essentially never happen, and the three
agree; they differ for degenerate models (e.g. constant embeddings, where
"optimistic" would report R@1 = 1).

``num_queries``: the public YouCook2 / MSR-VTT feature files lack a few clips
(EAO: 3,339 of 3,350 YouCook2 clips, 968 of 1,000 MSR-VTT clips) and the
published numbers count the missing queries as misses. Pass the complete
size: the recalls are divided by it, while median and mean rank are those of
the queries present (as the EAO code does).

References:
  K. Duarte et al. Routing with Self-Attention for Multimodal Capsule
  Networks. 2021. Sec. 4.2, Table 1.
  M. Swetha et al. Preserving Modality Structure Improves Multi-Modal
  Learning. ICCV 2023 (supplement Sec. 1, Table 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from capsjax import _shapes

__all__ = [
    "TIES",
    "cosine_similarity",
    "fuse_embeddings",
    "l2_normalize",
    "retrieval_metrics",
    "retrieval_ranks",
    "text_video_retrieval",
]

TIES = ("average", "pessimistic", "optimistic")
RECALL_AT = (1, 5, 10)


def retrieval_ranks(similarity: np.ndarray, *,
                    ties: str = "average") -> np.ndarray:
  """0-based rank of each query's correct target (``similarity[i, i]``).

  Args:
    similarity: ``[N, N]`` scores, higher is better; row ``i`` is query ``i``
      against every target, target ``i`` the correct one. NaN scores are
      rejected.
    ties: ``"average"``, ``"pessimistic"`` or ``"optimistic"`` (see the
      module docstring).

  Returns:
    ``[N]`` float64 ranks in ``[0, N - 1]`` (halves possible with
    ``"average"``).

  Raises:
    ValueError: on a non-square matrix, NaN scores or an unknown ``ties``.
  """
  if ties not in TIES:
    raise ValueError(f"ties must be one of {TIES}, got {ties!r}.")
  s = np.asarray(similarity, np.float64)
  n = _shapes.check_ndim("similarity", s, 2, "[N, N]")[0]
  _shapes.check_shape("similarity", s, (n, n), "[N, N]")
  if n == 0:
    raise ValueError("similarity must hold at least one query, got [0, 0].")
  if np.isnan(s).any():
    raise ValueError("similarity contains NaN; cannot rank.")
  correct = np.diag(s)[:, None]
  better = np.sum(s > correct, axis=1)           # targets strictly ahead
  tied = np.sum(s == correct, axis=1) - 1        # others with the same score
  if ties == "optimistic":
    return better.astype(np.float64)
  if ties == "pessimistic":
    return (better + tied).astype(np.float64)
  return better + tied / 2.0


def retrieval_metrics(similarity: np.ndarray, *, ties: str = "average",
                      num_queries: int | None = None) -> dict[str, float]:
  """Recall at 1/5/10 and median/mean rank of a retrieval similarity matrix.

  Args:
    similarity: ``[N, N]``, query ``i``'s match is target ``i`` (e.g. text
      embeddings @ video embeddings.T for text-to-video; pass the transpose
      for video-to-text).
    ties: how tied scores are ranked (module docstring); default EAO's
      averaging.
    num_queries: the complete evaluation size ``>= N``; the ``num_queries -
      N`` missing queries count as misses in the recalls. Default ``N``.

  Returns:
    ``{"r1", "r5", "r10"}``: fractions in [0, 1]; ``"median_rank"``,
    ``"mean_rank"``: 1-based ranks of the queries present.

  Raises:
    ValueError: as :func:`retrieval_ranks`, or ``num_queries < N``.
  """
  ranks = retrieval_ranks(similarity, ties=ties)
  total = len(ranks) if num_queries is None else num_queries
  _shapes.check_positive_int("num_queries", total)
  if total < len(ranks):
    raise ValueError(
        f"num_queries = {total} is smaller than the {len(ranks)} queries of "
        f"similarity.")
  metrics = {f"r{k}": float(np.sum(ranks < k)) / total for k in RECALL_AT}
  metrics["median_rank"] = float(np.median(ranks)) + 1.0
  metrics["mean_rank"] = float(np.mean(ranks)) + 1.0
  return metrics


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  """``x / max(|x|, eps)`` over the last axis (float64; zero rows stay zero)."""
  x = np.asarray(x, np.float64)
  norm = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
  return x / np.maximum(norm, eps)


def cosine_similarity(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """``[N, M]`` cosine similarities of ``queries [N, D]`` and ``targets [M, D]``.

  Cosine similarity ranks exactly as the Euclidean distance of L2-normalised
  embeddings (``|a - b|^2 = 2 - 2 cos``), the distance Duarte et al. name.
  """
  _, d = _shapes.check_ndim("queries", queries, 2, "[N, D]")
  _shapes.check_shape("targets", targets, (None, d), "[M, D]")
  return l2_normalize(queries) @ l2_normalize(targets).T


def fuse_embeddings(embeddings: Sequence[np.ndarray]) -> np.ndarray:
  """The fused "video+audio" target: mean of the L2-normalised embeddings.

  For models without a learned fusion (Duarte et al.'s VAT rows, AVLnet,
  MCN) the joint video+audio representation of a clip is the sum of its
  normalised video and audio embeddings; under cosine similarity the sum and
  the mean rank identically. Models with a learned fused embedding (EAO's
  ``video_audio``) pass that embedding directly instead.

  Args:
    embeddings: one or more ``[N, D]`` arrays of the same shape.

  Returns:
    ``[N, D]`` float64.
  """
  if not embeddings:
    raise ValueError("embeddings must hold at least one [N, D] array.")
  shape = _shapes.check_ndim("embeddings[0]", embeddings[0], 2, "[N, D]")
  for k, e in enumerate(embeddings[1:], start=1):
    _shapes.check_shape(f"embeddings[{k}]", e, shape, "[N, D]")
  return np.mean([l2_normalize(e) for e in embeddings], axis=0)


def text_video_retrieval(
    text: np.ndarray, video: np.ndarray, audio: np.ndarray | None = None, *,
    ties: str = "average", num_queries: int | None = None,
) -> dict[str, dict[str, float]]:
  """Text-to-video(+audio) retrieval in both directions, by cosine similarity.

  Args:
    text: ``[N, D]`` text (caption) embeddings.
    video: ``[N, D]`` video embeddings of the same clips, in the same order.
    audio: optional ``[N, D]`` audio embeddings; when given, the targets are
      the fused video+audio embeddings (:func:`fuse_embeddings`): the
      paper's "VAT" setting; without it the "VT" setting.
    ties, num_queries: as in :func:`retrieval_metrics`.

  Returns:
    ``{"t2v": metrics, "v2t": metrics}`` (the second on the transposed
    matrix: each clip retrieves its caption), each as
    :func:`retrieval_metrics`.
  """
  target = video if audio is None else fuse_embeddings([video, audio])
  _shapes.check_shape("video", target, np.shape(text), "[N, D] like text")
  sim = cosine_similarity(text, target)
  return {"t2v": retrieval_metrics(sim, ties=ties, num_queries=num_queries),
          "v2t": retrieval_metrics(sim.T, ties=ties, num_queries=num_queries)}
