"""What the iterative routing kernels share about their iteration loops."""

from __future__ import annotations

from collections.abc import Callable

import jax


def iteration_body(body: Callable, remat: bool) -> Callable:
  """``body`` for ``lax.scan``, rematerialised on the backward pass if ``remat``.

  Without it, reverse-mode differentiation of the scan keeps every
  iteration's intermediates (for EM and Heinsen routing, votes-sized
  squared deviations), so training memory grows with ``n_iters``. With it,
  only each iteration's carry (the routing state: logits or assignments,
  ``[n_inp, n_out]``-sized or smaller) is kept and the body is recomputed
  during the backward pass: one more forward pass of the iterations, the
  same results.
  """
  return jax.checkpoint(body) if remat else body


def check_remat(remat) -> None:
  """Raises a ``ValueError`` unless ``remat`` is a bool."""
  if not isinstance(remat, bool):
    raise ValueError(f"remat must be a bool, got {remat!r}.")
