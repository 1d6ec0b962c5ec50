"""The routing baselines of Duarte et al. (2021), Tables 3 and 5, as NNX layers.

Each layer maps primary capsules ``(poses [b, C, d_in], activations [b, C])``
(and an optional boolean ``mask [b, C]``, False for padding) to
:class:`~capsjax.nn.self_attention.Capsules` ``(poses [b, n_out, d_out],
activations [b, n_out])`` and exposes ``n_out`` (``None`` where it equals the
number of inputs) and ``d_out``, exactly like
:class:`~capsjax.nn.self_attention.SelfAttentionRoutingLayer`, so the
multimodal capsule network can swap them:

* :class:`NoRoutingLayer` — "without any routing (i.e. learning a MLP to
  obtain existence probabilities)" (Table 3, first row);
* :class:`FCRoutingLayer` — the attention replaced by one fully connected map
  of all capsules (an FC counterpart of the routing step);
* :class:`DynamicRoutingLayer` — Sabour et al. (2017);
* :class:`EMRoutingLayer` — Hinton et al. (2018), matrix capsules;
* :class:`SetTransformerRoutingLayer` — pooling by multi-head attention
  (Lee et al., 2019).

The paper describes none of these beyond naming them, and its code is not
public: each class docstring states the design chosen. Masked capsules (and,
for the layers that pre-multiply poses by activations, capsules with
``p_i = 0``) change no output. All linear maps start from
``torch.nn.Linear``'s default initialisation unless noted.

References:
  K. Duarte et al. Routing with Self-Attention for Multimodal Capsule
  Networks. 2021, Sec. 4.4, Tables 3 and 5.
  S. Sabour, N. Frosst, G. E. Hinton. Dynamic Routing Between Capsules.
  NeurIPS 2017.
  G. E. Hinton, S. Sabour, N. Frosst. Matrix Capsules with EM Routing. ICLR 2018.
  J. Lee, Y. Lee, J. Kim, A. R. Kosiorek, S. Choi, Y. W. Teh. Set
  Transformer. ICML 2019, Sec. 3.1-3.2 (MAB, PMA).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax._numerics import layer_norm as _layer_norm, masked_softmax as _masked_softmax
from capsjax.nn.torch_init import torch_bias_init
from capsjax.nn.self_attention import Capsules, check_capsules, linear_params
from capsjax.routing.dynamic import dynamic_routing
from capsjax.routing.em import em_routing

__all__ = [
    "DynamicRoutingLayer",
    "EMRoutingLayer",
    "FCRoutingLayer",
    "NoRoutingLayer",
    "SetTransformerRoutingLayer",
]


def _safe_norm(v: jax.Array) -> jax.Array:
  """``|v|`` over the last axis with a zero (not NaN) gradient at ``v = 0``."""
  sq = jnp.sum(v * v, axis=-1)
  return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1)), 0)


def _check_dropout(rate: float) -> None:
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {rate!r}.")


class _Baseline(nnx.Module):
  """Input handling shared by the baselines."""

  def _inputs(self, poses, activations, mask, *params):
    """Validates and casts; returns ``(poses, p, present, dtype)``.

    ``p`` is the activation with masked capsules set to 0; ``present`` is
    ``mask & (p != 0)``.
    """
    check_capsules(poses, activations, mask, self.d_in, self.n_inp)
    dtype = self.dtype or jnp.result_type(poses, activations, *params)
    poses = jnp.asarray(poses, dtype)
    p = jnp.asarray(activations, dtype)
    if mask is not None:
      p = jnp.where(mask, p, 0)
    return poses, p, p != 0, dtype


class NoRoutingLayer(_Baseline):
  """No routing: an MLP gives each capsule's existence probability.

  Design (Table 3, "No Routing": "learning a MLP to obtain existence
  probabilities"): the poses pass through unchanged (``d_out = d_in``) and

  ``p̂_i = softmax_i(MLP(p_i x_i))``, ``MLP(u) = relu(u W_1 + b_1) W_2 + b_2``

  over the present capsules, the same form as Eq. (2) with a hidden layer of
  ``d_hidden`` units (default 1024, as the routing block's MLP) so that the
  probabilities are a nonlinear function of the capsule alone.

  Parameters: ``w_1 [d_in, d_hidden]``, ``b_1``, ``w_2 [d_hidden, 1]``,
  ``b_2 [1]`` (``torch.nn.Linear`` init).
  """

  def __init__(self, d_in: int, *, d_hidden: int = 1024, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    _shapes.check_positive_int("d_in", d_in)
    _shapes.check_positive_int("d_hidden", d_hidden)
    self.d_in, self.d_out, self.n_inp, self.n_out = d_in, d_in, None, None
    self.d_hidden, self.dtype, self.param_dtype = d_hidden, dtype, param_dtype
    k1, k2 = jax.random.split(rngs.params())
    self.w_1, self.b_1 = linear_params(k1, d_in, d_hidden, param_dtype)
    self.w_2, self.b_2 = linear_params(k2, d_hidden, 1, param_dtype)

  def __call__(self, poses: ArrayLike, activations: ArrayLike, *,
               mask: ArrayLike | None = None) -> Capsules:
    """``[b, C, d_in]``, ``[b, C]`` → ``Capsules([b, C, d_in], [b, C])``."""
    poses, p, present, dtype = self._inputs(poses, activations, mask, self.w_1[...])
    w_1, b_1, w_2, b_2 = (jnp.asarray(v[...], dtype)
                          for v in (self.w_1, self.b_1, self.w_2, self.b_2))

    def route(x, p, keep):
      logits = (jax.nn.relu((p[:, None] * x) @ w_1 + b_1) @ w_2 + b_2)[:, 0]
      return Capsules(x, _masked_softmax(logits, keep, axis=0))

    return jax.vmap(route)(poses, p, present)


class FCRoutingLayer(_Baseline):
  """The routing step with its attention replaced by a fully connected map.

  Design: every output capsule is an affine function of all the
  activation-weighted input capsules, with learned, input-independent
  coefficients (what attention computes per input is here a fixed weight):

  ``x̂ = reshape(concat_i(p_i x_i) W + b, [n_out, d_out])``,
  ``p̂_j = softmax_j(x̂_j W_p + b_p)`` (Eq. 2).

  Parameters: ``w [n_inp * d_in, n_out * d_out]``, ``b`` (``torch.nn.Linear``
  init, fan-in ``n_inp * d_in``), ``w_p [d_out, 1]``, ``b_p [1]``. The number
  of input capsules is fixed. (Table 5's "Fully Connected" model, which has no
  capsules at all, is :class:`~capsjax.models.duarte2021.FCBaseline`.)
  """

  def __init__(self, n_inp: int, d_in: int, n_out: int | None = None,
               d_out: int | None = None, *, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    n_out = n_inp if n_out is None else n_out
    d_out = d_in if d_out is None else d_out
    for name, value in (("n_inp", n_inp), ("d_in", d_in), ("n_out", n_out),
                        ("d_out", d_out)):
      _shapes.check_positive_int(name, value)
    self.n_inp, self.d_in, self.n_out, self.d_out = n_inp, d_in, n_out, d_out
    self.dtype, self.param_dtype = dtype, param_dtype
    k1, k2 = jax.random.split(rngs.params())
    self.w, self.b = linear_params(k1, n_inp * d_in, n_out * d_out, param_dtype)
    self.w_p, self.b_p = linear_params(k2, d_out, 1, param_dtype)

  def __call__(self, poses: ArrayLike, activations: ArrayLike, *,
               mask: ArrayLike | None = None) -> Capsules:
    """``[b, n_inp, d_in]``, ``[b, n_inp]`` → ``Capsules([b, n_out, d_out], [b, n_out])``."""
    poses, p, _, dtype = self._inputs(poses, activations, mask, self.w[...])
    w, b, w_p, b_p = (jnp.asarray(v[...], dtype)
                      for v in (self.w, self.b, self.w_p, self.b_p))

    def route(x, p):
      pose = ((p[:, None] * x).reshape(-1) @ w + b).reshape(self.n_out, self.d_out)
      return Capsules(pose, jax.nn.softmax((pose @ w_p + b_p)[:, 0]))

    return jax.vmap(route)(poses, p)


class DynamicRoutingLayer(_Baseline):
  """Dynamic routing (Sabour et al., 2017) between fixed capsule sets.

  Design: votes ``u_hat_ij = (p_i x_i) W_ij`` — the poses weighted by their
  activations as in Duarte's Sec. 3.1, since dynamic routing itself has no
  input activations; a capsule with ``p_i = 0`` (or masked) has zero votes and
  so changes no output — then :func:`capsjax.routing.dynamic_routing`
  (``n_iters`` iterations, no bias). Output poses ``v_j``, activations their
  lengths ``|v_j|`` in [0, 1) (Sabour's existence probability).

  Parameters: ``W [n_inp, n_out, d_in, d_out]``, each ``W_ij`` initialised like
  a bias-free ``torch.nn.Linear(d_in, d_out)``: ``U(-1/sqrt(d_in), 1/sqrt(d_in))``.
  ``compute_dtype`` and ``remat`` are the kernel's (mixed precision;
  rematerialised iterations).
  """

  def __init__(self, n_inp: int, d_in: int, n_out: int | None = None,
               d_out: int | None = None, *, n_iters: int = 3, dtype: Any = None,
               param_dtype: Any = jnp.float32, compute_dtype: Any = None,
               remat: bool = False, rngs: nnx.Rngs):
    n_out = n_inp if n_out is None else n_out
    d_out = d_in if d_out is None else d_out
    for name, value in (("n_inp", n_inp), ("d_in", d_in), ("n_out", n_out),
                        ("d_out", d_out), ("n_iters", n_iters)):
      _shapes.check_positive_int(name, value)
    self.n_inp, self.d_in, self.n_out, self.d_out = n_inp, d_in, n_out, d_out
    self.n_iters, self.dtype, self.param_dtype = n_iters, dtype, param_dtype
    self.compute_dtype = compute_dtype  # the kernel's mixed precision (None: off)
    self.remat = remat  # the kernel's rematerialised iterations
    self.W = nnx.Param(torch_bias_init(d_in)(
        rngs.params(), (n_inp, n_out, d_in, d_out), param_dtype))

  def __call__(self, poses: ArrayLike, activations: ArrayLike, *,
               mask: ArrayLike | None = None) -> Capsules:
    """``[b, n_inp, d_in]``, ``[b, n_inp]`` → ``Capsules([b, n_out, d_out], [b, n_out])``."""
    poses, p, _, dtype = self._inputs(poses, activations, mask, self.W[...])
    W = jnp.asarray(self.W[...], dtype)

    def route(x, p):
      u_hat = jnp.einsum("id,ijdh->ijh", p[:, None] * x, W)
      v = dynamic_routing(u_hat, n_iters=self.n_iters,
                          compute_dtype=self.compute_dtype, remat=self.remat).v
      return Capsules(v, _safe_norm(v))

    return jax.vmap(route)(poses, p)


class EMRoutingLayer(_Baseline):
  """EM routing of matrix capsules (Hinton et al., 2018).

  Design: Duarte et al. note that "EM routing requires matrix capsules", so
  ``d_in = d_out = s * s`` (Table 3: 16 = 4x4). Votes ``V_ij = M_i W_ij`` with
  ``M_i`` the pose ``x_i`` as an ``s x s`` matrix (no coordinate addition:
  the capsules have no grid); the activations ``p_i`` enter EM as ``a_inp``
  (masked capsules get ``a_inp = 0`` and change nothing), then
  :func:`capsjax.routing.em_routing`. Output poses ``mu_j``, activations
  ``a_out_j``.

  Parameters: ``W [n_inp, n_out, s, s]`` ``U(-1/sqrt(s), 1/sqrt(s))`` (each
  ``M -> M W_ij`` initialised like a bias-free ``torch.nn.Linear(s, s)``
  acting on the rows), ``beta_u``, ``beta_a [n_out]`` zeros.
  ``compute_dtype`` and ``remat`` are the kernel's (mixed precision;
  rematerialised iterations).
  """

  def __init__(self, n_inp: int, d_in: int, n_out: int | None = None, *,
               n_iters: int = 3, final_lambda: float = 0.01, eps: float = 1e-8,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               compute_dtype: Any = None, remat: bool = False, rngs: nnx.Rngs):
    n_out = n_inp if n_out is None else n_out
    for name, value in (("n_inp", n_inp), ("d_in", d_in), ("n_out", n_out),
                        ("n_iters", n_iters)):
      _shapes.check_positive_int(name, value)
    s = math.isqrt(d_in)
    if s * s != d_in:
      raise ValueError(
          f"d_in must be a square s*s (matrix capsules), got d_in={d_in}.")
    self.n_inp, self.d_in, self.n_out, self.d_out, self.s = n_inp, d_in, n_out, d_in, s
    self.n_iters, self.final_lambda, self.eps = n_iters, final_lambda, eps
    self.dtype, self.param_dtype = dtype, param_dtype
    self.compute_dtype = compute_dtype  # the kernel's mixed precision (None: off)
    self.remat = remat  # the kernel's rematerialised iterations
    self.W = nnx.Param(torch_bias_init(s)(
        rngs.params(), (n_inp, n_out, s, s), param_dtype))
    self.beta_u = nnx.Param(jnp.zeros((n_out,), param_dtype))
    self.beta_a = nnx.Param(jnp.zeros((n_out,), param_dtype))

  def __call__(self, poses: ArrayLike, activations: ArrayLike, *,
               mask: ArrayLike | None = None) -> Capsules:
    """``[b, n_inp, s*s]``, ``[b, n_inp]`` → ``Capsules([b, n_out, s*s], [b, n_out])``."""
    poses, p, _, dtype = self._inputs(poses, activations, mask, self.W[...])
    W, beta_u, beta_a = (jnp.asarray(v[...], dtype)
                         for v in (self.W, self.beta_u, self.beta_a))
    s = self.s

    def route(x, a):
      votes = jnp.einsum("iab,ijbc->ijac", x.reshape(-1, s, s), W)
      out = em_routing(a, votes.reshape(self.n_inp, self.n_out, s * s),
                       beta_u, beta_a, n_iters=self.n_iters,
                       final_lambda=self.final_lambda, eps=self.eps,
                       compute_dtype=self.compute_dtype, remat=self.remat)
      return Capsules(out.mu, out.a_out)

    return jax.vmap(route)(poses, p)


class SetTransformerRoutingLayer(_Baseline):
  """Routing by pooling by multi-head attention (PMA, Lee et al., 2019).

  Design: the ``n_out`` output capsules are PMA's learned seed vectors
  ``S [n_out, d_out]``; they query the activation-weighted input capsules
  ``u_i = p_i x_i`` through one multihead attention block (MAB, Lee et al.
  Eq. 6-8), so an output capsule gathers the inputs that agree with its
  seed:

  * ``Q = S W_Q + b_Q``, ``K = u W_K + b_K``, ``V = u W_V + b_V`` (``W_K``,
    ``W_V``: ``d_in -> d_out``; PMA's row-wise feed-forward before the block
    is taken to be this linear map), heads of ``d_out / n_heads``, logits
    scaled by ``1/sqrt(d_head)``, softmax over the present inputs;
  * ``O = concat_h(attention_h) W_O + b_O`` (Set Transformer keeps the output
    projection), ``H = LN(S + O)``, ``x̂ = LN(H + rFF(H))`` with ``rFF`` a
    ReLU MLP of ``d_hidden`` units (1024, as Duarte's block) with dropout;
  * ``p̂_j = softmax_j(x̂_j W_p + b_p)`` (Eq. 2 of Duarte et al.).

  One block and no induced set attention (ISAB) encoder: Table 3 reports the
  same memory as self-attention routing, i.e. one attention block of the same
  size. Because the queries are learned, the layer accepts any number of
  inputs; masked inputs are removed from the keys (with every input masked,
  the attention output is 0).

  Parameters: ``seeds [n_out, d_out]`` Xavier-uniform (as Lee et al.'s PMA);
  ``w_q [d_out, d_out]``, ``w_k``, ``w_v [d_in, d_out]``, ``w_o [d_out,
  d_out]``, ``w_ff1 [d_out, d_hidden]``, ``w_ff2 [d_hidden, d_out]``, ``w_p
  [d_out, 1]`` with their biases (``torch.nn.Linear`` init); ``ln1_*``,
  ``ln2_*`` LayerNorm scale 1, bias 0.
  """

  def __init__(self, d_in: int, n_out: int, d_out: int | None = None, *,
               n_heads: int = 4, d_hidden: int = 1024,
               dropout_rate: float = 0.1, ln_eps: float = 1e-5,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    d_out = d_in if d_out is None else d_out
    for name, value in (("d_in", d_in), ("n_out", n_out), ("d_out", d_out),
                        ("n_heads", n_heads), ("d_hidden", d_hidden)):
      _shapes.check_positive_int(name, value)
    if d_out % n_heads:
      raise ValueError(f"n_heads must divide d_out = {d_out}, got n_heads={n_heads}.")
    _check_dropout(dropout_rate)
    self.d_in, self.n_inp, self.n_out, self.d_out = d_in, None, n_out, d_out
    self.n_heads, self.d_hidden, self.ln_eps = n_heads, d_hidden, ln_eps
    self.dropout_rate, self.dtype, self.param_dtype = dropout_rate, dtype, param_dtype
    keys = iter(jax.random.split(rngs.params(), 8))
    bound = math.sqrt(6.0 / (n_out + d_out))
    self.seeds = nnx.Param(jax.random.uniform(
        next(keys), (n_out, d_out), param_dtype, -bound, bound))
    self.w_q, self.b_q = linear_params(next(keys), d_out, d_out, param_dtype)
    self.w_k, self.b_k = linear_params(next(keys), d_in, d_out, param_dtype)
    self.w_v, self.b_v = linear_params(next(keys), d_in, d_out, param_dtype)
    self.w_o, self.b_o = linear_params(next(keys), d_out, d_out, param_dtype)
    self.ln1_scale = nnx.Param(jnp.ones((d_out,), param_dtype))
    self.ln1_bias = nnx.Param(jnp.zeros((d_out,), param_dtype))
    self.w_ff1, self.b_ff1 = linear_params(next(keys), d_out, d_hidden, param_dtype)
    self.w_ff2, self.b_ff2 = linear_params(next(keys), d_hidden, d_out, param_dtype)
    self.ln2_scale = nnx.Param(jnp.ones((d_out,), param_dtype))
    self.ln2_bias = nnx.Param(jnp.zeros((d_out,), param_dtype))
    self.w_p, self.b_p = linear_params(next(keys), d_out, 1, param_dtype)
    self.dropout = nnx.Dropout(dropout_rate,
                               rngs=rngs if dropout_rate > 0 else None)

  def __call__(self, poses: ArrayLike, activations: ArrayLike, *,
               mask: ArrayLike | None = None) -> Capsules:
    """``[b, C, d_in]``, ``[b, C]`` → ``Capsules([b, n_out, d_out], [b, n_out])``."""
    poses, p, present, dtype = self._inputs(poses, activations, mask, self.seeds[...])
    c = lambda name: jnp.asarray(getattr(self, name)[...], dtype)
    n_heads, d_head = self.n_heads, self.d_out // self.n_heads
    # The queries do not depend on the sample.
    q = (c("seeds") @ c("w_q") + c("b_q")).reshape(self.n_out, n_heads, d_head)
    seeds = c("seeds")

    def attend(x, p, keep):
      u = p[:, None] * x
      k = (u @ c("w_k") + c("b_k")).reshape(-1, n_heads, d_head)
      v = (u @ c("w_v") + c("b_v")).reshape(-1, n_heads, d_head)
      logits = jnp.einsum("jhe,ihe->hji", q, k) / math.sqrt(d_head)
      attn = _masked_softmax(logits, keep[None, None, :], axis=-1)
      o = jnp.einsum("hji,ihe->jhe", attn, v).reshape(self.n_out, self.d_out)
      return _layer_norm(seeds + o @ c("w_o") + c("b_o"), c("ln1_scale"),
                         c("ln1_bias"), self.ln_eps)

    h = jax.vmap(attend)(poses, p, present)                  # [b, j, d_out]
    hidden = self.dropout(jax.nn.relu(h @ c("w_ff1") + c("b_ff1")))
    pose = _layer_norm(h + hidden @ c("w_ff2") + c("b_ff2"), c("ln2_scale"),
                       c("ln2_bias"), self.ln_eps)
    acts = jax.nn.softmax((pose @ c("w_p") + c("b_p"))[..., 0], axis=-1)
    return Capsules(pose, acts)
