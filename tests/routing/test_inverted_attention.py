"""Tests of inverted dot-product attention routing (FC and conv).

Every forward result is compared with the float64 NumPy reference in
``reference_inverted_attention.py`` (float32 kernel, relative error < 1e-4),
gradients with central finite differences of that reference. Draws are
well conditioned: weights are scaled by ``1/sqrt(d_inp)`` so that votes and
agreements are O(1), as in the official initialisation.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from capsjax.routing import _inverted_attention_conv as conv_core
from capsjax.routing import inverted_attention_conv, inverted_attention_fc
from capsjax.routing.inverted_attention import (conv_weight_from_official,
                                                 fc_weight_from_official)
from tests.routing import reference_inverted_attention as ref
from tests.testing_utils import assert_rel_close, rel_err

fc_jit = jax.jit(inverted_attention_fc, static_argnames=("matrix_pose",))
conv_jit = jax.jit(inverted_attention_conv,
                   static_argnames=("stride", "matrix_pose"))

_ARGS = ("x_inp", "W", "x_out", "ln_scale", "ln_bias")


# ----------------------------------------------------------------------------
# Random cases.
# ----------------------------------------------------------------------------


def _normal(rng, shape, scale=1.0, dtype=np.float32):
  return (scale * rng.standard_normal(shape)).astype(dtype)


def _pose_case(rng, w_lead, n_inp, n_out, d_inp, d_out, s, matrix_pose,
               out_lead, x_inp_shape, with_x_out, with_ln, dtype):
  if matrix_pose:
    d_inp = d_out = s * s
    w_shape = (*w_lead, n_inp, n_out, s, s)
    w_scale = 1 / np.sqrt(s)
  else:
    w_shape = (*w_lead, n_inp, n_out, d_inp, d_out)
    w_scale = 1 / np.sqrt(d_inp)
  return dict(
      x_inp=_normal(rng, (*x_inp_shape, n_inp, d_inp), dtype=dtype),
      W=_normal(rng, w_shape, w_scale, dtype=dtype),
      x_out=(_normal(rng, (*out_lead, n_out, d_out), dtype=dtype)
             if with_x_out else None),
      ln_scale=(1 + _normal(rng, (d_out,), 0.3, dtype) if with_ln else None),
      ln_bias=_normal(rng, (d_out,), 0.3, dtype) if with_ln else None)


def fc_case(seed, *, matrix_pose, n_inp=5, n_out=3, d_inp=6, d_out=4, s=3,
            x_out=True, ln=True, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return _pose_case(rng, (), n_inp, n_out, d_inp, d_out, s, matrix_pose, (),
                    (), x_out, ln, dtype)


def conv_case(seed, *, matrix_pose, stride, H=5, W=6, k=3, n_inp=2, n_out=3,
              d_inp=4, d_out=5, s=2, x_out=True, ln=True, dtype=np.float32):
  rng = np.random.default_rng(seed)
  grid = ((H - k) // stride + 1, (W - k) // stride + 1)
  return _pose_case(rng, (k, k), n_inp, n_out, d_inp, d_out, s, matrix_pose,
                    grid, (H, W), x_out, ln, dtype)


def _run(fn, case, **static):
  return fn(case["x_inp"], case["W"], case["x_out"], ln_scale=case["ln_scale"],
            ln_bias=case["ln_bias"], **static)


# ----------------------------------------------------------------------------
# Forward against the reference.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("with_x_out", [False, True])
@pytest.mark.parametrize("matrix_pose", [False, True])
def test_fc_matches_reference(matrix_pose, with_x_out, ln):
  case = fc_case(0, matrix_pose=matrix_pose, x_out=with_x_out, ln=ln)
  out = _run(fc_jit, case, matrix_pose=matrix_pose)
  assert out.dtype == jnp.float32
  assert_rel_close(out, _run(ref.fc, case, matrix_pose=matrix_pose), name="fc")


@pytest.mark.parametrize("with_x_out", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("matrix_pose", [False, True])
def test_conv_matches_reference(matrix_pose, stride, with_x_out):
  case = conv_case(1, matrix_pose=matrix_pose, stride=stride, x_out=with_x_out)
  out = _run(conv_jit, case, stride=stride, matrix_pose=matrix_pose)
  assert out.dtype == jnp.float32
  assert out.shape == ((5 - 3) // stride + 1, (6 - 3) // stride + 1, 3,
                       4 if matrix_pose else 5)
  assert_rel_close(out, _run(ref.conv, case, stride=stride,
                             matrix_pose=matrix_pose), name="conv")


@pytest.mark.parametrize("matrix_pose", [False, True])
def test_conv_without_ln_params_matches_reference(matrix_pose):
  case = conv_case(2, matrix_pose=matrix_pose, stride=1, ln=False)
  out = _run(conv_jit, case, stride=1, matrix_pose=matrix_pose)
  assert_rel_close(out, _run(ref.conv, case, stride=1, matrix_pose=matrix_pose))


class JitVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_fc(self):
    case = fc_case(3, matrix_pose=True)
    fn = self.variant(functools.partial(inverted_attention_fc, matrix_pose=True))
    assert_rel_close(_run(fn, case), _run(ref.fc, case, matrix_pose=True))

  @chex.variants(with_jit=True, without_jit=True)
  def test_conv(self):
    case = conv_case(4, matrix_pose=False, stride=2)
    fn = self.variant(functools.partial(inverted_attention_conv, stride=2,
                                        matrix_pose=False))
    assert_rel_close(_run(fn, case),
                     _run(ref.conv, case, stride=2, matrix_pose=False))


@pytest.mark.parametrize("matrix_pose", [False, True])
def test_fc_two_iterations(matrix_pose):
  """Procedure 2: the uniform first pass, then the result fed back."""
  case = fc_case(5, matrix_pose=matrix_pose, x_out=False)
  out1 = _run(fc_jit, case, matrix_pose=matrix_pose)
  out2 = _run(fc_jit, {**case, "x_out": out1}, matrix_pose=matrix_pose)
  ref1 = _run(ref.fc, case, matrix_pose=matrix_pose)
  ref2 = _run(ref.fc, {**case, "x_out": ref1}, matrix_pose=matrix_pose)
  assert_rel_close(out1, ref1, name="iteration 1")
  assert_rel_close(out2, ref2, name="iteration 2")
  # Routing must actually have moved the poses.
  assert rel_err(ref2, ref1) > 1e-2


@pytest.mark.parametrize("matrix_pose", [False, True])
def test_conv_two_iterations(matrix_pose):
  case = conv_case(6, matrix_pose=matrix_pose, stride=2, x_out=False)
  static = dict(stride=2, matrix_pose=matrix_pose)
  out1 = _run(conv_jit, case, **static)
  out2 = _run(conv_jit, {**case, "x_out": out1}, **static)
  ref1 = _run(ref.conv, case, **static)
  ref2 = _run(ref.conv, {**case, "x_out": ref1}, **static)
  assert_rel_close(out1, ref1, name="iteration 1")
  assert_rel_close(out2, ref2, name="iteration 2")
  assert rel_err(ref2, ref1) > 1e-2


def test_float64_agrees_to_1e_10():
  """KERNELS.md: float64 agreement under 1e-10 (incl. the 1e-10 renorm)."""
  with jax.enable_x64(True):
    for mp in (False, True):
      case = fc_case(7, matrix_pose=mp, dtype=np.float64)
      out = _run(fc_jit, case, matrix_pose=mp)
      assert out.dtype == jnp.float64
      assert rel_err(out, _run(ref.fc, case, matrix_pose=mp)) < 1e-10
    # d_out == 1: no LayerNorm, so the renormalisation is visible here.
    case = fc_case(7, matrix_pose=False, d_out=1, dtype=np.float64)
    out = _run(fc_jit, case, matrix_pose=False)
    assert rel_err(out, _run(ref.fc, case, matrix_pose=False)) < 1e-12
    case = conv_case(7, matrix_pose=True, stride=2, dtype=np.float64)
    out = _run(conv_jit, case, stride=2, matrix_pose=True)
    assert rel_err(out, _run(ref.conv, case, stride=2, matrix_pose=True)) < 1e-10


# ----------------------------------------------------------------------------
# Edge cases.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("with_x_out", [False, True])
def test_d_out_one_skips_layer_norm(with_x_out):
  """d_out == 1: raw routed pose; ln params have no effect."""
  fc = fc_case(8, matrix_pose=False, d_out=1, x_out=with_x_out)
  fc_m = fc_case(8, matrix_pose=True, s=1, x_out=with_x_out)
  cv = conv_case(8, matrix_pose=False, stride=1, d_out=1, x_out=with_x_out)
  for case, fn, static, ref_fn in (
      (fc, fc_jit, dict(matrix_pose=False), ref.fc),
      (fc_m, fc_jit, dict(matrix_pose=True), ref.fc),
      (cv, conv_jit, dict(stride=1, matrix_pose=False), ref.conv)):
    out = _run(fn, case, **static)
    assert out.shape[-1] == 1
    assert_rel_close(out, _run(ref_fn, case, **static))
    # A LayerNorm on 1-d poses would have output the bias everywhere.
    assert np.ptp(np.asarray(out)) > 1e-2
  no_ln = _run(fc_jit, {**fc, "ln_scale": None, "ln_bias": None},
               matrix_pose=False)
  np.testing.assert_array_equal(_run(fc_jit, fc, matrix_pose=False), no_ln)


def test_one_input_capsule():
  fc = fc_case(9, matrix_pose=False, n_inp=1)
  assert_rel_close(_run(fc_jit, fc, matrix_pose=False),
                   _run(ref.fc, fc, matrix_pose=False))
  cv = conv_case(9, matrix_pose=True, stride=1, k=1, n_inp=1, H=3, W=2)
  static = dict(stride=1, matrix_pose=True)
  assert_rel_close(_run(conv_jit, cv, **static), _run(ref.conv, cv, **static))


def test_single_output_capsule():
  """n_out == 1: softmax over one output is 1, so x_out is irrelevant."""
  fc = fc_case(10, matrix_pose=False, n_out=1)
  out = _run(fc_jit, fc, matrix_pose=False)
  assert_rel_close(out, _run(ref.fc, fc, matrix_pose=False))
  # r = 1 (given x_out) vs r = 1/n_out = 1 (None).
  assert_rel_close(out, _run(fc_jit, {**fc, "x_out": None}, matrix_pose=False),
                   tol=1e-6)
  cv = conv_case(10, matrix_pose=True, stride=2, n_out=1)
  static = dict(stride=2, matrix_pose=True)
  out = _run(conv_jit, cv, **static)
  assert_rel_close(out, _run(ref.conv, cv, **static))
  assert_rel_close(out, _run(conv_jit, {**cv, "x_out": None}, **static),
                   tol=1e-6)


def test_zero_x_out_equals_uniform_first_iteration():
  """The paper's zero initial poses and x_out=None are the same step."""
  case = fc_case(11, matrix_pose=False)
  zeros = np.zeros_like(case["x_out"])
  assert_rel_close(_run(fc_jit, {**case, "x_out": zeros}, matrix_pose=False),
                   _run(fc_jit, {**case, "x_out": None}, matrix_pose=False),
                   tol=1e-6)


