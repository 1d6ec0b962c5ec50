"""Float64 NumPy reference for routing by self-attention (Duarte et al., 2021).

Written from Sec. 3.1 (Eqs. 1, 2), Appendix B (Eq. 6 and the block order) and
the masking semantics of KERNELS.md, with plain per-capsule / per-head loops,
independently of the JAX kernel. The interpretation choices (``h`` one
affine map, or two linear layers with an optional ReLU between,
contiguous head split, ``1/sqrt(d_head)`` scale, ReLU, dropout on the MLP
hidden layer, residual from ``V'``, LayerNorm eps inside the root) are the
ones documented in ``capsjax.routing.self_attention``.
"""

from __future__ import annotations

import math

import numpy as np

PARAM_NAMES = ("w_q", "b_q", "w_k", "b_k", "w_v", "b_v", "ln1_scale",
               "ln1_bias", "w_mlp1", "b_mlp1", "w_mlp2", "b_mlp2", "ln2_scale",
               "ln2_bias", "w_p", "b_p", "w_o", "b_o", "w_q2", "b_q2", "w_k2",
               "b_k2", "w_v2", "b_v2")


def _layer_norm(x, scale, bias, eps):
  """Normalises one capsule's feature vector ``x [d2]``."""
  n = x.shape[0]
  mean = sum(x) / n
  var = sum((x[e] - mean) ** 2 for e in range(n)) / n
  return (x - mean) / math.sqrt(var + eps) * scale + bias


def _softmax_over(values, idx):
  """Softmax of ``values`` over the indices ``idx``; 0 elsewhere."""
  out = np.zeros(len(values))
  if not idx:
    return out
  top = max(values[j] for j in idx)
  ex = {j: math.exp(values[j] - top) for j in idx}
  total = sum(ex.values())
  for j in idx:
    out[j] = ex[j] / total
  return out


def self_attention_routing_ref(poses, activations, params, *, n_heads, mask=None,
                               keep=None, dropout_rate=0.0, qk_scale=None,
                               ln_eps=1e-5, qkv_activation=None):
  """One sample; returns ``(poses_out [C, d2], activations_out [C])``.

  Args:
    poses: ``[C, d1]``; activations: ``[C]``.
    params: a mapping (or NamedTuple) with the fields of ``PARAM_NAMES``;
      ``w_o``/``b_o`` may be ``None``, and so may the second layer of
      ``h`` (``w_q2``, ..., ``b_v2``: all ``None`` or all given).
    n_heads: heads; mask: ``[C]`` bool or None.
    keep: ``[C, d_hidden]`` dropout keep mask or None (no dropout), applied
      with inverted scaling ``1 / (1 - dropout_rate)``.
    qkv_activation: ``None`` or ``"relu"``, between the two layers of ``h``.
  """
  get = params.get if isinstance(params, dict) else (
      lambda name: getattr(params, name, None))
  p = {name: None if get(name) is None else np.asarray(get(name), np.float64)
       for name in PARAM_NAMES}
  x = np.asarray(poses, np.float64)
  a = np.asarray(activations, np.float64)
  n_caps = x.shape[0]
  two = p["w_q2"] is not None
  d2 = (p["w_q2"] if two else p["w_q"]).shape[1]
  dh = d2 // n_heads
  scale = 1.0 / math.sqrt(dh) if qk_scale is None else qk_scale
  present = [i for i in range(n_caps)
             if a[i] != 0 and (mask is None or bool(mask[i]))]

  # Sec. 3.1: K = h_K(p_i x_i), Q = h_Q(p_i x_i), V = h_V(p_i x_i).
  q = np.zeros((n_caps, d2))
  k = np.zeros((n_caps, d2))
  v = np.zeros((n_caps, d2))
  def h(u, name):
    """``h_name(u)``: one linear layer, or two (ReLU between if asked)."""
    out = u @ p[f"w_{name}"] + p[f"b_{name}"]
    if not two:
      return out
    if qkv_activation == "relu":
      out = np.array([max(t, 0.0) for t in out])
    elif qkv_activation is not None:
      raise ValueError(qkv_activation)
    return out @ p[f"w_{name}2"] + p[f"b_{name}2"]

  for i in range(n_caps):
    u = a[i] * x[i]
    q[i] = h(u, "q")
    k[i] = h(u, "k")
    v[i] = h(u, "v")

  # Eq. (6), one head at a time on contiguous feature chunks.
  v_att = np.zeros((n_caps, d2))
  for h in range(n_heads):
    sl = slice(h * dh, (h + 1) * dh)
    for i in range(n_caps):
      scores = [float(q[i, sl] @ k[j, sl]) * scale for j in range(n_caps)]
      w = _softmax_over(scores, present)
      for j in present:
        v_att[i, sl] += w[j] * v[j, sl]
  if p["w_o"] is not None:
    v_att = v_att @ p["w_o"] + p["b_o"]

  # App. B: LN -> Linear -> ReLU -> dropout -> Linear, residual from V', LN.
  out = np.zeros((n_caps, d2))
  logit = np.zeros(n_caps)
  for i in range(n_caps):
    y = _layer_norm(v_att[i], p["ln1_scale"], p["ln1_bias"], ln_eps)
    hid = np.maximum(y @ p["w_mlp1"] + p["b_mlp1"], 0.0)
    if keep is not None:
      hid = np.where(np.asarray(keep)[i], hid / (1.0 - dropout_rate), 0.0)
    z = hid @ p["w_mlp2"] + p["b_mlp2"]
    out[i] = _layer_norm(v_att[i] + z, p["ln2_scale"], p["ln2_bias"], ln_eps)
    logit[i] = float(out[i] @ p["w_p"][:, 0] + p["b_p"][0])  # Eq. (2)
  return out, _softmax_over(list(logit), present)
