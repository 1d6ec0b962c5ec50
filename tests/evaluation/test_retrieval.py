"""Tests of ``capsjax.evaluation.retrieval`` against hand-computed ranks."""

from __future__ import annotations

import numpy as np
import pytest

from capsjax.evaluation import retrieval as R

# Query i (row) against targets (columns); target i is correct.
#   q0: correct 0.9, nothing higher                        -> rank 0
#   q1: correct 0.5, higher 0.8 and 0.7                     -> rank 2
#   q2: correct 0.4 (col 2), higher 0.9; tied with 0.4 at cols 0, 1:
#       optimistic 1, pessimistic 1 + 2 = 3, average 1 + 2/2 = 2
#   q3: correct 0.3, the largest                            -> rank 0
_S = np.array([[0.9, 0.1, 0.3, 0.2],
               [0.8, 0.5, 0.7, 0.1],
               [0.4, 0.4, 0.4, 0.9],
               [0.0, 0.2, 0.1, 0.3]])


@pytest.mark.parametrize("ties,ranks,median,mean", [
    # ranks sorted (0, 0, 2, 2): median 1 -> MedR 2; mean 1 -> MeanR 2.
    ("average", [0, 2, 2, 0], 2.0, 2.0),
    # (0, 0, 2, 3): median 1 -> 2; mean 5/4 -> 2.25.
    ("pessimistic", [0, 2, 3, 0], 2.0, 2.25),
    # (0, 0, 1, 2): median 0.5 -> 1.5; mean 3/4 -> 1.75.
    ("optimistic", [0, 2, 1, 0], 1.5, 1.75),
])
def test_hand_computed_4x4(ties, ranks, median, mean):
  np.testing.assert_array_equal(R.retrieval_ranks(_S, ties=ties), ranks)
  m = R.retrieval_metrics(_S, ties=ties)
  assert m == {"r1": 0.5, "r5": 1.0, "r10": 1.0, "median_rank": median,
               "mean_rank": mean}


def test_reverse_direction_is_the_transpose():
  # Columns of _S as queries: (0.9 top) 0; (0.5 top) 0; 0.4 < 0.7 -> 1;
  # 0.3 < 0.9 -> 1. Ranks (0, 0, 1, 1): MedR 1.5, MeanR 1.5.
  m = R.retrieval_metrics(_S.T)
  assert m == {"r1": 0.5, "r5": 1.0, "r10": 1.0, "median_rank": 1.5,
               "mean_rank": 1.5}


def test_recall_at_5_and_10_and_missing_queries():
  # Query i has exactly ranks[i] wrong targets scored above its own.
  ranks = np.array([0, 4, 5, 9, 10, 11, 3, 1, 0, 7, 2, 6])
  n = len(ranks)
  s = -np.ones((n, n))
  rng = np.random.default_rng(0)
  for i, r in enumerate(ranks):
    s[i, i] = 0.0
    others = rng.permutation([j for j in range(n) if j != i])[:r]
    s[i, others] = 1.0
  m = R.retrieval_metrics(s)
  # < 1: {0, 0}; < 5: {0, 4, 3, 1, 0, 2}; < 10: all but 10 and 11.
  assert m["r1"] == 2 / 12 and m["r5"] == 6 / 12 and m["r10"] == 10 / 12
  # Sorted ranks 0 0 1 2 3 4 5 6 7 9 10 11: median (4 + 5) / 2 = 4.5.
  assert m["median_rank"] == 5.5
  assert m["mean_rank"] == pytest.approx(58 / 12 + 1)
  # 8 more queries absent from the features: misses in the recalls only.
  m20 = R.retrieval_metrics(s, num_queries=20)
  assert (m20["r1"], m20["r5"], m20["r10"]) == (2 / 20, 6 / 20, 10 / 20)
  assert m20["median_rank"] == 5.5


def test_constant_scores_are_not_rewarded_by_default():
  s = np.zeros((4, 4))
  assert R.retrieval_metrics(s)["r1"] == 0.0               # average rank 1.5
  assert R.retrieval_metrics(s, ties="pessimistic")["median_rank"] == 4.0
  assert R.retrieval_metrics(s, ties="optimistic")["r1"] == 1.0


def test_fuse_and_text_video_retrieval():
  np.testing.assert_allclose(
      R.fuse_embeddings([np.array([[3.0, 4.0]]), np.array([[0.0, 2.0]])]),
      [[0.3, 0.9]])
  # Video of clips 1 and 2 lean towards each other's caption; audio is
  # clean. Text t_i = e_i.
  text = np.eye(4)
  video = np.array([[1, 0, 0, 0], [0, .6, .8, 0], [0, .8, .6, 0], [0, 0, 0, 1.]])
  vt = R.text_video_retrieval(text, video)
  # t2v ranks (0, 1, 1, 0); the matrix is symmetric, so v2t too.
  for direction in ("t2v", "v2t"):
    assert vt[direction]["r1"] == 0.5 and vt[direction]["median_rank"] == 1.5
  # Fused targets: (v1 + a1)/2 = [0, .8, .4, 0] beats [0, .4, .8, 0] for t1.
  vat = R.text_video_retrieval(text, video, 2.0 * np.eye(4))
  assert vat["t2v"]["r1"] == 1.0 and vat["v2t"]["r1"] == 1.0


def test_cosine_similarity_matches_normalised_dot_products():
  a = np.array([[3.0, 4.0], [1.0, 0.0]])
  b = np.array([[0.0, 2.0], [-1.0, -1.0]])
  np.testing.assert_allclose(
      R.cosine_similarity(a, b),
      [[0.8, -0.7 * np.sqrt(2)], [0.0, -1 / np.sqrt(2)]])


def test_errors():
  with pytest.raises(ValueError, match="similarity must have shape"):
    R.retrieval_metrics(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="ties must be one of"):
    R.retrieval_metrics(np.eye(3), ties="random")
  with pytest.raises(ValueError, match="NaN"):
    R.retrieval_metrics(np.full((2, 2), np.nan))
  with pytest.raises(ValueError, match="num_queries"):
    R.retrieval_metrics(np.eye(3), num_queries=2)
  with pytest.raises(ValueError, match="targets must have shape"):
    R.cosine_similarity(np.zeros((2, 3)), np.zeros((2, 4)))
