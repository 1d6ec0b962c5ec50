"""A float64 NumPy reference of Heinsen (2019) routing, and its derivatives.

``reference_heinsen_routing`` is a line-by-line port of ``Routing.forward`` of
the official glassroom/heinsen_routing release (2019-2020, before the 2022
rewrite), for one sample: the same loop (the first iteration's E-step is the
constant ``1/n_out``), the same log-domain E-step, the same ``eps``
placements, the same ``expand`` of shared parameters and the same
symmetry-breaking bias of the variable-output mode.

It is written with holomorphic operations only (no ``abs``, no comparisons on
the values being differentiated, the softmax shift taken from the real part),
so it also runs on ``complex128`` inputs. That gives exact derivatives by the
complex step, ``df/dx = Im f(x + i h) / h`` with ``h = 1e-30``, without the
round-off of finite differences: ``reference_grads`` uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def _as_array(x, dtype=np.float64):
  x = np.asarray(x)
  return x.astype(np.complex128 if np.iscomplexobj(x) else dtype)


def _sigmoid(x):
  """Logistic function; exact 0 and 1 at -inf and +inf (as torch.sigmoid)."""
  re = np.real(x)
  finite = np.where(np.isfinite(re), x, 0)
  with np.errstate(over="ignore"):
    s = 1.0 / (1.0 + np.exp(-finite))
  return np.where(np.isposinf(re), 1.0, np.where(np.isneginf(re), 0.0, s))


def _log_sigmoid(x):
  """Stable log-sigmoid (torch.nn.LogSigmoid) for finite ``x``."""
  with np.errstate(over="ignore", invalid="ignore"):
    neg = x - np.log1p(np.exp(x))
    pos = -np.log1p(np.exp(-x))
  return np.where(np.real(x) < 0, neg, pos)


def _softmax(x, axis=-1):
  z = np.exp(x - np.max(np.real(x), axis=axis, keepdims=True))
  return z / z.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis=-1):
  z = x - np.max(np.real(x), axis=axis, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def reference_heinsen_routing(a_inp, mu_inp, W, B, beta_use, beta_ign, *,
                              n_iters=3, p_model="gaussian", eps=1e-5,
                              n_out=None, B_brk=None, dtype=np.float64):
  """The official ``Routing.forward`` for one sample, in float64 (or complex).

  Same arguments and semantics as ``capsjax.routing.heinsen_routing``;
  ``dtype=np.float32`` runs the official algorithm in float32 instead (to
  tell well-conditioned draws apart). Complex inputs stay complex.

  Returns:
    ``(a_out [n_out], mu_out [n_out, d_cov, d_out],
    sig2_out [n_out, d_cov, d_out], R [n_inp, n_out])`` as NumPy arrays.
  """
  a_inp, mu_inp, W, B, beta_use, beta_ign = (
      _as_array(x, dtype) for x in (a_inp, mu_inp, W, B, beta_use, beta_ign))
  rdt = np.result_type(a_inp, mu_inp, W, B, beta_use, beta_ign)
  n_inp = a_inp.shape[-1]
  # W = self.W if self.n_inp_is_fixed else self.W.expand(n_inp, -1, -1, -1)
  W = np.broadcast_to(W, (n_inp,) + W.shape[1:])
  if n_out is None:  # self.n_out_is_fixed
    n_out = W.shape[1]
  else:
    W = np.broadcast_to(W, (n_inp, n_out) + W.shape[2:])
    if B_brk is not None:  # B_brk = None stands for its zero initialisation.
      B = B + _as_array(B_brk, dtype) * np.linspace(-1, 1, n_out, dtype=dtype)[:, None, None]
  V = np.einsum("ijdh,icd->ijch", W, mu_inp) + B
  V = np.broadcast_to(V, (n_inp, n_out) + V.shape[2:])
  f_a_inp = _sigmoid(a_inp)[:, None]  # [i, 1]
  for iter_num in range(n_iters):
    # E-step.
    if iter_num == 0:
      R = np.full((n_inp, n_out), 1.0 / n_out, rdt)
    else:
      if p_model == "gaussian":
        log_p_simplified = (
            -np.einsum("ijch,jch->ij", V_less_mu_out_2, 1.0 / (2.0 * sig2_out))
            - np.log(np.sqrt(sig2_out)).sum((-2, -1))[None, :])
      elif p_model == "skm":
        log_p_simplified = _log_softmax(-V_less_mu_out_2.sum((-2, -1)))
      else:
        raise ValueError(p_model)
      R = _softmax(_log_sigmoid(a_out)[None, :] + log_p_simplified)
    # D-step.
    D_use = f_a_inp * R
    D_ign = f_a_inp - D_use
    # M-step.
    a_out = (beta_use * D_use).sum(-2) - (beta_ign * D_ign).sum(-2)
    over_D_use_sum = 1.0 / (D_use.sum(-2) + eps)
    mu_out = np.einsum("ij,ijch,j->jch", D_use, V, over_D_use_sum)
    V_less_mu_out_2 = (V - mu_out[None]) ** 2
    sig2_out = np.einsum("ij,ijch,j->jch", D_use, V_less_mu_out_2,
                         over_D_use_sum) + eps
  return a_out, mu_out, sig2_out, R


def complex_step_grad(f: Callable[[np.ndarray], complex], x, h: float = 1e-30,
                      where: np.ndarray | None = None) -> np.ndarray:
  """``df/dx`` of a real scalar function by the complex step, entry by entry.

  Args:
    f: maps an array shaped like ``x`` (complex) to a scalar.
    x: the point, real.
    h: the imaginary step.
    where: optional boolean mask; entries outside it get derivative 0 (for
      ``a_inp`` entries at +-inf, where no step can be taken).
  """
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for k in np.ndindex(x.shape):
    if where is not None and not where[k]:
      continue
    xc = x.astype(np.complex128)
    xc[k] += 1j * h
    g[k] = np.imag(f(xc)) / h
  return g


def central_diff_grad(f: Callable[[np.ndarray], float], x, h: float = 1e-6,
                      where: np.ndarray | None = None) -> np.ndarray:
  """``df/dx`` by central differences (to cross-check the complex step)."""
  x = np.asarray(x, np.float64)
  g = np.zeros_like(x)
  for k in np.ndindex(x.shape):
    if where is not None and not where[k]:
      continue
    xp, xm = x.copy(), x.copy()
    xp[k] += h
    xm[k] -= h
    g[k] = (f(xp) - f(xm)) / (2 * h)
  return g


def projected_loss(outputs: Sequence, cotangents: Sequence):
  """``sum_k <outputs[k], cotangents[k]>``: a scalar touching every output."""
  return sum((o * c).sum() for o, c in zip(outputs, cotangents))


ARG_NAMES = ("a_inp", "mu_inp", "W", "B", "beta_use", "beta_ign")


def reference_grads(args: Sequence, cotangents: Sequence, *,
                    shared_beta: bool = False, grad_B_brk: bool = False,
                    **kwargs) -> dict[str, np.ndarray]:
  """Exact gradients of ``projected_loss(reference(...), cotangents)``.

  Args:
    args: ``(a_inp, mu_inp, W, B, beta_use, beta_ign)``.
    cotangents: one array per output ``(a_out, mu_out, sig2_out, R)``.
    shared_beta: if True, ``beta_ign`` is ignored and ``beta_use`` is passed
      as both betas (the official ``single_beta``); the result has a single
      ``"beta"`` entry, the gradient with respect to that shared array.
    grad_B_brk: also differentiate with respect to ``kwargs["B_brk"]``.
    **kwargs: keyword arguments of ``reference_heinsen_routing``.

  Returns:
    A dict from argument name to gradient (``a_inp`` only at finite entries;
    0 at +-inf entries).
  """
  args = [np.asarray(x, np.float64) for x in args]
  if shared_beta:
    args[5] = args[4]

  def loss_of(name):
    def loss(x):
      a = list(args)
      kw = dict(kwargs)
      if name == "beta":
        a[4] = a[5] = x
      elif name == "B_brk":
        kw["B_brk"] = x
      else:
        a[ARG_NAMES.index(name)] = x
      return projected_loss(reference_heinsen_routing(*a, **kw), cotangents)
    return loss

  names = list(ARG_NAMES)
  if shared_beta:
    names = names[:4] + ["beta"]
  grads = {}
  for name in names:
    x = (args[4] if name == "beta" else args[ARG_NAMES.index(name)])
    where = np.isfinite(x) if name == "a_inp" else None
    grads[name] = complex_step_grad(loss_of(name), x, where=where)
  if grad_B_brk:
    grads["B_brk"] = complex_step_grad(loss_of("B_brk"), kwargs["B_brk"])
  return grads
