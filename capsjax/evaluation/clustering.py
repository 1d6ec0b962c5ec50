"""Zero-shot classification by clustering: k-means + Hungarian matching.

The protocol of Swetha et al. (2023, supplement Sec. 1.1, after Chen et al.'s
MCN): embed every clip of the dataset (HMDB-51, UCF-101; the average of the
video and audio representations), cluster the embeddings with k-means with
``k`` = the number of classes, match clusters one-to-one to classes so that
the number of clips whose cluster maps to their class is largest (the
Hungarian algorithm, Kuhn 1955), and report that fraction.

:func:`kmeans` is plain Lloyd iteration in NumPy (float64) with k-means++
seeding (Arthur & Vassilvitskii 2007) and ``n_init`` seeded restarts, keeping
the restart of lowest inertia; the optimal matching is
``scipy.optimize.linear_sum_assignment`` on the contingency table.

References:
  M. Swetha et al. Preserving Modality Structure Improves Multi-Modal
  Learning. ICCV 2023, supplement Sec. 1.1, Table 1.
  B. Chen et al. Multimodal Clustering Networks for Self-Supervised Learning
  from Unlabeled Videos. ICCV 2021.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from capsjax import _shapes

__all__ = [
    "KMeansResult",
    "contingency_table",
    "hungarian_accuracy",
    "kmeans",
    "zero_shot_cluster_accuracy",
]


class KMeansResult(NamedTuple):
  """What :func:`kmeans` returns.

  Attributes:
    centers: ``[k, d]`` float64 cluster centres.
    assignments: ``[n]`` int64 cluster of each point (nearest centre).
    inertia: sum of squared distances of the points to their centres.
    iterations: Lloyd iterations run by the kept restart.
  """
  centers: np.ndarray
  assignments: np.ndarray
  inertia: float
  iterations: int


def _squared_distances(x: np.ndarray, centers: np.ndarray,
                       x_sq: np.ndarray) -> np.ndarray:
  """``[n, k]`` squared Euclidean distances, clipped at 0 (round-off).

  ``x_sq``: ``[n]`` the points' squared norms, computed once per clustering.
  """
  d = x_sq[:, None] - 2.0 * x @ centers.T + np.sum(centers * centers, 1)[None]
  return np.maximum(d, 0.0)


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator,
                      x_sq: np.ndarray) -> np.ndarray:
  """k-means++ seeding: each next centre drawn with probability ``D(x)^2``."""
  n = len(x)
  centers = [x[rng.integers(n)]]
  closest = _squared_distances(x, centers[0][None], x_sq)[:, 0]
  for _ in range(1, k):
    total = closest.sum()
    # All points coincide with a centre already: any point will do.
    probs = closest / total if total > 0 else np.full(n, 1.0 / n)
    c = x[rng.choice(n, p=probs)]
    centers.append(c)
    closest = np.minimum(closest, _squared_distances(x, c[None], x_sq)[:, 0])
  return np.stack(centers)


def _lloyd(x: np.ndarray, centers: np.ndarray, iters: int, tol: float,
           x_sq: np.ndarray) -> KMeansResult:
  for it in range(1, iters + 1):
    assign = np.argmin(_squared_distances(x, centers, x_sq), axis=1)
    # Cluster means in one pass over the points sorted by cluster (a loop
    # of boolean masks would read all points once per cluster).
    counts = np.bincount(assign, minlength=len(centers))
    filled = counts > 0        # an emptied cluster keeps its old centre
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
    sums = np.add.reduceat(x[np.argsort(assign, kind="stable")], starts, axis=0)
    new = centers.copy()
    new[filled] = sums / counts[filled, None]
    shift = np.max(np.sum((new - centers) ** 2, axis=1))
    centers = new
    if shift <= tol:
      break
  d = _squared_distances(x, centers, x_sq)
  assign = np.argmin(d, axis=1)
  inertia = float(d[np.arange(len(x)), assign].sum())
  return KMeansResult(centers, assign, inertia, it)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 10,
           iters: int = 300, tol: float = 1e-10) -> KMeansResult:
  """k-means clustering (k-means++ init, Lloyd iterations, restarts).

  Args:
    x: ``[n, d]`` points, ``n >= k``.
    k: number of clusters.
    seed: seeds every restart (``np.random.default_rng(seed)``); the same
      seed gives the same result.
    n_init: restarts; the one of lowest inertia is returned.
    iters: maximum Lloyd iterations per restart.
    tol: stop when no centre moves by more than ``sqrt(tol)``.

  Returns:
    A :class:`KMeansResult`.

  Raises:
    ValueError: on a bad shape, ``k > n``, non-finite points or a
      non-positive count.
  """
  x = np.asarray(x, np.float64)
  n, _ = _shapes.check_ndim("x", x, 2, "[n, d]")
  for name, value in (("k", k), ("n_init", n_init), ("iters", iters)):
    _shapes.check_positive_int(name, value)
  if k > n:
    raise ValueError(f"k = {k} clusters need at least k points, got n = {n}.")
  if not np.isfinite(x).all():
    raise ValueError("x must be finite (it contains NaN or inf).")
  rng = np.random.default_rng(seed)
  x_sq = np.sum(x * x, axis=1)
  best = None
  for _ in range(n_init):
    result = _lloyd(x, _kmeans_plus_plus(x, k, rng, x_sq), iters, tol, x_sq)
    if best is None or result.inertia < best.inertia:
      best = result
  return best


def contingency_table(true_labels: np.ndarray, cluster_ids: np.ndarray,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Counts ``[n_clusters, n_classes]`` of points per (cluster, class).

  Returns:
    ``(table, cluster_values, class_values)``: the table and the sorted
    distinct cluster ids and labels its rows and columns stand for.
  """
  true_labels = np.asarray(true_labels)
  cluster_ids = np.asarray(cluster_ids)
  n = _shapes.check_ndim("true_labels", true_labels, 1, "[n]")[0]
  _shapes.check_shape("cluster_ids", cluster_ids, (n,), "[n]")
  if n == 0:
    raise ValueError("true_labels must hold at least one label.")
  classes, class_idx = np.unique(true_labels, return_inverse=True)
  clusters, cluster_idx = np.unique(cluster_ids, return_inverse=True)
  table = np.zeros((len(clusters), len(classes)), np.int64)
  np.add.at(table, (cluster_idx, class_idx), 1)
  return table, clusters, classes


