"""Tests of ``capsjax.evaluation.clustering``: k-means and Hungarian matching."""

from __future__ import annotations

import numpy as np
import pytest

from capsjax.evaluation import clustering as C


def _from_table(table):
  """Labels and cluster ids with the given [cluster, class] counts."""
  clusters, labels = [], []
  for c, row in enumerate(table):
    for k, count in enumerate(row):
      clusters += [c] * count
      labels += [k] * count
  return np.array(labels), np.array(clusters)


def test_permuted_labelling_is_perfect():
  labels = np.array([0, 0, 1, 1, 2, 2, 2])
  clusters = np.array([5, 5, 3, 3, 9, 9, 9])       # renamed classes
  assert C.hungarian_accuracy(labels, clusters) == 1.0


def test_optimal_matching_beats_greedy():
  # Greedy (largest cell first) takes cluster 0 -> class 0 (5), then cluster
  # 1 has nothing left (0), cluster 2 -> class 2 (1): 6 / 14. The optimum
  # is 0 -> 1 (4), 1 -> 0 (4), 2 -> 2 (1): 9 / 14.
  labels, clusters = _from_table([[5, 4, 0], [4, 0, 0], [0, 0, 1]])
  assert C.hungarian_accuracy(labels, clusters) == pytest.approx(9 / 14)


def test_more_clusters_than_classes():
  # Clusters 0 and 1 both hold class 0; only one can be matched: 3 / 4.
  assert C.hungarian_accuracy([0, 0, 1, 1], [0, 1, 2, 2]) == 0.75
  # Fewer clusters than classes: one class stays unmatched: 2 / 3.
  assert C.hungarian_accuracy([0, 1, 2], [0, 1, 1]) == pytest.approx(2 / 3)


def test_kmeans_by_hand_and_deterministic():
  x = np.array([[0.0], [1.0], [10.0], [11.0]])
  result = C.kmeans(x, 2, seed=0, n_init=3)
  np.testing.assert_allclose(np.sort(result.centers[:, 0]), [0.5, 10.5])
  assert result.inertia == pytest.approx(4 * 0.25)
  assert result.assignments[0] == result.assignments[1]
  assert result.assignments[2] == result.assignments[3] != result.assignments[0]
  # Blobs: the same seed gives the same clustering.
  rng = np.random.default_rng(0)
  pts = rng.normal(size=(120, 5))
  a = C.kmeans(pts, 4, seed=7, n_init=2)
  b = C.kmeans(pts, 4, seed=7, n_init=2)
  np.testing.assert_array_equal(a.assignments, b.assignments)
  assert a.inertia == b.inertia


def test_restarts_keep_the_lowest_inertia():
  rng = np.random.default_rng(1)
  pts = rng.normal(size=(200, 3))
  one = [C.kmeans(pts, 6, seed=s, n_init=1).inertia for s in range(4)]
  many = C.kmeans(pts, 6, seed=0, n_init=8).inertia
  assert many <= min(one) + 1e-9


def test_zero_shot_accuracy_on_separated_blobs():
  rng = np.random.default_rng(2)
  centres = 20.0 * rng.normal(size=(5, 8))
  labels = np.repeat(np.arange(5), 30)
  features = centres[labels] + rng.normal(size=(150, 8))
  shuffled = np.array([3, 0, 4, 1, 2])[labels]        # class names permuted
  assert C.zero_shot_cluster_accuracy(features, shuffled, seed=0, n_init=3) == 1.0
  # Random features of 5 balanced classes: far below 1.
  noise = rng.normal(size=(150, 8))
  assert C.zero_shot_cluster_accuracy(noise, labels, seed=0, n_init=2) < 0.5


def test_errors():
  with pytest.raises(ValueError, match="at least k points"):
    C.kmeans(np.zeros((2, 3)), 3)
  with pytest.raises(ValueError, match="finite"):
    C.kmeans(np.array([[np.nan], [0.0]]), 1)
  with pytest.raises(ValueError, match="cluster_ids must have shape"):
    C.hungarian_accuracy([0, 1], [0, 1, 2])
  with pytest.raises(ValueError, match="labels must have shape"):
    C.zero_shot_cluster_accuracy(np.zeros((3, 2)), [0, 1])
