"""Tests of ``heinsen_routing`` against the float64 NumPy port of the official code.

Gradients are compared with the reference's exact complex-step derivatives
(``reference_heinsen.reference_grads``) of a scalar that touches every output,
``sum_k <output_k, cotangent_k>``. Shapes are reused across tests so that
each jitted function compiles once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from capsjax.routing import HeinsenRouting, heinsen_routing
from tests.routing.reference_heinsen import (
    central_diff_grad,
    projected_loss,
    reference_grads,
    reference_heinsen_routing,
)
from tests.testing_utils import assert_rel_close, assert_tree_rel_close, rel_err

N_INP, N_OUT, D_COV, D_INP, D_OUT = 7, 3, 2, 3, 4
TOL32, TOL64 = 1e-4, 1e-10
ARG_NAMES = ("a_inp", "mu_inp", "W", "B", "beta_use", "beta_ign")
_STATIC = ("n_iters", "p_model", "n_out", "precision", "algorithm", "chunk_size")


@dataclasses.dataclass(frozen=True)
class Config:
  """One variant of the kernel: which axes of the parameters broadcast."""
  name: str
  var_inp: bool = False        # parameters' leading axis 1 (shared over i)
  var_out: bool = False        # output axis 1 and n_out given
  brk: bool = False            # with a B_brk (only with var_out)
  p_model: str = "gaussian"
  n_iters: int = 3
  mixed: bool = False          # W per-input, B and betas shared over i and j

  @property
  def kwargs(self):
    kw = dict(n_iters=self.n_iters, p_model=self.p_model)
    if self.var_out:
      kw["n_out"] = N_OUT
    return kw


CONFIGS = [
    Config("fixed-gaussian"),
    Config("fixed-skm", p_model="skm"),
    Config("varinp-gaussian", var_inp=True),
    Config("varinp-skm", var_inp=True, p_model="skm"),
    Config("varout-brk-gaussian", var_out=True, brk=True),
    Config("varinp-varout-brk-skm", var_inp=True, var_out=True, brk=True,
           p_model="skm"),
    Config("varinp-varout-nobrk-gaussian", var_inp=True, var_out=True),
    Config("fixed-1iter", n_iters=1),
    Config("varout-brk-1iter-skm", var_out=True, brk=True, n_iters=1,
           p_model="skm"),
    Config("mixed-broadcast", mixed=True, n_iters=2),
]
CONFIG_IDS = [c.name for c in CONFIGS]


def draw(cfg: Config, seed: int = 0, n_inp: int = N_INP, n_out: int = N_OUT,
         d_cov: int = D_COV, d_inp: int = D_INP, d_out: int = D_OUT,
         dtype=np.float32):
  """Well-conditioned random inputs: ``(args, B_brk)``."""
  rng = np.random.default_rng(seed)
  i = 1 if cfg.var_inp else n_inp
  j = 1 if cfg.var_out else n_out
  a_inp = 2.0 * rng.normal(size=n_inp)
  mu_inp = rng.normal(size=(n_inp, d_cov, d_inp))
  W = rng.normal(size=(i, j, d_inp, d_out)) / d_inp
  ib, jb = (1, 1) if cfg.mixed else (i, j)
  B = 0.5 * rng.normal(size=(ib, jb, d_cov, d_out))
  beta_use = rng.normal(size=(ib, jb))
  beta_ign = rng.normal(size=(ib, jb))
  B_brk = rng.normal(size=(1, d_cov, d_out)) if cfg.brk else None
  args = tuple(x.astype(dtype) for x in (a_inp, mu_inp, W, B, beta_use, beta_ign))
  return args, (None if B_brk is None else B_brk.astype(dtype))


def draw_cotangents(args, seed: int = 1, n_out: int = N_OUT):
  rng = np.random.default_rng(seed)
  n_inp, d_cov, _ = args[1].shape
  d_out = args[2].shape[-1]
  shapes = [(n_out,), (n_out, d_cov, d_out), (n_out, d_cov, d_out), (n_inp, n_out)]
  return tuple(rng.normal(size=s) for s in shapes)


@functools.partial(jax.jit, static_argnames=_STATIC)
def route_jit(args, B_brk=None, **kw):
  return heinsen_routing(*args, B_brk=B_brk, **kw)


@functools.partial(jax.jit, static_argnames=_STATIC + ("shared_beta",))
def grads_jit(args, cots, B_brk=None, shared_beta=False, **kw):
  """Gradients of ``projected_loss`` w.r.t. ``args`` and ``B_brk``."""
  def loss(args, B_brk):
    if shared_beta:  # one array passed as both betas
      args = (*args[:5], args[4])
    return projected_loss(heinsen_routing(*args, B_brk=B_brk, **kw), cots)
  return jax.grad(loss, argnums=(0, 1))(args, B_brk)


def as_dtype(tree, dtype):
  return jax.tree.map(lambda x: np.asarray(x, dtype), tree)


def assert_all_finite(tree, name=""):
  for k, leaf in enumerate(jax.tree.leaves(tree)):
    assert np.all(np.isfinite(np.asarray(leaf))), f"{name}: leaf {k} not finite"


def check_against_reference(args, B_brk, kw, tol, *, cots_seed=1, grads=True,
                            n_out=N_OUT, dtype=np.float32, eager=False,
                            finite_only=(), ours_kw=None):
  """Forward (jitted, and eager if asked) and gradients against the reference.

  ``ours_kw`` are options of ``heinsen_routing`` alone (e.g. ``algorithm``).

  Gradients named in ``finite_only`` are only checked to be finite (where
  float32 itself cannot resolve them, e.g. sigmoid'(80) == 0 in float32).
  """
  args, B_brk = as_dtype((args, B_brk), dtype)
  ref = reference_heinsen_routing(*args, B_brk=B_brk, **kw)
  ref_kw, kw = kw, {**kw, **(ours_kw or {})}
  ours = route_jit(args, B_brk, **kw)
  assert isinstance(ours, HeinsenRouting)
  assert ours.a_out.dtype == dtype
  assert_tree_rel_close(ours, ref, tol, "jit")
  if eager:
    assert_tree_rel_close(heinsen_routing(*args, B_brk=B_brk, **kw), ref, tol, "eager")
  if not grads:
    return
  cots = as_dtype(draw_cotangents(args, cots_seed, n_out), dtype)
  g_args, g_brk = grads_jit(args, cots, B_brk, **kw)
  ref_g = reference_grads(args, cots, grad_B_brk=B_brk is not None,
                          B_brk=B_brk, **ref_kw)
  finite_a = np.isfinite(args[0])
  assert_all_finite(g_args, "grads")
  for name, g in zip(ARG_NAMES, g_args):
    g = np.asarray(g)
    if name == "a_inp":  # only at finite entries
      g = np.where(finite_a, g, 0.0)
    if name in finite_only:
      continue
    assert_rel_close(g, ref_g[name], tol, f"grad {name}")
  if B_brk is not None:
    assert_rel_close(g_brk, ref_g["B_brk"], tol, "grad B_brk")


# --------------------------------------------------------------------------
# Agreement with the official algorithm.


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_matches_reference_float32(cfg):
  args, B_brk = draw(cfg, 0)
  check_against_reference(args, B_brk, cfg.kwargs, TOL32, cots_seed=10,
                          eager=cfg is CONFIGS[0])


@pytest.mark.parametrize("algorithm", ["votes", "moments"])
@pytest.mark.parametrize("cfg", [CONFIGS[2], CONFIGS[5]], ids=lambda c: c.name)
def test_both_algorithms_match_reference(cfg, algorithm):
  # chunk_size 3 over 7 inputs: three chunks, the last padded by two.
  args, B_brk = draw(cfg, 3)
  check_against_reference(args, B_brk, cfg.kwargs, TOL32, cots_seed=11,
                          ours_kw={"algorithm": algorithm, "chunk_size": 3})


def test_moments_accurate_in_float32_at_a_larger_offset_shape():
  # Raw second moments cancel when inputs sit far from the origin; the
  # centring in the moments path must keep float32 within the bar.
  rng = np.random.default_rng(5)
  n_inp, n_out, d = 400, 16, 4
  args = (2.0 * rng.normal(size=n_inp), rng.normal(size=(n_inp, d, d)) + 5.0,
          rng.normal(size=(1, n_out, d, d)) / d, 0.5 * rng.normal(size=(1, n_out, d, d)),
          rng.normal(size=(1, n_out)), rng.normal(size=(1, n_out)))
  args = as_dtype(args, np.float32)
  ref = reference_heinsen_routing(*as_dtype(args, np.float64), n_iters=3)
  ours = route_jit(args, None, n_iters=3, algorithm="moments", chunk_size=128)
  assert_tree_rel_close(ours, ref, TOL32, "moments")


@pytest.mark.parametrize("kw,match", [
    (dict(algorithm="fast"), "algorithm must be one of"),
    (dict(algorithm="moments"), "algorithm='moments' needs W and B shared"),
    (dict(chunk_size=0), "chunk_size must be a positive integer"),
])
def test_algorithm_option_errors(kw, match):
  args, _ = draw(CONFIGS[0], 0)  # fixed inputs: W per input
  with pytest.raises(ValueError, match=match):
    heinsen_routing(*args, **kw)


def test_matches_reference_float32_more_draws():
  cfg = CONFIGS[0]
  for seed in (1, 2, 3):
    args, B_brk = draw(cfg, seed)
    check_against_reference(args, B_brk, cfg.kwargs, TOL32, cots_seed=seed + 10)


CONFIGS_64 = [CONFIGS[k] for k in (0, 3, 5, 8, 9)]


@pytest.mark.parametrize("cfg", CONFIGS_64, ids=lambda c: c.name)
def test_matches_reference_float64(cfg):
  args, B_brk = draw(cfg, 2, dtype=np.float64)
  with jax.enable_x64(True):
    check_against_reference(args, B_brk, cfg.kwargs, TOL64, dtype=np.float64)


def test_complex_step_agrees_with_central_differences():
  """The reference's exact derivatives are what finite differences give."""
  cfg = Config("fixed-gaussian")
  args, _ = draw(cfg, 3, dtype=np.float64)
  cots = draw_cotangents(args)
  ref_g = reference_grads(args, cots)
  for k, name in enumerate(ARG_NAMES):
    def f(x, k=k):
      a = list(args)
      a[k] = x
      return projected_loss(reference_heinsen_routing(*a), cots)
    assert rel_err(ref_g[name], central_diff_grad(f, args[k])) < 1e-7, name


def test_reference_float32_is_well_conditioned_on_test_draws():
  """KERNELS.md: a float32 bar is only meaningful where the official float32
  computation itself is within 1e-5; check that for the test draws."""
  for cfg in CONFIGS:
    args, B_brk = draw(cfg, 0)
    ref64 = reference_heinsen_routing(*args, B_brk=B_brk, **cfg.kwargs)
    ref32 = reference_heinsen_routing(*args, B_brk=B_brk, dtype=np.float32,
                                      **cfg.kwargs)
    for o, r in zip(ref32, ref64):
      assert o.dtype == np.float32
      assert rel_err(o, r) < 1e-5, cfg.name


def test_n_iters_1_routes_uniformly():
  cfg = Config("fixed-1iter", n_iters=1)
  args, _ = draw(cfg)
  out = route_jit(args, **cfg.kwargs)
  np.testing.assert_array_equal(out.R, np.full((N_INP, N_OUT), np.float32(1 / N_OUT)))
  # Gradients reach nothing through the constant R.
  cots = draw_cotangents(args)
  cots = (0 * cots[0], 0 * cots[1], 0 * cots[2], cots[3])
  g_args, _ = grads_jit(args, cots, **cfg.kwargs)
  for g in g_args:
    np.testing.assert_array_equal(g, 0)


def test_smallnorb_layer2_shape():
  """Routing 2 of the smallNORB model: 64 capsules 4x4 -> 5 capsules 4x4."""
  cfg = Config("fixed-gaussian")
  args, _ = draw(cfg, 4, n_inp=64, n_out=5, d_cov=4, d_inp=4, d_out=4)
  check_against_reference(args, None, cfg.kwargs, TOL32, grads=False)
  out = route_jit(args)
  assert out.a_out.shape == (5,)
  assert out.mu_out.shape == out.sig2_out.shape == (5, 4, 4)
  assert out.R.shape == (64, 5)


def test_vmap_over_a_batch():
  cfg = Config("varinp-gaussian", var_inp=True)
  samples = [draw(cfg, s)[0] for s in range(3)]
  params = samples[0][2:]
  a = np.stack([s[0] for s in samples])
  mu = np.stack([s[1] for s in samples])
  batched = jax.vmap(lambda a, mu: heinsen_routing(a, mu, *params))(a, mu)
  for b in range(3):
    single = route_jit((a[b], mu[b], *params))
    for x, y in zip(batched, single):
      np.testing.assert_allclose(x[b], y, rtol=1e-5, atol=1e-6)


def test_check_grads_forward_and_reverse_float64():
  """JVPs (forward mode) work too, through the scan and the softmaxes."""
  cfg = CONFIGS[5]
  assert cfg.var_inp and cfg.var_out and cfg.brk
  args, B_brk = draw(cfg, 5, dtype=np.float64)
  with jax.enable_x64(True):
    @jax.jit
    def f(mu_inp, W, B, beta, B_brk):
      out = heinsen_routing(args[0], mu_inp, W, B, beta, beta, n_out=N_OUT,
                            B_brk=B_brk)
      return out.a_out, out.mu_out, out.R
    check_grads(f, (args[1], args[2], args[3], args[4], B_brk), order=1,
                modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------
# Parameter sharing.


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[4]],
                         ids=lambda c: c.name)
