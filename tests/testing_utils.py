"""Helpers shared by the tests: the error measure of KERNELS.md, fast module init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def rel_err(ours, ref) -> float:
  """``max|ours - ref| / max|ref|`` (KERNELS.md's error), in float64."""
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise AssertionError(f"shape mismatch: {ours.shape} vs {ref.shape}")
  scale = np.max(np.abs(ref))
  diff = np.max(np.abs(ours - ref)) if ref.size else 0.0
  return float(diff / scale) if scale > 0 else float(diff)


def assert_rel_close(ours, ref, tol: float = 1e-4, name: str = "") -> None:
  """Asserts ``rel_err(ours, ref) < tol`` and that ``ours`` is finite."""
  ours_np = np.asarray(ours, np.float64)
  assert np.all(np.isfinite(ours_np)), f"{name}: non-finite values"
  err = rel_err(ours_np, ref)
  assert err < tol, f"{name}: relative error {err:.3e} >= {tol:.1e}"


def assert_tree_rel_close(ours, ref, tol: float = 1e-4, name: str = "") -> None:
  """``assert_rel_close`` on each pair of leaves of two sequences/NamedTuples."""
  assert len(ours) == len(ref), f"{name}: {len(ours)} vs {len(ref)} outputs"
  for k, (o, r) in enumerate(zip(ours, ref)):
    field = getattr(ours, "_fields", None)
    assert_rel_close(o, r, tol, f"{name}[{field[k] if field else k}]")


def numpy_init(make, seed: int = 0):
  """``make(rngs)`` with NumPy-drawn parameters.

  Eager ``jax.random`` initialisation compiles one program per parameter
  shape, which would dominate the run time; the initialisation itself is
  tested separately. Weights ``U(+-1/sqrt(fan_in))`` (fan-in: the second-last
  axis), vectors ``U(+-0.1)``, LayerNorm scales ``1 + U(+-0.1)``; dropout
  streams get real keys.
  """
  module = nnx.eval_shape(lambda: make(nnx.Rngs(params=seed, dropout=seed + 1)))
  rng = np.random.default_rng(seed)

  def fill(path, x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.key(int(rng.integers(1 << 30)))
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    if len(x.shape) >= 2:
      return rng.uniform(-1, 1, x.shape).astype(x.dtype) / np.sqrt(x.shape[-2])
    base = 1.0 if "scale" in str(path[-1]) else 0.0
    return (base + rng.uniform(-0.1, 0.1, x.shape)).astype(x.dtype)

  nnx.update(module, jax.tree.map_with_path(fill, nnx.state(module)))
  return module
