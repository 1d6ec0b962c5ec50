"""Float64 NumPy references for ``capsjax.losses``, written from the papers.

- ``mms_loss_ref``: Duarte et al. (2021) Eq. (4) with the sign and the sum of
  the two directions of the official ``MMS_Loss`` (everything_at_once).
- ``margin_loss_ref``: Sabour et al. (2017) Eq. (4), summed over classes.
"""

from __future__ import annotations

import math

import numpy as np


def mms_loss_ref(S, margin):
  """Sum over the two directions of the mean ``-log`` InfoNCE with margin."""
  S = np.asarray(S, np.float64)
  n = S.shape[0]
  row_terms, col_terms = [], []
  for i in range(n):
    positive = math.exp(S[i, i] - margin)
    # Item i of the first modality against every item j of the second.
    row_terms.append(-math.log(positive / (positive + sum(
        math.exp(S[i, j]) for j in range(n) if j != i))))
    # Item i of the second modality against every item k of the first.
    col_terms.append(-math.log(positive / (positive + sum(
        math.exp(S[k, i]) for k in range(n) if k != i))))
  return sum(row_terms) / n + sum(col_terms) / n


def margin_loss_ref(lengths, labels, m_plus=0.9, m_minus=0.1, lam=0.5):
  """``sum_k T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2``."""
  total = 0.0
  for v, t in zip(np.asarray(lengths, np.float64), np.asarray(labels, np.float64)):
    total += t * max(0.0, m_plus - v) ** 2
    total += lam * (1.0 - t) * max(0.0, v - m_minus) ** 2
  return total


def finite_difference_grad(fn, x, step=1e-6):
  """Central differences of the scalar ``fn(x)`` w.r.t. every entry of ``x``."""
  x = np.array(x, np.float64)
  g = np.zeros_like(x)
  for pos in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[pos] += step
    minus[pos] -= step
    g[pos] = (fn(plus) - fn(minus)) / (2 * step)
  return g
