"""Tests of capsjax.models.li2018: EncapNet and the ResNet-18 of Li et al. (2018).

Parameter counts of every constructor (free, under ``nnx.eval_shape``):

=====================================  ==========  =====================================
constructor                            parameters  where the number comes from
=====================================  ==========  =====================================
``resnet18()``                         11,173,962  the standard CIFAR-10 ResNet-18 (e.g.
                                                   kuangliu/pytorch-cifar), well known
``resnet18_with_feedback()``           12,964,950  + 4 feedback units, ``_feedback_count``
``encapnet18()``                       36,791,756  ``_encapnet_count`` (Table 2 is not in
                                                   the text; widths of the official code)
``encapnet18_without_feedback()``      36,544,064  ``_encapnet_count``
``encapnet18(two_feedbacks=True)``     37,678,808  ``_encapnet_count``
=====================================  ==========  =====================================

The EncapNet counts are recomputed here layer by layer from the architecture
(Sec. 3.1, 3.2 and the official modules), independently of the model code.

Most compiled runs use a narrow, two-module EncapNet (``_SMALL``: compile
time, not run time, is what costs here); every constructor is traced at
full size, and EncapNet-18 and ResNet-18 with feedback are trained one step
at full size (``test_full_size_train_step``).
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

from capsjax.losses import margin_loss
from capsjax.models.li2018 import (
  Li2018Output,
  encapnet18,
  encapnet18_without_feedback,
  resnet18,
  resnet18_with_feedback,
)
from capsjax.nn.encapnet import FeedbackAgreement

LAMBDA = 10.0        # weight of the feedback divergences (Sec. 3.2)
B_SZ, N_CLASSES = 4, 10
# A narrow one-module EncapNet for the compiled tests: type I (32 x 32 ->
# 16 x 16) + one type II, a feedback unit with a stride-2 generator, capFC.
_SMALL = {"n_caps": 2, "cap_dims": (4,), "strides": (2,), "n_type2": 1}


def _n_params(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _images(seed=0, b=B_SZ):
  return np.random.default_rng(seed).normal(size=(b, 32, 32, 3)).astype(np.float32)


def _onehot(seed=0, b=B_SZ):
  return np.eye(N_CLASSES, dtype=np.float32)[np.random.default_rng(seed).integers(0, N_CLASSES, b)]


# --------------------------------------------------------------------------
# Parameter counts, recomputed from the architecture.


def _conv_count(k, c_in, c_out, groups=1, bias=True):
  return k * k * (c_in // groups) * c_out + (c_out if bias else 0)


def _capconv_count(n, d_in, d_out, k1, stride):
  c_in, c_out = n * d_in, n * d_out
  count = (_conv_count(k1, c_in, c_out, groups=n)           # master (grouped)
           + _conv_count(k1 + 4, c_in, c_out)              # aide (all capsules)
           + _conv_count(3, 2 * c_out, 2 * n, groups=n)    # m1, m2 from both
           + 3 * 2 * c_out)                                # 3 BatchNorms
  if d_in != d_out or stride != 1:
    count += _conv_count(3, c_in, c_out)                   # skip, shape change
  return count


def _feedback_count(c_hi, c_lo, groups=1):
  cf = max(1, c_lo // 4)
  return (_conv_count(3, c_hi, c_lo, groups=groups) + 2 * c_lo   # generator, BN
          + _conv_count(3, c_lo, cf) + 2 * cf                   # critic
          + _conv_count(3, cf, 1) + 2)


def _encapnet_count(feedback, two_feedbacks=False, n=32, dims=(2, 4, 8, 16),
                    strides=(1, 2, 2, 2), n_type2=3, size=32):
  count = _conv_count(3, 3, n) + 2 * n                      # stem conv + BN
  d_in = 1
  for d, s in zip(dims, strides):
    count += _capconv_count(n, d_in, d, 3, s)               # type I
    count += n_type2 * _capconv_count(n, d, d, 1, 1)        # type II
    if feedback:
      count += _feedback_count(n * d, n * d_in, groups=n)
    if two_feedbacks:
      count += _feedback_count(n * d, n * d, groups=n)
    d_in, size = d, size // s
  return count + dims[-1] * (n * size * size) * N_CLASSES  # capFC


def _resnet_feedback_count():
  return sum(_feedback_count(c_out, c_in)
             for c_in, c_out in ((64, 64), (64, 128), (128, 256), (256, 512)))


@pytest.mark.parametrize("make, expected", [
    (lambda: resnet18(rngs=nnx.Rngs(0)), 11_173_962),
    (lambda: resnet18_with_feedback(rngs=nnx.Rngs(0)), 11_173_962 + _resnet_feedback_count()),
    (lambda: encapnet18_without_feedback(rngs=nnx.Rngs(0)), _encapnet_count(False)),
    (lambda: encapnet18(two_feedbacks=True, **_SMALL, rngs=nnx.Rngs(0)),
     _encapnet_count(True, True, n=2, dims=(4,), strides=(2,), n_type2=1)),
], ids=["resnet18", "resnet18_fb", "encapnet18_nofb", "small_2fb"])
def test_parameter_counts(make, expected):
  # encapnet18() itself is counted in test_full_size_output_shapes.
  model = nnx.eval_shape(make)
  assert _n_params(model) == expected


def test_recorded_counts():
  # The numbers in the module docstring.
  assert _resnet_feedback_count() == 12_964_950 - 11_173_962
  assert (_encapnet_count(True), _encapnet_count(False), _encapnet_count(True, True)) == (
      36_791_756, 36_544_064, 37_678_808)


def test_full_size_output_shapes(monkeypatch):
  # The 18-layer EncapNet with feedback, traced (not compiled) at batch 4 on
  # 32 x 32 images: 4 modules (32, 32, 16, 8 -> 4 x 4 maps), 4 feedback
  # units, capFC over 32 * 4 * 4 capsules.
  x = jax.ShapeDtypeStruct((B_SZ, 32, 32, 3), jnp.float32)

  def run(x, make, train):
    model = make(rngs=nnx.Rngs(0))
    if not train:
      model.eval()
    return model, model(x)

  model, out = nnx.eval_shape(lambda x: run(x, encapnet18, True), x)
  assert _n_params(model) == _encapnet_count(True)
  assert len(model.capsule_modules) == 4
  assert all(len(m.type2) == 3 for m in model.capsule_modules)
  assert out.logits.shape == (B_SZ, N_CLASSES) and out.aux_loss.shape == ()
  assert out.capsules.shape == (B_SZ, N_CLASSES, 16)
  # In eval mode neither network calls a feedback unit.
  def fail(*args, **kwargs):
    raise AssertionError("feedback unit called in eval mode")
  monkeypatch.setattr(FeedbackAgreement, "__call__", fail)
  small = lambda rngs: encapnet18(rngs=rngs, **_SMALL)
  for make in (small, resnet18_with_feedback):
    _, out = nnx.eval_shape(lambda x, make=make: run(x, make, False), x)
    assert out.logits.shape == (B_SZ, N_CLASSES)


# --------------------------------------------------------------------------
# Compiled training steps.


def _encapnet_loss(model, x, y):
  """The paper's loss: margin loss (batch mean) + lambda * sum of divergences."""
  out = model(x)
  margin = jnp.mean(jax.vmap(margin_loss)(out.logits, y))
  return margin + LAMBDA * out.aux_loss, (out, margin)


