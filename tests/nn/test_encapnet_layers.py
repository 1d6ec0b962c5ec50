"""Tests of capsjax.nn.encapnet: CapConv, CapFC, FeedbackAgreement (Li et al. 2018).

Each layer is compared, in training mode (BatchNorm on batch statistics),
with a float64 NumPy implementation written here from the paper (Sec. 3.1,
3.2) and the official PyTorch modules (``capConvRoute3/4``, ``CapConv``,
``CapFC``, ``OptTrans`` in hli2020/nn_encapsulation): PyTorch-semantics
convolutions (symmetric padding ``k // 2``), a transposed convolution written
as PyTorch's scatter, BatchNorm with biased batch variance, ReLU, squash; the
divergence is ``tests/ot/reference_ot.sinkhorn_divergence_ref``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from capsjax.nn import encapnet
from capsjax.nn.encapnet import CapConv, CapFC, ConvTranspose, FeedbackAgreement
from tests.ot.reference_ot import sinkhorn_divergence_ref
from tests.testing_utils import assert_rel_close

B_SZ, N_CAPS, D_IN, D_OUT, SIZE = 3, 2, 2, 3, 6


# --------------------------------------------------------------------------
# Float64 NumPy reference.


def _conv_ref(x, w, b, stride, groups=1):
  """PyTorch ``Conv2d(padding=k // 2)`` in NHWC; ``w [k, k, C / g, O]``."""
  k = w.shape[0]
  p = k // 2
  x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  n, h, wd, c = x.shape
  o = w.shape[3]
  cg, og = c // groups, o // groups
  ho, wo = (h - k) // stride + 1, (wd - k) // stride + 1
  out = np.zeros((n, ho, wo, o))
  for i in range(ho):
    for j in range(wo):
      win = x[:, i * stride:i * stride + k, j * stride:j * stride + k]
      for g in range(groups):
        out[:, i, j, g * og:(g + 1) * og] = np.einsum(
            "bxyc,xyco->bo", win[..., g * cg:(g + 1) * cg],
            w[..., g * og:(g + 1) * og])
  return out + (0 if b is None else b)


def _torch_transpose_weight(kernel, groups):
  """Our ``[k, k, C_in / g, C_out]`` kernel as PyTorch's ``[C_in, C_out / g, k, k]``."""
  k, _, cig, o = kernel.shape
  og = o // groups
  wt = np.zeros((cig * groups, og, k, k))
  for g in range(groups):
    for a in range(k):
      for c in range(k):
        wt[g * cig:(g + 1) * cig, :, a, c] = kernel[k - 1 - a, k - 1 - c, :,
                                                    g * og:(g + 1) * og]
  return wt


def _conv_transpose_ref(x, wt, b, stride, groups):
  """PyTorch ``ConvTranspose2d(k, stride, padding=k // 2, output_padding=stride - 1)``.

  Scatter form: input pixel ``(i, j)`` adds ``x[i, j] @ wt[:, :, a, c]`` to
  output pixel ``(i * stride - p + a, j * stride - p + c)``.
  """
  n, h, wd, c = x.shape
  k, og = wt.shape[2], wt.shape[1]
  cig, p, op = c // groups, k // 2, stride - 1
  full = np.zeros((n, (h - 1) * stride + k + op, (wd - 1) * stride + k + op, og * groups))
  for i in range(h):
    for j in range(wd):
      for g in range(groups):
        full[:, i * stride:i * stride + k, j * stride:j * stride + k,
             g * og:(g + 1) * og] += np.einsum(
                 "bc,cexy->bxye", x[:, i, j, g * cig:(g + 1) * cig],
                 wt[g * cig:(g + 1) * cig])
  ho, wo = (h - 1) * stride - 2 * p + k + op, (wd - 1) * stride - 2 * p + k + op
  return full[:, p:p + ho, p:p + wo] + b


def _bn_ref(x, scale, bias):
  mean = x.mean(axis=(0, 1, 2))
  var = x.var(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + 1e-5) * scale + bias


def _squash_ref(s):
  """Squash ``[..., n * d]`` channels as ``[..., n, d]`` capsules."""
  norm = np.linalg.norm(s, axis=-1, keepdims=True)
  return norm / (1 + norm ** 2) * s


def _p(module):
  """Every parameter of ``module`` in float64, keyed by its path ``"a/b"``."""
  return {"/".join(map(str, path)): np.asarray(node[...], np.float64)
          for path, node in nnx.iter_graph(module) if isinstance(node, nnx.Param)}


def _conv_p(params, name, x, stride=1, groups=1):
  return _conv_ref(x, params[name + "/kernel"], params.get(name + "/bias"), stride, groups)


def _bn_p(params, name, x):
  return _bn_ref(x, params[name + "/scale"], params[name + "/bias"])


def _caps_ref(x, n):
  """``relu`` then squash per capsule: ``[..., n * d]`` -> ``[..., n, d]``."""
  x = np.maximum(x, 0)
  return _squash_ref(x.reshape(x.shape[:-1] + (n, -1)))


def _capconv_ref(layer, u):
  """CapConv (Sec. 3.1, official ``capConvRoute3/4`` + BN, ReLU, squash)."""
  p, n, s = _p(layer), layer.n_caps, layer.stride
  x = u.reshape(u.shape[:3] + (-1,))
  v1 = _caps_ref(_bn_p(p, "master_bn", _conv_p(p, "master", x, s, n)), n)
  v2 = _caps_ref(_bn_p(p, "aide_bn", _conv_p(p, "aide", x, s)), n)
  flat = lambda t: t.reshape(t.shape[:3] + (-1,))
  if layer.coefficients == "both":
    both = np.concatenate([v1, v2], axis=-1)
    m = _conv_p(p, "coeff", flat(both), 1, n).reshape(v1.shape[:-1] + (2,))
    m1, m2 = m[..., 0], m[..., 1]
  elif layer.coefficients == "cross":
    m1, m2 = _conv_p(p, "aide_coeff", flat(v2), 1, n), _conv_p(p, "master_coeff", flat(v1), 1, n)
  else:
    m1, m2 = _conv_p(p, "master_coeff", flat(v1), 1, n), _conv_p(p, "aide_coeff", flat(v2), 1, n)
  out = flat(m1[..., None] * v1 + m2[..., None] * v2)
  if layer.residual:
    out = out + (x if "shortcut/kernel" not in p else _conv_p(p, "shortcut", x, s))
  return _caps_ref(_bn_p(p, "bn", out), n)


def _feedback_ref(unit, v, u):
  p = _p(unit)
  groups = unit.n_caps or 1
  wt = _torch_transpose_weight(p["generator/conv/kernel"], groups)
  gen = _conv_transpose_ref(v, wt, p["generator/conv/bias"], unit.stride, groups)
  gen = np.maximum(_bn_p(p, "generator_bn", gen), 0)
  if unit.n_caps is not None:
    gen = _squash_ref(gen.reshape(gen.shape[:3] + (unit.n_caps, -1))).reshape(gen.shape)

  def critic(t):
    h = np.maximum(_bn_p(p, "critic1_bn", _conv_p(p, "critic1", t, 2)), 0)
    h = np.maximum(_bn_p(p, "critic2_bn", _conv_p(p, "critic2", h, 2)), 0)
    return h.reshape(h.shape[0], -1)

  f_gen, f_real = critic(gen), critic(u)
  return gen, f_gen, f_real, sinkhorn_divergence_ref(
      f_gen, f_real, unit.epsilon, unit.n_iters, debiased=unit.debiased)


def _randomise_bn(module, seed):
  """BatchNorm scale / bias drawn away from 1 / 0, so that they are tested."""
  rng = np.random.default_rng(seed)
  for path, p in nnx.iter_graph(module):
    if isinstance(p, nnx.Param) and path[-2:-1] and str(path[-2]).endswith("bn"):
      p[...] = jnp.asarray(rng.uniform(0.5, 1.5, p.shape) if path[-1] == "scale"
                           else rng.uniform(-0.3, 0.3, p.shape), p.dtype)
  return module


def _caps(seed, size=SIZE, d=D_IN, b=B_SZ, n=N_CAPS):
  return np.random.default_rng(seed).normal(size=(b, size, size, n, d)).astype(np.float32)


# One jitted function per layer type keeps the compiles few.
@nnx.jit
def _apply(layer, x):
  return layer(x)


@nnx.jit
def _apply2(layer, x, y):
  return layer(x, y)




# --------------------------------------------------------------------------
# CapConv


@pytest.mark.parametrize("coefficients, kernel_size, stride, residual, d_out", [
    ("both", 3, 2, True, D_OUT),    # type I, merges space, 3 x 3 shortcut
    ("cross", 1, 1, True, D_IN),    # type II, identity skip (official Route3)
    ("own", 3, 1, False, D_OUT),    # type I without merging (official Route4)
])
def test_capconv_matches_reference(coefficients, kernel_size, stride, residual, d_out):
  layer = _randomise_bn(CapConv(N_CAPS, D_IN, d_out, kernel_size=kernel_size,
                                stride=stride, coefficients=coefficients,
                                residual=residual, rngs=nnx.Rngs(1)), 2)
  u = _caps(3)
  ref = _capconv_ref(layer, u.astype(np.float64))
  out = _apply(layer, u)
  size = -(-SIZE // stride)
  assert out.shape == (B_SZ, size, size, N_CAPS, d_out) and out.dtype == jnp.float32
  assert_rel_close(out, ref, 1e-4, "capconv")
  assert np.all(np.linalg.norm(np.asarray(out), axis=-1) < 1)   # squashed


@pytest.mark.parametrize("kind, stride", [("I", 1), ("I", 2), ("II", 1), ("II", 2)])
def test_capconv_shapes(kind, stride):
  # Type I (k1 = 3) changes the capsule size, type II (k1 = 1) keeps it;
  # stride 2 merges space: H' = ceil(H / 2). Shapes only (no compile).
  d_out, k = (16, 3) if kind == "I" else (8, 1)
  def apply(x):
    layer = CapConv(4, 8, d_out, kernel_size=k, stride=stride, residual=True,
                    rngs=nnx.Rngs(0))
    assert (layer.kernel_size, layer.aide_kernel_size) == (k, k + 4)
    return layer(x)

  out = nnx.eval_shape(apply, jax.ShapeDtypeStruct((2, 7, 9, 4, 8), jnp.float32))
  assert out.shape == (2, -(-7 // stride), -(-9 // stride), 4, d_out)


def test_capconv_gradients_finite_and_bfloat16():
  layer = CapConv(N_CAPS, D_IN, D_OUT, stride=2, residual=True, rngs=nnx.Rngs(0))

  @nnx.jit
  def grads(layer, u):
    return nnx.grad(lambda m, x: jnp.sum(jnp.sin(3 * m(x))), argnums=(0, 1))(layer, u)

  for u in (_caps(4), np.zeros_like(_caps(4))):
    # Random input, and the edge case of an all-zero input (BatchNorm of a
    # constant map, squash at 0): finite gradients everywhere.
    g_layer, g_u = grads(layer, u)
    leaves = jax.tree.leaves(nnx.state(g_layer, nnx.Param)) + [g_u]
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)
    if np.any(u):
      assert all(np.any(np.asarray(x) != 0) for x in (
          g_u, g_layer.aide.kernel[...], g_layer.master.kernel[...],
          g_layer.coeff.kernel[...], g_layer.shortcut.kernel[...]))
  # bfloat16 compute with float32 parameters runs and stays squashed.
  half = CapConv(N_CAPS, D_IN, D_OUT, stride=2, residual=True, dtype=jnp.bfloat16,
                 rngs=nnx.Rngs(0))
  out = _apply(half, _caps(4).astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16 and half.master.kernel[...].dtype == jnp.float32
  assert np.all(np.linalg.norm(np.asarray(out, np.float32), axis=-1) <= 1)


def test_init_follows_official_code():
  # weights_init_cap: conv weights Xavier normal (PyTorch fans), conv biases
  # N(0, 1), BN 1 / 0; CapFC U(+-1/sqrt(n_in)). One compiled initialisation.
  layer, fc, up = nnx.jit(lambda: (
      CapConv(16, 4, 8, kernel_size=1, rngs=nnx.Rngs(0)),
      CapFC(512, 10, 16, rngs=nnx.Rngs(1)),
      ConvTranspose(128, 64, 3, stride=2, groups=16, rngs=nnx.Rngs(2))))()
  aide = np.asarray(layer.aide.kernel[...])          # [5, 5, 64, 128]
  assert abs(aide.std() / np.sqrt(2 / (25 * 64 + 25 * 128)) - 1) < 0.02
  master = np.asarray(layer.master.kernel[...])      # [1, 1, 4, 128], 16 groups
  assert master.shape == (1, 1, 4, 128)
  assert abs(master.std() / np.sqrt(2 / (4 + 128)) - 1) < 0.1
  biases = np.concatenate([np.asarray(c.bias[...]) for c in (layer.master, layer.aide, layer.coeff)])
  assert abs(biases.std() - 1) < 0.15
  assert np.all(np.asarray(layer.bn.scale[...]) == 1) and np.all(np.asarray(layer.bn.bias[...]) == 0)
  assert (layer.bn.momentum, layer.bn.epsilon) == (0.9, 1e-5)   # PyTorch's 0.1, 1e-5
  w = np.asarray(fc.weight[...])
  assert w.shape == (16, 512, 10) and np.abs(w).max() <= 1 / np.sqrt(512)
  assert abs(w.std() * np.sqrt(3 * 512) - 1) < 0.02   # U(-a, a) has std a / sqrt(3)
  # Transposed conv: PyTorch's fans of ConvTranspose2d(128 -> 64, groups=16).
  kernel = np.asarray(up.conv.kernel[...])
  assert kernel.shape == (3, 3, 8, 64)
  assert abs(kernel.std() / np.sqrt(2 / (9 * 4 + 9 * 128)) - 1) < 0.05


# --------------------------------------------------------------------------
# CapFC


def test_cap_fc_matches_reference():
  layer = CapFC(12, 5, 4, rngs=nnx.Rngs(0))
  u = np.random.default_rng(5).normal(size=(B_SZ, 12, 4)).astype(np.float32)
  w = np.asarray(layer.weight[...], np.float64)
  ref = _squash_ref(np.einsum("bik,kij->bjk", u.astype(np.float64), w))
  out = _apply(layer, u)
  assert out.shape == (B_SZ, 5, 4)
  assert_rel_close(out, ref, 1e-4, "capfc")
  assert np.all(np.linalg.norm(np.asarray(out), axis=-1) < 1)


# --------------------------------------------------------------------------
# Convolution building blocks (the XLA:CPU workarounds compute the same function)


@pytest.mark.parametrize("stride, groups", [(2, 2), (1, 1)])
def test_conv_transpose_matches_pytorch_semantics(stride, groups):
  layer = ConvTranspose(4, 6, 3, stride=stride, groups=groups, rngs=nnx.Rngs(0))
  x = np.random.default_rng(6).normal(size=(2, 3, 4, 4)).astype(np.float32)
  wt = _torch_transpose_weight(np.asarray(layer.conv.kernel[...], np.float64), groups)
  ref = _conv_transpose_ref(x.astype(np.float64), wt,
                            np.asarray(layer.conv.bias[...], np.float64), stride, groups)
  out = _apply(layer, x)
  assert out.shape == (2, 3 * stride, 4 * stride, 6)
  assert_rel_close(out, ref, 1e-5, "conv_transpose")


@pytest.mark.parametrize("size, k, stride, groups", [
    (6, 3, 1, 4),   # grouped, as block-diagonal dense
    (5, 7, 2, 2),   # grouped, and the output map smaller than the kernel:
                    # as patches times the kernel
])
def test_cpu_conv_paths_match_lax(size, k, stride, groups):
  rng = np.random.default_rng(7)
  x = rng.normal(size=(2, size, size, 8)).astype(np.float32)
  w = rng.normal(size=(k, k, 8 // groups, 12)).astype(np.float32)
  pad = ((k // 2, k // 2), (k // 2, k // 2))
  ours = jax.jit(lambda a, b: encapnet._conv_general_dilated(
      a, b, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups))(x, w)
  ref = _conv_ref(x.astype(np.float64), w.astype(np.float64), None, stride, groups)
  assert_rel_close(ours, ref, 1e-5, "conv")


# --------------------------------------------------------------------------
# FeedbackAgreement


def _feedback(**kw):
  kw = {"stride": 2, "n_caps": 2, "rngs": nnx.Rngs(8)} | kw
  return _randomise_bn(FeedbackAgreement(8, 4, **kw), 9)


def _v_u(seed, b=4, size=16, stride=2):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, size // stride, size // stride, 8)).astype(np.float32),
          rng.uniform(0, 1, size=(b, size, size, 4)).astype(np.float32))


@nnx.jit
def _feedback_parts(unit, v, u):
  """Everything the feedback tests look at, in one compiled program."""
  gen = unit.generate(v)
  return {"gen": gen, "f_gen": unit.critic(gen), "f_real": unit.critic(u),
              "div": unit(v, u),
              # The exact case: the "real" lower maps are what the generator
              # makes of v (train-mode BN is a function of the batch, so the
              # second generation inside unit(...) is the same).
              "div_same": unit(v, gen)}


@pytest.mark.parametrize("n_caps, stride", [(2, 2), (None, 1)])
def test_feedback_matches_reference(n_caps, stride):
  # Capsule generator (2 capsules per position) with stride 2, and the plain
  # generator of vanilla CNNs with stride 1; 16 x 16 lower maps, so the
  # critic embeds each sample as 4 x 4 = 16 features.
  unit = _feedback(n_caps=n_caps, stride=stride)
  v, u = _v_u(10, stride=stride)
  gen_ref, f_gen_ref, f_real_ref, div_ref = _feedback_ref(unit, v.astype(np.float64),
                                                          u.astype(np.float64))
  out = _feedback_parts(unit, v, u)
  assert out["gen"].shape == u.shape and out["f_gen"].shape == (4, 16)
  assert_rel_close(out["gen"], gen_ref, 1e-4, "generator")
  assert_rel_close(out["f_real"], f_real_ref, 1e-4, "critic")
  assert_rel_close(out["f_gen"], f_gen_ref, 1e-4, "critic(generated)")
  div = out["div"]
  assert div.shape == () and div.dtype == jnp.float32
  # The divergence is a difference of transport costs of size ~1 (cosine
  # costs); compare on that scale.
  scale = sinkhorn_divergence_ref(f_gen_ref, f_real_ref, unit.epsilon, unit.n_iters,
                                  debiased=False)
  assert abs(float(div) - div_ref) < 1e-4 * scale, (float(div), div_ref)
  assert div_ref > 1e-3
  # When the generator reproduces the lower maps exactly, P_psi = P_r and
  # Eq. (11) vanishes.
  assert abs(float(out["div_same"])) < 1e-6


def test_feedback_options_reach_the_kernel(monkeypatch):
  # The plan is detached by default (the paper's final model); ablations
  # d1 / d2 switch off the bias fix / the detaching.
  v, u = _v_u(12)
  seen = []
  monkeypatch.setattr(encapnet, "sinkhorn_divergence",
                      lambda x, y, **kw: seen.append(kw) or jnp.sum(x) * 0)
  for kw in ({}, {"debiased": False}, {"detach_plan": False}):
    nnx.eval_shape(lambda a, b, kw=kw: _feedback(**kw)(a, b), v, u)
  assert [(k["debiased"], k["stop_gradient_plan"]) for k in seen] == [
      (True, True), (False, True), (True, False)]
  assert all(k["n_iters"] == 10 and k["epsilon"] == 1.0 and k["cost"] == "cosine"
             for k in seen)


# --------------------------------------------------------------------------
# Argument checks


def test_bad_arguments_raise():
  rngs = nnx.Rngs(0)
  with pytest.raises(ValueError, match="coefficients must be one of"):
    CapConv(2, 2, 2, coefficients="v3", rngs=rngs)
  with pytest.raises(ValueError, match="stride must be a positive integer"):
    CapConv(2, 2, 2, stride=0, rngs=rngs)
  layer = nnx.eval_shape(lambda: CapConv(2, 2, 3, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"u must have shape \[B, H, W, n_caps, d_in\]"):
    layer(np.zeros((1, 4, 4, 2, 3), np.float32))
  fc = nnx.eval_shape(lambda: CapFC(4, 3, 2, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"u must have shape \[B, n_in, d\]"):
    fc(np.zeros((1, 5, 2), np.float32))
  with pytest.raises(ValueError, match="stride must be 1 or 2"):
    FeedbackAgreement(8, 4, stride=3, rngs=rngs)
  with pytest.raises(ValueError, match="n_caps=3 must divide"):
    FeedbackAgreement(8, 4, n_caps=3, rngs=rngs)
  with pytest.raises(ValueError, match="epsilon must be positive"):
    FeedbackAgreement(8, 4, epsilon=0.0, rngs=rngs)
  unit = nnx.eval_shape(lambda: FeedbackAgreement(8, 4, stride=2, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"u must have shape \[B, stride \* H', stride \* W', C_lo\]"):
    unit(np.zeros((2, 4, 4, 8), np.float32), np.zeros((2, 4, 4, 4), np.float32))
  with pytest.raises(ValueError, match=r"v must have shape \[B, H', W', C_hi\]"):
    unit.generate(np.zeros((2, 4, 4, 4), np.float32))