def test_shared_beta_gradient_is_sum_of_both_uses(cfg):
  args, B_brk = draw(cfg, 6)
  beta = args[4]
  shared_args = (*args[:5], beta)
  cots = draw_cotangents(args)
  # Same array as both betas: forward as with two equal arrays.
  out = route_jit(shared_args, B_brk, **cfg.kwargs)
  assert_tree_rel_close(out, reference_heinsen_routing(*shared_args, B_brk=B_brk,
                                                       **cfg.kwargs), TOL32)
  # jax.grad w.r.t. the one array passed as both betas.
  g_shared = jax.jit(jax.grad(lambda b: projected_loss(
      heinsen_routing(*args[:4], b, b, B_brk=B_brk, **cfg.kwargs), cots)))(beta)
  ref_g = reference_grads(shared_args, cots, shared_beta=True, B_brk=B_brk,
                          **cfg.kwargs)
  assert_rel_close(g_shared, ref_g["beta"], TOL32, "shared beta")
  # ... which is the sum of the gradients of its two uses.
  (_, _, _, _, g_use, g_ign), _ = grads_jit(shared_args, cots, B_brk, **cfg.kwargs)
  assert_rel_close(g_shared, np.asarray(g_use) + np.asarray(g_ign), 1e-5, "sum")
  g_jit, _ = grads_jit(shared_args, cots, B_brk, shared_beta=True, **cfg.kwargs)
  assert_rel_close(g_jit[4], ref_g["beta"], TOL32, "shared beta (jit)")


