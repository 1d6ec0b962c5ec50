"""The smallNORB and SST capsule networks of Heinsen (2019).

Both models end in two :class:`~capsjax.nn.heinsen.HeinsenRoutingLayer`\\ s
and return the last layer's :class:`~capsjax.routing.HeinsenRouting`, whose
``a_out [b, n_classes]`` are the class logits (the paper's loss is the cross
entropy of ``softmax(a_out)``), ``mu_out``/``sig2_out`` the class capsules'
poses and variances, and ``R`` the last routing probabilities.

Constructors, one per configuration in the paper:

* :func:`smallnorb_model` (Fig. 3, Tab. 2): 271,688 parameters;
* :func:`sst_model` (Fig. 5) with ``n_classes=5`` (SST-5/R, Tab. 3,
  140,480 parameters for GPT-2-large embeddings, 37 layers x 1280) or
  ``n_classes=2`` (SST-2/R, Tab. 4, 138,944 parameters); :func:`sst5r_model`
  and :func:`sst2r_model` are shorthands.

References:
  F. A. Heinsen, "An Algorithm for Routing Capsules in All Domains", 2019,
  https://arxiv.org/abs/1911.00792 (Sec. 4-5, Figs. 3 and 5). Official code:
  https://github.com/glassroom/heinsen_routing (``models.py``, 2019-2020).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from capsjax import _shapes
from capsjax.nn.heinsen import HeinsenRoutingLayer
from capsjax.nn.heinsen_stem import SmallNORBStem
from capsjax.nn.torch_init import (kaiming_normal, torch_batch_norm, torch_bias_init,
                                   torch_kernel_init)
from capsjax.routing.heinsen import HeinsenRouting

__all__ = [
    "SSTClassifier",
    "SmallNORBClassifier",
    "add_coord_channels",
    "mask_logits",
    "smallnorb_model",
    "sst2r_model",
    "sst5r_model",
    "sst_model",
]


def add_coord_channels(images: ArrayLike) -> jax.Array:
  """Appends two coordinate channels in ``[-1, 1]`` (paper Fig. 3(b)).

  Args:
    images: ``[b, H, W, C]`` NHWC images.

  Returns:
    ``[b, H, W, C + 2]``: channel ``C`` goes from -1 (top row) to 1 (bottom
    row), channel ``C + 1`` from -1 (left column) to 1 (right column), the
    order of the official ``add_coord_grid``.
  """
  images = jnp.asarray(images)
  b, h, w, _ = _shapes.check_ndim("images", images, 4, "[b, H, W, C]")
  rows = jnp.linspace(-1.0, 1.0, h, dtype=images.dtype)
  cols = jnp.linspace(-1.0, 1.0, w, dtype=images.dtype)
  grid = jnp.stack(jnp.broadcast_arrays(rows[:, None], cols[None, :]), -1)
  return jnp.concatenate(
      [images, jnp.broadcast_to(grid, (b, h, w, 2))], axis=-1)


def mask_logits(mask: ArrayLike) -> jax.Array:
  """``log(x / (1 - x))`` of a token mask: ``+inf`` for 1, ``-inf`` for 0.

  Fractional values (tokens mixed with padding by mixup) give finite logits
  (paper Fig. 5(d)). A boolean mask becomes float32.
  """
  x = jnp.asarray(mask)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  return jnp.log(x) - jnp.log1p(-x)


class SmallNORBClassifier(nnx.Module):
  """Heinsen's smallNORB model (paper Fig. 3).

  ``images [b, H, W, 2]`` (the stereo pair as two channels) → two coordinate
  channels appended (:func:`add_coord_channels`) → :class:`SmallNORBStem`
  (six BN → 3x3 conv → Swish, 64 channels, ``96 → 9``) → ``a_inp`` by BN +
  1x1 conv (``n_parts`` channels) and ``mu_inp`` by BN + 1x1 conv
  (``n_parts * 16`` channels) → routing of a variable number of ``4x4``
  capsules (``n_parts * H' * W'``, 5184 at 96x96) to ``n_parts`` → routing
  to ``n_objs``.

  The coordinate channels are added here, so mixup can mix the 2-channel
  images (the coordinates would be unchanged by it anyway). Input capsules
  are ordered (part, row, column), part slowest, and the ``mu`` channels as
  (part, 4, 4), as in the official code (a PyTorch state dict ports with
  conv kernels transposed ``(2, 3, 1, 0)``). The 1x1 convolutions keep
  PyTorch's default initialisation, as the official code does.

  Attributes:
    stem: the :class:`SmallNORBStem`.
    norm_a, conv_a: BN and 1x1 conv computing ``a_inp``.
    norm_mu, conv_mu: BN and 1x1 conv computing ``mu_inp``.
    routing1, routing2: the two :class:`HeinsenRoutingLayer`\\ s.
  """

  def __init__(
      self,
      n_objs: int = 5,
      n_parts: int = 64,
      d_chns: int = 64,
      *,
      n_iters: int = 3,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Creates the model.

    Args:
      n_objs: number of classes (object capsules).
      n_parts: number of part capsule types (input capsules per location, and
        the outputs of the first routing).
      d_chns: channels of the convolutions.
      n_iters: routing iterations of both routing layers.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``None`` infers it.
      param_dtype: parameter dtype.
      rngs: random streams.
    """
    for name, value in (("n_objs", n_objs), ("n_parts", n_parts),
                        ("d_chns", d_chns)):
      _shapes.check_positive_int(name, value)
    self.n_objs, self.n_parts, self.d_chns = n_objs, n_parts, d_chns
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.stem = SmallNORBStem(4, d_chns, **kw)
    self.norm_a = torch_batch_norm(d_chns, **kw)
    self.conv_a = nnx.Conv(
        d_chns, n_parts, (1, 1), kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(d_chns), **kw)
    self.norm_mu = torch_batch_norm(d_chns, **kw)
    self.conv_mu = nnx.Conv(
        d_chns, n_parts * 16, (1, 1), kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(d_chns), **kw)
    self.routing1 = HeinsenRoutingLayer(4, 4, 4, n_inp=None, n_out=n_parts,
                                        n_iters=n_iters, **kw)
    self.routing2 = HeinsenRoutingLayer(4, 4, 4, n_inp=n_parts, n_out=n_objs,
                                        n_iters=n_iters, **kw)

  def input_capsules(self, images: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The input capsules of the first routing layer.

    Args:
      images: ``[b, H, W, 2]`` stereo pairs, ``H, W >= 29``.

    Returns:
      ``(a_inp [b, n], mu_inp [b, n, 4, 4])`` with ``n = n_parts * H' * W'``.
    """
    _shapes.check_ndim("images", images, 4, "[b, H, W, 2]")
    _shapes.check_shape("images", images, (None, None, None, 2),
                        "[b, H, W, 2] (the stereo pair as channels)")
    if min(jnp.shape(images)[1:3]) < self.stem.min_size():
      raise ValueError(
          f"images must be at least {self.stem.min_size()}x"
          f"{self.stem.min_size()} pixels (six unpadded 3x3 convolutions, "
          f"three with stride 2), got shape {tuple(jnp.shape(images))}.")
    x = self.stem(add_coord_channels(images))  # [b, h, w, d_chns]
    b, h, w, _ = x.shape
    a = self.conv_a(self.norm_a(x))  # [b, h, w, n_parts]
    a = a.transpose(0, 3, 1, 2).reshape(b, -1)  # (part, row, col)
    mu = self.conv_mu(self.norm_mu(x)).reshape(b, h, w, self.n_parts, 4, 4)
    mu = mu.transpose(0, 3, 1, 2, 4, 5).reshape(b, -1, 4, 4)
    return a, mu

  def __call__(self, images: ArrayLike) -> HeinsenRouting:
    """Classifies a batch of stereo pairs.

    Args:
      images: ``[b, H, W, 2]`` stereo pairs (NHWC), ``H, W >= 29``
        (``96 x 96`` in the paper; any size works).

    Returns:
      The second routing layer's :class:`~capsjax.routing.HeinsenRouting`:
      ``a_out [b, n_objs]`` class logits, ``mu_out``/``sig2_out
      [b, n_objs, 4, 4]``, ``R [b, n_parts, n_objs]``.
    """
    a, mu = self.input_capsules(images)
    parts = self.routing1(a, mu)
    return self.routing2(parts.a_out, parts.mu_out)


class SSTClassifier(nnx.Module):
  """Heinsen's SST model (paper Fig. 5).

  ``embs [b, n, l, m]`` frozen transformer embeddings (``n`` tokens, ``l``
  layers, size ``m``) + a depth-of-layer parameter ``[l, m]`` (zeros) →
  affine ``m → d_inp`` (Kaiming normal, zero bias) → Swish → LayerNorm →
  ``mu_inp [b, n * l, 1, d_inp]``; ``a_inp = logit(mask)`` repeated over the
  ``l`` layers (``+inf`` tokens, ``-inf`` padding) → routing of a variable
  number of ``1 x d_inp`` capsules to ``n_parts`` capsules ``1 x d_cap`` →
  routing to ``n_classes``. Capsules are ordered (token, layer), token
  slowest, as in the official code; padded tokens change nothing.

  Attributes:
    depth_emb: ``[n_layers, d_emb]`` depth-of-layer parameter.
    affine, norm: the affine map and LayerNorm of Fig. 5(c).
    routing1, routing2: the two :class:`HeinsenRoutingLayer`\\ s.
  """

  def __init__(
      self,
      n_classes: int = 5,
      n_layers: int = 37,
      d_emb: int = 1280,
      *,
      d_inp: int = 64,
      d_cap: int = 2,
      n_parts: int = 64,
      n_iters: int = 3,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      rngs: nnx.Rngs,
  ):
    """Creates the model.

    Args:
      n_classes: number of classes (5 for SST-5/R, 2 for SST-2/R).
      n_layers: transformer layers per token (37 for GPT-2-large).
      d_emb: embedding size (1280 for GPT-2-large).
      d_inp: features computed per embedding (input capsule ``1 x d_inp``).
      d_cap: columns of the part and class capsules (``1 x d_cap``).
      n_parts: number of part capsules.
      n_iters: routing iterations of both routing layers.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); ``None`` infers it.
      param_dtype: parameter dtype.
      rngs: random streams.
    """
    for name, value in (("n_classes", n_classes), ("n_layers", n_layers),
                        ("d_emb", d_emb), ("d_inp", d_inp), ("d_cap", d_cap),
                        ("n_parts", n_parts)):
      _shapes.check_positive_int(name, value)
    self.n_classes, self.n_layers, self.d_emb = n_classes, n_layers, d_emb
    self.d_inp = d_inp
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.depth_emb = nnx.Param(jnp.zeros((n_layers, d_emb), param_dtype))
    self.affine = nnx.Linear(d_emb, d_inp, kernel_init=kaiming_normal(),
                             bias_init=jax.nn.initializers.zeros, **kw)
    # PyTorch's LayerNorm constants (eps 1e-5, exact variance).
    self.norm = nnx.LayerNorm(d_inp, epsilon=1e-5, use_fast_variance=False,
                              **kw)
    self.routing1 = HeinsenRoutingLayer(1, d_inp, d_cap, n_inp=None,
                                        n_out=n_parts, n_iters=n_iters, **kw)
    self.routing2 = HeinsenRoutingLayer(1, d_cap, d_cap, n_inp=n_parts,
                                        n_out=n_classes, n_iters=n_iters, **kw)

  def input_capsules(self, embs: ArrayLike,
                     mask: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """The input capsules of the first routing layer.

    Args:
      embs: ``[b, n_tokens, n_layers, d_emb]`` embeddings.
      mask: ``[b, n_tokens]``: True/1 for tokens, False/0 for padding;
        fractional values (mixup) allowed.

    Returns:
      ``(a_inp [b, n_tokens * n_layers], mu_inp [b, n_tokens * n_layers, 1,
      d_inp])``.
    """
    b, n, _, _ = _shapes.check_ndim("embs", embs, 4,
                                    "[b, n_tokens, n_layers, d_emb]")
    _shapes.check_shape("embs", embs, (b, n, self.n_layers, self.d_emb),
                        "[b, n_tokens, n_layers, d_emb]")
    _shapes.check_shape("mask", mask, (b, n), "[b, n_tokens]")
    a = mask_logits(mask)  # [b, n]
    a = jnp.broadcast_to(a[:, :, None], (b, n, self.n_layers)).reshape(b, -1)
    x = jnp.asarray(embs) + self.depth_emb[...]
    mu = self.norm(jax.nn.silu(self.affine(x)))  # [b, n, l, d_inp]
    return a, mu.reshape(b, -1, 1, self.d_inp)

  def __call__(self, embs: ArrayLike, mask: ArrayLike) -> HeinsenRouting:
    """Classifies a batch of embedded sentences.

    Args:
      embs: ``[b, n_tokens, n_layers, d_emb]`` frozen transformer embeddings
        (padding may hold anything finite).
      mask: ``[b, n_tokens]``: True/1 for tokens, False/0 for padding;
        fractional values (mixup) allowed.

    Returns:
      The second routing layer's :class:`~capsjax.routing.HeinsenRouting`:
      ``a_out [b, n_classes]`` class logits, ``mu_out``/``sig2_out
      [b, n_classes, 1, d_cap]``, ``R [b, n_parts, n_classes]``.
    """
    a, mu = self.input_capsules(embs, mask)
    parts = self.routing1(a, mu)
    return self.routing2(parts.a_out, parts.mu_out)


def smallnorb_model(*, n_iters: int = 3, dtype: Any = None,
                    param_dtype: Any = jnp.float32,
                    rngs: nnx.Rngs) -> SmallNORBClassifier:
  """The smallNORB model of Tab. 2 (5 classes, 64 parts, 64 channels).

  271,688 parameters (the paper's "approximately 272,000").
  """
  return SmallNORBClassifier(5, 64, 64, n_iters=n_iters, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)


def sst_model(n_classes: int = 5, n_layers: int = 37, d_emb: int = 1280, *,
              n_iters: int = 3, dtype: Any = None,
              param_dtype: Any = jnp.float32,
              rngs: nnx.Rngs) -> SSTClassifier:
  """The SST model of Fig. 5 (defaults: SST-5/R on GPT-2-large embeddings).

  64 features per embedding, 64 part capsules ``1 x 2``; ``n_classes=5``
  (SST-5/R, 140,480 parameters) or ``2`` (SST-2/R, 138,944 parameters) for
  ``n_layers=37``, ``d_emb=1280``.
  """
  return SSTClassifier(n_classes, n_layers, d_emb, n_iters=n_iters,
                       dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def sst5r_model(**kwargs) -> SSTClassifier:
  """SST-5/R (Tab. 3): :func:`sst_model` with ``n_classes=5``."""
  return sst_model(5, **kwargs)


def sst2r_model(**kwargs) -> SSTClassifier:
  """SST-2/R (Tab. 4): :func:`sst_model` with ``n_classes=2``."""
  return sst_model(2, **kwargs)
