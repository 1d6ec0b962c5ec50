"""Helpers shared by the tests: the error measure of KERNELS.md."""

from __future__ import annotations

import numpy as np


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
