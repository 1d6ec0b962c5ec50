"""Inverted dot-product attention routing (Tsai et al., 2020).

One routing step of a fully connected (:func:`inverted_attention_fc`) or a
convolutional (:func:`inverted_attention_conv`) capsule layer, computing the
same function as ``CapsuleFC.forward`` / ``CapsuleCONV.forward`` of the
official PyTorch code in eval mode (the convolution with the authors' later
true-sliding-window fix). A model runs the step once with ``x_out=None``
(the sequential first pass of Procedure 2) and then feeds each layer's result
back as ``x_out`` (the concurrent iterations).

The two layers share the routing step (agreement, softmax over the outputs,
weighted sum of votes, LayerNorm); only the vote computation differs.

References:
  Tsai, Srivastava, Goh, Salakhutdinov, "Capsules with Inverted Dot-Product
  Attention Routing", ICLR 2020 (Procedures 1 and 2, Eqs. (1)-(4)).
  Official code: apple/ml-capsules-inverted-attention-routing,
  ``src/layers.py``; sliding-window fix in
  yaohungt/Capsules-Inverted-Attention-Routing.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from capsjax import _shapes
from capsjax._numerics import layer_norm as _layer_norm
from capsjax.routing._inverted_attention_conv import RENORM_EPS as _RENORM_EPS
from capsjax.routing._inverted_attention_conv import conv_pose_sum as _conv_pose_sum

# ----------------------------------------------------------------------------
# Shared routing step.
# ----------------------------------------------------------------------------


def _finish(pose: jax.Array, ln_scale: jax.Array | None,
            ln_bias: jax.Array | None) -> jax.Array:
  """LayerNorm of the summed pose, which the official layer skips on 1-d poses."""
  if pose.shape[-1] == 1:
    return pose
  # Statistics in at least float32: bfloat16's 8-bit mantissa would lose the
  # variance of poses whose mean is large.
  stats = jnp.promote_types(pose.dtype, jnp.float32)
  as_stats = lambda a: None if a is None else a.astype(stats)
  return _layer_norm(pose.astype(stats), as_stats(ln_scale),
                     as_stats(ln_bias)).astype(pose.dtype)


def _route_block(x_blk: jax.Array, w_blk: jax.Array, x_out: jax.Array | None,
                 matrix_pose: bool, precision, compute_dtype=None) -> jax.Array:
  """Eqs. (1)-(4) before LayerNorm for one block of inputs, without the votes.

  Args:
    x_blk: input poses ``[..., i, d_inp]``; the leading ``...`` axes (a conv
      layer's output grid) are independent routing problems.
    w_blk: weights ``[i, n_out, d_inp, d_out]`` or ``[i, n_out, s, s]``.
    x_out: poses of the layer above ``[..., n_out, d_out]`` or ``None``.
    matrix_pose: whether poses are flattened ``s x s`` matrices.
    precision: of the contractions.
    compute_dtype: dtype of the contractions' operands (``None``: the
      inputs'); they accumulate in at least float32, and the logits and
      softmax are at least float32.

  Returns:
    ``sum_i r_ij v_ij``, ``[..., n_out, d_out]`` in the inputs' dtype.

  The votes ``v_ij = x_i W_ij`` are never formed: the agreement
  ``x_out_j . v_ij`` and the pose ``sum_i r_ij v_ij`` are each one
  three-operand contraction whose order XLA chooses (the pose becomes a
  matmul contracting over ``(i, d_inp)``), instead of an ``[..., i, n_out,
  d_out]`` tensor written out and read back.
  """
  n_out = w_blk.shape[1]
  dtype = jnp.result_type(x_blk, w_blk)
  cd = jnp.dtype(dtype if compute_dtype is None else compute_dtype)
  acc = jnp.promote_types(cd, jnp.float32)
  x_blk, w_blk = x_blk.astype(cd), w_blk.astype(cd)
  if x_out is not None:
    x_out = x_out.astype(cd)
  contract = functools.partial(jnp.einsum, precision=precision,
                               preferred_element_type=acc)
  if matrix_pose:  # x_i, x_out_j as s x s matrices: [.., i, r, c], [.., j, r, h]
    s = w_blk.shape[-1]
    d_out = s * s
    x_blk = x_blk.reshape(x_blk.shape[:-1] + (s, s))
    if x_out is not None:
      x_out = x_out.reshape(x_out.shape[:-1] + (s, s))
    vote, agree, pose = ("...irc,ijch->...jrh", "...irc,ijch,...jrh->...ij",
                         "...ij,...irc,ijch->...jrh")
  else:
    d_out = w_blk.shape[-1]
    vote, agree, pose = ("...id,ijdh->...jh", "...id,ijdh,...jh->...ij",
                         "...ij,...id,ijdh->...jh")
  if x_out is None:
    # First iteration: the official softmax of zero agreements, r = 1/n_out
    # exactly, so the pose is the sum (not the mean) of the votes / n_out.
    out = contract(vote, x_blk, w_blk) / n_out
  else:
    # Eq. (2) with the official 1/sqrt(d_out) scale (the paper omits it).
    logits = contract(agree, x_blk, w_blk, x_out) / np.sqrt(d_out).astype(acc)
    r = jax.nn.softmax(logits, axis=-1)                               # Eq. (3)
    r = r / (jnp.sum(r, axis=-1, keepdims=True) + _RENORM_EPS)
    out = contract(pose, r.astype(cd), x_blk, w_blk)                  # Eq. (4)
  out = out.astype(dtype)
  return out.reshape(out.shape[:-3] + (n_out, d_out)) if matrix_pose else out


# ----------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------


def _check_matrix_pose(matrix_pose) -> None:
  if not isinstance(matrix_pose, (bool, np.bool_)):
    raise ValueError(f"matrix_pose must be a bool, got {matrix_pose!r}.")


def _check_nonempty(name: str, shape: tuple[int, ...], letters: str) -> None:
  if 0 in shape:
    raise ValueError(
        f"{name} must have non-empty axes {letters}, got shape {shape}.")


def _check_weight(W, lead: tuple[int, ...], lead_letters: str, n_inp: int,
                  d_inp: int, matrix_pose: bool) -> tuple[int, int]:
  """Checks ``W [*lead, n_inp, n_out, ...]``; returns ``(n_out, d_out)``."""
  if matrix_pose:
    s = math.isqrt(d_inp)
    if s * s != d_inp:
      raise ValueError(
          f"matrix_pose=True needs x_inp's pose size d_inp to be a perfect "
          f"square s*s, got d_inp={d_inp}.")
    _shapes.check_shape("W", W, (*lead, n_inp, None, s, s),
                        f"[{lead_letters}n_inp, n_out, s, s]")
  else:
    _shapes.check_shape("W", W, (*lead, n_inp, None, d_inp, None),
                        f"[{lead_letters}n_inp, n_out, d_inp, d_out]")
  shape = tuple(np.shape(W))
  _check_nonempty("W", shape, f"[{lead_letters}n_inp, n_out, ...]")
  n_out = shape[len(lead) + 1]
  d_out = d_inp if matrix_pose else shape[-1]
  return n_out, d_out


def _check_ln(ln_scale, ln_bias, d_out: int) -> None:
  if ln_scale is not None:
    _shapes.check_shape("ln_scale", ln_scale, (d_out,), "[d_out]")
  if ln_bias is not None:
    _shapes.check_shape("ln_bias", ln_bias, (d_out,), "[d_out]")


def _check_compute_dtype(compute_dtype) -> None:
  if compute_dtype is None:
    return
  try:
    dtype = jnp.dtype(compute_dtype)
  except TypeError as err:
    raise ValueError(f"compute_dtype must be a floating dtype or None, got "
                     f"{compute_dtype!r}.") from err
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"compute_dtype must be a floating dtype or None, got "
                     f"{compute_dtype!r}.")


def _as_array(x):
  return None if x is None else jnp.asarray(x)


# ----------------------------------------------------------------------------
# Public kernels.
# ----------------------------------------------------------------------------


def inverted_attention_fc(
    x_inp: jax.typing.ArrayLike,
    W: jax.typing.ArrayLike,
    x_out: jax.typing.ArrayLike | None = None,
    *,
    matrix_pose: bool,
    ln_scale: jax.typing.ArrayLike | None = None,
    ln_bias: jax.typing.ArrayLike | None = None,
    precision: jax.lax.PrecisionLike = "highest",
    compute_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
  """One inverted dot-product attention routing step of an FC capsule layer.

  Votes ``v_ij = x_i @ W_ij`` (Eq. (1); matrix poses: ``reshape(x_i, (s, s))
  @ W_ij`` flattened back to ``s*s``), agreements ``x_out_j . v_ij /
  sqrt(d_out)`` (Eq. (2)), ``r = softmax_j`` (Eq. (3)), poses
  ``LayerNorm(sum_i r_ij v_ij)`` (Eq. (4); a sum over ``i``, not a mean).
  With ``x_out=None`` the agreements are all zero, so ``r_ij = 1/n_out``.

  Follows the official ``CapsuleFC.forward`` (eval mode) where it differs
  from the paper: the agreement is scaled by ``1/sqrt(d_out)``, the vote is
  ``x @ W`` (row-vector convention), ``r`` is renormalised by
  ``sum_j r + 1e-10`` and LayerNorm (eps 1e-5, biased variance) is skipped
  when ``d_out == 1``.

  Porting official weights (see :func:`fc_weight_from_official`): vector
  ``W = w.transpose(0, 2, 1, 3)`` (official ``w[n, a, m, d]``), matrix
  ``W = w.transpose(0, 3, 1, 2)`` (official ``w[n, x, d, m]``). Where an
  official conv capsule grid ``[n, H, W, d]`` feeds an FC layer, its capsules
  are flattened in (type, row, column) order, type slowest.

  Args:
    x_inp: input poses ``[n_inp, d_inp]``.
    W: transformation matrices, ``[n_inp, n_out, d_inp, d_out]`` for vector
      poses, ``[n_inp, n_out, s, s]`` for matrix poses (``d_inp = d_out =
      s*s``).
    x_out: current output poses ``[n_out, d_out]``, or ``None`` on the first
      iteration (uniform routing).
    matrix_pose: whether poses are flattened ``s x s`` matrices.
    ln_scale: LayerNorm scale ``[d_out]``; ``None`` means ones.
    ln_bias: LayerNorm bias ``[d_out]``; ``None`` means zeros.
    precision: of every contraction. ``"highest"`` (default) is true float32
      arithmetic, as the official PyTorch code computes; ``None`` takes JAX's
      default (TF32 on recent GPUs, ~1e-3 relative error).
    compute_dtype: dtype of the poses, weights and routing weights inside the
      contractions, e.g. ``jnp.bfloat16``; ``None`` (default) keeps the
      inputs' dtype. The contractions accumulate in at least float32
      (``preferred_element_type``), and the agreements, the softmax and the
      LayerNorm statistics are at least float32; the output has the inputs'
      dtype. With bfloat16, expect relative errors of a few 1e-3 (its 8-bit
      mantissa rounds each operand by up to 2**-9).

  Returns:
    The new output poses ``[n_out, d_out]``.

  References:
    Tsai et al. (2020), Procedure 1, Eqs. (1)-(4).
  """
  _check_matrix_pose(matrix_pose)
  _check_compute_dtype(compute_dtype)
  n_inp, d_inp = _shapes.check_ndim("x_inp", x_inp, 2, "[n_inp, d_inp]")
  _check_nonempty("x_inp", (n_inp, d_inp), "[n_inp, d_inp]")
  n_out, d_out = _check_weight(W, (), "", n_inp, d_inp, matrix_pose)
  if x_out is not None:
    _shapes.check_shape("x_out", x_out, (n_out, d_out), "[n_out, d_out]")
  _check_ln(ln_scale, ln_bias, d_out)

  pose = _route_block(jnp.asarray(x_inp), jnp.asarray(W), _as_array(x_out),
                     matrix_pose, precision, compute_dtype)
  return _finish(pose, _as_array(ln_scale),
                       _as_array(ln_bias))


def inverted_attention_conv(
    x_inp: jax.typing.ArrayLike,
    W: jax.typing.ArrayLike,
    x_out: jax.typing.ArrayLike | None = None,
    *,
    stride: int,
    matrix_pose: bool,
    ln_scale: jax.typing.ArrayLike | None = None,
    ln_bias: jax.typing.ArrayLike | None = None,
    precision: jax.lax.PrecisionLike = "highest",
    compute_dtype: jax.typing.DTypeLike | None = None,
) -> jax.Array:
  """One inverted dot-product attention routing step of a conv capsule layer.

  Channels-last. Each output position ``(h, w)`` of the VALID ``k x k``
  sliding window (stride ``stride``) is an FC routing step whose inputs are
  the ``k*k*n_inp`` window entries, with a weight per (row offset, column
  offset, input capsule): each input capsule at each window offset routes on
  its own (softmax over ``n_out`` only) and the pose sums over all window
  entries. With ``x_out=None``, ``r = 1/n_out``. See
  :func:`inverted_attention_fc` for the step itself.

  Follows the official ``CapsuleCONV.forward`` (eval mode) with the authors'
  true sliding window (the first apple release scrambles window positions).

  With ``x_out`` the step runs as batched matmuls per window offset without
  forming the votes, with a hand-written backward pass (``jax.custom_vjp``)
  and a ``jax.vmap`` rule that folds the mapped axis into the matmuls; so
  reverse-mode differentiation and ``vmap`` work, forward-mode (``jax.jvp``)
  does not. With ``x_out=None`` it is one matmul over all window entries.
  Differentiated inside ``lax.scan`` / ``fori_loop`` (even unrolled), the
  compiled step keeps the kernel's per-chunk forward intermediates: two
  routing iterations at the Tsai conv shape, batch 32, took 1080 MiB in a
  ``fori_loop`` and 139 MiB as a Python loop. Unroll routing iterations in
  Python, as :class:`capsjax.models.tsai2020.CapsNet` does.

  Porting official weights (see :func:`conv_weight_from_official`): vector
  ``W = w.transpose(0, 1, 2, 4, 3, 5)`` (official ``w[k, l, n, a, m, d]``),
  matrix ``W = w.transpose(0, 1, 2, 5, 3, 4)`` (official ``w[k, l, n, x, d,
  m]``); ``w[k, l]`` has the row offset first. The official activations are
  ``[n, H, W, d]``: ``x_inp = input.transpose(1, 2, 0, 3)``, and likewise
  for ``x_out`` (official ``[m, H', W', d]``).

  Args:
    x_inp: input poses ``[H, W, n_inp, d_inp]``.
    W: kernel, ``[k, k, n_inp, n_out, d_inp, d_out]`` for vector poses,
      ``[k, k, n_inp, n_out, s, s]`` for matrix poses (``d_inp = d_out =
      s*s``); ``k <= H`` and ``k <= W``.
    x_out: current output poses ``[H', W', n_out, d_out]`` with ``H' = (H -
      k) // stride + 1`` (likewise ``W'``), or ``None`` on the first
      iteration.
    stride: window stride, a positive int.
    matrix_pose: whether poses are flattened ``s x s`` matrices.
    ln_scale: LayerNorm scale ``[d_out]``; ``None`` means ones.
    ln_bias: LayerNorm bias ``[d_out]``; ``None`` means zeros.
    precision: of every contraction. ``"highest"`` (default) is true float32
      arithmetic, as the official PyTorch code computes; ``None`` takes JAX's
      default (TF32 on recent GPUs, ~1e-3 relative error).
    compute_dtype: dtype of the poses, weights and routing weights inside the
      contractions, e.g. ``jnp.bfloat16``; ``None`` (default) keeps the
      inputs' dtype. The contractions accumulate in at least float32
      (``preferred_element_type``), and the agreements, the softmax and the
      LayerNorm statistics are at least float32; the output has the inputs'
      dtype. With bfloat16, expect relative errors of a few 1e-3 (its 8-bit
      mantissa rounds each operand by up to 2**-9).

  Returns:
    The new output poses ``[H', W', n_out, d_out]``.

  References:
    Tsai et al. (2020), Procedure 1, Eqs. (1)-(4).
  """
  _check_matrix_pose(matrix_pose)
  _check_compute_dtype(compute_dtype)
  _shapes.check_positive_int("stride", stride)
  letters = "[H, W, n_inp, d_inp]"
  height, width, n_inp, d_inp = _shapes.check_ndim("x_inp", x_inp, 4, letters)
  _check_nonempty("x_inp", (height, width, n_inp, d_inp), letters)
  w_letters = ("[k, k, n_inp, n_out, s, s]" if matrix_pose else
               "[k, k, n_inp, n_out, d_inp, d_out]")
  k = _shapes.check_ndim("W", W, 6, w_letters)[0]
  n_out, d_out = _check_weight(W, (k, k), "k, k, ", n_inp, d_inp, matrix_pose)
  if k > height or k > width:
    raise ValueError(
        f"W's kernel size k={k} must not exceed x_inp's spatial size "
        f"(H, W) = ({height}, {width}).")
  h_out = (height - k) // stride + 1
  w_out = (width - k) // stride + 1
  if x_out is not None:
    _shapes.check_shape("x_out", x_out, (h_out, w_out, n_out, d_out),
                        "[H', W', n_out, d_out]")
  _check_ln(ln_scale, ln_bias, d_out)

  pose = _conv_pose_sum(jnp.asarray(x_inp), jnp.asarray(W), _as_array(x_out),
                        stride, matrix_pose, precision, compute_dtype)
  return _finish(pose, _as_array(ln_scale),
                       _as_array(ln_bias))


# ----------------------------------------------------------------------------
# Porting weights from the official PyTorch code.
# ----------------------------------------------------------------------------


def fc_weight_from_official(w: jax.typing.ArrayLike, *,
                            matrix_pose: bool) -> jax.Array:
  """``CapsuleFC.w`` → ``W`` of :func:`inverted_attention_fc`.

  Args:
    w: official weight, ``[n, a, m, d]`` (vector) or ``[n, x, d, m]``
      (matrix).
    matrix_pose: as in the official layer.

  Returns:
    ``W [n_inp, n_out, d_inp, d_out]`` or ``[n_inp, n_out, s, s]``.
  """
  _check_matrix_pose(matrix_pose)
  _shapes.check_ndim("w", w, 4, "[n, x, d, m]" if matrix_pose else "[n, a, m, d]")
  return jnp.transpose(jnp.asarray(w), (0, 3, 1, 2) if matrix_pose else (0, 2, 1, 3))


def conv_weight_from_official(w: jax.typing.ArrayLike, *,
                              matrix_pose: bool) -> jax.Array:
  """``CapsuleCONV.w`` → ``W`` of :func:`inverted_attention_conv`.

  Args:
    w: official weight, ``[k, l, n, a, m, d]`` (vector) or
      ``[k, l, n, x, d, m]`` (matrix).
    matrix_pose: as in the official layer.

  Returns:
    ``W [k, k, n_inp, n_out, d_inp, d_out]`` or ``[k, k, n_inp, n_out, s, s]``.
  """
  _check_matrix_pose(matrix_pose)
  _shapes.check_ndim("w", w, 6, "[k, l, n, x, d, m]" if matrix_pose else
                     "[k, l, n, a, m, d]")
  perm = (0, 1, 2, 5, 3, 4) if matrix_pose else (0, 1, 2, 4, 3, 5)
  return jnp.transpose(jnp.asarray(w), perm)