@pytest.mark.parametrize("matrix_pose", [False, True])
def test_conv_kernel_covering_input_is_fc(matrix_pose):
  """k == H == W: a 1x1 output grid, the FC step on the flattened window."""
  case = conv_case(12, matrix_pose=matrix_pose, stride=2, H=3, W=3, k=3)
  static = dict(stride=2, matrix_pose=matrix_pose)
  out = _run(conv_jit, case, **static)
  assert out.shape[:2] == (1, 1)
  assert_rel_close(out, _run(ref.conv, case, **static))
  k, n_inp, d_inp = 3, 2, case["x_inp"].shape[-1]
  W = case["W"]
  fc = dict(case, x_inp=case["x_inp"].reshape(k * k * n_inp, d_inp),
            W=W.reshape(k * k * n_inp, *W.shape[3:]), x_out=case["x_out"][0, 0])
  assert_rel_close(out[0, 0], _run(fc_jit, fc, matrix_pose=matrix_pose),
                   tol=1e-5)


def test_conv_is_a_true_sliding_window():
  """Shifting the input by one stride shifts the output grid by one."""
  stride = 2
  case = conv_case(13, matrix_pose=False, stride=stride, H=7, W=6)
  static = dict(stride=stride, matrix_pose=False)
  out = np.asarray(_run(conv_jit, case, **static))          # [3, 2, ...]
  shifted = dict(case, x_inp=np.roll(case["x_inp"], -stride, axis=0),
                 x_out=np.roll(case["x_out"], -1, axis=0))
  out_shifted = np.asarray(_run(conv_jit, shifted, **static))
  np.testing.assert_allclose(out_shifted[:-1], out[1:], rtol=0, atol=1e-5)
  shifted = dict(case, x_inp=np.roll(case["x_inp"], -stride, axis=1),
                 x_out=np.roll(case["x_out"], -1, axis=1))
  out_shifted = np.asarray(_run(conv_jit, shifted, **static))
  np.testing.assert_allclose(out_shifted[:, :-1], out[:, 1:], rtol=0, atol=1e-5)


