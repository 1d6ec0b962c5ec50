"""Mixed precision (``compute_dtype=jnp.bfloat16``) of the routing kernels.

Each kernel is run at a shape of its paper, once in float32 and once with
bfloat16 storage and matmul operands (float32 accumulation and statistics), in
one jitted program that also differentiates ``sum_k <output_k, cotangent_k>``
with respect to every input. The mixed run must be finite, return float32,
and stay close to the float32 run.

Error bounds. bfloat16 keeps 8 significant bits: one rounding has relative
error at most ``u = 2**-9 ~ 2e-3``. A product of two rounded operands carries
up to ``2u``; float32 accumulation adds nothing measurable. Routing is
iterative (3 iterations) and the E-step turns an absolute error ``delta`` in a
log-likelihood into a relative error ``delta`` in ``R``; with log-likelihoods
of order ``d_cov * d_out / 2 = 8`` (a 4x4 Gaussian), rounding the votes and
deviations gives logit errors of a few ``u`` per term that average over the
inputs. We therefore bound outputs by ``10u = 2e-2`` where thousands of inputs
average the rounding (Heinsen smallNORB layer 1 and SST layer 1, dynamic and
EM routing at 1152 inputs) and gradients, whose backward pass rounds the
cotangents of the stored tensors once more, by ``25u = 5e-2``. Self-attention
routing has no iteration and LayerNorm-ed outputs: ``10u``; its gradients
cross a ReLU and are bounded by ``3 sqrt(u)`` (see that test). Errors are
KERNELS.md's ``max|ours - ref| / max|ref|`` per array unless said otherwise;
the measured ones are printed with ``pytest -s``. On CPU the mixed dots run
as float32 dots of bfloat16-rounded operands (``_precision.py``), the same
arithmetic as an accelerator's bfloat16 dot with float32 accumulation.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from capsjax import routing
from tests.testing_utils import rel_err

U = 2.0**-9  # bfloat16 unit roundoff


def _normal(rng, *shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("fn",))
def _outputs_and_grads(fn, args, cots, consts):
  """Outputs and gradients of ``sum_k <out_k, cot_k>``, float32 and mixed.

  ``args`` are differentiated, ``consts`` (e.g. masks) are not.
  """
  def run(compute_dtype):
    def loss(args):
      out = fn(*args, *consts, compute_dtype=compute_dtype)
      return sum(jnp.sum(o * c) for o, c in zip(out, cots)), out
    (_, out), grads = jax.value_and_grad(loss, has_aux=True)(args)
    return out, grads
  return run(None), run(jnp.bfloat16)


def _norm_rel_err(ours, ref) -> float:
  """``|ours - ref|_2 / |ref|_2`` over the whole array, in float64."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def _check(fn, args, cots, fwd_tol, grad_tol, name, consts=(), grad_err=rel_err,
           skip_grads=()):
  """Runs both precisions and bounds the errors of outputs and gradients.

  ``skip_grads``: indices of gradient leaves whose true value is exactly 0
  (a relative error is meaningless there).
  """
  (out32, g32), (out16, g16) = _outputs_and_grads(fn, args, cots, consts)
  for leaf in jax.tree.leaves((out16, g16)):
    assert leaf.dtype == jnp.float32, name
    assert np.all(np.isfinite(leaf)), name
  fwd = [rel_err(a, b) for a, b in zip(out16, out32)]
  grads = [grad_err(a, b) for k, (a, b) in enumerate(
      zip(jax.tree.leaves(g16), jax.tree.leaves(g32))) if k not in skip_grads]
  print(f"\n{name}: outputs {['%.1e' % e for e in fwd]}, "
        f"gradients {['%.1e' % e for e in grads]}")
  assert max(fwd) <= fwd_tol, (name, fwd)
  assert max(grads) <= grad_tol, (name, grads)


def _cotangents(rng, out_shapes):
  return tuple(_normal(rng, *s) for s in out_shapes)