@pytest.mark.parametrize("p_model", ["gaussian", "skm"])
def test_variable_inputs_match_fixed_path_with_tiled_params(p_model):
  cfg = Config("varinp", var_inp=True, p_model=p_model)
  args, _ = draw(cfg, 7)
  tiled = (*args[:2], *(np.repeat(p, N_INP, axis=0) for p in args[2:]))
  assert tiled[2].shape == (N_INP, N_OUT, D_INP, D_OUT)
  shared_out = route_jit(args, **cfg.kwargs)
  tiled_out = route_jit(tiled, **cfg.kwargs)
  # The shared path runs the moments algorithm, the tiled one the votes:
  # different float32 round-off, so 1e-5 (10x tighter than the 1e-4 bar).
  assert_tree_rel_close(shared_out, tiled_out, 1e-5, "tiled")
  cots = draw_cotangents(args)
  g_shared, _ = grads_jit(args, cots, **cfg.kwargs)
  g_tiled, _ = grads_jit(tiled, cots, **cfg.kwargs)
  for k, name in enumerate(ARG_NAMES):
    want = np.asarray(g_tiled[k])
    if k >= 2:  # a shared parameter's gradient sums over the inputs
      want = want.sum(0, keepdims=True)
    assert_rel_close(g_shared[k], want, 1e-5, name)


