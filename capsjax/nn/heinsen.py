"""Heinsen (2019) routing as a Flax NNX layer.

:class:`HeinsenRoutingLayer` owns the parameters of one layer of Heinsen's EM
routing (``W``, ``B``, ``beta_use``, ``beta_ign`` and, with a variable number
of outputs, ``B_brk``), initialised as the paper says, and ``jax.vmap``\\ s the
per-sample kernel :func:`capsjax.routing.heinsen_routing` over the batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax.routing.heinsen import HeinsenRouting, heinsen_routing

__all__ = ["HeinsenRoutingLayer"]

_P_MODELS = ("gaussian", "skm")


class HeinsenRoutingLayer(nnx.Module):
  """One layer of Heinsen's routing: ``n_inp`` capsules in, ``n_out`` out.

  Input capsules have shape ``[d_cov, d_inp]``, output capsules
  ``[d_cov, d_out]``. Parameters and their initialisation (paper Sec. 4.1 and
  the official ``Routing`` module):

  * ``W [n_inp | 1, n_out | 1, d_inp, d_out]`` ~ ``N(0, 1) / d_inp``;
  * ``B [n_inp | 1, n_out | 1, d_cov, d_out]`` = 0;
  * ``beta_use``, ``beta_ign [n_inp | 1, n_out | 1]`` = 0 (with
    ``single_beta=True`` only ``beta_use`` exists and serves as both);
  * ``B_brk [1, d_cov, d_out]`` = 0, only with a variable number of outputs.

  ``n_inp=None`` gives a variable number of inputs (``W``, ``B`` and the betas
  shared over inputs, leading axis 1). ``n_out=None`` gives a variable number
  of outputs, chosen at call time (``n_out=...``; the official default is
  ``n_out = n_inp``), with the symmetry-breaking bias ``B_brk``.

  Parameter shapes and order match the official PyTorch ``Routing`` module, so
  its state dict ports over unchanged (``W``, ``B``, ``B_brk``, ``beta_use``,
  ``beta_ign``).

  Attributes:
    d_cov, d_inp, d_out, n_inp, n_out, n_iters, single_beta, p_model, eps,
    dtype, param_dtype: the constructor arguments.
  """

  def __init__(
      self,
      d_cov: int,
      d_inp: int,
      d_out: int,
      n_inp: int | None = None,
      n_out: int | None = None,
      *,
      n_iters: int = 3,
      single_beta: bool = False,
      p_model: str = "gaussian",
      eps: float = 1e-5,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      compute_dtype: Any = None,
      remat: bool = False,
      rngs: nnx.Rngs,
  ):
    """Creates the layer.

    Args:
      d_cov: rows of every capsule (Heinsen's ``d_cov``).
      d_inp: columns of an input capsule.
      d_out: columns of an output capsule.
      n_inp: number of input capsules; ``None`` for a variable number.
      n_out: number of output capsules; ``None`` for a variable number,
        given at call time.
      n_iters: routing iterations (>= 1).
      single_beta: if True, one parameter ``beta_use`` serves as both
        ``beta_use`` and ``beta_ign`` (the official ``single_beta``).
      p_model: ``"gaussian"`` or ``"skm"`` (soft k-means).
      eps: small constant of the kernel (added to ``sum_i D_use`` and to
        ``sig2_out``).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``None`` means the
        result type of the inputs and the parameters.
      param_dtype: dtype of the parameters.
      compute_dtype: the kernel's mixed-precision dtype (e.g.
        ``jnp.bfloat16``: votes and big contractions in it, statistics and
        softmax in float32; see :func:`capsjax.routing.heinsen_routing`);
        ``None``: off.
      remat: rematerialise the routing iterations on the backward pass (the
        kernel's ``remat``): training memory then does not grow with
        ``n_iters``; same results.
      rngs: random streams; ``rngs.params()`` draws ``W``.

    Raises:
      ValueError: on a non-positive size or ``n_iters``, or an unknown
        ``p_model``.
    """
    for name, value in (("d_cov", d_cov), ("d_inp", d_inp), ("d_out", d_out),
                        ("n_iters", n_iters)):
      _shapes.check_positive_int(name, value)
    if n_inp is not None:
      _shapes.check_positive_int("n_inp", n_inp)
    if n_out is not None:
      _shapes.check_positive_int("n_out", n_out)
    if p_model not in _P_MODELS:
      raise ValueError(f"p_model must be one of {_P_MODELS}, got {p_model!r}.")
    self.d_cov, self.d_inp, self.d_out = d_cov, d_inp, d_out
    self.n_inp, self.n_out = n_inp, n_out
    self.n_iters, self.single_beta = n_iters, single_beta
    self.p_model, self.eps = p_model, eps
    self.dtype, self.param_dtype = dtype, param_dtype
    self.compute_dtype = compute_dtype
    self.remat = remat  # the kernel's rematerialised iterations

    i, j = n_inp or 1, n_out or 1
    self.W = nnx.Param(
        jax.random.normal(rngs.params(), (i, j, d_inp, d_out), param_dtype)
        / jnp.asarray(d_inp, param_dtype))
    self.B = nnx.Param(jnp.zeros((i, j, d_cov, d_out), param_dtype))
    self.B_brk = (None if n_out is not None else
                  nnx.Param(jnp.zeros((1, d_cov, d_out), param_dtype)))
    self.beta_use = nnx.Param(jnp.zeros((i, j), param_dtype))
    self.beta_ign = (None if single_beta else
                     nnx.Param(jnp.zeros((i, j), param_dtype)))

  def __call__(
      self,
      a_inp: ArrayLike,
      mu_inp: ArrayLike,
      *,
      mask: ArrayLike | None = None,
      n_out: int | None = None,
  ) -> HeinsenRouting:
    """Routes a batch of input capsules.

    Args:
      a_inp: ``[b, n_inp]`` pre-activation input scores (``-inf`` marks
        padding, ``+inf`` a fully present input).
      mu_inp: ``[b, n_inp, d_cov, d_inp]`` input capsules.
      mask: optional boolean ``[b, n_inp]``; False marks padding (its score is
        set to ``-inf``: the input is ignored completely, its capsule may hold
        anything).
      n_out: number of outputs, only for a layer built with ``n_out=None``;
        defaults there to ``n_inp`` (as in the official code).

    Returns:
      The batched :class:`~capsjax.routing.HeinsenRouting`: ``a_out [b, n_out]``
      (output scores; ``softmax`` of them are the class predictions),
      ``mu_out``, ``sig2_out [b, n_out, d_cov, d_out]`` and
      ``R [b, n_inp, n_out]``.

    Raises:
      ValueError: on a shape that does not fit, a non-boolean mask, or
        ``n_out`` given to a layer with a fixed number of outputs.
    """
    b, n_inp = _shapes.check_ndim("a_inp", a_inp, 2, "[b, n_inp]")
    if self.n_inp is not None and n_inp != self.n_inp:
      raise ValueError(
          f"a_inp must have shape [b, n_inp] = [*, {self.n_inp}] (this layer "
          f"has a fixed number of inputs), got {tuple(jnp.shape(a_inp))}.")
    _shapes.check_shape("mu_inp", mu_inp, (b, n_inp, self.d_cov, self.d_inp),
                        "[b, n_inp, d_cov, d_inp]")
    if self.n_out is not None:
      if n_out is not None:
        raise ValueError(
            f"n_out can only be given to a layer built with n_out=None (a "
            f"variable number of outputs); this one has n_out={self.n_out}, "
            f"got n_out={n_out}.")
    else:
      n_out = n_inp if n_out is None else n_out
      _shapes.check_positive_int("n_out", n_out)

    if mask is not None:
      _shapes.check_shape("mask", mask, (b, n_inp), "[b, n_inp]")
      if jnp.result_type(mask) != jnp.bool_:
        raise ValueError(
            f"mask must be boolean (True for an input, False for padding), got "
            f"dtype {jnp.result_type(mask)}. For fractional (mixup) masks "
            f"pass their logits as a_inp instead.")

    beta_ign = self.beta_use if self.beta_ign is None else self.beta_ign
    params = [self.W[...], self.B[...], self.beta_use[...], beta_ign[...]]
    if self.B_brk is not None:
      params.append(self.B_brk[...])
    dtype = self.dtype or jnp.result_type(a_inp, mu_inp, *params)
    a_inp = jnp.asarray(a_inp, dtype)
    mu_inp = jnp.asarray(mu_inp, dtype)
    params = [jnp.asarray(p, dtype) for p in params]
    W, B, beta_use, beta_ign = params[:4]
    B_brk = params[4] if self.B_brk is not None else None

    if mask is not None:
      a_inp = jnp.where(mask, a_inp, -jnp.inf)

    def route(a, mu):
      return heinsen_routing(
          a, mu, W, B, beta_use, beta_ign, n_iters=self.n_iters,
          p_model=self.p_model, eps=self.eps,
          n_out=None if self.n_out is not None else n_out, B_brk=B_brk,
          compute_dtype=self.compute_dtype, remat=self.remat)

    return jax.vmap(route)(a_inp, mu_inp)
