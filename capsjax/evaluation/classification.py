"""Classification metrics: top-1 accuracy and DiverseMultiMNIST set accuracy.

Pure ``jax.numpy`` functions (they accept NumPy arrays and work under
``jit``), with per-example versions (:func:`top1_correct`,
:func:`set_correct`) for metric functions that sum over padded evaluation
batches.

Set accuracy is the DiverseMultiMNIST criterion of Tsai et al. (2020,
Sec. 6): "the prediction is said to be correct if and only if the recognized
digits match all the digits in the image". Images hold one or two digits, so
the predicted set must decide how many digits it recognises; here it is the
classes among the ``k`` highest scores whose score exceeds ``threshold``
(by default logit 0, i.e. a sigmoid probability above 1/2, the decision rule
of the binary cross-entropy the paper trains with). The paper does not spell
its rule out; the authors' code for this experiment is not public.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from capsjax import _shapes

__all__ = [
    "accuracy",
    "predicted_set",
    "set_accuracy",
    "set_correct",
    "top1_correct",
]


def top1_correct(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Whether each example's highest logit is its label.

  Args:
    logits: ``[b, n_classes]`` scores.
    labels: ``[b]`` integer classes.

  Returns:
    float32 ``[b]``: 1 where ``argmax(logits) == label``, else 0 (ties go to
    the lowest class index, as ``argmax``).
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  b, _ = _shapes.check_ndim("logits", logits, 2, "[b, n_classes]")
  _shapes.check_shape("labels", labels, (b,), "[b]")
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def accuracy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Top-1 accuracy: the fraction of ``argmax(logits) == labels``.

  Args:
    logits: ``[b, n_classes]``.
    labels: ``[b]`` integer classes.

  Returns:
    A float32 scalar in [0, 1].
  """
  return jnp.mean(top1_correct(logits, labels))


def _check_set_args(scores, multi_hot, k):
  scores, multi_hot = jnp.asarray(scores), jnp.asarray(multi_hot)
  b, n = _shapes.check_ndim("scores", scores, 2, "[b, n_classes]")
  _shapes.check_shape("multi_hot", multi_hot, (b, n), "[b, n_classes]")
  _shapes.check_positive_int("k", k)
  if k > n:
    raise ValueError(f"k must be <= n_classes = {n}, got {k}.")
  return scores, multi_hot


def predicted_set(scores: ArrayLike, k: int = 2, *,
                  threshold: float = 0.0) -> jax.Array:
  """The recognised classes: among the ``k`` best scores, those ``> threshold``.

  Args:
    scores: ``[b, n_classes]`` logits (or probabilities with
      ``threshold=0.5``).
    k: the most classes an image may hold (2 for DiverseMultiMNIST).
    threshold: a class is recognised only if its score exceeds this.

  Returns:
    float32 multi-hot ``[b, n_classes]`` with at most ``k`` ones per row (ties
    at the ``k``-th score go to the lowest class indices, as
    ``jax.lax.top_k``).
  """
  scores = jnp.asarray(scores)
  _, n = _shapes.check_ndim("scores", scores, 2, "[b, n_classes]")
  _shapes.check_positive_int("k", k)
  if k > n:
    raise ValueError(f"k must be <= n_classes = {n}, got {k}.")
  _, top = jax.lax.top_k(scores, k)                      # [b, k]
  in_top = jnp.sum(jax.nn.one_hot(top, n, dtype=jnp.float32), axis=1)
  return in_top * (scores > threshold).astype(jnp.float32)


def set_correct(scores: ArrayLike, multi_hot: ArrayLike, k: int = 2, *,
                threshold: float = 0.0) -> jax.Array:
  """Whether each example's predicted set (:func:`predicted_set`) is its set.

  Args:
    scores: ``[b, n_classes]`` logits.
    multi_hot: ``[b, n_classes]`` true sets (1 for present classes).
    k: the most classes an image may hold.
    threshold: the score a recognised class must exceed.

  Returns:
    float32 ``[b]``: 1 where the sets are equal, else 0.
  """
  scores, multi_hot = _check_set_args(scores, multi_hot, k)
  predicted = predicted_set(scores, k, threshold=threshold)
  return jnp.all(predicted == (multi_hot > 0.5), axis=-1).astype(jnp.float32)


def set_accuracy(scores: ArrayLike, multi_hot: ArrayLike, k: int = 2, *,
                 threshold: float = 0.0) -> jax.Array:
  """DiverseMultiMNIST accuracy: the fraction of exactly recognised sets.

  Args:
    scores: ``[b, n_classes]`` logits.
    multi_hot: ``[b, n_classes]`` true sets.
    k: the most classes an image may hold (2 for DiverseMultiMNIST).
    threshold: the score a recognised class must exceed (logit 0 =
      probability 1/2).

  Returns:
    A float32 scalar in [0, 1].
  """
  return jnp.mean(set_correct(scores, multi_hot, k, threshold=threshold))
