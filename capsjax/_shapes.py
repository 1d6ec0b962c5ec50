"""Trace-time shape validation shared by every kernel.

Kernels check their arguments before doing any work and raise a ``ValueError``
that names the argument, the shape it got and the shape it expected, written
with the paper's index letters, e.g.::

  ValueError: mu_inp must have shape [n_inp, d_cov, d_inp] = [5184, 4, 4],
  got (5184, 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# An expected dimension: an int, ``None`` (any size), or a tuple of the sizes
# allowed (e.g. ``(1, n_inp)`` for an axis that may broadcast).
Dim = int | None | tuple[int, ...]


def _format_dim(d: Dim) -> str:
  if d is None:
    return "*"
  if isinstance(d, tuple):
    return "|".join(str(x) for x in d)
  return str(d)


def _dim_ok(d: Dim, size: int) -> bool:
  if d is None:
    return True
  if isinstance(d, tuple):
    return size in d
  return size == d


def check_shape(name: str, x: Any, expected: Sequence[Dim], letters: str) -> None:
  """Raises ``ValueError`` unless ``x`` has the expected shape.

  Args:
    name: the argument's name, as the user wrote it.
    x: the array (anything with a ``.shape``, or array-like).
    expected: one entry per axis: an int, ``None`` (any size) or a tuple of
      allowed sizes.
    letters: the shape in index letters, e.g. ``"[n_inp, d_cov, d_inp]"``.
  """
  shape = tuple(np.shape(x))
  if len(shape) != len(expected) or not all(
      _dim_ok(d, s) for d, s in zip(expected, shape)):
    want = "[" + ", ".join(_format_dim(d) for d in expected) + "]"
    raise ValueError(
        f"{name} must have shape {letters} = {want}, got {shape}.")


def check_ndim(name: str, x: Any, ndim: int, letters: str) -> tuple[int, ...]:
  """Raises ``ValueError`` unless ``x`` has ``ndim`` axes; returns its shape."""
  shape = tuple(np.shape(x))
  if len(shape) != ndim:
    raise ValueError(
        f"{name} must have {ndim} axes {letters}, got shape {shape}.")
  return shape


def check_positive_int(name: str, value: Any) -> None:
  """Raises ``ValueError`` unless ``value`` is a Python int >= 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}.")