def _heinsen(a, mu, W, B, beta_use, beta_ign, *, compute_dtype):
  """Heinsen routing over a batch; what the next layer reads."""
  return jax.vmap(lambda a, mu: routing.heinsen_routing(
      a, mu, W, B, beta_use, beta_ign, n_iters=3,
      compute_dtype=compute_dtype)[:3])(a, mu)


def _heinsen_args(rng, batch, n_inp, n_out, d_cov, d_inp, d_out):
  return (_normal(rng, batch, n_inp, scale=2.0), _normal(rng, batch, n_inp, d_cov, d_inp),
          _normal(rng, 1, n_out, d_inp, d_out, scale=1 / d_inp),
          _normal(rng, 1, n_out, d_cov, d_out, scale=0.5),
          _normal(rng, 1, n_out), _normal(rng, 1, n_out))


def test_heinsen_smallnorb_layer1():
  # Heinsen (2019) smallNORB: 5184 = 18 x 18 x 16 capsules 4x4 -> 64, 3
  # iterations; W shared over inputs, so "auto" routes from input moments.
  rng = np.random.default_rng(0)
  args = _heinsen_args(rng, 1, 5184, 64, 4, 4, 4)
  cots = _cotangents(rng, [(1, 64), (1, 64, 4, 4), (1, 64, 4, 4)])
  _check(_heinsen, args, cots, 10 * U, 25 * U, "heinsen smallNORB layer 1")


def test_heinsen_sst_layer1():
  # Heinsen (2019) SST: 37 GPT-2-large layers x 12 tokens, capsules 1x64 ->
  # 64 capsules 1x2 (d_inp^2 > n_out d_out, so the vote algorithm).
  rng = np.random.default_rng(1)
  args = _heinsen_args(rng, 2, 37 * 12, 64, 1, 64, 2)
  cots = _cotangents(rng, [(2, 64), (2, 64, 1, 2), (2, 64, 1, 2)])
  _check(_heinsen, args, cots, 10 * U, 25 * U, "heinsen SST layer 1")


def _self_attention(poses, acts, params, mask, *, compute_dtype):
  return jax.vmap(lambda x, p, m: tuple(routing.self_attention_routing(
      x, p, params, n_heads=4, mask=m, compute_dtype=compute_dtype)))(poses, acts, mask)


def test_self_attention_duarte_table3():
  # Duarte et al. (2021) Table 3: C = 64 capsules, d = 16; hidden 1024.
  rng = np.random.default_rng(2)
  n_caps, d, hidden = 64, 16, 1024

  def w(m, n):
    return _normal(rng, m, n, scale=1 / math.sqrt(m))

  def b(n):
    return _normal(rng, n, scale=0.1)

  params = routing.SelfAttentionParams(
      w_q=w(d, d), b_q=b(d), w_k=w(d, d), b_k=b(d), w_v=w(d, d), b_v=b(d),
      ln1_scale=1 + b(d), ln1_bias=b(d), w_mlp1=w(d, hidden), b_mlp1=b(hidden),
      w_mlp2=w(hidden, d), b_mlp2=b(d), ln2_scale=1 + b(d), ln2_bias=b(d),
      w_p=w(d, 1), b_p=b(1))
  poses = _normal(rng, 2, n_caps, d, scale=1.5)
  acts = rng.uniform(0.2, 1.0, (2, n_caps)).astype(np.float32)
  mask = rng.uniform(size=(2, n_caps)) > 0.2
  cots = _cotangents(rng, [(2, n_caps, d), (2, n_caps)])
  # Gradients of everything before the MLP's ReLU: rounding moves the
  # pre-activations by ~u, which flips the units within ~u of 0, and each flip
  # changes its unit's gradient entirely; the flipped fraction is ~u, so the
  # error, summed in quadrature over units, is ~sqrt(u) ~ 0.044 (measured:
  # the same ~5% with the attention alone, or the MLP alone, in bfloat16).
  # Those are bounded norm-wise by 3 sqrt(u). b_k and b_p (leaves 5 and 17)
  # cancel in their softmax: their true gradient is 0.
  _check(_self_attention, (poses, acts, params), cots, 10 * U, 3 * math.sqrt(U),
         "self-attention C=64 d=16", consts=(mask,), grad_err=_norm_rel_err,
         skip_grads=(5, 17))


