"""EncapNet layers of Li et al. (2018): capConv, capFC and feedback agreement.

* :class:`CapConv` approximates routing in one supervised pass (Sec. 3.1,
  Eq. 6): a *master* branch (a grouped convolution of each capsule's own
  channels, kernel ``k1``) and an *aide* branch (a convolution over all
  capsules, kernel ``k2``), mixed by per-capsule coefficients ``m1``, ``m2``
  that a group convolution computes from the branches' activations, then
  BatchNorm, ReLU and squash. Type I (``kernel_size=3``) changes the capsule
  size and, with stride 2, merges space; type II (``kernel_size=1``) keeps both.
* :class:`CapFC` is the per-capsule-dimension fully connected layer that makes
  the class capsules.
* :class:`FeedbackAgreement` is the training-only regulariser of Sec. 3.2: a
  "deconvolutional" generator ``g_psi`` maps higher capsules back to the lower
  layer's shape, a small critic ``f_phi`` embeds generated and real lower
  capsules, and the loss is the Sinkhorn divergence (Eq. 11) between the two
  sets of embeddings over the mini-batch.

Images and capsule maps are NHWC: capsule maps are ``[B, H, W, n_caps, d]``
and, where flattened to channels, capsule-major (channel ``c = cap * d + k``),
the channel order of the official PyTorch code.

Initialisation follows the official code (``weights_init_cap`` in
hli2020/nn_encapsulation): convolution (and transposed convolution) weights
Xavier-normal with PyTorch's fans, convolution biases ``N(0, 1)``, BatchNorm
scale 1 and bias 0; the capFC weight ``U(+-1/sqrt(n_in))``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax.ot import sinkhorn_divergence
from capsjax.nn.torch_init import torch_batch_norm
from capsjax.routing import squash

__all__ = ["CapConv", "CapFC", "FeedbackAgreement"]

_COEFFICIENTS = ("both", "cross", "own")


# --------------------------------------------------------------------------
# Initialisers and building blocks shared with capsjax.models.li2018.


def xavier_normal(fan_in: int, fan_out: int) -> nnx.Initializer:
  """``N(0, 2 / (fan_in + fan_out))``: PyTorch's ``xavier_normal_`` for given fans."""
  return nnx.initializers.normal(math.sqrt(2.0 / (fan_in + fan_out)))


def symmetric_uniform(bound: float) -> nnx.Initializer:
  """``U(-bound, bound)``."""
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# PyTorch's xavier_normal_ on a conv weight [out, in/g, k, k] uses
# fan_in = in/g * k^2 and fan_out = out * k^2, exactly the fans that
# variance_scaling computes on Flax's [k, k, in/g, out] kernel. ("normal", not
# glorot_normal's truncated normal.)
_conv_kernel_init = nnx.initializers.variance_scaling(1.0, "fan_avg", "normal")
# The official weights_init_cap draws every conv / linear bias from N(0, 1).
_bias_init = nnx.initializers.normal(1.0)


def _conv_general_dilated(lhs, rhs, window_strides, padding, *,
                          lhs_dilation=None, rhs_dilation=None,
                          dimension_numbers=None, feature_group_count=1,
                          precision=None, **kwargs):
  """``lax.conv_general_dilated`` for NHWC / HWIO, with two XLA:CPU workarounds.

  Same function and parameters on every backend; on CPU only,

  * a grouped convolution (and its gradient) runs one to two orders of
    magnitude slower than a dense one of the same size, so the ``[k, k,
    in / g, out]`` kernel is expanded to the equivalent block-diagonal
    ``[k, k, in, out]`` one;
  * a convolution whose output map is smaller than its kernel (EncapNet's
    5 x 5 aide kernels on 4 x 4 maps) falls into a path ~100x slower, so it
    is computed as patches (shifted strided slices) times the kernel.
  """
  if jax.default_backend() != "cpu":
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  if feature_group_count > 1:
    g, (kh, kw, in_per_group, out) = feature_group_count, rhs.shape
    # dense[., ., (h, i), (g, e)] = rhs[., ., i, (g, e)] * [h == g]
    rhs = jnp.einsum("abige,hg->abhige", rhs.reshape(kh, kw, in_per_group, g, -1),
                     jnp.eye(g, dtype=rhs.dtype)).reshape(kh, kw, g * in_per_group, out)
  kh, kw = rhs.shape[:2]
  plain = (not isinstance(padding, str) and all(
      d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ())))
  if plain:
    (sh, sw), ((p0, p1), (q0, q1)) = window_strides, padding
    ho = (lhs.shape[1] + p0 + p1 - kh) // sh + 1
    wo = (lhs.shape[2] + q0 + q1 - kw) // sw + 1
  if not plain or (ho >= kh and wo >= kw):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        precision=precision, **kwargs)
  x = jnp.pad(lhs, ((0, 0), (p0, p1), (q0, q1), (0, 0)))
  patches = jnp.stack(
      [x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
       for i in range(kh) for j in range(kw)], axis=3)      # [B, ho, wo, k*k, in]
  return jnp.einsum("bhwpc,pco->bhwo", patches,
                    rhs.reshape((kh * kw,) + rhs.shape[2:]), precision=precision,
                    preferred_element_type=kwargs.get("preferred_element_type"))


