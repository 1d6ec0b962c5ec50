"""The mixed-precision policy shared by the routing kernels.

A kernel called with ``compute_dtype=None`` computes everything in its input
dtype, as it always has. With a ``compute_dtype`` (e.g. ``jnp.bfloat16``) it
splits the work in two:

* the large per-(input, output) tensors (votes, squared deviations, attention
  probabilities, MLP activations) are *stored* in ``compute_dtype`` and are the
  operands of the big contractions, which accumulate in the *accumulation
  dtype* (``preferred_element_type``);
* everything reduced or normalised (softmax / log-softmax, means, variances,
  log-likelihoods, LayerNorm statistics, routing logits and the loop state) is
  computed in the accumulation dtype: the input dtype promoted to at least
  float32.

Outputs come back in the input dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


class Policy:
  """Which dtype stores what, and how contractions accumulate.

  Attributes:
    dtype: the kernel's input (and output) dtype.
    compute: the storage dtype of large tensors and of matmul operands.
    accum: the dtype of accumulations, softmaxes and statistics.
    mixed: whether a ``compute_dtype`` was given.
  """

  def __init__(self, dtype: Any, compute_dtype: Any | None):
    self.dtype = jnp.dtype(dtype)
    self.mixed = compute_dtype is not None
    if not self.mixed:
      self.compute = self.accum = self.dtype
      return
    compute = jnp.dtype(compute_dtype)
    if not jnp.issubdtype(compute, jnp.floating):
      raise ValueError(
          f"compute_dtype must be a floating dtype (e.g. jnp.bfloat16) or None, "
          f"got {compute_dtype!r}.")
    self.compute = compute
    self.accum = jnp.promote_types(self.dtype, jnp.float32)
    # XLA:CPU has no kernel for some bfloat16 x bfloat16 -> float32 dots
    # ("Unsupported element type for DotThunk"). There the operands are
    # rounded to the compute dtype and contracted in the accumulation dtype:
    # the products of two bfloat16 (or float16) values are exact in float32,
    # so this is the same arithmetic as the accelerators' mixed dot, only
    # without its memory saving.
    self._upcast_dots = (jax.default_backend() == "cpu"
                         and compute.itemsize < jnp.dtype(self.accum).itemsize)

  def store(self, x: jax.Array) -> jax.Array:
    """``x`` in the storage dtype (``x`` itself without ``compute_dtype``)."""
    return x.astype(self.compute) if self.mixed else x

  def output(self, x: jax.Array) -> jax.Array:
    """``x`` in the input dtype (``x`` itself without ``compute_dtype``)."""
    return x.astype(self.dtype) if self.mixed else x

  def einsum(self, spec: str, *operands: jax.Array,
             precision: jax.lax.PrecisionLike = None) -> jax.Array:
    """A contraction of operands cast to ``compute``, accumulated in ``accum``.

    Without ``compute_dtype`` this is plain ``jnp.einsum`` (operands as given).
    """
    if not self.mixed:
      return jnp.einsum(spec, *operands, precision=precision)
    operands = [x.astype(self.compute) for x in operands]
    if self._upcast_dots:
      return jnp.einsum(spec, *(x.astype(self.accum) for x in operands),
                        precision="highest")
    return jnp.einsum(spec, *operands, precision=precision,
                      preferred_element_type=self.accum)

  def matmul(self, x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` with operands in ``compute``, accumulated in ``accum``."""
    if not self.mixed:
      return x @ w
    return self.einsum("...d,dh->...h", x, w)