@nnx.jit
def _encapnet_step(model, x, y):
  return nnx.value_and_grad(_encapnet_loss, has_aux=True)(model, x, y)


def _check_grads(grads):
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  return leaves


@pytest.mark.parametrize("feedback", [True, False])
def test_encapnet_train_step(feedback):
  make = encapnet18 if feedback else encapnet18_without_feedback
  model = make(rngs=nnx.Rngs(0), **_SMALL)
  stats_before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  x, y = _images(1), _onehot(1)
  (loss, (out, margin)), grads = _encapnet_step(model, x, y)
  assert isinstance(out, Li2018Output)
  lengths = np.asarray(out.logits)
  assert lengths.shape == (B_SZ, N_CLASSES) and np.all((lengths >= 0) & (lengths < 1))
  np.testing.assert_allclose(lengths, np.linalg.norm(np.asarray(out.capsules), axis=-1),
                             rtol=1e-6)
  # margin loss of the lengths, by hand (m+ 0.9, m- 0.1, lambda 0.5)
  by_hand = np.mean(np.sum(y * np.maximum(0.9 - lengths, 0) ** 2
                           + 0.5 * (1 - y) * np.maximum(lengths - 0.1, 0) ** 2, axis=1))
  np.testing.assert_allclose(float(margin), by_hand, rtol=1e-5)
  aux = float(out.aux_loss)
  if feedback:
    assert aux > 1e-4      # random features: the divergence is positive
  else:
    assert aux == 0.0
  np.testing.assert_allclose(float(loss), by_hand + LAMBDA * aux, rtol=1e-5)
  _check_grads(grads)
  for g in (grads.stem.kernel, grads.cap_fc.weight,
            grads.capsule_modules[0].type1.aide.kernel,
            grads.capsule_modules[0].type2[0].coeff.kernel):
    assert np.any(np.asarray(g[...]) != 0)
  if feedback:   # the divergence trains generator and critic
    fb = grads.capsule_modules[0].feedback
    assert np.any(np.asarray(fb.generator.conv.kernel[...]) != 0)
    assert np.any(np.asarray(fb.critic1.kernel[...]) != 0)
  # Training mode updated the BatchNorm running statistics.
  stats_after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats_before),
                                                      jax.tree.leaves(stats_after)))


