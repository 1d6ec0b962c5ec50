"""Float64 NumPy reference of EM routing (Hinton, Sabour & Frosst, 2018).

Written from Procedure 1 of the paper with plain loops, independently of the
JAX kernel, with the choices that ``capsjax.routing.em_routing`` documents:
``R`` starts at ``1 / n_out``; inverse temperature
``lambda_t = final_lambda * (1 - 0.95 ** (t + 1))``; M-step on
``R' = R * a_inp``; ``eps`` added to the variance; ``cost_h = (beta_u + log
sigma_h) * sum_i R'_ij`` (not normalised); ``a = sigmoid(lambda (beta_a -
sum_h cost_h))``; E-step with the full Gaussian density (the ``2 pi`` term
included here, which must cancel); no E-step after the last M-step; an output
with no data (``sum_i R'_ij = 0``) gets ``mu = 0``, ``sigma2 = eps``.
"""

from __future__ import annotations

import math

import numpy as np


def _m_step(R, a_inp, V, beta_u, beta_a, lam, eps):
  n_inp, n_out, d = V.shape
  a_out = np.zeros(n_out)
  mu = np.zeros((n_out, d))
  sigma2 = np.zeros((n_out, d))
  for j in range(n_out):
    r = np.array([R[i, j] * a_inp[i] for i in range(n_inp)])
    m = r.sum()
    cost = 0.0
    for h in range(d):
      if m > 0:
        mu[j, h] = sum(r[i] * V[i, j, h] for i in range(n_inp)) / m
        var = sum(r[i] * (V[i, j, h] - mu[j, h]) ** 2 for i in range(n_inp)) / m
      else:
        mu[j, h], var = 0.0, 0.0
      sigma2[j, h] = var + eps
      cost += (beta_u[j] + math.log(math.sqrt(sigma2[j, h]))) * m
    a_out[j] = 1.0 / (1.0 + math.exp(-lam * (beta_a[j] - cost)))
  return a_out, mu, sigma2


def _e_step(a_out, mu, sigma2, V):
  n_inp, n_out, d = V.shape
  R = np.zeros((n_inp, n_out))
  for i in range(n_inp):
    log_ap = np.zeros(n_out)
    for j in range(n_out):
      log_p = 0.0
      for h in range(d):
        # log N(V | mu, sigma2), the full density.
        log_p += (-(V[i, j, h] - mu[j, h]) ** 2 / (2 * sigma2[j, h])
                  - 0.5 * math.log(2 * math.pi * sigma2[j, h]))
      log_ap[j] = math.log(a_out[j]) + log_p
    e = np.exp(log_ap - log_ap.max())
    R[i] = e / e.sum()
  return R


def em_routing(a_inp, votes, beta_u, beta_a, n_iters=3, final_lambda=0.01, eps=1e-8):
  """Returns ``(a_out [n_out], mu [n_out, d], sigma2 [n_out, d], R [n_inp, n_out])``."""
  a_inp, V, beta_u, beta_a = (np.asarray(x, np.float64)
                              for x in (a_inp, votes, beta_u, beta_a))
  n_inp, n_out, _ = V.shape
  R = np.full((n_inp, n_out), 1.0 / n_out)
  for t in range(n_iters):
    lam = final_lambda * (1.0 - 0.95 ** (t + 1))
    a_out, mu, sigma2 = _m_step(R, a_inp, V, beta_u, beta_a, lam, eps)
    if t < n_iters - 1:
      R = _e_step(a_out, mu, sigma2, V)
  return a_out, mu, sigma2, R
