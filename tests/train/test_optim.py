"""Tests of ``capsjax.train.optim``: schedules, optimiser updates, mixup.

Schedule values are checked against numbers computed by hand from the papers'
descriptions; each optimiser's parameter trajectory is checked against a
float64 NumPy loop written from the PyTorch update rules the authors used
(``torch.optim.SGD`` / ``Adam`` with ``weight_decay``, Heinsen's RAdam).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from capsjax.train import optim
from tests.testing_utils import assert_rel_close

N_PARAMS = 6


def _grads(n_steps, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n_steps, N_PARAMS)).astype(np.float32)


def _params(seed=1):
  return np.random.default_rng(seed).normal(size=N_PARAMS).astype(np.float32)


def _run(tx, params, grads):
  """Applies ``tx`` for every row of ``grads``.

  Returns the float64 running sum of the updates (``p_t - p_0`` without the
  float32 cancellation of subtracting ``p_0``) and the optimiser states.
  """
  update = jax.jit(tx.update)
  state = tx.init(jnp.asarray(params))
  p = jnp.asarray(params)
  total = np.zeros(params.shape, np.float64)
  moved, states = [], []
  for g in grads:
    u, state = update(jnp.asarray(g), state, p)
    p = optax.apply_updates(p, u)
    total = total + np.asarray(u, np.float64)
    moved.append(total.copy())
    states.append(state)
  return np.stack(moved), states


def _assert_schedule(schedule, expected: dict[int, float], tol=1e-6):
  for step, want in expected.items():
    got = float(schedule(step))
    assert abs(got - want) <= tol * abs(want) + 1e-12, (step, got, want)


# --------------------------------------------------------------- Heinsen


def test_one_cycle_values_by_hand():
  # 200 steps, turn at 20: halfway up at 10, a quarter of the cosine at 65
  # ((65 - 20) / 180 = 1/4), halfway down at 110.
  lr = optim.one_cycle_schedule(200, 1e-5, 5e-4)
  quarter = (1 + math.cos(math.pi / 4)) / 2  # 0.853553...
  _assert_schedule(lr, {
      0: 1e-5, 10: 2.55e-4, 20: 5e-4, 65: 1e-5 + 4.9e-4 * quarter,
      110: 2.55e-4, 200: 1e-5, 260: 1e-5})
  b1 = optim.one_cycle_schedule(200, 0.999, 0.9 * 0.999)
  _assert_schedule(b1, {
      0: 0.999, 10: 0.94905, 20: 0.8991, 65: 0.999 - 0.0999 * quarter,
      110: 0.94905, 200: 0.999})


def test_heinsen_lr_schedule_is_returned():
  _, lr = optim.heinsen_optimizer(200)
  _assert_schedule(lr, {0: 1e-5, 20: 5e-4, 110: 2.55e-4, 200: 1e-5})


def _radam_reference(params, grads, lrs, b1s, b2=0.999, eps=1e-8):
  """Rectified Adam (Liu et al. 2020, Alg. 2) in float64, beta1 per step."""
  p = params.astype(np.float64)
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  rho_inf = 2.0 / (1.0 - b2) - 1.0
  out = []
  for t, (g, lr, b1) in enumerate(zip(grads.astype(np.float64), lrs, b1s), 1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1 ** t)
    rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    if rho >= 5.0:
      v_hat = v / (1 - b2 ** t)
      r = math.sqrt((rho - 4) * (rho - 2) * rho_inf
                    / ((rho_inf - 4) * (rho_inf - 2) * rho))
      p = p - lr * r * m_hat / (np.sqrt(v_hat) + eps)
    else:
      p = p - lr * m_hat
    out.append(p.copy())
  return np.stack(out)


def test_heinsen_beta1_read_back_and_radam_updates():
  total = 20  # turn at step 2; cosine halfway at 2 + 18 / 2 = 11
  tx, _ = optim.heinsen_optimizer(total)
  grads = _grads(total + 1)
  params = _params()
  traj, states = _run(tx, params, grads)
  # The state records the hyper-parameters the last update used (count k).
  b1_used = np.array([float(s.hyperparams["b1"]) for s in states])
  lr_used = np.array([float(s.hyperparams["learning_rate"]) for s in states])
  by_hand = {0: 0.999, 1: 0.94905, 2: 0.8991, 11: 0.94905, 20: 0.999}
  for k, want in by_hand.items():
    assert abs(b1_used[k] - want) < 1e-6, (k, b1_used[k], want)
  assert abs(lr_used[2] - 5e-4) < 1e-9 and abs(lr_used[11] - 2.55e-4) < 1e-9
  assert np.all(np.diff(b1_used[:3]) < 0) and np.all(np.diff(b1_used[2:]) > 0)
  # The updates use those values (both RAdam branches: rho_t < 5 for t <= 5).
  b1_exact = [0.999 - 0.0999 * _cycle(k, total) for k in range(total + 1)]
  lr_exact = [1e-5 + 4.9e-4 * _cycle(k, total) for k in range(total + 1)]
  ref = _radam_reference(params, grads, lr_exact, b1_exact)
  assert_rel_close(traj, ref - params, name="radam trajectory")


def _cycle(k, total, frac=0.1):
  turn = frac * total
  if k <= turn:
    return k / turn
  return 0.5 * (1 + math.cos(math.pi * (k - turn) / (total - turn)))


# ------------------------------------------------------ Tsai (SGD) / Li (Adam)


def test_tsai_step_decay_values():
  _, lr = optim.tsai_optimizer(10)
  _assert_schedule(lr, {0: 0.1, 1499: 0.1, 1500: 0.01, 2499: 0.01,
                        2500: 0.001, 3499: 0.001})


def _sgd_reference(params, grads, lr, momentum, wd):
  """torch.optim.SGD(lr, momentum, weight_decay), dampening 0, float64."""
  p = params.astype(np.float64)
  buf = None
  out = []
  for g in grads.astype(np.float64):
    d = g + wd * p  # PyTorch adds the decay to the gradient
    buf = d if buf is None else momentum * buf + d
    p = p - lr * buf
    out.append(p.copy())
  return np.stack(out)


def test_tsai_sgd_weight_decay_is_added_to_the_gradient():
  # A large decay makes the coupling visible against the gradient's size.
  tx, _ = optim.tsai_optimizer(100, weight_decay=0.3)
  grads = _grads(5, seed=2)
  params = _params(seed=3)
  traj, _ = _run(tx, params, grads)
  ref = _sgd_reference(params, grads, 0.1, 0.9, 0.3)
  assert_rel_close(traj, ref - params, name="sgd trajectory")
  # The decay matters at this size: without it the trajectory is far off.
  no_decay = _sgd_reference(params, grads, 0.1, 0.9, 0.0)
  assert np.max(np.abs(traj - (no_decay - params))) > 1e-2


def test_li_step_decay_values():
  _, lr = optim.li_optimizer(7)
  _assert_schedule(lr, {0: 1e-4, 1399: 1e-4, 1400: 1e-5, 2100: 1e-6,
                        2800: 1e-7, 4199: 1e-7})


def _adam_l2_reference(params, grads, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam(lr, weight_decay=wd): L2 added to the gradient."""
  p = params.astype(np.float64)
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  out = []
  for t, g in enumerate(grads.astype(np.float64), 1):
    g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    out.append(p.copy())
  return np.stack(out)


