"""Float64 NumPy reference of inverted dot-product attention routing.

Written from Tsai et al. (2020), Procedure 1 / Eqs. (1)-(4), and the
semantics fixed in KERNELS.md (official ``CapsuleFC`` / ``CapsuleCONV`` in eval
mode): plain loops over capsules and windows, one small matrix product per
vote. Two layouts are provided:

* ``fc`` / ``conv``: capsjax's layout (``W [i, j, d, h]``, channels-last grid);
* ``official_fc`` / ``official_conv``: the official PyTorch layouts
  (``w[n, a, m, d]`` / ``w[n, x, d, m]``, ``w[k, l, n, a, m, d]`` /
  ``w[k, l, n, x, d, m]``, grids ``[n, H, W, d]``), used to test the porting
  transposes.
"""

from __future__ import annotations

import math

import numpy as np

LN_EPS = 1e-5
RENORM_EPS = 1e-10


def layer_norm(x, scale=None, bias=None):
  """LayerNorm over the last axis with biased variance, eps 1e-5."""
  mu = x.mean(axis=-1, keepdims=True)
  var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
  y = (x - mu) / np.sqrt(var + LN_EPS)
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return y


def route(votes, x_out, ln_scale=None, ln_bias=None):
  """One routing step on votes ``[I, n_out, d_out]``; returns ``[n_out, d_out]``."""
  n_i, n_out, d_out = votes.shape
  if x_out is None:
    r = np.full((n_i, n_out), 1.0 / n_out)
  else:
    r = np.empty((n_i, n_out))
    for i in range(n_i):
      a = np.array([x_out[j] @ votes[i, j] for j in range(n_out)])
      a = a / math.sqrt(d_out)
      e = np.exp(a - a.max())
      r[i] = e / e.sum()
      r[i] = r[i] / (r[i].sum() + RENORM_EPS)
  pose = np.zeros((n_out, d_out))
  for i in range(n_i):
    for j in range(n_out):
      pose[j] += r[i, j] * votes[i, j]
  if d_out == 1:
    return pose
  return layer_norm(pose, ln_scale, ln_bias)


def _f64(*xs):
  return [None if x is None else np.asarray(x, np.float64) for x in xs]


def fc_votes(x_inp, W, matrix_pose):
  n_inp, n_out = W.shape[:2]
  d_out = x_inp.shape[1] if matrix_pose else W.shape[3]
  votes = np.empty((n_inp, n_out, d_out))
  for i in range(n_inp):
    for j in range(n_out):
      if matrix_pose:
        s = W.shape[2]
        votes[i, j] = (x_inp[i].reshape(s, s) @ W[i, j]).reshape(-1)
      else:
        votes[i, j] = x_inp[i] @ W[i, j]
  return votes


def fc(x_inp, W, x_out=None, *, matrix_pose, ln_scale=None, ln_bias=None):
  """``inverted_attention_fc`` in float64."""
  x_inp, W, x_out, ln_scale, ln_bias = _f64(x_inp, W, x_out, ln_scale, ln_bias)
  return route(fc_votes(x_inp, W, matrix_pose), x_out, ln_scale, ln_bias)


def conv(x_inp, W, x_out=None, *, stride, matrix_pose, ln_scale=None,
         ln_bias=None):
  """``inverted_attention_conv`` in float64: an FC step per window position."""
  x_inp, W, x_out, ln_scale, ln_bias = _f64(x_inp, W, x_out, ln_scale, ln_bias)
  height, width, n_inp, d_inp = x_inp.shape
  k = W.shape[0]
  h_out = (height - k) // stride + 1
  w_out = (width - k) // stride + 1
  out = None
  for oh in range(h_out):
    for ow in range(w_out):
      votes = []
      for dk in range(k):
        for dl in range(k):
          x_win = x_inp[oh * stride + dk, ow * stride + dl]  # [n_inp, d_inp]
          votes.append(fc_votes(x_win, W[dk, dl], matrix_pose))
      votes = np.concatenate(votes, axis=0)  # [k*k*n_inp, n_out, d_out]
      pose = route(votes, None if x_out is None else x_out[oh, ow],
                   ln_scale, ln_bias)
      if out is None:
        out = np.empty((h_out, w_out) + pose.shape)
      out[oh, ow] = pose
  return out


def _official_votes(x, w, matrix_pose):
  """Votes ``[m, d]`` of one input capsule ``x`` under its official weight slice.

  ``w`` is ``[a, m, d]`` (vector) or ``[x, d, m]`` (matrix).
  """
  if matrix_pose:
    s = w.shape[0]
    xm = x.reshape(s, s)  # official _input[b, n, a, x]
    return np.stack([(xm @ w[:, :, m]).reshape(-1) for m in range(w.shape[2])])
  return np.stack([x @ w[:, m, :] for m in range(w.shape[1])])


def official_fc(inp, w, next_value=None, *, matrix_pose, ln_scale=None,
                ln_bias=None):
  """``CapsuleFC.forward`` semantics on one sample in the official layout."""
  inp, w, next_value, ln_scale, ln_bias = _f64(inp, w, next_value, ln_scale,
                                               ln_bias)
  votes = np.stack([_official_votes(inp[n], w[n], matrix_pose)
                    for n in range(inp.shape[0])])
  return route(votes, next_value, ln_scale, ln_bias)


def official_conv(inp, w, next_value=None, *, stride, matrix_pose,
                  ln_scale=None, ln_bias=None):
  """``CapsuleCONV.forward`` semantics (true sliding window), official layout.

  ``inp [n, H, W, a]``, ``next_value [m, H', W', d]``; returns ``[m, H', W', d]``.
  """
  inp, w, next_value, ln_scale, ln_bias = _f64(inp, w, next_value, ln_scale,
                                               ln_bias)
  n_inp, height, width, _ = inp.shape
  k = w.shape[0]
  h_out = (height - k) // stride + 1
  w_out = (width - k) // stride + 1
  out = None
  for oh in range(h_out):
    for ow in range(w_out):
      votes = np.stack([
          _official_votes(inp[n, oh * stride + dk, ow * stride + dl],
                          w[dk, dl, n], matrix_pose)
          for dk in range(k) for dl in range(k) for n in range(n_inp)])
      pose = route(votes, None if next_value is None else next_value[:, oh, ow],
                   ln_scale, ln_bias)
      if out is None:
        out = np.empty((pose.shape[0], h_out, w_out, pose.shape[1]))
      out[:, oh, ow] = pose
  return out
