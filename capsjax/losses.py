"""Losses of the reimplemented papers.

- :func:`mms_loss`: the Masked Margin Softmax retrieval loss that Duarte et
  al. (2021) and the Everything-At-Once / Multi-SK code train with.
- :func:`margin_loss`: the capsule margin loss of Sabour et al. (2017), the
  classification loss of EncapNet (Li et al., 2018).

Both are per-example functions of arrays, with no batch axis beyond what the
loss itself needs (``mms_loss`` is a loss over a batch's similarity matrix;
``margin_loss`` is per sample, to be averaged over the batch by the caller).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from capsjax import _shapes


def _check_number(name: str, value, *, positive: bool = False) -> None:
  """Raises ``ValueError`` unless ``value`` is a finite real number (> 0)."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or (positive and value <= 0)):
    what = "a finite number > 0" if positive else "a finite number"
    raise ValueError(f"{name} must be {what}, got {value!r}.")


def mms_loss(S: jax.typing.ArrayLike, *, margin: float = 0.001) -> jax.Array:
  """Masked Margin Softmax loss (Duarte et al. 2021, Eq. 4; official ``MMS_Loss``).

  ``S[i, j]`` is the similarity of item ``i`` of one modality with item ``j``
  of the other; the positives are on the diagonal. With
  ``S' = S - margin * I``,

  ``L = mean_i -log softmax_j(S')[i, i] + mean_j -log softmax_i(S')[i, j=i]``

  i.e. the sum (not the mean) of the cross-entropies of the rows and of the
  columns, each averaged over the batch, with no temperature, as the
  official ``MMS_Loss`` of the everything_at_once code computes it.

  Args:
    S: ``[B, B]`` similarity matrix, positives on the diagonal.
    margin: the margin subtracted from the positives (official default
      0.001), a finite number.

  Returns:
    The scalar loss, in the dtype of ``S``.

  Raises:
    ValueError: if ``S`` is not square 2-D or ``margin`` is not a number.

  References:
    K. Duarte, B. Chen, N. Shvetsova, A. Rouditchenko, S. Thomas, et al.
    Routing with Self-Attention for Multimodal Capsule Networks. 2021, Eq. (4);
    official ``MMS_Loss`` in ninatu/everything_at_once
    (``everything_at_once/loss/contrastive_losses.py``).
  """
  shape = _shapes.check_ndim("S", S, 2, "[B, B]")
  _shapes.check_shape("S", S, (shape[0], shape[0]), "[B, B]")
  _check_number("margin", margin)
  S = jnp.asarray(S)
  if not jnp.issubdtype(S.dtype, jnp.floating):
    S = S.astype(jnp.float32)
  n = shape[0]
  logits = S - margin * jnp.eye(n, dtype=S.dtype)
  rows = jax.nn.log_softmax(logits, axis=1)  # item i against every j
  cols = jax.nn.log_softmax(logits, axis=0)  # item j against every i
  return -(jnp.mean(jnp.diagonal(rows)) + jnp.mean(jnp.diagonal(cols)))


def margin_loss(lengths: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *,
                m_plus: float = 0.9, m_minus: float = 0.1,
                lam: float = 0.5) -> jax.Array:
  """The capsule margin loss of one sample (Sabour et al. 2017, Eq. 4).

  ``L = sum_k T_k max(0, m_plus - |v_k|)^2
        + lam (1 - T_k) max(0, |v_k| - m_minus)^2``,

  summed over the classes ``k``. EncapNet (Li et al. 2018, "Overall Loss
  Function") trains with this loss on its class capsules; its official
  ``MarginLoss`` sums over classes and averages over the batch, so the batch
  loss is ``jnp.mean(jax.vmap(margin_loss)(lengths, labels))``.

  Args:
    lengths: ``[n_classes]`` class-capsule lengths ``|v_k|`` (in ``[0, 1]``
      after a squash, though any real values are accepted).
    labels: ``[n_classes]`` targets ``T_k``: one-hot, or multi-hot for
      several objects (as on MultiMNIST); soft values are used as given.
    m_plus: the lower bound for present classes (default 0.9).
    m_minus: the upper bound for absent classes (default 0.1).
    lam: the down-weighting ``lambda`` of absent classes (default 0.5).

  Returns:
    The scalar loss of the sample, in the dtype of ``lengths``.

  Raises:
    ValueError: if the shapes differ or a hyper-parameter is not a number.

  References:
    S. Sabour, N. Frosst, G. E. Hinton. Dynamic Routing Between Capsules.
    NeurIPS 2017, Eq. (4); H. Li et al. Neural Network Encapsulation. ECCV
    2018, Sec. 3.2; official ``MarginLoss`` in hli2020/nn_encapsulation
    (``layers/cap_layer.py``).
  """
  (n_classes,) = _shapes.check_ndim("lengths", lengths, 1, "[n_classes]")
  _shapes.check_shape("labels", labels, (n_classes,), "[n_classes]")
  _check_number("m_plus", m_plus)
  _check_number("m_minus", m_minus)
  _check_number("lam", lam)
  lengths = jnp.asarray(lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.floating):
    lengths = lengths.astype(jnp.float32)
  labels = jnp.asarray(labels).astype(lengths.dtype)
  present = jnp.square(jnp.maximum(m_plus - lengths, 0))
  absent = jnp.square(jnp.maximum(lengths - m_minus, 0))
  return jnp.sum(labels * present + lam * (1 - labels) * absent)