@nnx.jit
def _resnet_step(model, x, labels):
  def loss_fn(model):
    out = model(x)
    ce = jnp.mean(-jnp.sum(labels * jax.nn.log_softmax(out.logits), axis=-1))
    return ce + LAMBDA * out.aux_loss, out
  return nnx.value_and_grad(loss_fn, has_aux=True)(model)


def test_resnet_train_step():
  # The full ResNet-18 (its widths are fixed) on 16 x 16 images to keep the
  # run short; the architecture does not depend on the image size.
  model = resnet18(image_size=16, rngs=nnx.Rngs(0))
  (loss, out), grads = _resnet_step(model, _images(2)[:, :16, :16], _onehot(2))
  assert out.logits.shape == (B_SZ, N_CLASSES) and out.capsules is None
  assert np.isfinite(float(loss)) and float(out.aux_loss) == 0.0
  _check_grads(grads)
  assert np.any(np.asarray(grads.fc.kernel[...]) != 0)
  assert np.any(np.asarray(grads.stem.kernel[...]) != 0)


# --------------------------------------------------------------------------
# Evaluation path.


@nnx.jit
def _forward(model, x):
  return model(x)


def test_eval_is_deterministic_without_feedback_and_per_sample():
  model = encapnet18(rngs=nnx.Rngs(3), **_SMALL)
  _encapnet_step(model, _images(4), _onehot(4))   # some running statistics
  model.eval()
  assert model.deterministic
  state_before = jax.tree.map(np.asarray, nnx.state(model))
  x = _images(5)
  first, second = _forward(model, x), _forward(model, x)
  # No feedback at inference (Sec. 3.2), nothing random, nothing updated.
  assert float(first.aux_loss) == 0.0
  np.testing.assert_array_equal(np.asarray(first.logits), np.asarray(second.logits))
  for a, b in zip(jax.tree.leaves(state_before), jax.tree.leaves(nnx.state(model))):
    np.testing.assert_array_equal(a, np.asarray(b))
  # With running statistics, a batch is the same as its samples one by one.
  singles = np.concatenate([np.asarray(_forward(model, x[k:k + 1]).logits)
                            for k in range(B_SZ)])
  np.testing.assert_allclose(singles, np.asarray(first.logits), rtol=2e-5, atol=1e-6)
  # And back to training: the feedback units are used again.
  model.train()
  assert not model.deterministic


def test_to_linen():
  # The model used from Linen through flax.nnx.bridge.to_linen.
  # A one-module EncapNet on 8 x 8 images keeps the two compiles small.
  tiny = {"n_caps": 2, "cap_dims": (2,), "strides": (2,), "n_type2": 1, "image_size": 8}
  module = nnx.bridge.to_linen(encapnet18_without_feedback, **tiny)
  x = _images(7)[:, :8, :8]
  variables = jax.jit(module.init)(jax.random.key(0), x)
  assert sum(p.size for p in jax.tree.leaves(variables["params"])) == _encapnet_count(
      False, n=2, dims=(2,), strides=(2,), n_type2=1, size=8)
  out, updates = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(
      variables, x)
  assert isinstance(out, Li2018Output) and out.logits.shape == (B_SZ, N_CLASSES)
  assert np.all(np.isfinite(np.asarray(out.logits))) and float(out.aux_loss) == 0
  assert "batch_stats" in updates
  assert isinstance(module, linen.Module)


def test_bad_arguments_raise():
  model = nnx.eval_shape(lambda: encapnet18(rngs=nnx.Rngs(0), **_SMALL))
  with pytest.raises(ValueError, match=r"x must have shape \[B, image_size, image_size, in_features\]"):
    model(np.zeros((2, 28, 28, 3), np.float32))
  with pytest.raises(ValueError, match="strides must be 1 or 2"):
    encapnet18(strides=(1, 3, 2, 2), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="cap_dims and strides"):
    encapnet18(cap_dims=(2, 4), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="image_size must be a multiple of 8"):
    resnet18(image_size=36, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------
# EncapNet-18 and ResNet-18 with feedback at full size, compiled end to end
# (~40 s on 2 CPU cores, most of it compiling EncapNet-18). The variants
# without feedback only drop modules; they are traced at full size in
# test_full_size_output_shapes, and plain ResNet-18 trains in
# test_resnet_train_step.


@pytest.mark.parametrize("make", [encapnet18, resnet18_with_feedback])
def test_full_size_train_step(make):
  model = make(rngs=nnx.Rngs(0))
  x, y = _images(8), _onehot(8)
  if make is encapnet18:
    (loss, (out, _)), grads = _encapnet_step(model, x, y)
  else:
    (loss, out), grads = _resnet_step(model, x, y)
  assert out.logits.shape == (B_SZ, N_CLASSES) and np.isfinite(float(loss))
  assert float(out.aux_loss) > 0  # both carry feedback units
  _check_grads(grads)