def test_variable_outputs_without_brk_give_identical_outputs():
  cfg = Config("varout-nobrk", var_out=True)
  args, _ = draw(cfg, 8)
  out = route_jit(args, **cfg.kwargs)
  for x in out[:3]:
    np.testing.assert_allclose(x, np.broadcast_to(x[:1], x.shape), rtol=1e-6)
  # B_brk = zeros is the same as None; B_brk breaks the symmetry.
  zeros = np.zeros((1, D_COV, D_OUT), np.float32)
  assert_tree_rel_close(route_jit(args, zeros, **cfg.kwargs), out, 1e-6)
  brk = route_jit(args, np.ones_like(zeros), **cfg.kwargs)
  assert not np.allclose(brk.mu_out[0], brk.mu_out[-1])


def test_fixed_single_output_without_n_out():
  """n_out axis 1 and no n_out: one fixed output (not variable-output mode)."""
  cfg = Config("single")
  args, _ = draw(cfg, 9, n_out=1)
  check_against_reference(args, None, cfg.kwargs, TOL32, n_out=1)
  np.testing.assert_array_equal(route_jit(args).R, 1.0)
  # Variable-output mode with n_out = 1: linspace(-1, 1, 1) == [-1].
  cfg = Config("single-varout", var_out=True, brk=True)
  args, B_brk = draw(cfg, 9)
  ours = route_jit(args, B_brk, n_out=1)
  assert_tree_rel_close(ours, reference_heinsen_routing(*args, B_brk=B_brk, n_out=1),
                        TOL32)