def _fc_loss(x_inp, W, x_out, ln_scale, ln_bias, g, *, matrix_pose):
  out = inverted_attention_fc(x_inp, W, x_out, matrix_pose=matrix_pose,
                              ln_scale=ln_scale, ln_bias=ln_bias)
  return jnp.sum(out * g)


def _conv_loss(x_inp, W, x_out, ln_scale, ln_bias, g, *, stride, matrix_pose):
  out = inverted_attention_conv(x_inp, W, x_out, stride=stride,
                                matrix_pose=matrix_pose, ln_scale=ln_scale,
                                ln_bias=ln_bias)
  return jnp.sum(out * g)


fc_grad = jax.jit(jax.grad(_fc_loss, argnums=(0, 1, 2, 3, 4)),
                  static_argnames=("matrix_pose",))
conv_grad = jax.jit(jax.grad(_conv_loss, argnums=(0, 1, 2, 3, 4)),
                    static_argnames=("stride", "matrix_pose"))


def test_large_poses_stay_finite():
  """Saturated softmax and huge pre-LayerNorm poses: no NaN/Inf, forward or
  backward; LayerNorm output still has zero mean and unit variance."""
  fc = fc_case(14, matrix_pose=False, ln=False)
  fc = dict(fc, x_inp=fc["x_inp"] * 1e4, x_out=fc["x_out"] * 1e4)
  out = np.asarray(_run(fc_jit, fc, matrix_pose=False))
  g = np.ones_like(out)
  grads = fc_grad(*(fc[a] for a in _ARGS), g, matrix_pose=False)
  cv = conv_case(14, matrix_pose=True, stride=1, ln=False)
  cv = dict(cv, x_inp=cv["x_inp"] * 1e4, x_out=cv["x_out"] * 1e4)
  out_cv = np.asarray(_run(conv_jit, cv, stride=1, matrix_pose=True))
  grads += conv_grad(*(cv[a] for a in _ARGS), np.ones_like(out_cv), stride=1,
                     matrix_pose=True)
  for o in (out, out_cv):
    assert np.all(np.isfinite(o))
    np.testing.assert_allclose(o.mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(o.var(-1), 1, atol=1e-3)
  for gr in grads:
    assert gr is None or np.all(np.isfinite(np.asarray(gr)))


def test_vmap_matches_loop():
  rng = np.random.default_rng(15)
  fc = fc_case(15, matrix_pose=True)
  xs = _normal(rng, (3, *fc["x_inp"].shape))
  outs = _normal(rng, (3, *fc["x_out"].shape))
  fn = functools.partial(inverted_attention_fc, matrix_pose=True,
                         ln_scale=fc["ln_scale"], ln_bias=fc["ln_bias"])
  batched = jax.jit(jax.vmap(fn, in_axes=(0, None, 0)))(xs, fc["W"], outs)
  for b in range(3):
    assert_rel_close(batched[b], fc_jit(xs[b], fc["W"], outs[b],
                                        matrix_pose=True,
                                        ln_scale=fc["ln_scale"],
                                        ln_bias=fc["ln_bias"]), tol=1e-6)
  cv = conv_case(15, matrix_pose=False, stride=2)
  xs = _normal(rng, (3, *cv["x_inp"].shape))
  outs = _normal(rng, (3, *cv["x_out"].shape))
  fn = functools.partial(inverted_attention_conv, stride=2, matrix_pose=False,
                         ln_scale=cv["ln_scale"], ln_bias=cv["ln_bias"])
  batched = jax.jit(jax.vmap(fn, in_axes=(0, None, 0)))(xs, cv["W"], outs)
  for b in range(3):
    assert_rel_close(batched[b], conv_jit(xs[b], cv["W"], outs[b], stride=2,
                                          matrix_pose=False,
                                          ln_scale=cv["ln_scale"],
                                          ln_bias=cv["ln_bias"]), tol=1e-6)


def test_conv_batch_chunks_match_single_samples(monkeypatch):
  # A byte budget of 1 makes the vmapped step loop over one sample at a time.
  monkeypatch.setattr(conv_core, "_CHUNK_BYTES", 1)
  rng = np.random.default_rng(32)
  cv = conv_case(32, matrix_pose=True, stride=2)
  xs = _normal(rng, (3, *cv["x_inp"].shape))
  outs = _normal(rng, (3, *cv["x_out"].shape))
  g = _normal(rng, (3, *cv["x_out"].shape))

  def loss(x, w, xo, g):
    out = inverted_attention_conv(x, w, xo, stride=2, matrix_pose=True)
    return jnp.sum(out * g), out

  step = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  batched = jax.jit(jax.vmap(step, in_axes=(0, None, 0, 0)))
  (_, out), (dx, dW, dxo) = batched(xs, cv["W"], outs, g)
  assert conv_core._batch_chunks(xs, cv["W"], outs, conv_core._ConvGeometry(
      3, 2, 2, 2, 2, "highest", jnp.dtype(jnp.float32))) == 3
  single = jax.jit(step)
  for b in range(3):
    (_, out_b), grads_b = single(xs[b], cv["W"], outs[b], g[b])
    # vmap of a gradient: dW is each sample's own, not the batch's sum.
    for got, want in zip((out[b], dx[b], dW[b], dxo[b]), (out_b, *grads_b)):
      assert_rel_close(got, want, tol=1e-5)


def test_conv_batch_chunks_are_cache_sized_on_cpu_only(monkeypatch):
  # The Tsai conv shape: 3.2 MB of votes per sample and offset.
  x_inp = jax.ShapeDtypeStruct((128, 16, 16, 32, 16), jnp.float32)
  x_out = jax.ShapeDtypeStruct((128, 7, 7, 32, 16), jnp.float32)
  W = jax.ShapeDtypeStruct((3, 3, 32, 32, 4, 4), jnp.float32)
  geo = conv_core._ConvGeometry(3, 2, 4, 4, 4, "highest", jnp.dtype(jnp.float32))
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert conv_core._batch_chunks(x_inp, W, x_out, geo) == 64     # 2 samples each
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert conv_core._batch_chunks(x_inp, W, x_out, geo) == 2      # 64 samples each


def test_dtypes():
  fc = fc_case(16, matrix_pose=False)
  bf16 = {a: None if v is None else jnp.asarray(v, jnp.bfloat16)
          for a, v in fc.items()}
  out = _run(fc_jit, bf16, matrix_pose=False)
  assert out.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  cv = conv_case(16, matrix_pose=True, stride=2)
  bf16 = {a: None if v is None else jnp.asarray(v, jnp.bfloat16)
          for a, v in cv.items()}
  out = _run(conv_jit, bf16, stride=2, matrix_pose=True)
  assert out.dtype == jnp.bfloat16
  assert np.all(np.isfinite(np.asarray(out, np.float32)))
  # No float64 leaks from Python constants when x64 is on.
  with jax.enable_x64(True):
    assert _run(fc_jit, fc, matrix_pose=False).dtype == jnp.float32
    assert _run(conv_jit, cv, stride=2, matrix_pose=True).dtype == jnp.float32


# ----------------------------------------------------------------------------
# Gradients.
# ----------------------------------------------------------------------------


def _fd_grads(ref_fn, case, g, h=1e-6):
  """Central finite differences of ``sum(ref_fn(**case) * g)`` in float64."""
  case = {a: None if v is None else np.asarray(v, np.float64)
          for a, v in case.items()}
  loss = lambda c: np.sum(ref_fn(**c) * g)
  grads = []
  for name in _ARGS:
    if case[name] is None:
      grads.append(None)
      continue
    x = case[name]
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      xp, xm = x.copy(), x.copy()
      xp[idx] += h
      xm[idx] -= h
      grad[idx] = (loss({**case, name: xp}) - loss({**case, name: xm})) / (2 * h)
    grads.append(grad)
  return grads


def _assert_grads_close(ours, fd):
  for name, o, r in zip(_ARGS, ours, fd):
    if r is None:
      assert o is None
    else:
      assert_rel_close(o, r, name=f"d/d{name}")


@pytest.mark.parametrize("with_x_out", [False, True])
@pytest.mark.parametrize("matrix_pose", [False, True])
def test_fc_grads_match_finite_differences(matrix_pose, with_x_out):
  case = fc_case(17, matrix_pose=matrix_pose, n_inp=3, n_out=2, d_inp=3,
                 d_out=4, s=2, x_out=with_x_out)
  out_shape = (2, 4)
  g = np.random.default_rng(18).standard_normal(out_shape)
  ours = fc_grad(*(case[a] for a in _ARGS), g.astype(np.float32),
                 matrix_pose=matrix_pose)
  fd = _fd_grads(functools.partial(ref.fc, matrix_pose=matrix_pose), case, g)
  _assert_grads_close(ours, fd)


@pytest.mark.parametrize("matrix_pose", [False, True])
def test_conv_grads_match_finite_differences(matrix_pose):
  case = conv_case(19, matrix_pose=matrix_pose, stride=2, H=4, W=5, k=2,
                   n_inp=2, n_out=2, d_inp=3, d_out=4, s=2)
  out_shape = (2, 2, 2, 4)
  g = np.random.default_rng(20).standard_normal(out_shape)
  ours = conv_grad(*(case[a] for a in _ARGS), g.astype(np.float32), stride=2,
                   matrix_pose=matrix_pose)
  fd = _fd_grads(functools.partial(ref.conv, stride=2, matrix_pose=matrix_pose),
                 case, g)
  _assert_grads_close(ours, fd)


# The conv core computes the routing logits and their cotangent either as one
# fused sum over the pose terms (up to _MAX_AGREEMENT_TERMS = r * c * e terms,
# e.g. 4x4 matrix poses) or through the votes-sized product T = Q W (larger
# poses). Both paths against the reference, forward and gradients.
@pytest.mark.parametrize("path", ["fused_sum", "through_T"])
@pytest.mark.parametrize("poses", ["matrix", "vector", "large_vector"])
def test_conv_agreement_paths_match_reference(monkeypatch, path, poses):
  monkeypatch.setattr(conv_core, "_MAX_AGREEMENT_TERMS",
                      10_000 if path == "fused_sum" else 0)
  conv_core._conv_core.cache_clear()   # closures are cached per geometry
  matrix_pose = poses == "matrix"
  # large_vector: 1 * 9 * 8 = 72 terms, over the default limit of 64.
  d_inp, d_out = (9, 8) if poses == "large_vector" else (3, 4)
  case = conv_case(23, matrix_pose=matrix_pose, stride=2, H=4, W=5, k=2,
                   n_inp=2, n_out=2, d_inp=d_inp, d_out=d_out, s=2)
  fwd = jax.jit(lambda *a: inverted_attention_conv(
      *a[:3], ln_scale=a[3], ln_bias=a[4], stride=2, matrix_pose=matrix_pose))
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(fwd(*a[:5]) * a[5]),
                          argnums=(0, 1, 2, 3, 4)))
  args = [case[a] for a in _ARGS]
  out = fwd(*args)
  ref_conv = functools.partial(ref.conv, stride=2, matrix_pose=matrix_pose)
  assert_rel_close(out, ref_conv(**case), name="conv")
  g = np.random.default_rng(24).standard_normal(out.shape)
  _assert_grads_close(grad(*args, g.astype(np.float32)),
                      _fd_grads(ref_conv, case, g))
  conv_core._conv_core.cache_clear()