def test_li_adam_weight_decay_is_added_to_the_gradient():
  tx, _ = optim.li_optimizer(100, learning_rate=1e-2, weight_decay=0.5)
  grads = 0.1 * _grads(5, seed=4)
  params = _params(seed=5)
  traj, _ = _run(tx, params, grads)
  ref = _adam_l2_reference(params, grads, 1e-2, 0.5)
  assert_rel_close(traj, ref - params, name="adam trajectory")


# ---------------------------------------------------- Duarte / Swetha decays


def test_duarte_cosine_values():
  _, lr = optim.duarte_optimizer(1000)
  quarter = (1 + math.cos(math.pi / 4)) / 2
  _assert_schedule(lr, {0: 1e-3, 250: 1e-3 * quarter, 500: 5e-4,
                        1000: 0.0, 1500: 0.0})


def test_swetha_exponential_values():
  _, lr = optim.swetha_optimizer(100)
  _assert_schedule(lr, {0: 5e-5, 99: 5e-5, 100: 4.5e-5, 250: 4.05e-5,
                        1400: 5e-5 * 0.9 ** 14})


@pytest.mark.parametrize("make", [
    lambda: optim.heinsen_optimizer(0),
    lambda: optim.heinsen_optimizer(10, warmup_frac=1.0),
    lambda: optim.heinsen_optimizer(10, b1_start=1.0),
    lambda: optim.tsai_optimizer(0),
    lambda: optim.tsai_optimizer(10, boundary_epochs=(250, 150)),
    lambda: optim.li_optimizer(10, weight_decay=-1.0),
    lambda: optim.duarte_optimizer(10, final_fraction=2.0),
    lambda: optim.swetha_optimizer(10, decay_rate=0.0),
])
def test_bad_options_raise(make):
  with pytest.raises(ValueError):
    make()


def test_bad_option_message_names_argument():
  with pytest.raises(ValueError, match="total_steps"):
    optim.heinsen_optimizer(0)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    optim.swetha_optimizer(-3)


# ------------------------------------------------------------------ mixup

B = 64
N_CLASSES = 10
_mixup = jax.jit(optim.mixup, static_argnames=("alpha", "per_example"))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  eye = np.eye(B, dtype=np.float32)  # row i = e_i: the mixing matrix shows
  y = np.eye(N_CLASSES, dtype=np.float32)[rng.integers(0, N_CLASSES, B)]
  feats = rng.normal(size=(B, 3, 2)).astype(np.float32)
  mask = (rng.uniform(size=(B, 5)) < 0.7).astype(np.float32)
  return eye, y, feats, mask


