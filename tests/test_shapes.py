"""Tests of the shared shape validation."""

import numpy as np
import pytest

from capsjax import _shapes


def test_check_shape_accepts_matching_and_wildcards():
  x = np.zeros((3, 1, 4))
  _shapes.check_shape("x", x, (3, (1, 5), None), "[a, b, c]")


@pytest.mark.parametrize("shape", [(3, 2, 4), (3, 1), (2, 1, 4, 1)])
def test_check_shape_message_names_argument_and_shapes(shape):
  with pytest.raises(ValueError, match=r"x must have shape \[a, b, c\] = \[3, 1\|5, \*\], got"):
    _shapes.check_shape("x", np.zeros(shape), (3, (1, 5), None), "[a, b, c]")


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_check_positive_int_rejects(bad):
  with pytest.raises(ValueError, match="n_iters must be a positive integer"):
    _shapes.check_positive_int("n_iters", bad)
