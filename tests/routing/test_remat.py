"""``remat=True`` on the iterative routing kernels: same values and gradients.

Rematerialising the loop over routing iterations (``jax.checkpoint`` on its
body) must change only what the backward pass keeps in memory, never a
number: every output and every input gradient equals the plain kernel's in
float64 (the memory effect is measured in ``benchmarks/kernels.py --iters``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax.routing import dynamic_routing, em_routing, heinsen_routing


def _dynamic(rng):
  args = (rng.standard_normal((7, 4, 5)),)
  return args, lambda *a, **kw: dynamic_routing(*a, **kw)


def _em(rng):
  args = (rng.uniform(0.1, 1.0, 7), rng.standard_normal((7, 4, 5)),
          rng.standard_normal(4), rng.standard_normal(4))
  return args, lambda *a, **kw: em_routing(*a, **kw)


def _heinsen(rng, algorithm="votes"):
  n_inp, n_out, d = 7, 3, 2
  args = (rng.standard_normal(n_inp), rng.standard_normal((n_inp, d, d)),
          rng.standard_normal((1, n_out, d, d)) / d, 0.1 * rng.standard_normal((1, n_out, d, d)),
          0.1 * rng.standard_normal((1, n_out)), 0.1 * rng.standard_normal((1, n_out)))
  return args, lambda *a, **kw: heinsen_routing(*a, algorithm=algorithm, **kw)


_KERNELS = {
    "dynamic": _dynamic,
    "em": _em,
    "heinsen_votes": _heinsen,
    "heinsen_moments": lambda rng: _heinsen(rng, "moments"),
}


@pytest.mark.parametrize("n_iters", [1, 3])
@pytest.mark.parametrize("kernel", list(_KERNELS))
def test_remat_gives_the_same_values_and_gradients(kernel, n_iters):
  with jax.enable_x64(True):
    rng = np.random.default_rng(7)
    args, fn = _KERNELS[kernel](rng)
    args = tuple(jnp.asarray(a, jnp.float64) for a in args)
    # A fixed random weighting of every floating output, so that each one
    # reaches the gradient.
    weights = [jnp.asarray(rng.standard_normal(x.shape)) for x in fn(*args, n_iters=n_iters)]

    def loss(*a, remat):
      outs = fn(*a, n_iters=n_iters, remat=remat)
      return sum(jnp.sum(w * x) for w, x in zip(weights, outs))

    argnums = tuple(range(len(args)))
    plain_out = fn(*args, n_iters=n_iters, remat=False)
    remat_out = fn(*args, n_iters=n_iters, remat=True)
    for p, r in zip(plain_out, remat_out):
      np.testing.assert_allclose(r, p, rtol=1e-12, atol=1e-14)
    plain = jax.grad(lambda *a: loss(*a, remat=False), argnums)(*args)
    remat = jax.grad(lambda *a: loss(*a, remat=True), argnums)(*args)
    for p, r in zip(plain, remat):
      assert np.any(p != 0)
      np.testing.assert_allclose(r, p, rtol=1e-10, atol=1e-13)


def test_remat_under_jit_and_vmap():
  rng = np.random.default_rng(8)
  u = jnp.asarray(rng.standard_normal((3, 9, 4, 5)), jnp.float32)
  step = jax.jit(jax.vmap(jax.grad(
      lambda u, remat: jnp.sum(dynamic_routing(u, n_iters=3, remat=remat).v ** 2)),
      in_axes=(0, None)), static_argnums=1)
  np.testing.assert_allclose(step(u, True), step(u, False), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kernel", list(_KERNELS))
def test_remat_must_be_a_bool(kernel):
  args, fn = _KERNELS[kernel](np.random.default_rng(9))
  with pytest.raises(ValueError, match="remat must be a bool, got 'yes'"):
    fn(*(jnp.asarray(a, jnp.float32) for a in args), remat="yes")


def test_layers_pass_remat_to_their_kernels():
  from flax import nnx

  from capsjax.nn.heinsen import HeinsenRoutingLayer
  from capsjax.nn.routing_baselines import DynamicRoutingLayer, EMRoutingLayer
  rng = np.random.default_rng(10)
  poses = jnp.asarray(rng.standard_normal((2, 6, 4)), jnp.float32)
  acts = jnp.asarray(rng.uniform(0.1, 1, (2, 6)), jnp.float32)
  for make, call in (
      (lambda r: DynamicRoutingLayer(6, 4, 3, n_iters=3, remat=r, rngs=nnx.Rngs(0)),
       lambda m: m(poses, acts).poses),
      (lambda r: EMRoutingLayer(6, 4, 3, n_iters=3, remat=r, rngs=nnx.Rngs(0)),
       lambda m: m(poses, acts).poses),
      (lambda r: HeinsenRoutingLayer(2, 2, 2, n_inp=6, n_out=3, n_iters=3, remat=r,
                                     rngs=nnx.Rngs(0)),
       lambda m: m(acts, poses.reshape(2, 6, 2, 2))[1])):
    plain, remat = make(False), make(True)
    assert remat.remat and not plain.remat
    grads = [nnx.grad(lambda m, call=call: jnp.sum(call(m) ** 2))(m) for m in (plain, remat)]
    for g_plain, g_remat in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
      np.testing.assert_allclose(g_remat, g_plain, rtol=1e-5, atol=1e-7)
