"""Multi-assignment Sinkhorn-Knopp (Multi-SK) of Swetha et al. (2023).

Multi-SK turns a ``[B, K]`` matrix of sample-to-anchor similarities into soft
targets that assign each sample to several anchors at once: the similarities
are replicated over ``K`` channels with a per-channel damping (a "3-D
similarity matrix"), and a Sinkhorn-Knopp iteration normalises the
``[K, B, K]`` (channel, sample, anchor) tensor in turn over samples (an
anchor-balanced partition), channels (each (sample, anchor) cell is shared out
among the channels) and anchors. Summing the undamped channels gives each
sample's top-``K'`` anchors (:func:`multi_sk_assignment`).

Everything runs in the log domain on dual potentials, so a small ``eps`` (the
authors train with 0.07 on cosine scores) cannot overflow ``exp``: the plan is
``log A[c, b, k] = mu_c * S[b, k] / eps + u[c, k] + v[b, k] + z[c, b]``, each
normalisation only updates one potential, and the ``[K, B, K]`` tensor is
materialised once, at the end.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from capsjax import _shapes

# The official code divides each marginal by ``sum + 1e-5``.
_SUM_EPS = 1e-5


def _check_positive_number(name: str, value) -> None:
  """Raises ``ValueError`` unless ``value`` is a finite real number > 0."""
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value) or value <= 0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def _compute_dtype(x: jax.Array) -> jnp.dtype:
  # Half-precision inputs are normalised in float32 (the iteration subtracts
  # log-sums of very different sizes); the result is cast back.
  return jnp.promote_types(x.dtype, jnp.float32)


def _channel_damping(n_anchors: int, required_properties: int,
                     discrete: bool) -> np.ndarray:
  """``[K]`` damping ``mu_c`` of each channel (suppl. Sec. 2.1)."""
  if discrete:
    # Approach 1: the last ``required_properties`` channels keep the scores,
    # the others are damped by 0.25.
    mu = np.ones(n_anchors)
    mu[:n_anchors - required_properties] = 0.25
  else:
    # Approach 2 with eta = 0.1, increasing with the channel index as in the
    # official code (the paper's formula is the same ramp, reversed).
    mu = (np.arange(n_anchors) + 1) / n_anchors * 0.9 + 0.1
  return mu


def _anchor_marginals(class_dist: jax.Array, log_first_channel: jax.Array,
                      n_samples: int) -> jax.Array:
  """``[K]`` target sample mass of each anchor, as the official code sets it.

  ``class_dist`` is scaled to sum ``B``, clamped to at least one sample per
  anchor, rescaled to sum ``B``, and its values are handed out in sorted order
  to the anchors sorted by channel 0's marginal (the smallest target to the
  least popular anchor).
  """
  cd = class_dist / jnp.sum(class_dist) * n_samples
  cd = jnp.maximum(cd, 1.0)
  cd = cd / jnp.sum(cd) * n_samples
  # log-marginals sort like the marginals.
  order = jnp.argsort(jax.nn.logsumexp(log_first_channel, axis=0))
  return jnp.zeros_like(cd).at[order].set(jnp.sort(cd))


# Jitted inside, so that an eager call compiles one program instead of
# dispatching (and compiling) each operation on its own; under an outer jit
# it is inlined. Only the shapes and n_iters are static: eps, the damping and
# the prior are arrays, so changing them does not recompile.
@functools.partial(jax.jit, static_argnames="n_iters")
def _multi_sinkhorn(scores: jax.Array, class_dist: jax.Array, mu: jax.Array,
                    eps: jax.Array, *, n_iters: int) -> jax.Array:
  """:func:`multi_sinkhorn` on validated arguments (``mu``: ``[K]`` damping)."""
  n_samples, n_anchors = scores.shape
  out_dtype = scores.dtype
  dtype = mu.dtype
  # A target-making step: no gradient flows back into the scores.
  s = jax.lax.stop_gradient(scores).astype(dtype) / eps
  class_dist = jax.lax.stop_gradient(class_dist).astype(dtype)
  sum_eps = jnp.asarray(_SUM_EPS, dtype)
  channels = jnp.arange(n_anchors)
  s_t = s.T  # [k, b]

  # Q /= sum(Q): the normaliser goes into u.
  log_total = jax.nn.logsumexp(
      jax.lax.map(lambda m: jax.nn.logsumexp(m * s), mu))
  u0 = jnp.full((n_anchors, n_anchors), -log_total, dtype)
  log_cd = jnp.log(_anchor_marginals(class_dist, mu[0] * s, n_samples))

  # The sums below exponentiate the log-plan with no max-shift: whenever one is
  # taken, every entry is bounded (<= 1 at the start and after a normalisation
  # over channels or anchors, <= B after the one over samples), so exp cannot
  # overflow; an entry that underflows is below 1e-38 and the sum it would
  # enter is added to 1e-5, which it cannot change. The potentials keep exact
  # log values, so nothing is lost for later steps. This is the log-domain
  # ``logaddexp(log_sum, log 1e-5)`` at half the cost of a max-shifted
  # log-sum-exp. Each sum loops over the channels on [B, K] slices: written
  # on the [K, B, K] broadcast, XLA:CPU materialises the broadcast operands
  # and runs several times slower.
  def samples_sum(u, v, z):  # [c, k]
    v_t = v.T
    def one_channel(c):
      return jnp.sum(jnp.exp(mu[c] * s_t + u[c][:, None] + v_t + z[c][None, :]),
                     axis=1)
    return jax.lax.map(one_channel, channels)

  def channels_sum(u, v, z):  # [b, k]
    def add_channel(c, acc):
      return acc + jnp.exp(mu[c] * s + u[c][None, :] + v + z[c][:, None])
    return jax.lax.fori_loop(0, n_anchors, add_channel, jnp.zeros_like(v))

  def anchors_sum(u, v, z):  # [c, b]
    def one_channel(c):
      return jnp.sum(jnp.exp(mu[c] * s + u[c][None, :] + v + z[c][:, None]),
                     axis=1)
    return jax.lax.map(one_channel, channels)

  def iteration(carry, _):
    u, v, z = carry
    # 1. samples: each (channel, anchor) column to sum class_dist[k].
    u = u + log_cd[None, :] - jnp.log(samples_sum(u, v, z) + sum_eps)
    # 2. channels: each (sample, anchor) cell to sum 1.
    v = v - jnp.log(channels_sum(u, v, z) + sum_eps)
    # 3. anchors: each (channel, sample) row to sum 1.
    z = z - jnp.log(anchors_sum(u, v, z) + sum_eps)
    return (u, v, z), None

  init = (u0, jnp.zeros((n_samples, n_anchors), dtype),
          jnp.zeros((n_anchors, n_samples), dtype))
  (u, v, _), _ = jax.lax.scan(iteration, init, None, length=n_iters)
  # Final exact normalisation over anchors (no 1e-5), a max-shifted softmax
  # over k, since a row may sum to far below 1e-38 here; z is constant over
  # k and cancels.
  assignment = jax.nn.softmax(
      mu[:, None, None] * s[None] + u[:, None, :] + v[None], axis=2)
  return jax.lax.stop_gradient(assignment.astype(out_dtype))


def multi_sinkhorn(scores: jax.typing.ArrayLike, *, eps: float, n_iters: int,
                   required_properties: int, discrete: bool = True,
                   class_dist: jax.typing.ArrayLike | None = None) -> jax.Array:
  """The Multi-SK assignment tensor (suppl. Sec. 3, official ``multi_sinkhorn``).

  With ``mu`` the channel damping (1 on the last ``required_properties``
  channels and 0.25 on the others when ``discrete``; ``0.1 + 0.9 (c+1)/K``
  otherwise), the iteration starts from

  ``Q[c, b, k] = exp(mu_c * scores[b, k] / eps)``, normalised to sum 1,

  and each of the ``n_iters`` iterations

  1. scales every (channel, anchor) column so that its sum over samples is
     the anchor's target mass ``class_dist[k]`` (equal partition, ``B/K``
     for the default uniform ``class_dist``),
  2. divides by the sum over channels (each (sample, anchor) cell sums to 1),
  3. divides by the sum over anchors (each (channel, sample) row sums to 1),

  each division being by ``sum + 1e-5`` as in the official code. The result
  is finally divided by its sum over anchors (without the ``1e-5``), so each
  ``[c, b, :]`` row is a distribution over anchors.

  Differences from the official code, none of which changes a finite result:

  - Log domain throughout: the iteration updates log-potentials, and
    ``exp`` is only taken of entries known to be bounded, so nothing
    overflows for any ``eps``. Where the official float32 code overflows to
    ``inf`` and patches it (its ``replace_inf``), this function returns what
    the official code computes in float64.
  - The result carries no gradient (``jax.lax.stop_gradient``): the official
    code runs it under ``torch.no_grad`` to make targets.

  ``class_dist`` (default uniform) is scaled to sum ``B``, clamped to at least
  1, rescaled to sum ``B``, and its sorted values are assigned to the anchors
  in the order of channel 0's initial anchor marginals (official behaviour).
  Being a factor per anchor, it cancels in the channel normalisation that
  follows, except through the ``+ 1e-5`` guards: it only shows where sums
  are small (small ``eps``), in the official code as here.

  Args:
    scores: ``[B, K]`` sample-to-anchor similarities (the official code uses
      cosine similarities in ``[-1, 1]``).
    eps: the entropic temperature, a number > 0 (the authors use 0.07).
    n_iters: number of Sinkhorn iterations, >= 1 (the authors use 20).
    required_properties: ``K'``, the number of undamped channels, an int in
      ``[0, K]`` (only used when ``discrete``; 0 damps every channel).
    discrete: the channel damping: ``True`` for the paper's default
      "Approach 1", ``False`` for the linear ramp ("Approach 2").
    class_dist: optional ``[K]`` non-negative prior on the anchor sizes (not
      all zero); ``None`` means uniform.

  Returns:
    ``[K, B, K]`` (channel, sample, anchor) assignment tensor in the dtype of
    ``scores``; each ``[c, b, :]`` sums to 1.

  Raises:
    ValueError: if ``scores`` is not 2-D, ``class_dist`` is not ``[K]``, or an
      option is out of range.

  References:
    M. Swetha, M. N. Rizve, N. Shvetsova, H. Kuehne, M. Shah. Preserving
    Modality Structure Improves Multi-Modal Learning. ICCV 2023, suppl. Secs.
    2.1 and 3; official code ``multi_sinkhorn`` in Swetha5/Multi_Sinkhorn_Knopp
    (``everything_at_once/loss/combinatorial_loss.py``).
  """
  n_samples, n_anchors = _shapes.check_ndim("scores", scores, 2, "[B, K]")
  _check_positive_number("eps", eps)
  _shapes.check_positive_int("n_iters", n_iters)
  if (isinstance(required_properties, bool)
      or not isinstance(required_properties, (int, np.integer))
      or not 0 <= required_properties <= n_anchors):
    raise ValueError(
        f"required_properties must be an int in [0, K] = [0, {n_anchors}], "
        f"got {required_properties!r}.")
  if class_dist is not None:
    _shapes.check_shape("class_dist", class_dist, (n_anchors,), "[K]")

  scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  dtype = _compute_dtype(scores)
  mu = np.asarray(_channel_damping(n_anchors, required_properties, discrete), dtype)
  if class_dist is None:
    class_dist = np.ones(n_anchors, dtype)
  return _multi_sinkhorn(scores, jnp.asarray(class_dist), mu,
                         np.asarray(eps, dtype), n_iters=n_iters)


def multi_sk_assignment(similarity: jax.typing.ArrayLike, *, eps: float,
                        n_iters: int, required_fraction: float,
                        discrete: bool = True) -> jax.Array:
  """Per-sample anchor assignment from Multi-SK (official ``calculate_sk``).

  Runs :func:`multi_sinkhorn` with ``required_properties = int(K *
  required_fraction)`` (and ``discrete``), sums the last
  ``required_properties`` channels (undamped for ``discrete=True``; the most
  weighted ones of the ramp otherwise), and min-max normalises each
  sample's row over the anchors to ``[0, 1]``.

  Differences from the official code: a constant row, where the official
  min-max normalisation divides 0 by 0, gives 0 here; and
  ``int(K * required_fraction) == 0`` is a ``ValueError`` (the official
  slice ``[-0:]`` would silently sum every channel).

  Args:
    similarity: ``[B, K]`` sample-to-anchor similarities.
    eps: the entropic temperature, a number > 0 (the authors use 0.07).
    n_iters: number of Sinkhorn iterations, >= 1 (the authors use 20).
    required_fraction: the fraction of anchors each sample is assigned to,
      in ``(0, 1]`` (the authors use 0.5); ``int(K * required_fraction)``
      must be at least 1.
    discrete: the channel damping of :func:`multi_sinkhorn`: ``True``,
      suppl. Table 7's "Approach 1" (the paper's), ``False`` "Approach 2".

  Returns:
    ``[B, K]`` assignment in ``[0, 1]`` (each row has min 0 and max 1 unless
    constant), dtype of ``similarity``, without gradient.

  Raises:
    ValueError: on a non-2-D ``similarity`` or an option out of range.

  References:
    Swetha et al. (2023), suppl. Sec. 3; official ``calculate_sk`` and
    ``normalize_matrix`` in Swetha5/Multi_Sinkhorn_Knopp.
  """
  _, n_anchors = _shapes.check_ndim("similarity", similarity, 2, "[B, K]")
  if (isinstance(required_fraction, bool)
      or not isinstance(required_fraction, numbers.Real)
      or not 0 < required_fraction <= 1):
    raise ValueError(
        f"required_fraction must be a number in (0, 1], got {required_fraction!r}.")
  required_properties = int(n_anchors * required_fraction)
  if required_properties == 0:
    raise ValueError(
        f"required_fraction={required_fraction!r} gives required_properties = "
        f"int(K * required_fraction) = 0 for K = {n_anchors}; it must be >= 1.")
  assignment = multi_sinkhorn(
      similarity, eps=eps, n_iters=n_iters,
      required_properties=required_properties, discrete=discrete)
  summed = jnp.sum(assignment[n_anchors - required_properties:], axis=0)
  lo = jnp.min(summed, axis=1, keepdims=True)
  span = jnp.max(summed, axis=1, keepdims=True) - lo
  flat = span == 0
  return jnp.where(flat, 0, (summed - lo) / jnp.where(flat, 1, span))