def _recover(mixed_eye):
  """(lam, perm) from mixed identity rows: (1 - lam) e_i + lam e_perm(i)."""
  m = np.asarray(mixed_eye, np.float64)
  off = m - np.diag(np.diag(m))
  perm = np.where(off.max(axis=1) > 0, off.argmax(axis=1), np.arange(B))
  lam = np.where(perm != np.arange(B), m[np.arange(B), perm], np.nan)
  return lam, perm


def test_mixup_is_a_convex_combination_with_matching_labels():
  eye, y, feats, mask = _inputs()
  (m_eye, (m_feats, m_mask)), m_y = _mixup(
      jax.random.key(0), (eye, (feats, mask)), y, alpha=0.2)
  m_eye = np.asarray(m_eye)
  assert np.all(m_eye >= 0) and np.all(m_eye <= 1)
  np.testing.assert_allclose(m_eye.sum(axis=1), 1.0, atol=1e-6)
  assert np.all((m_eye > 0).sum(axis=1) <= 2)
  lam, perm = _recover(m_eye)
  assert sorted(perm.tolist()) == list(range(B)), "not a permutation"
  moved = perm != np.arange(B)
  assert moved.sum() > B // 2
  lam0 = np.where(moved, lam, 0.0)[:, None]
  for name, src, out in [("y", y, m_y), ("mask", mask, m_mask)]:
    want = (1 - lam0) * src + lam0 * src[perm]
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-6, err_msg=name)
  want = ((1 - lam0) * feats.reshape(B, -1)
          + lam0 * feats[perm].reshape(B, -1)).reshape(feats.shape)
  np.testing.assert_allclose(np.asarray(m_feats), want, atol=1e-5)
  # Labels stay distributions; the mask stays in [0, 1] (its logit is taken
  # after mixing).
  np.testing.assert_allclose(np.asarray(m_y).sum(axis=1), 1.0, atol=1e-6)
  assert np.all((np.asarray(m_mask) >= 0) & (np.asarray(m_mask) <= 1))


def test_mixup_lambda_per_example_or_per_batch():
  eye, y, feats, mask = _inputs()
  (per_ex, _), _ = _mixup(jax.random.key(3), (eye, (feats, mask)), y,
                          alpha=0.2)
  (per_batch, _), _ = _mixup(jax.random.key(3), (eye, (feats, mask)), y,
                             alpha=0.2, per_example=False)
  lam_ex, _ = _recover(per_ex)
  lam_b, _ = _recover(per_batch)
  lam_ex, lam_b = lam_ex[~np.isnan(lam_ex)], lam_b[~np.isnan(lam_b)]
  assert np.ptp(lam_b) < 1e-6
  assert np.ptp(lam_ex) > 0.1


def test_mixup_lambda_is_beta_distributed():
  # 64 keys x 64 examples; Beta(0.2, 0.2): mean 1/2, variance
  # ab / ((a + b)^2 (a + b + 1)) = 0.04 / (0.16 * 1.4) = 0.17857.
  eye, y, _, _ = _inputs()
  keys = jax.random.split(jax.random.key(7), 64)
  mixed, _ = jax.vmap(lambda k: optim.mixup(k, eye, y, 0.2))(keys)
  lams = np.concatenate([_recover(m)[0] for m in np.asarray(mixed)])
  lams = lams[~np.isnan(lams)]
  assert lams.size > 3000
  se_mean = math.sqrt(0.17857 / lams.size)
  assert abs(lams.mean() - 0.5) < 5 * se_mean
  assert abs(lams.var() - 0.17857) < 0.02


def test_mixup_deterministic_per_key_and_jit_agrees():
  eye, y, feats, mask = _inputs()
  x = (eye, (feats, mask))
  a = _mixup(jax.random.key(11), x, y, alpha=0.2)
  b = _mixup(jax.random.key(11), x, y, alpha=0.2)
  c = _mixup(jax.random.key(12), x, y, alpha=0.2)
  d = optim.mixup(jax.random.key(11), x, y, 0.2)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(d)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-6)
  assert not np.array_equal(np.asarray(a[1]), np.asarray(c[1]))


def test_mixup_keeps_dtype_and_is_finite():
  eye, y, _, _ = _inputs()
  x16 = jnp.asarray(eye, jnp.bfloat16)
  mx, my = optim.mixup(jax.random.key(0), x16, y, 0.2)
  assert mx.dtype == jnp.bfloat16 and my.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(mx, np.float32)))


def test_mixup_bad_arguments():
  eye, y, _, _ = _inputs()
  with pytest.raises(ValueError, match="alpha"):
    optim.mixup(jax.random.key(0), eye, y, 0.0)
  with pytest.raises(ValueError, match="floating"):
    optim.mixup(jax.random.key(0), eye.astype(np.int32), y, 0.2)
  with pytest.raises(ValueError, match="batch axis"):
    optim.mixup(jax.random.key(0), eye[:-1], y, 0.2)
  with pytest.raises(ValueError, match="y_onehot"):
    optim.mixup(jax.random.key(0), eye, y[:, 0], 0.2)