def conv(in_features: int, out_features: int, kernel_size: int, *,
         stride: int = 1, groups: int = 1, use_bias: bool = True,
         rngs: nnx.Rngs, dtype: Any = None,
         param_dtype: Any = jnp.float32) -> nnx.Conv:
  """A PyTorch-style ``Conv2d`` (symmetric padding ``k // 2``) in NHWC."""
  pad = kernel_size // 2
  return nnx.Conv(
      in_features, out_features, (kernel_size, kernel_size), stride,
      padding=((pad, pad), (pad, pad)), feature_group_count=groups,
      use_bias=use_bias, kernel_init=_conv_kernel_init, bias_init=_bias_init,
      conv_general_dilated=_conv_general_dilated, dtype=dtype,
      param_dtype=param_dtype, rngs=rngs)


class ConvTranspose(nnx.Module):
  """PyTorch's ``ConvTranspose2d(k, stride, padding=k // 2, output_padding=stride - 1)``.

  Computed as the equivalent convolution of the input dilated by ``stride``
  and padded by ``k - 1 - p`` before and ``k - 1 - p + output_padding`` after
  (``lax.pad`` with interior padding: an explicit ``input_dilation`` is slow
  to differentiate on XLA:CPU), so the output is exactly ``stride`` times
  larger. The kernel is stored in that convolution's layout
  ``[k, k, in / g, out]``, the spatially flipped, regrouped PyTorch weight
  ``w [in, out / g, k, k]``: ``kernel[a, b, i, g * (out / g) + e] =
  w[g * (in / g) + i, e, k - 1 - a, k - 1 - b]``. Its Xavier-normal scale
  uses PyTorch's fans for a transposed convolution (``fan_in = out / g *
  k^2``, ``fan_out = in * k^2``).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               stride: int, groups: int = 1, rngs: nnx.Rngs, dtype: Any = None,
               param_dtype: Any = jnp.float32):
    area = kernel_size * kernel_size
    lo = kernel_size - 1 - kernel_size // 2
    self.padding = ((lo, lo + stride - 1), stride - 1)   # (before, after), interior
    self.conv = nnx.Conv(
        in_features, out_features, (kernel_size, kernel_size), 1,
        padding=((0, 0), (0, 0)), feature_group_count=groups,
        kernel_init=xavier_normal(out_features // groups * area, in_features * area),
        bias_init=_bias_init, conv_general_dilated=_conv_general_dilated,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    (lo, hi), interior = self.padding
    x = jnp.asarray(x)
    x = jax.lax.pad(x, jnp.zeros((), x.dtype),
                    ((0, 0, 0), (lo, hi, interior), (lo, hi, interior), (0, 0, 0)))
    return self.conv(x)


def _squash_groups(x: jax.Array, n_caps: int) -> jax.Array:
  """Squashes ``[..., n_caps * d]`` channels capsule by capsule: ``[..., n_caps, d]``."""
  return squash(x.reshape(x.shape[:-1] + (n_caps, -1)))


def _flat(u: jax.Array) -> jax.Array:
  """``[B, H, W, n, d]`` capsules -> ``[B, H, W, n * d]`` channels."""
  return u.reshape(u.shape[:3] + (-1,))


# --------------------------------------------------------------------------


class CapConv(nnx.Module):
  """capConv: one-pass master/aide approximate routing (Sec. 3.1, Eq. 6).

  For input capsules ``u [B, H, W, n_caps, d_in]``::

    v1 = squash(relu(BN(master(u))))     # grouped conv, k1 x k1, own capsule
    v2 = squash(relu(BN(aide(u))))       # full conv, k2 x k2, all capsules
    m1, m2 = coefficient group conv (3 x 3) of the activations
    s  = m1 * v1 + m2 * v2 (+ skip)
    v  = squash(relu(BN(s)))             # [B, H', W', n_caps, d_out]

  Type I: ``kernel_size=3`` (``d_out != d_in``, stride 2 to merge space, or
  stride 1); type II: ``kernel_size=1``, ``stride=1``, ``d_out == d_in``. The
  aide kernel is ``k2 = k1 + 4`` and every convolution pads ``k // 2``, as in
  the official ``capConvRoute3``. With ``residual=True`` the skip connection
  of Fig. 3(a) is added to ``s`` before the last BatchNorm: the input itself,
  or a 3 x 3 convolution of it (stride ``stride``) when the shape changes (the
  official ``conv_adjust_blob_shape``).

  ``coefficients`` chooses where ``m1``, ``m2`` come from (Table 3, cases 2-4):

  * ``"both"`` (default, "master/aide v3", the paper's best): one group
    convolution (``n_caps`` groups) over each capsule's activations of *both*
    branches, ``[v1_c, v2_c] -> [m1_c, m2_c]``;
  * ``"cross"``: the official ``capConvRoute3``: ``m2`` from ``v1`` and ``m1``
    from ``v2``, one group convolution each;
  * ``"own"``: the official ``capConvRoute4``: each coefficient from its own
    branch.

  The paper's aide branch looks at the *other* capsules; the official code
  (followed here) convolves over all of them, the own capsule included.

  Attributes:
    n_caps, d_in, d_out, kernel_size, aide_kernel_size, stride, coefficients,
    residual: the constructor arguments.
  """

  def __init__(self, n_caps: int, d_in: int, d_out: int, *,
               kernel_size: int = 3, stride: int = 1,
               aide_kernel_size: int | None = None,
               coefficients: str = "both", residual: bool = False,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    """Creates the layer.

    Args:
      n_caps: capsules per position (the same in and out).
      d_in: input capsule size.
      d_out: output capsule size.
      kernel_size: master kernel ``k1`` (3 for type I, 1 for type II).
      stride: spatial stride of both branches (2 merges space in type I).
      aide_kernel_size: aide kernel ``k2``; ``None`` means ``k1 + 4``.
      coefficients: ``"both"``, ``"cross"`` or ``"own"`` (see above).
      residual: add the skip connection before the last BatchNorm.
      dtype: compute dtype (``None``: from the inputs and parameters).
      param_dtype: parameter dtype.
      rngs: random keys for the initialisation.
    """
    for name, value in (("n_caps", n_caps), ("d_in", d_in), ("d_out", d_out),
                        ("kernel_size", kernel_size), ("stride", stride)):
      _shapes.check_positive_int(name, value)
    if aide_kernel_size is None:
      aide_kernel_size = kernel_size + 4
    _shapes.check_positive_int("aide_kernel_size", aide_kernel_size)
    if coefficients not in _COEFFICIENTS:
      raise ValueError(f"coefficients must be one of {_COEFFICIENTS}, "
                       f"got {coefficients!r}.")
    self.n_caps, self.d_in, self.d_out = n_caps, d_in, d_out
    self.kernel_size, self.aide_kernel_size = kernel_size, aide_kernel_size
    self.stride, self.coefficients, self.residual = stride, coefficients, residual
    kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
    c_in, c_out = n_caps * d_in, n_caps * d_out

    self.master = conv(c_in, c_out, kernel_size, stride=stride, groups=n_caps, **kw)
    self.master_bn = torch_batch_norm(c_out, **kw)
    self.aide = conv(c_in, c_out, aide_kernel_size, stride=stride, **kw)
    self.aide_bn = torch_batch_norm(c_out, **kw)
    if coefficients == "both":
      self.coeff = conv(2 * c_out, 2 * n_caps, 3, groups=n_caps, **kw)
    else:
      self.master_coeff = conv(c_out, n_caps, 3, groups=n_caps, **kw)
      self.aide_coeff = conv(c_out, n_caps, 3, groups=n_caps, **kw)
    self.shortcut = (conv(c_in, c_out, 3, stride=stride, **kw)
                     if residual and (d_in != d_out or stride != 1) else None)
    self.bn = torch_batch_norm(c_out, **kw)

  def __call__(self, u: ArrayLike) -> jax.Array:
    """Applies the layer.

    Args:
      u: ``[B, H, W, n_caps, d_in]`` input capsules.

    Returns:
      ``[B, H', W', n_caps, d_out]`` output capsules of length < 1, with
      ``H' = ceil(H / stride)``.
    """
    _shapes.check_shape("u", u, (None, None, None, self.n_caps, self.d_in),
                        "[B, H, W, n_caps, d_in]")
    n = self.n_caps
    x = _flat(jnp.asarray(u))
    v1 = _squash_groups(nnx.relu(self.master_bn(self.master(x))), n)
    v2 = _squash_groups(nnx.relu(self.aide_bn(self.aide(x))), n)
    if self.coefficients == "both":
      both = jnp.concatenate([v1, v2], axis=-1)                 # [B, H', W', n, 2 d]
      m = self.coeff(_flat(both)).reshape(v1.shape[:-1] + (2,))  # group c -> (m1_c, m2_c)
      m1, m2 = m[..., 0], m[..., 1]
    elif self.coefficients == "cross":
      m1, m2 = self.aide_coeff(_flat(v2)), self.master_coeff(_flat(v1))
    else:
      m1, m2 = self.master_coeff(_flat(v1)), self.aide_coeff(_flat(v2))
    s = _flat(m1[..., None] * v1 + m2[..., None] * v2)
    if self.residual:
      s = s + (x if self.shortcut is None else self.shortcut(x))
    return _squash_groups(nnx.relu(self.bn(s)), n)


class CapFC(nnx.Module):
  """capFC: a fully connected layer per capsule dimension (Sec. 3.1).

  ``s_jk = sum_i u_ik W_kij`` for every capsule dimension ``k``, then
  ``v_j = squash(s_j)``: input and output capsules have the same size ``d``.
  No bias; ``W [d, n_in, n_out] ~ U(+-1/sqrt(n_in))`` (the official ``CapFC``
  with ``fc_manner='default'``, whose weight has this shape and order).

  Attributes:
    n_in, n_out, d: the constructor arguments.
    weight: ``[d, n_in, n_out]``.
  """

  def __init__(self, n_in: int, n_out: int, d: int, *, dtype: Any = None,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    """Creates the layer.

    Args:
      n_in: input capsules.
      n_out: output (class) capsules.
      d: capsule size, in and out.
      dtype: compute dtype (``None``: from the inputs and parameters).
      param_dtype: parameter dtype.
      rngs: random keys for the initialisation.
    """
    for name, value in (("n_in", n_in), ("n_out", n_out), ("d", d)):
      _shapes.check_positive_int(name, value)
    self.n_in, self.n_out, self.d, self.dtype = n_in, n_out, d, dtype
    self.weight = nnx.Param(symmetric_uniform(1.0 / math.sqrt(n_in))(
        rngs.params(), (d, n_in, n_out), param_dtype))

  def __call__(self, u: ArrayLike) -> jax.Array:
    """Applies the layer.

    Args:
      u: ``[B, n_in, d]`` input capsules.

    Returns:
      ``[B, n_out, d]`` class capsules of length < 1.
    """
    _shapes.check_shape("u", u, (None, self.n_in, self.d), "[B, n_in, d]")
    u, w = promote_dtype((jnp.asarray(u), self.weight[...]),
                                    dtype=self.dtype)
    return jax.vmap(_cap_fc, in_axes=(0, None))(u, w)


def _cap_fc(u: jax.Array, w: jax.Array) -> jax.Array:
  """One sample: ``u [n_in, d]``, ``w [d, n_in, n_out]`` -> ``[n_out, d]``."""
  return squash(jnp.einsum("ik,kij->jk", u, w))


class FeedbackAgreement(nnx.Module):
  """The feedback agreement unit of Sec. 3.2 (Fig. 3(b)); training only.

  Given higher maps ``v [B, H', W', C_hi]`` and the lower maps ``u [B, H, W,
  C_lo]`` they were computed from (``H = stride * H'``):

  * the generator ``g_psi`` (a "deconvolutional" capConv) maps ``v`` back to
    the lower shape: ``u' = squash(relu(BN(convT(v))))``, a 3 x 3 transposed
    convolution of stride ``stride`` grouped by capsule (``n_caps`` groups,
    squash per lower capsule); with ``n_caps=None`` it is the plain
    transposed convolution + BN + ReLU of the official ``OptTrans`` (the
    "standard CNN" generator of Table 3, and the one for vanilla CNNs);
  * the critic ``f_phi`` embeds ``u'`` and ``u`` alike: conv 3 x 3 stride 2
    ``C_lo -> C_lo / 4``, BN, ReLU, conv 3 x 3 stride 2 ``-> 1``, BN, ReLU,
    flattened to ``[B, ceil(H/4) * ceil(W/4)]`` (the official critic);
  * the loss is the Sinkhorn divergence (Eq. 11) between the embeddings of the
    generated and the real lower maps, the ``B`` samples of the mini-batch
    being the two point clouds with uniform weights:
    ``2 W(P_psi, P_r) - W(P_psi, P_psi) - W(P_r, P_r)`` with the cosine cost
    ``Q`` and ``n_iters`` Sinkhorn iterations (Eqs. 8-10).

  ``debiased=False`` keeps only ``W(P_psi, P_r)`` (ablation d1);
  ``detach_plan=False`` back-propagates through the Sinkhorn iterations
  (ablation d2; the paper's final model, like the default here, holds the plan
  ``P`` fixed and differentiates ``<Q, P>`` through ``Q`` only).

  The unit is a regulariser: models call it in training and skip it at
  inference (Sec. 3.2, "disposed of for inference").

  Attributes:
    higher_features, lower_features, stride, n_caps, epsilon, n_iters,
    debiased, detach_plan, cost: the constructor arguments.
  """

  def __init__(self, higher_features: int, lower_features: int, *,
               stride: int = 2, n_caps: int | None = None,
               critic_features: int | None = None, epsilon: float = 1.0,
               n_iters: int = 10, debiased: bool = True,
               detach_plan: bool = True, cost: str = "cosine",
               dtype: Any = None, param_dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    """Creates the unit.

    Args:
      higher_features: channels ``C_hi`` of the higher maps.
      lower_features: channels ``C_lo`` of the lower maps.
      stride: ``H / H'``, 1 or 2 (the transposed convolution's stride).
      n_caps: capsules per position of both maps (``C_hi`` and ``C_lo`` are
        multiples of it) for the capsule generator; ``None`` for the plain one.
      critic_features: channels of the critic's hidden layer; ``None`` means
        ``max(1, C_lo // 4)`` (official).
      epsilon: entropic regularisation of the Gibbs kernel ``exp(-Q / eps)``
        (official ``OptTrans`` default: 1).
      n_iters: Sinkhorn iterations ``L`` (official: 10).
      debiased: the bias fix of Eq. (11); False is ablation d1.
      detach_plan: hold the Sinkhorn plan fixed in the backward pass.
      cost: ground cost between critic embeddings (``"cosine"``, the paper's
        choice, or any cost :func:`capsjax.ot.sinkhorn_divergence` knows).
      dtype: compute dtype of the convolutions (the Sinkhorn divergence runs
        in float32 at least: its kernel ``exp(-Q / eps)`` underflows easily).
      param_dtype: parameter dtype.
      rngs: random keys for the initialisation.
    """
    for name, value in (("higher_features", higher_features),
                        ("lower_features", lower_features), ("stride", stride),
                        ("n_iters", n_iters)):
      _shapes.check_positive_int(name, value)
    if stride not in (1, 2):
      raise ValueError(f"stride must be 1 or 2, got {stride!r}.")
    if n_caps is not None:
      _shapes.check_positive_int("n_caps", n_caps)
      if higher_features % n_caps or lower_features % n_caps:
        raise ValueError(
            f"n_caps={n_caps} must divide higher_features={higher_features} "
            f"and lower_features={lower_features}.")
    if critic_features is None:
      critic_features = max(1, lower_features // 4)
    _shapes.check_positive_int("critic_features", critic_features)
    if not epsilon > 0:
      raise ValueError(f"epsilon must be positive, got {epsilon!r}.")
    self.higher_features, self.lower_features = higher_features, lower_features
    self.stride, self.n_caps, self.epsilon, self.n_iters = stride, n_caps, epsilon, n_iters
    self.debiased, self.detach_plan, self.cost = debiased, detach_plan, cost
    kw = {"rngs": rngs, "dtype": dtype, "param_dtype": param_dtype}
    self.generator = ConvTranspose(higher_features, lower_features, 3,
                                   stride=stride, groups=n_caps or 1, **kw)
    self.generator_bn = torch_batch_norm(lower_features, **kw)
    self.critic1 = conv(lower_features, critic_features, 3, stride=2, **kw)
    self.critic1_bn = torch_batch_norm(critic_features, **kw)
    self.critic2 = conv(critic_features, 1, 3, stride=2, **kw)
    self.critic2_bn = torch_batch_norm(1, **kw)

  def generate(self, v: ArrayLike) -> jax.Array:
    """``g_psi``: ``[B, H', W', C_hi]`` -> ``[B, stride H', stride W', C_lo]``."""
    _shapes.check_shape("v", v, (None, None, None, self.higher_features),
                        "[B, H', W', C_hi]")
    u = nnx.relu(self.generator_bn(self.generator(jnp.asarray(v))))
    if self.n_caps is not None:
      u = _flat(_squash_groups(u, self.n_caps))
    return u

  def critic(self, u: ArrayLike) -> jax.Array:
    """``f_phi``: ``[B, H, W, C_lo]`` -> ``[B, ceil(H/4) * ceil(W/4)]``."""
    _shapes.check_shape("u", u, (None, None, None, self.lower_features),
                        "[B, H, W, C_lo]")
    h = nnx.relu(self.critic1_bn(self.critic1(jnp.asarray(u))))
    h = nnx.relu(self.critic2_bn(self.critic2(h)))
    return h.reshape(h.shape[0], -1)

  def divergence(self, u_gen: ArrayLike, u: ArrayLike) -> jax.Array:
    """Eq. (11) between the critic embeddings of ``u_gen`` and ``u`` (both ``[B, H, W, C_lo]``)."""
    _shapes.check_shape("u", u, (None, None, None, self.lower_features),
                        "[B, H, W, C_lo]")
    _shapes.check_shape("u_gen", u_gen, jnp.shape(u), "[B, H, W, C_lo] (the shape of u)")
    f_gen, f_real = self.critic(u_gen), self.critic(u)
    dtype = jnp.promote_types(f_gen.dtype, jnp.float32)
    return sinkhorn_divergence(
        f_gen.astype(dtype), f_real.astype(dtype), epsilon=self.epsilon,
        n_iters=self.n_iters, debiased=self.debiased, cost=self.cost,
        stop_gradient_plan=self.detach_plan)

  def __call__(self, v: ArrayLike, u: ArrayLike) -> jax.Array:
    """The feedback loss of one unit.

    Args:
      v: ``[B, H', W', C_hi]`` higher maps (capsules flattened capsule-major).
      u: ``[B, stride H', stride W', C_lo]`` the lower maps.

    Returns:
      The scalar Sinkhorn divergence (float32 at least).
    """
    _shapes.check_ndim("v", v, 4, "[B, H', W', C_hi]")
    b, h, w = jnp.shape(v)[:3]
    _shapes.check_shape("u", u, (b, self.stride * h, self.stride * w,
                                 self.lower_features),
                        "[B, stride * H', stride * W', C_lo]")
    return self.divergence(self.generate(v), u)