def test_check_grads_float64():
  # Order 1 only: an order-2 check costs ~9 extra float64 compiles, and the
  # matrix-pose FC step is the conv step's per-window computation.
  with jax.enable_x64(True):
    fc = fc_case(21, matrix_pose=False, n_inp=3, n_out=2, d_inp=3, d_out=3,
                 dtype=np.float64)
    # Jitted: check_grads calls f many times, eager dispatch would dominate.
    f = jax.jit(lambda *a: inverted_attention_fc(*a[:3], matrix_pose=False,
                                                 ln_scale=a[3], ln_bias=a[4]))
    check_grads(f, tuple(fc[a] for a in _ARGS), order=1, modes=("fwd", "rev"))
    cv = conv_case(23, matrix_pose=True, stride=2, H=4, W=4, k=2, n_inp=2,
                   n_out=2, s=2, dtype=np.float64)
    f = jax.jit(lambda *a: inverted_attention_conv(
        *a[:3], stride=2, matrix_pose=True, ln_scale=a[3], ln_bias=a[4]))
    check_grads(f, tuple(cv[a] for a in _ARGS), order=1, modes=("rev",))


# ----------------------------------------------------------------------------
# Mixed precision at the paper's shapes.
# ----------------------------------------------------------------------------

# bfloat16 keeps 8 significant bits: each rounded operand is off by at most
# u = 2**-9 (relative). A vote or agreement term multiplies two rounded
# operands (<= 2u), the summed pose adds the rounding of r * P (u) and the
# routing weights move with the agreements' error, so each output carries a
# few u of error; summed over hundreds of terms with float32 accumulation the
# errors average rather than add. LayerNorm divides by the pose spread, which
# keeps the error relative. 8u bounds the norm-wise relative error of the
# outputs and gradients (measured: 1.3u forward, 1-2u gradients).
_BF16_TOL = 8 * 2.0**-9


