"""Numerically careful building blocks shared by kernels and layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def layer_norm(x: jax.Array, scale: jax.Array | None = None,
               bias: jax.Array | None = None, eps: float = 1e-5) -> jax.Array:
  """LayerNorm over the last axis as ``torch.nn.LayerNorm``: biased variance,
  ``eps`` inside the root; ``scale``/``bias`` of ``None`` mean 1 and 0."""
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
  y = centred * jax.lax.rsqrt(var + eps)
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return y


def masked_softmax(logits: jax.Array, keep: jax.Array, axis: int) -> jax.Array:
  """Softmax along ``axis`` over the entries where ``keep`` holds.

  Dropped entries are exactly 0, and a slice with nothing kept is all 0. The
  double ``where`` keeps dropped logits out of ``exp``, so neither the forward
  pass nor the gradient sees an ``inf``.
  """
  keep = jnp.broadcast_to(keep, logits.shape)
  top = jnp.max(jnp.where(keep, logits, -jnp.inf), axis=axis, keepdims=True)
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0))
  e = jnp.where(keep, jnp.exp(jnp.where(keep, logits, top) - top), 0)
  denom = jnp.sum(e, axis=axis, keepdims=True)
  return e / jnp.where(denom > 0, denom, 1)
