"""Float64 NumPy reference of dynamic routing (Sabour et al., 2017).

Written straight from Procedure 1 and Eqs. (1)-(3) of the paper with plain
loops, independently of the JAX kernel; the test-side ground truth.
"""

from __future__ import annotations

import numpy as np


def squash(s):
  """Eq. (1) on one vector: ``|s|^2 / (1 + |s|^2) * s / |s|`` (0 at 0)."""
  s = np.asarray(s, np.float64)
  sq = float(np.dot(s, s))
  if sq == 0.0:
    return np.zeros_like(s)
  return sq / (1.0 + sq) * s / np.sqrt(sq)


def dynamic_routing(u_hat, n_iters=3):
  """Procedure 1 on ``u_hat [n_inp, n_out, d]``.

  Returns ``(v [n_out, d], c [n_inp, n_out])``, ``c`` of the last iteration.
  """
  u = np.asarray(u_hat, np.float64)
  n_inp, n_out, d = u.shape
  b = np.zeros((n_inp, n_out))
  for r in range(n_iters):
    # Eq. (3): softmax over the output capsules j, one input i at a time.
    c = np.zeros((n_inp, n_out))
    for i in range(n_inp):
      e = np.exp(b[i] - b[i].max())
      c[i] = e / e.sum()
    # Eq. (2) and Eq. (1).
    v = np.zeros((n_out, d))
    for j in range(n_out):
      s_j = np.zeros(d)
      for i in range(n_inp):
        s_j += c[i, j] * u[i, j]
      v[j] = squash(s_j)
    # Agreement update, only between iterations.
    if r < n_iters - 1:
      for i in range(n_inp):
        for j in range(n_out):
          b[i, j] += float(np.dot(u[i, j], v[j]))
  return v, c