def test_precision_option():
  """``precision=None`` (JAX's default) is accepted; on CPU it is float32."""
  cfg = CONFIGS[0]
  args, _ = draw(cfg, 0)
  ref = reference_heinsen_routing(*args)
  assert_tree_rel_close(route_jit(args, precision=None), ref, TOL32)


# --------------------------------------------------------------------------
# Scores at the edges: padding, +inf, large logits.

PAD = np.array([False, True, False, False, True, False, True])


def remove_inputs(args, keep):
  """The call without the inputs not in ``keep`` (per-input parameters too)."""
  a, mu, *params = args
  params = [p[keep] if p.shape[0] == len(keep) else p for p in params]
  return (a[keep], mu[keep], *params)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[5]],
                         ids=lambda c: c.name)
def test_padding_is_ignored_completely(cfg):
  args, B_brk = draw(cfg, 11)
  keep = ~PAD
  a = np.where(PAD, -np.inf, args[0]).astype(np.float32)
  mu_nan = args[1].copy()
  mu_nan[PAD] = np.nan  # padding filled with garbage
  removed = remove_inputs((a, *args[1:]), keep)
  want = route_jit(removed, B_brk, **cfg.kwargs)
  for mu in (args[1], mu_nan):
    out = route_jit((a, mu, *args[2:]), B_brk, **cfg.kwargs)
    assert_all_finite(out, "padded outputs")
    # Padding changes the length of every reduction over inputs, hence the
    # float32 round-off: 1e-5, 10x tighter than the 1e-4 bar.
    assert_tree_rel_close(out[:3], want[:3], 1e-5, "padded")
    assert_rel_close(out.R[keep], want.R, 1e-5, "R")
  # Against the official code (whose padded capsules must be finite; only
  # the padded rows of R depend on them).
  check_against_reference((a, *args[1:]), B_brk, cfg.kwargs, TOL32)
  padded = (a, mu_nan, *args[2:])
  # Gradients: the same as without the padded inputs, 0 at them.
  cots = draw_cotangents(args)
  cots = (*cots[:3], np.where(PAD[:, None], 0.0, cots[3]))
  g, g_brk = grads_jit(padded, cots, B_brk, **cfg.kwargs)
  g_want, g_brk_want = grads_jit(removed, (*cots[:3], cots[3][keep]), B_brk,
                                 **cfg.kwargs)
  assert_all_finite((g, g_brk), "padded grads")
  for k, name in enumerate(ARG_NAMES):
    gk = np.asarray(g[k])
    if gk.shape[0] == N_INP:
      np.testing.assert_array_equal(gk[PAD], 0, err_msg=name)
      gk = gk[keep]
    assert_rel_close(gk, g_want[k], 1e-5, name)
  if B_brk is not None:
    assert_rel_close(g_brk, g_brk_want, 1e-5, "B_brk")


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[5]], ids=lambda c: c.name)
def test_plus_inf_is_fully_present(cfg):
  args, B_brk = draw(cfg, 12)
  a_inf = np.where(PAD, np.inf, args[0]).astype(np.float32)
  a_100 = np.where(PAD, 100.0, args[0]).astype(np.float32)  # sigmoid == 1.0
  assert np.all(jax.nn.sigmoid(a_100)[PAD] == 1.0)
  out = route_jit((a_inf, *args[1:]), B_brk, **cfg.kwargs)
  assert_tree_rel_close(out, route_jit((a_100, *args[1:]), B_brk, **cfg.kwargs), 1e-7)
  check_against_reference((a_inf, *args[1:]), B_brk, cfg.kwargs, TOL32)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3]], ids=lambda c: c.name)
