"""Tests of ``capsjax.evaluation.classification`` on hand-computed cases."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from capsjax.evaluation import classification as cl


def test_accuracy_by_hand():
  logits = np.array([[0.1, 2.0, -1.0],    # argmax 1, label 1: right
                     [3.0, 0.0, 0.5],     # argmax 0, label 2: wrong
                     [0.0, 0.0, 1.0],     # argmax 2, label 2: right
                     [1.0, 1.0, 0.0]],    # tie -> lowest index 0, label 1: wrong
                    np.float32)
  labels = np.array([1, 2, 2, 1])
  np.testing.assert_array_equal(cl.top1_correct(logits, labels), [1, 0, 1, 0])
  assert float(cl.accuracy(logits, labels)) == 0.5
  assert float(jax.jit(cl.accuracy)(logits, labels)) == 0.5


def test_set_accuracy_by_hand():
  # Logits over 4 classes; the predicted set is the top-2 classes with logit > 0.
  scores = np.array([
      [2.0, -1.0, 0.5, -3.0],   # {0, 2}; true {0, 2}: right
      [2.0, -1.0, 0.5, -3.0],   # {0, 2}; true {0}: wrong (extra class)
      [1.0, -1.0, -0.5, -3.0],  # {0};    true {0}: right (one digit)
      [1.0, -1.0, -0.5, -3.0],  # {0};    true {0, 1}: wrong (missed one)
      [3.0, 2.0, 1.0, -1.0],    # top-2 = {0, 1} (2 is third); true {0, 1}: right
      [-1.0, -2.0, -0.1, -3.0], # {} (nothing > 0); true {2}: wrong
  ], np.float32)
  truth = np.array([[1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0],
                    [1, 1, 0, 0], [0, 0, 1, 0]], np.float32)
  np.testing.assert_array_equal(
      cl.predicted_set(scores),
      [[1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0],
       [0, 0, 0, 0]])
  np.testing.assert_array_equal(cl.set_correct(scores, truth),
                                [1, 0, 1, 0, 1, 0])
  assert float(cl.set_accuracy(scores, truth)) == pytest.approx(0.5)
  # k=1: row 0's set is {0} only, so now row 0 is wrong and row 1 right.
  np.testing.assert_array_equal(cl.set_correct(scores, truth, k=1),
                                [0, 1, 1, 0, 0, 0])
  # Probabilities with threshold 1/2 decide as logits with threshold 0.
  probs = 1.0 / (1.0 + np.exp(-scores))
  np.testing.assert_array_equal(
      cl.set_correct(probs, truth, threshold=0.5), [1, 0, 1, 0, 1, 0])
  jitted = jax.jit(cl.set_accuracy, static_argnums=2)
  assert float(jitted(scores, truth, 2)) == pytest.approx(0.5)


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match="labels must have shape"):
    cl.accuracy(np.zeros((3, 4)), np.zeros(2, np.int32))
  with pytest.raises(ValueError, match="logits must have 2 axes"):
    cl.accuracy(np.zeros(4), np.zeros(4, np.int32))
  with pytest.raises(ValueError, match="multi_hot must have shape"):
    cl.set_accuracy(np.zeros((3, 4)), np.zeros((3, 5)))
  with pytest.raises(ValueError, match="k must be <= n_classes"):
    cl.set_accuracy(np.zeros((3, 4)), np.zeros((3, 4)), k=5)
  with pytest.raises(ValueError, match="k must be a positive integer"):
    cl.set_accuracy(np.zeros((3, 4)), np.zeros((3, 4)), k=0)