def _mixed_case(seed, x_shape, w_shape, xo_shape, n_inp_total, batch):
  rng = np.random.default_rng(seed)
  s = w_shape[-1]
  n_out = w_shape[-3]
  # Official-style scale: votes summed over n_inp_total window entries.
  w_scale = np.sqrt(n_out / (s * n_inp_total))
  return (_normal(rng, (batch, *x_shape)), _normal(rng, w_shape, w_scale),
          _normal(rng, (batch, *xo_shape)), rng.standard_normal((batch, *xo_shape)))


def _mixed_value_and_grads(kernel, args, compute_dtype):
  x, w, xo, g = args

  def loss(x, w, xo):
    out = jax.vmap(lambda a, b: kernel(a, w, b, compute_dtype=compute_dtype))(x, xo)
    return jnp.sum(out * g), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2),
                                               has_aux=True))(x, w, xo)
  return out, grads


@pytest.mark.parametrize("layer", ["conv", "fc"])
def test_bfloat16_compute_close_to_float32(layer):
  if layer == "conv":  # Tsai et al.'s first conv capsule layer, batch 2
    kernel = functools.partial(inverted_attention_conv, stride=2, matrix_pose=True)
    args = _mixed_case(30, (16, 16, 32, 16), (3, 3, 32, 32, 4, 4), (7, 7, 32, 16),
                       9 * 32, batch=2)
  else:  # the class capsules, 800 -> 10, batch 2
    kernel = functools.partial(inverted_attention_fc, matrix_pose=True)
    args = _mixed_case(31, (800, 16), (800, 10, 4, 4), (10, 16), 800, batch=2)
  out32, grads32 = _mixed_value_and_grads(kernel, args, None)
  out16, grads16 = _mixed_value_and_grads(kernel, args, jnp.bfloat16)
  assert out16.dtype == jnp.float32
  for name, lo, hi in zip(("out", "dx_inp", "dW", "dx_out"),
                          (out16, *grads16), (out32, *grads32)):
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    assert lo.dtype == hi.dtype and np.all(np.isfinite(lo)), name
    err = np.linalg.norm(lo - hi) / np.linalg.norm(hi)
    # Not bit-equal to float32 (bfloat16 really was used), within the bound.
    assert 2.0**-16 < err < _BF16_TOL, (name, err)