def test_mixed_padding_and_inf(cfg):
  args, B_brk = draw(cfg, 13)
  a = args[0].copy()
  a[[0, 3]] = -np.inf
  a[[1, 5]] = np.inf
  check_against_reference((a, *args[1:]), B_brk, cfg.kwargs, TOL32)


@pytest.mark.parametrize("cfg", [CONFIGS[2], CONFIGS[1]], ids=lambda c: c.name)
def test_all_but_one_padded_is_the_single_input(cfg):
  args, B_brk = draw(cfg, 14)
  keep = np.zeros(N_INP, bool)
  keep[4] = True
  a = np.where(keep, args[0], -np.inf).astype(np.float32)
  out = route_jit((a, *args[1:]), B_brk, **cfg.kwargs)
  single = route_jit(remove_inputs(args, keep), B_brk, **cfg.kwargs)
  # Different reduction lengths: 1e-5, as in the padding test above.
  assert_tree_rel_close(out[:3], single[:3], 1e-5, "all but one")
  assert_rel_close(out.R[keep], single.R, 1e-5, "R")
  check_against_reference((a, *args[1:]), B_brk, cfg.kwargs, TOL32)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[3], CONFIGS[5]],
                         ids=lambda c: c.name)
def test_all_padded_stays_finite(cfg):
  args, B_brk = draw(cfg, 15)
  a = np.full(N_INP, -np.inf, np.float32)
  padded = (a, *args[1:])
  out = route_jit(padded, B_brk, **cfg.kwargs)
  assert_all_finite(out, "all padded")
  np.testing.assert_array_equal(out.a_out, 0)
  np.testing.assert_array_equal(out.mu_out, 0)
  np.testing.assert_allclose(out.sig2_out, 1e-5, rtol=1e-6)
  np.testing.assert_allclose(out.R.sum(1), 1, rtol=1e-6)
  cots = draw_cotangents(args)
  g, g_brk = grads_jit(padded, cots, B_brk, **cfg.kwargs)
  assert_all_finite((g, g_brk), "all padded grads")
  # Without R (whose rows are all padding), no parameter reaches the loss.
  cots = (*cots[:3], 0 * cots[3])
  g, g_brk = grads_jit(padded, cots, B_brk, **cfg.kwargs)
  for k, leaf in enumerate(jax.tree.leaves((g, g_brk))):
    np.testing.assert_array_equal(leaf, 0, err_msg=str(k))
  # The official code agrees on the outputs that do not depend on R's
  # (ill-conditioned: sig2_out = eps) E-step.
  ref = reference_heinsen_routing(*padded, B_brk=B_brk, **cfg.kwargs)
  for x, r in zip(out[:3], ref[:3]):
    np.testing.assert_allclose(x, r, rtol=1e-6, atol=0)


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1], CONFIGS[5]],
                         ids=lambda c: c.name)