def hungarian_accuracy(true_labels: np.ndarray, cluster_ids: np.ndarray) -> float:
  """Accuracy after the best one-to-one mapping of clusters to classes.

  Each cluster is assigned at most one class and each class at most one
  cluster, maximising the number of points whose cluster maps to their
  label; the points of unmatched clusters (more clusters than classes) or
  unmatched classes count as errors. Labels and cluster ids may be any
  integers (only their identity matters).

  Args:
    true_labels: ``[n]`` ground-truth classes.
    cluster_ids: ``[n]`` cluster of each point.

  Returns:
    The fraction of points in [0, 1].
  """
  table, _, _ = contingency_table(true_labels, cluster_ids)
  rows, cols = linear_sum_assignment(table, maximize=True)
  return float(table[rows, cols].sum()) / float(table.sum())


def zero_shot_cluster_accuracy(features: np.ndarray, labels: np.ndarray, *,
                               seed: int = 0, n_init: int = 10,
                               iters: int = 300,
                               normalize: bool = False) -> float:
  """Swetha et al.'s zero-shot classification: k-means + Hungarian matching.

  Args:
    features: ``[n, d]`` clip representations (Swetha et al.: the mean of the
      video and audio embeddings).
    labels: ``[n]`` classes; ``k`` is their number of distinct values.
    seed, n_init, iters: of :func:`kmeans`.
    normalize: L2-normalise the features first (spherical geometry, as for
      cosine-trained embeddings); the supplement does not say, so off by
      default.

  Returns:
    The accuracy in [0, 1].
  """
  features = np.asarray(features, np.float64)
  n = _shapes.check_ndim("features", features, 2, "[n, d]")[0]
  _shapes.check_shape("labels", labels, (n,), "[n]")
  if normalize:
    features = features / np.maximum(
        np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  k = len(np.unique(labels))
  result = kmeans(features, k, seed=seed, n_init=n_init, iters=iters)
  return hungarian_accuracy(labels, result.assignments)