def _dynamic(u_hat, *, compute_dtype):
  return tuple(jax.vmap(lambda u: routing.dynamic_routing(
      u, n_iters=3, compute_dtype=compute_dtype))(u_hat))


def test_dynamic_routing_sabour_mnist():
  # Sabour et al. (2017) MNIST: 1152 primary capsules -> 10 capsules of 16.
  rng = np.random.default_rng(3)
  u_hat = _normal(rng, 2, 1152, 10, 16, scale=0.05)
  cots = _cotangents(rng, [(2, 10, 16), (2, 1152, 10)])
  _check(_dynamic, (u_hat,), cots, 10 * U, 25 * U, "dynamic 1152 -> 10x16")


def _em(a, votes, beta_u, beta_a, *, compute_dtype):
  return tuple(jax.vmap(lambda a, v: routing.em_routing(
      a, v, beta_u, beta_a, n_iters=3, compute_dtype=compute_dtype))(a, votes))


def test_em_routing():
  # Hinton et al. (2018) matrix capsules 4x4, at the baselines' 1152 -> 10.
  rng = np.random.default_rng(4)
  args = (rng.uniform(size=(2, 1152)).astype(np.float32), _normal(rng, 2, 1152, 10, 16),
          _normal(rng, 10), _normal(rng, 10))
  cots = _cotangents(rng, [(2, 10), (2, 10, 16), (2, 10, 16), (2, 1152, 10)])
  _check(_em, args, cots, 10 * U, 25 * U, "EM 1152 -> 10x16")


@pytest.mark.parametrize("call", [
    lambda cd: routing.dynamic_routing(np.ones((3, 2, 4), np.float32), compute_dtype=cd),
    lambda cd: routing.em_routing(np.ones(3, np.float32), np.ones((3, 2, 4), np.float32),
                                  np.zeros(2, np.float32), np.zeros(2, np.float32),
                                  compute_dtype=cd),
])
def test_non_floating_compute_dtype_raises(call):
  with pytest.raises(ValueError, match="compute_dtype must be a floating dtype"):
    call(jnp.int32)


@pytest.mark.parametrize("shared,algorithm,p_model", [
    (True, "votes", "gaussian"), (False, "votes", "skm")])
def test_heinsen_mixed_padding_is_ignored(shared, algorithm, p_model):
  # Padded inputs (-inf scores, NaN capsules) change nothing in mixed
  # precision either: the call equals the one with them removed. Shared
  # parameters exercise the bias kept out of the stored votes; the moments
  # algorithm only changes its contractions' operand dtype.
  rng = np.random.default_rng(5)
  n_inp, n_pad, n_w = 7, 2, 1 if shared else 9
  a = _normal(rng, n_inp + n_pad, scale=2.0)
  mu = _normal(rng, n_inp + n_pad, 2, 3)
  a[[2, 6]] = -np.inf
  mu[[2, 6]] = np.nan
  params = (_normal(rng, n_w, 3, 3, 4, scale=1 / 3), _normal(rng, n_w, 3, 2, 4, scale=0.5),
            _normal(rng, n_w, 3), _normal(rng, n_w, 3))
  keep = np.flatnonzero(np.isfinite(a))
  kept = params if shared else tuple(p[keep] for p in params)
  route = functools.partial(routing.heinsen_routing, algorithm=algorithm, p_model=p_model,
                            compute_dtype=jnp.bfloat16)
  padded, removed = jax.jit(route)(a, mu, *params), jax.jit(route)(a[keep], mu[keep], *kept)
  for got, want in zip(padded[:3], removed[:3]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(padded.R[keep], removed.R, rtol=1e-5, atol=1e-6)