def test_large_finite_logits(cfg):
  args, B_brk = draw(cfg, 16)
  rng = np.random.default_rng(16)
  mixed = rng.choice([-80.0, 80.0], size=N_INP).astype(np.float32)
  mixed[:2] = [-80.0, 80.0]
  # The +80 inputs are used (sigmoid == 1 in float32), the -80 ones are not.
  # d/da_inp = sigmoid'(+-80) ~ 2e-35 (0 in float32 at +80): finite only.
  check_against_reference((mixed, *args[1:]), B_brk, cfg.kwargs, TOL32,
                          finite_only=("a_inp",))
  cots = draw_cotangents(args)
  for value in (-80.0, 80.0):
    a = np.full(N_INP, value, np.float32)
    out = route_jit((a, *args[1:]), B_brk, **cfg.kwargs)
    assert_all_finite(out, f"a_inp={value}")
    assert_all_finite(grads_jit((a, *args[1:]), cots, B_brk, **cfg.kwargs),
                      f"grads a_inp={value}")
  # Huge betas drive a_out to +-hundreds: log_sigmoid(a_out) stays finite.
  big = (*args[:4], 300 * args[4], 300 * args[5])
  out = route_jit(big, B_brk, **cfg.kwargs)
  assert np.max(np.abs(out.a_out)) > 80
  assert_all_finite(out, "big betas")
  assert_all_finite(grads_jit(big, cots, B_brk, **cfg.kwargs), "big betas grads")


@pytest.mark.parametrize("p_model", ["gaussian", "skm"])
def test_one_input_capsule(p_model):
  cfg = Config("one", p_model=p_model)
  args, _ = draw(cfg, 17, n_inp=1)
  check_against_reference(args, None, cfg.kwargs, TOL32)
  cfg = Config("one-varout", p_model=p_model, var_out=True, brk=True)
  args, B_brk = draw(cfg, 18, n_inp=1)
  check_against_reference(args, B_brk, cfg.kwargs, TOL32)


# --------------------------------------------------------------------------
# Shape contract.


def _good():
  args, _ = draw(Config("fixed"), 0)
  return dict(zip(ARG_NAMES, args))


def _call(n_out=None, B_brk=None, **overrides):
  kw = _good()
  kw.update(overrides)
  extra = {"n_out": n_out} if n_out is not None else {}
  if B_brk is not None:
    extra["B_brk"] = B_brk
  return heinsen_routing(*(kw[n] for n in ARG_NAMES), **extra)


