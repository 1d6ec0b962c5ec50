"""Float64 NumPy references for the optimal-transport kernels.

Written from the papers and the official algorithms (plain ``exp`` and
divisions, no log domain), independently of the JAX code:

- ``multi_sinkhorn_ref`` / ``multi_sk_assignment_ref``: Swetha et al. (2023),
  suppl. Sec. 3 and the official ``multi_sinkhorn`` / ``calculate_sk``
  (Swetha5/Multi_Sinkhorn_Knopp), in float64, where nothing overflows for the
  test scores.
- ``sinkhorn_divergence_ref``: Li et al. (2018), Eqs. (8)-(11), with the
  scaling-vector order of the official EncapNet code (``OptTrans`` in
  hli2020/nn_encapsulation): the ``x``-side scaling is updated first.
"""

from __future__ import annotations

import numpy as np


def multi_sinkhorn_ref(scores, eps, n_iters, required_properties, discrete=True,
                       class_dist=None, reorder=True):
  """``[K, B, K]`` Multi-SK assignment, the official algorithm in float64.

  ``reorder=False`` uses ``class_dist`` in the given order instead of the
  official reordering by channel 0's marginals (only to show that the tests
  can tell the two apart).
  """
  s = np.asarray(scores, np.float64)
  n_samples, n_anchors = s.shape
  if discrete:
    damp = np.ones(n_anchors)
    damp[:n_anchors - required_properties] = 0.25
  else:
    damp = (np.arange(n_anchors) + 1.0) / n_anchors * 0.9 + 0.1
  q = np.empty((n_anchors, n_samples, n_anchors))
  for c in range(n_anchors):
    q[c] = np.exp(damp[c] * s / eps)
  assert np.all(np.isfinite(q)), "reference overflow: pick other test scores"
  q = q / q.sum()

  cd = np.ones(n_anchors) if class_dist is None else np.array(class_dist, np.float64)
  cd = cd / cd.sum() * n_samples
  cd = np.maximum(cd, 1.0)
  cd = cd / cd.sum() * n_samples
  first_channel_marginals = q[0].sum(axis=0)
  target = np.empty(n_anchors)
  target[np.argsort(first_channel_marginals, kind="stable")] = np.sort(cd)
  if not reorder:
    target = cd

  a = q
  for _ in range(n_iters):
    for k in range(n_anchors):  # samples: column (c, :, k) sums to target[k]
      col = a[:, :, k].sum(axis=1, keepdims=True)  # [c, 1]
      a[:, :, k] = a[:, :, k] * target[k] / (col + 1e-5)
    a = a / (a.sum(axis=0, keepdims=True) + 1e-5)  # channels
    a = a / (a.sum(axis=2, keepdims=True) + 1e-5)  # anchors
  return a / a.sum(axis=2, keepdims=True)


def multi_sk_assignment_ref(similarity, eps, n_iters, required_fraction,
                            discrete=True):
  """``[B, K]`` official ``calculate_sk`` (constant rows give 0)."""
  n_anchors = np.shape(similarity)[1]
  rp = int(n_anchors * required_fraction)
  a = multi_sinkhorn_ref(similarity, eps, n_iters, rp, discrete=discrete)
  summed = a[n_anchors - rp:].sum(axis=0)
  lo = summed.min(axis=1, keepdims=True)
  hi = summed.max(axis=1, keepdims=True)
  out = np.zeros_like(summed)
  ok = (hi - lo)[:, 0] > 0
  out[ok] = (summed[ok] - lo[ok]) / (hi[ok] - lo[ok])
  return out


def cost_matrix_ref(x, y, cost):
  """``[n, m]`` ground cost ``Q`` between the rows of ``x`` and ``y``."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  if cost == "cosine":
    def direction(p):  # a zero vector has direction 0
      n = np.linalg.norm(p, axis=1, keepdims=True)
      return np.divide(p, n, out=np.zeros_like(p), where=n > 0)
    return 1.0 - direction(x) @ direction(y).T
  if cost == "sqeuclidean":
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
  raise ValueError(cost)


def sinkhorn_plan_ref(c, epsilon, n_iters):
  """``[n, m]`` plan after ``n_iters`` Sinkhorn iterations (Eqs. 9-10).

  Uniform marginals ``1/n``, ``1/m``; the column scaling starts constant, the
  row (x-side) scaling is updated first, then the column scaling, as the
  official ``OptTrans._basic_compute_loss`` does.
  """
  n, m = c.shape
  k = np.exp(-c / epsilon)
  b = np.full(m, 1.0 / m)
  for _ in range(n_iters):
    a = (1.0 / n) / (k @ b)
    b = (1.0 / m) / (k.T @ a)
  return a[:, None] * k * b[None, :]


def transport_cost_ref(x, y, epsilon, n_iters, cost, plan=None):
  """``W_Q = <Q, P>`` (Eq. 8); ``plan`` fixes ``P`` (for the stopped gradient)."""
  c = cost_matrix_ref(x, y, cost)
  p = sinkhorn_plan_ref(c, epsilon, n_iters) if plan is None else plan
  return float((c * p).sum())


def sinkhorn_divergence_ref(x, y, epsilon, n_iters, debiased=True,
                            cost="cosine", plans=None):
  """Eq. (11) ``2 W(x, y) - W(x, x) - W(y, y)`` (or ``W(x, y)``)."""
  plans = plans or (None, None, None)
  w_xy = transport_cost_ref(x, y, epsilon, n_iters, cost, plans[0])
  if not debiased:
    return w_xy
  w_xx = transport_cost_ref(x, x, epsilon, n_iters, cost, plans[1])
  w_yy = transport_cost_ref(y, y, epsilon, n_iters, cost, plans[2])
  return 2.0 * w_xy - w_xx - w_yy


def sinkhorn_plans_ref(x, y, epsilon, n_iters, cost):
  """The three plans of Eq. (11), to hold fixed for the stopped gradient."""
  return tuple(
      sinkhorn_plan_ref(cost_matrix_ref(p, q, cost), epsilon, n_iters)
      for p, q in ((x, y), (x, x), (y, y)))


def finite_difference_grad(fn, arrays, step=1e-6):
  """Central differences of the scalar ``fn(*arrays)`` w.r.t. each array."""
  arrays = [np.array(a, np.float64) for a in arrays]
  grads = []
  for idx, arr in enumerate(arrays):
    g = np.zeros_like(arr)
    for pos in np.ndindex(arr.shape):
      plus = [a.copy() for a in arrays]
      minus = [a.copy() for a in arrays]
      plus[idx][pos] += step
      minus[idx][pos] -= step
      g[pos] = (fn(*plus) - fn(*minus)) / (2 * step)
    grads.append(g)
  return grads