# ----------------------------------------------------------------------------
# Porting the official weights and layouts.
# ----------------------------------------------------------------------------


# Shapes as in fc_case / conv_case, so the jitted kernels are reused.


@pytest.mark.parametrize("matrix_pose", [False, True])
def test_fc_port_from_official(matrix_pose):
  rng = np.random.default_rng(24)
  n, m = 5, 3
  if matrix_pose:
    s = 3
    a = d = s * s
    w = _normal(rng, (n, s, s, m), 1 / np.sqrt(s))  # official w[n, x, d, m]
  else:
    a, d = 6, 4
    w = _normal(rng, (n, a, m, d), 1 / np.sqrt(a))  # official w[n, a, m, d]
  x, nxt = _normal(rng, (n, a)), _normal(rng, (m, d))
  ln = dict(ln_scale=1 + _normal(rng, (d,), 0.3), ln_bias=_normal(rng, (d,), 0.3))
  W = fc_weight_from_official(w, matrix_pose=matrix_pose)
  for x_out in (None, nxt):
    assert_rel_close(fc_jit(x, W, x_out, matrix_pose=matrix_pose, **ln),
                     ref.official_fc(x, w, x_out, matrix_pose=matrix_pose, **ln))


@pytest.mark.parametrize("matrix_pose", [False, True])
def test_conv_port_from_official(matrix_pose):
  rng = np.random.default_rng(25)
  k, n, m, H, Wd, stride = 3, 2, 3, 5, 6, 2
  h_out, w_out = (H - k) // stride + 1, (Wd - k) // stride + 1
  if matrix_pose:
    s = 2
    a = d = s * s
    w = _normal(rng, (k, k, n, s, s, m), 1 / np.sqrt(s))  # w[k, l, n, x, d, m]
  else:
    a, d = 4, 5
    w = _normal(rng, (k, k, n, a, m, d), 1 / np.sqrt(a))  # w[k, l, n, a, m, d]
  x = _normal(rng, (n, H, Wd, a))           # official [n, H, W, a]
  nxt = _normal(rng, (m, h_out, w_out, d))  # official [m, H', W', d]
  ln = dict(ln_scale=1 + _normal(rng, (d,), 0.3), ln_bias=_normal(rng, (d,), 0.3))
  W = conv_weight_from_official(w, matrix_pose=matrix_pose)
  static = dict(stride=stride, matrix_pose=matrix_pose)
  for x_out in (None, nxt):
    ours = conv_jit(x.transpose(1, 2, 0, 3), W,
                    None if x_out is None else x_out.transpose(1, 2, 0, 3),
                    **static, **ln)
    theirs = ref.official_conv(x, w, x_out, **static, **ln)
    assert_rel_close(ours, theirs.transpose(1, 2, 0, 3))