z = np.zeros
BAD_SHAPES = [
    ("a_inp", z((N_INP, 1)), r"a_inp must have 1 axes \[n_inp\], got shape \(7, 1\)"),
    ("mu_inp", z((N_INP + 1, D_COV, D_INP)),
     r"mu_inp must have shape \[n_inp, d_cov, d_inp\] = \[7, \*, \*\], got \(8, 2, 3\)"),
    ("mu_inp", z((N_INP, D_COV * D_INP)), r"mu_inp must have 3 axes"),
    ("W", z((2, N_OUT, D_INP, D_OUT)),
     r"W must have shape \[n_inp \| 1, n_out, d_inp, d_out\] = \[7\|1, 3, 3, 4\], got \(2, 3, 3, 4\)"),
    ("W", z((N_INP, N_OUT, D_INP + 1, D_OUT)), r"W must have shape .* got \(7, 3, 4, 4\)"),
    ("W", z((N_OUT, D_INP, D_OUT)), r"W must have 4 axes"),
    ("B", z((N_INP, N_OUT, D_COV, D_OUT + 1)),
     r"B must have shape \[n_inp \| 1, n_out \| 1, d_cov, d_out\] = \[7\|1, 3\|1, 2, 4\], got \(7, 3, 2, 5\)"),
    ("B", z((N_INP, N_OUT + 1, D_COV, D_OUT)), r"B must have shape .* got \(7, 4, 2, 4\)"),
    ("B", z((N_INP, N_OUT, D_OUT)), r"B must have shape .* got \(7, 3, 4\)"),
    ("beta_use", z((N_INP, N_OUT + 1)),
     r"beta_use must have shape \[n_inp \| 1, n_out \| 1\] = \[7\|1, 3\|1\], got \(7, 4\)"),
    ("beta_use", z((N_OUT,)), r"beta_use must have shape .* got \(3,\)"),
    ("beta_ign", z((N_INP + 2, N_OUT)),
     r"beta_ign must have shape \[n_inp \| 1, n_out \| 1\] = \[7\|1, 3\|1\], got \(9, 3\)"),
]


@pytest.mark.parametrize("name,value,match", BAD_SHAPES,
                         ids=[f"{n}-{v.shape}" for n, v, _ in BAD_SHAPES])
def test_shape_errors_name_the_argument(name, value, match):
  with pytest.raises(ValueError, match=match):
    _call(**{name: value})


def test_shape_errors_variable_outputs():
  var = dict(W=z((1, 1, D_INP, D_OUT)), B=z((1, 1, D_COV, D_OUT)),
             beta_use=z((1, 1)), beta_ign=z((1, 1)))
  _call(n_out=N_OUT, **var)  # fine
  _call(n_out=N_OUT, B_brk=z((1, D_COV, D_OUT)), **var)  # fine
  with pytest.raises(ValueError, match=r"W must have an output axis of 1 when n_out is given"):
    _call(n_out=N_OUT)
  with pytest.raises(ValueError, match=r"W must have an output axis of 1 .* got \(1, 3, 3, 4\)"):
    _call(n_out=N_OUT, **{**var, "W": z((1, N_OUT, D_INP, D_OUT))})
  for name, shape in [("B", (1, N_OUT, D_COV, D_OUT)), ("beta_use", (1, N_OUT)),
                      ("beta_ign", (N_INP, N_OUT))]:
    with pytest.raises(ValueError, match=rf"{name} must have shape \[n_inp \| 1, 1"):
      _call(n_out=N_OUT, **{**var, name: z(shape)})
  for shape in [(D_COV, D_OUT), (1, D_COV, D_OUT + 1), (N_OUT, D_COV, D_OUT)]:
    with pytest.raises(ValueError, match=r"B_brk must have shape \[1, d_cov, d_out\] = \[1, 2, 4\]"):
      _call(n_out=N_OUT, B_brk=z(shape), **var)
  with pytest.raises(ValueError, match=r"B_brk is only used with a variable number of outputs"):
    _call(B_brk=z((1, D_COV, D_OUT)))
  for bad in (0, -2, 2.0, True):
    with pytest.raises(ValueError, match="n_out must be a positive integer"):
      _call(n_out=bad, **var)


@pytest.mark.parametrize("kw,match", [
    (dict(n_iters=0), "n_iters must be a positive integer"),
    (dict(n_iters=2.0), "n_iters must be a positive integer"),
    (dict(p_model="em"), "p_model must be one of"),
])
def test_option_errors(kw, match):
  args = _good()
  with pytest.raises(ValueError, match=match):
    heinsen_routing(*(args[n] for n in ARG_NAMES), **kw)


def test_shape_errors_raise_at_trace_time_under_jit():
  args = _good()
  args["mu_inp"] = z((N_INP, D_COV, D_INP + 1))
  with pytest.raises(ValueError, match="W must have shape"):
    route_jit(tuple(args[n] for n in ARG_NAMES))