# ----------------------------------------------------------------------------
# Argument validation.
# ----------------------------------------------------------------------------

_FC = fc_case(26, matrix_pose=False)    # x [5, 6], W [5, 3, 6, 4]
_FCM = fc_case(26, matrix_pose=True)    # x [5, 9], W [5, 3, 3, 3]
_CV = conv_case(26, matrix_pose=False, stride=1)  # x [5, 6, 2, 4]
_CVM = conv_case(26, matrix_pose=True, stride=1)  # W [3, 3, 2, 3, 2, 2]
_Z = np.zeros


def _fc_call(case, matrix_pose=False, **over):
  c = {**case, **over}
  return lambda: inverted_attention_fc(c["x_inp"], c["W"], c["x_out"],
                                       matrix_pose=matrix_pose,
                                       ln_scale=c["ln_scale"],
                                       ln_bias=c["ln_bias"])


def _conv_call(case, matrix_pose=False, stride=1, **over):
  c = {**case, **over}
  return lambda: inverted_attention_conv(c["x_inp"], c["W"], c["x_out"],
                                         stride=stride, matrix_pose=matrix_pose,
                                         ln_scale=c["ln_scale"],
                                         ln_bias=c["ln_bias"])


_BAD = {
    "fc x_inp ndim": (
        _fc_call(_FC, x_inp=_Z((5, 6, 1))),
        r"x_inp must have 2 axes \[n_inp, d_inp\], got shape \(5, 6, 1\)"),
    "fc x_inp empty": (
        _fc_call(_FC, x_inp=_Z((0, 6))), "x_inp must have non-empty"),
    "fc W n_inp": (
        _fc_call(_FC, W=_Z((4, 3, 6, 4))),
        r"W must have shape \[n_inp, n_out, d_inp, d_out\] = \[5, \*, 6, \*\], "
        r"got \(4, 3, 6, 4\)"),
    "fc W d_inp": (
        _fc_call(_FC, W=_Z((5, 3, 5, 4))), r"W must have shape \[n_inp, n_out, d_inp"),
    "fc W ndim": (
        _fc_call(_FC, W=_Z((5, 3, 6))), r"W must have shape \[n_inp, n_out, d_inp"),
    "fc W empty": (
        _fc_call(_FC, W=_Z((5, 0, 6, 4)), x_out=None), "W must have non-empty"),
    "fc x_out": (
        _fc_call(_FC, x_out=_Z((3, 5))),
        r"x_out must have shape \[n_out, d_out\] = \[3, 4\], got \(3, 5\)"),
    "fc ln_scale": (
        _fc_call(_FC, ln_scale=_Z(3)), r"ln_scale must have shape \[d_out\] = \[4\]"),
    "fc ln_bias": (
        _fc_call(_FC, ln_bias=_Z((1, 4))),
        r"ln_bias must have shape \[d_out\] = \[4\]"),
    "fc matrix_pose": (
        lambda: inverted_attention_fc(_FC["x_inp"], _FC["W"], matrix_pose=None),
        "matrix_pose must be a bool"),
    "fc matrix d_inp": (
        _fc_call(_FC, matrix_pose=True, x_out=None, ln_scale=None, ln_bias=None),
        r"perfect square s\*s, got d_inp=6"),
    "fc matrix W s": (
        _fc_call(_FCM, matrix_pose=True, W=_Z((5, 3, 2, 2))),
        r"W must have shape \[n_inp, n_out, s, s\] = \[5, \*, 3, 3\]"),
    "fc matrix W vector": (
        _fc_call(_FCM, matrix_pose=True, W=_Z((5, 3, 9, 9))),
        r"W must have shape \[n_inp, n_out, s, s\]"),
    "fc matrix x_out": (
        _fc_call(_FCM, matrix_pose=True, x_out=_Z((3, 3, 3))),
        r"x_out must have shape \[n_out, d_out\] = \[3, 9\]"),
    "conv x_inp ndim": (
        _conv_call(_CV, x_inp=_Z((5, 6, 8))),
        r"x_inp must have 4 axes \[H, W, n_inp, d_inp\]"),
    "conv x_inp empty": (
        _conv_call(_CV, x_inp=_Z((5, 6, 2, 0))), "x_inp must have non-empty"),
    "conv W ndim": (
        _conv_call(_CV, W=_Z((3, 3, 2, 3, 4))),
        r"W must have 6 axes \[k, k, n_inp, n_out, d_inp, d_out\]"),
    "conv W non-square kernel": (
        _conv_call(_CV, W=_Z((3, 2, 2, 3, 4, 5))),
        r"W must have shape \[k, k, n_inp, n_out, d_inp, d_out\] = "
        r"\[3, 3, 2, \*, 4, \*\]"),
    "conv W n_inp": (
        _conv_call(_CV, W=_Z((3, 3, 1, 3, 4, 5))), r"W must have shape \[k, k, n_inp"),
    "conv W d_inp": (
        _conv_call(_CV, W=_Z((3, 3, 2, 3, 3, 5))), r"W must have shape \[k, k, n_inp"),
    "conv W empty": (
        _conv_call(_CV, W=_Z((0, 0, 2, 3, 4, 5))), "W must have non-empty"),
    "conv kernel > H": (
        _conv_call(_CV, x_inp=_Z((2, 6, 2, 4))),
        r"kernel size k=3 must not exceed x_inp's spatial size \(H, W\) = \(2, 6\)"),
    "conv kernel > W": (
        _conv_call(_CV, x_inp=_Z((6, 2, 2, 4))), "kernel size k=3 must not exceed"),
    "conv stride 0": (
        _conv_call(_CV, stride=0), "stride must be a positive integer, got 0"),
    "conv stride float": (
        _conv_call(_CV, stride=1.0), "stride must be a positive integer"),
    "conv stride bool": (
        _conv_call(_CV, stride=True), "stride must be a positive integer"),
    "conv x_out grid": (
        _conv_call(_CV, stride=2),
        r"x_out must have shape \[H', W', n_out, d_out\] = \[2, 2, 3, 5\], "
        r"got \(3, 4, 3, 5\)"),
    "conv ln_scale": (
        _conv_call(_CV, ln_scale=_Z(4)), r"ln_scale must have shape \[d_out\] = \[5\]"),
    "conv ln_bias": (
        _conv_call(_CV, ln_bias=_Z(6)), r"ln_bias must have shape \[d_out\] = \[5\]"),
    "conv matrix_pose": (
        _conv_call(_CV, matrix_pose=1), "matrix_pose must be a bool"),
    "conv matrix d_inp": (
        _conv_call(_CV, matrix_pose=True, x_inp=_Z((5, 6, 2, 3))),
        r"perfect square s\*s, got d_inp=3"),
    "conv matrix W s": (
        _conv_call(_CVM, matrix_pose=True, W=_Z((3, 3, 2, 3, 1, 1))),
        r"W must have shape \[k, k, n_inp, n_out, s, s\] = \[3, 3, 2, \*, 2, 2\]"),
    "conv matrix W vector": (
        _conv_call(_CVM, matrix_pose=True, W=_Z((3, 3, 2, 3, 4, 4))),
        r"W must have shape \[k, k, n_inp, n_out, s, s\]"),
    "fc compute_dtype int": (
        lambda: inverted_attention_fc(_FC["x_inp"], _FC["W"], matrix_pose=False,
                                      compute_dtype=jnp.int32),
        "compute_dtype must be a floating dtype or None"),
    "conv compute_dtype str": (
        lambda: inverted_attention_conv(_CV["x_inp"], _CV["W"], stride=1,
                                        matrix_pose=False, compute_dtype="nope"),
        "compute_dtype must be a floating dtype or None"),
    "port fc ndim": (
        lambda: fc_weight_from_official(_Z((2, 3, 4)), matrix_pose=False),
        r"w must have 4 axes \[n, a, m, d\]"),
    "port conv ndim": (
        lambda: conv_weight_from_official(_Z((2, 3, 4)), matrix_pose=True),
        r"w must have 6 axes \[k, l, n, x, d, m\]"),
}


@pytest.mark.parametrize("name", list(_BAD))
def test_bad_arguments_raise(name):
  call, match = _BAD[name]
  with pytest.raises(ValueError, match=match):
    call()
