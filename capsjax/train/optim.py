"""The papers' optimisation regimes as optax code, and mixup.

Each ``*_optimizer`` function returns ``(tx, learning_rate_schedule)``: the
``optax.GradientTransformation`` to train with and the step -> learning-rate
function the training loop logs. Schedules count optimiser updates (the
``count`` optax passes them, 0 for the first update); the epoch-based decays of
the papers are converted to steps with ``steps_per_epoch``.

| paper | function | regime |
|---|---|---|
| Heinsen 2019 | :func:`heinsen_optimizer` | RAdam, one-cycle on lr **and** beta1 |
| Tsai et al. 2020 | :func:`tsai_optimizer` | SGD + momentum + L2, x0.1 at 150/250 |
| Li et al. 2018 | :func:`li_optimizer` | Adam + L2, x0.1 at 200/300/400 |
| Duarte et al. 2021 | :func:`duarte_optimizer` | Adam, cosine decay |
| Swetha et al. 2023 | :func:`swetha_optimizer` | Adam, exponential decay per epoch |

Weight decay: the PyTorch code of Tsai et al. and Li et al. passes
``weight_decay`` to ``torch.optim.SGD`` / ``torch.optim.Adam``, which adds
``weight_decay * param`` to the gradient *before* momentum / the Adam moments
(coupled L2 regularisation, not AdamW's decoupled decay). We do the same with
``optax.add_decayed_weights`` placed first in the chain, on every parameter
(PyTorch applies it to all parameters, biases and norm scales included).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from capsjax import _shapes

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def _check_number(name: str, value: Any, *, low: float | None = None,
                  high: float | None = None, low_open: bool = False) -> None:
  """Raises ``ValueError`` unless ``value`` is a finite real in the range."""
  ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
        and math.isfinite(value))
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value <= high
  if not ok:
    lo = "" if low is None else (f" > {low}" if low_open else f" >= {low}")
    hi = "" if high is None else f" and <= {high}"
    raise ValueError(f"{name} must be a finite number{lo}{hi}, got {value!r}.")


def _check_epochs(name: str, epochs: Sequence[int]) -> None:
  for e in epochs:
    _shapes.check_positive_int(f"{name} entry", e)
  if list(epochs) != sorted(set(epochs)):
    raise ValueError(f"{name} must be strictly increasing, got {tuple(epochs)}.")


def _step_decay(init_value: float, steps_per_epoch: int,
                boundary_epochs: Sequence[int], factor: float) -> Schedule:
  """``init_value * factor**k`` from the first step of epoch ``boundary_epochs[k-1]``.

  PyTorch's ``MultiStepLR`` stepped once per epoch changes the rate after
  ``e`` completed epochs, i.e. at update ``e * steps_per_epoch``.
  """
  return optax.piecewise_constant_schedule(
      init_value, {e * steps_per_epoch: factor for e in boundary_epochs})


# --------------------------------------------------------------------------
# Heinsen (2019): RAdam with a one-cycle schedule on the rate and on beta1.
# --------------------------------------------------------------------------


def one_cycle_schedule(total_steps: int, start_value: float, peak_value: float,
                       *, warmup_frac: float = 0.1) -> Schedule:
  """Heinsen's single-cycle schedule: linear up, then back with a cosine shape.

  With ``s = clip(step, 0, total_steps)`` and ``t = warmup_frac * total_steps``
  (not rounded), the schedule is ``start + (peak - start) * f(s)`` with
  ``f(s) = s / t`` for ``s <= t`` and
  ``f(s) = (1 + cos(pi (s - t) / (total_steps - t))) / 2`` after, so it starts
  at ``start_value``, reaches ``peak_value`` at ``t`` and returns to
  ``start_value`` at ``total_steps``. ``peak_value`` may be below
  ``start_value`` (beta1 goes down while the rate goes up).

  Args:
    total_steps: number of optimiser updates of the whole run.
    start_value: value at steps 0 and ``total_steps``.
    peak_value: value at step ``warmup_frac * total_steps``.
    warmup_frac: fraction of the run spent going up, in (0, 1).

  Returns:
    ``schedule(step) -> value`` (float32 for a Python-int step).

  References:
    F. A. Heinsen. An Algorithm for Routing Capsules in All Domains. 2019,
    Sec. 4.2; the authors' ``SingleCycleScheduler`` (``frac=0.1``).
  """
  _shapes.check_positive_int("total_steps", total_steps)
  _check_number("start_value", start_value)
  _check_number("peak_value", peak_value)
  _check_number("warmup_frac", warmup_frac, low=0.0, high=1.0, low_open=True)
  if warmup_frac >= 1.0:
    raise ValueError(f"warmup_frac must be < 1, got {warmup_frac!r}.")
  turn = warmup_frac * total_steps

  def schedule(step):
    s = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(total_steps))
    up = s / turn
    down = 0.5 * (1.0 + jnp.cos(jnp.pi * (s - turn) / (total_steps - turn)))
    f = jnp.where(s <= turn, up, down)
    return start_value + (peak_value - start_value) * f

  return schedule


def heinsen_optimizer(
    total_steps: int,
    *,
    lr_start: float = 1e-5,
    lr_peak: float = 5e-4,
    b1_start: float = 0.999,
    b1_peak_factor: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    warmup_frac: float = 0.1,
) -> tuple[optax.GradientTransformation, Schedule]:
  """RAdam with the one-cycle learning-rate **and beta1** schedule of Heinsen.

  The rate goes ``lr_start -> lr_peak`` and beta1
  ``b1_start -> b1_peak_factor * b1_start`` linearly over the first
  ``warmup_frac`` of the updates, then both return to their start values with
  a cosine shape (:func:`one_cycle_schedule`). beta1 is scheduled through
  ``optax.inject_hyperparams(optax.radam)``, so the value used by the last
  update is in ``opt_state.hyperparams['b1']`` (and the rate in
  ``opt_state.hyperparams['learning_rate']``). RAdam's bias correction
  ``1 - b1**t`` uses the current beta1, as the authors' RAdam does.

  Args:
    total_steps: number of optimiser updates of the run (epochs x batches).
    lr_start: learning rate at the start and end (paper: 1e-5).
    lr_peak: learning rate at the turn (paper: 5e-4).
    b1_start: beta1 at the start and end (paper: 0.999).
    b1_peak_factor: beta1 at the turn is this times ``b1_start`` (paper: 0.9).
    b2: RAdam's beta2 (authors' code: PyTorch default 0.999).
    eps: RAdam's epsilon (authors' code: 1e-8).
    warmup_frac: fraction of updates spent going up (paper: 10 %).

  Returns:
    ``(tx, learning_rate_schedule)``.

  References:
    F. A. Heinsen. An Algorithm for Routing Capsules in All Domains. 2019,
    Sec. 4.2 (smallNORB) and Sec. 5.2 (SST: the same regime, 3 epochs).
    L. Liu et al. On the Variance of the Adaptive Learning Rate and Beyond.
    ICLR 2020 (RAdam).
  """
  _check_number("lr_start", lr_start, low=0.0)
  _check_number("lr_peak", lr_peak, low=0.0)
  _check_number("b1_start", b1_start, low=0.0)
  _check_number("b1_peak_factor", b1_peak_factor, low=0.0)
  if b1_start >= 1.0 or b1_start * b1_peak_factor >= 1.0:
    raise ValueError(
        f"beta1 must stay below 1: b1_start={b1_start!r}, "
        f"b1_peak_factor={b1_peak_factor!r}.")
  _check_number("b2", b2, low=0.0)
  if b2 >= 1.0:
    raise ValueError(f"b2 must be < 1, got {b2!r}.")
  _check_number("eps", eps, low=0.0, low_open=True)
  lr = one_cycle_schedule(total_steps, lr_start, lr_peak,
                          warmup_frac=warmup_frac)
  b1 = one_cycle_schedule(total_steps, b1_start, b1_peak_factor * b1_start,
                          warmup_frac=warmup_frac)
  # float32 hyper-parameters whatever the parameters' dtype: 0.999 would
  # round to 1.0 in bfloat16.
  tx = optax.inject_hyperparams(optax.radam, hyperparam_dtype=jnp.float32)(
      learning_rate=lr, b1=b1, b2=b2, eps=eps)
  return tx, lr


# --------------------------------------------------------------------------
# Tsai et al. (2020), Li et al. (2018): step decay.
# --------------------------------------------------------------------------


def tsai_optimizer(
    steps_per_epoch: int,
    *,
    learning_rate: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    boundary_epochs: Sequence[int] = (150, 250),
    decay_factor: float = 0.1,
) -> tuple[optax.GradientTransformation, Schedule]:
  """SGD with momentum and coupled weight decay, x0.1 at epochs 150 and 250.

  Matches ``torch.optim.SGD(lr, momentum, weight_decay)`` (dampening 0, no
  Nesterov) with ``MultiStepLR``: ``d = g + weight_decay * p``,
  ``buf = momentum * buf + d`` (``buf = d`` at the first step),
  ``p -= lr * buf``. The weight decay is added to the gradient, before the
  momentum, as PyTorch does (see the module docstring).

  Args:
    steps_per_epoch: optimiser updates per epoch (dataset size / batch).
    learning_rate: initial rate (paper: 0.1; its Adam baselines differ).
    momentum: SGD momentum (authors' code: 0.9).
    weight_decay: L2 coefficient added to the gradient (authors' code: 5e-4).
    boundary_epochs: epochs after which the rate is multiplied by
      ``decay_factor`` (paper: 150 and 250 of 350).
    decay_factor: the multiplier (paper: "decrease by 10 times").

  Returns:
    ``(tx, learning_rate_schedule)``.

  References:
    Y.-H. H. Tsai, N. Srivastava, H. Goh, R. Salakhutdinov. Capsules with
    Inverted Dot-Product Attention Routing. ICLR 2020, App. A.1 and B.1.
  """
  _shapes.check_positive_int("steps_per_epoch", steps_per_epoch)
  _check_number("learning_rate", learning_rate, low=0.0)
  _check_number("momentum", momentum, low=0.0)
  _check_number("weight_decay", weight_decay, low=0.0)
  _check_number("decay_factor", decay_factor, low=0.0)
  _check_epochs("boundary_epochs", boundary_epochs)
  lr = _step_decay(learning_rate, steps_per_epoch, boundary_epochs,
                   decay_factor)
  tx = optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(lr, momentum=momentum if momentum > 0 else None),
  )
  return tx, lr


def li_optimizer(
    steps_per_epoch: int,
    *,
    learning_rate: float = 1e-4,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 5e-4,
    boundary_epochs: Sequence[int] = (200, 300, 400),
    decay_factor: float = 0.1,
) -> tuple[optax.GradientTransformation, Schedule]:
  """EncapNet's Adam with coupled weight decay, x0.1 at epochs 200/300/400.

  ``torch.optim.Adam(weight_decay=...)`` adds ``weight_decay * p`` to the
  gradient before the moments (L2, not AdamW); so does this chain.

  Args:
    steps_per_epoch: optimiser updates per epoch.
    learning_rate: initial rate (paper: 1e-4).
    b1: Adam beta1 (paper: "momentum 0.9").
    b2: Adam beta2 (PyTorch default 0.999).
    eps: Adam epsilon (PyTorch default 1e-8).
    weight_decay: L2 coefficient added to the gradient (paper: 5e-4).
    boundary_epochs: epochs after which the rate is multiplied by
      ``decay_factor`` (paper: 200, 300, 400 of 600).
    decay_factor: the multiplier (paper: "reduced by 90 %").

  Returns:
    ``(tx, learning_rate_schedule)``.

  References:
    H. Li, X. Guo, B. Dai, W. Ouyang, X. Wang. Neural Network Encapsulation.
    ECCV 2018, Sec. 5 ("Implementation Details").
  """
  _shapes.check_positive_int("steps_per_epoch", steps_per_epoch)
  _check_number("learning_rate", learning_rate, low=0.0)
  _check_number("weight_decay", weight_decay, low=0.0)
  _check_number("decay_factor", decay_factor, low=0.0)
  _check_epochs("boundary_epochs", boundary_epochs)
  lr = _step_decay(learning_rate, steps_per_epoch, boundary_epochs,
                   decay_factor)
  tx = optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.adam(lr, b1=b1, b2=b2, eps=eps),
  )
  return tx, lr


# --------------------------------------------------------------------------
# Duarte et al. (2021), Swetha et al. (2023): smooth decays.
# --------------------------------------------------------------------------


def duarte_optimizer(
    total_steps: int,
    *,
    learning_rate: float = 1e-3,
    final_fraction: float = 0.0,
) -> tuple[optax.GradientTransformation, Schedule]:
  """Adam with a cosine decay of the rate over the whole run.

  ``lr(s) = learning_rate * ((1 - a) (1 + cos(pi s / total_steps)) / 2 + a)``
  with ``a = final_fraction``, constant after ``total_steps``; the decay is
  per update (the paper names "a cosine learning rate scheduler" without
  restarts or warm-up, which we therefore leave out).

  Args:
    total_steps: number of optimiser updates of the run (paper: 20 epochs).
    learning_rate: initial rate (paper: 1e-3).
    final_fraction: the rate at the end as a fraction of the initial one.

  Returns:
    ``(tx, learning_rate_schedule)``.

  References:
    K. Duarte et al. Routing with Self-Attention for Multimodal Capsule
    Networks. 2021, Sec. 4.1 ("Implementation Details").
  """
  _shapes.check_positive_int("total_steps", total_steps)
  _check_number("learning_rate", learning_rate, low=0.0)
  _check_number("final_fraction", final_fraction, low=0.0, high=1.0)
  lr = optax.cosine_decay_schedule(learning_rate, total_steps,
                                   alpha=final_fraction)
  return optax.adam(lr), lr


def swetha_optimizer(
    steps_per_epoch: int,
    *,
    learning_rate: float = 5e-5,
    decay_rate: float = 0.9,
) -> tuple[optax.GradientTransformation, Schedule]:
  """Adam with the rate multiplied by ``decay_rate`` after every epoch.

  ``lr(s) = learning_rate * decay_rate ** floor(s / steps_per_epoch)``.
  The Multi-SK supplement does not state the optimiser; the method is trained
  on top of the Everything-At-Once (EAO) code, whose pre-training config uses
  ``Adam(lr=5e-5)`` with ``ExponentialLR(gamma=0.9)`` stepped once per epoch
  (15 epochs). We take those values: ``decay_rate = 0.9`` per epoch, a
  staircase (the rate is constant within an epoch, as with a per-epoch
  ``ExponentialLR``).

  Args:
    steps_per_epoch: optimiser updates per epoch.
    learning_rate: initial rate (EAO: 5e-5).
    decay_rate: per-epoch multiplier (EAO: 0.9).

  Returns:
    ``(tx, learning_rate_schedule)``.

  References:
    Swetha et al. Preserving Modality Structure Improves Multi-Modal
    Learning. ICCV 2023 (supplement); N. Shvetsova et al. Everything at
    Once. CVPR 2022 (``configs/pretraining/everything_at_once_tva.yaml``).
  """
  _shapes.check_positive_int("steps_per_epoch", steps_per_epoch)
  _check_number("learning_rate", learning_rate, low=0.0)
  _check_number("decay_rate", decay_rate, low=0.0, high=1.0, low_open=True)
  lr = optax.exponential_decay(learning_rate, steps_per_epoch, decay_rate,
                               staircase=True)
  return optax.adam(lr), lr


# --------------------------------------------------------------------------
# mixup
# --------------------------------------------------------------------------


def mixup(
    rng: jax.Array,
    x: Any,
    y_onehot: jax.typing.ArrayLike,
    alpha: float,
    *,
    per_example: bool = True,
) -> tuple[Any, jax.Array]:
  """mixup: convex combinations of the batch with a shuffled copy of itself.

  With ``lam ~ Beta(alpha, alpha)`` and a random permutation ``perm`` of the
  batch, every leaf ``v`` of ``x`` becomes
  ``(1 - lam) * v + lam * v[perm]`` and so does ``y_onehot``; ``lam`` has one
  value per example (``per_example=True``, the default, as Heinsen's code
  draws it: ``Beta.sample([batch])`` with ``x.lerp(x[perm], lam)``) or one
  for the whole batch (``per_example=False``, as in Zhang et al.).

  ``x`` may be a pytree: for Heinsen's SST model pass ``(mask, embeddings)``
  so the token mask mixes with the same ``lam`` and ``perm``. Mix the mask in
  ``[0, 1]`` and take its logit afterwards (in the model): mixing the +-inf
  logits themselves would give ``inf - inf = NaN``.

  Args:
    rng: a ``jax.random`` key.
    x: an array or pytree of floating arrays, each with leading batch axis
      ``[B, ...]``.
    y_onehot: ``[B, n_classes]`` target probabilities (one-hot or multi-hot).
    alpha: the Beta distribution's parameter, > 0 (Heinsen: 0.2).
    per_example: one ``lam`` per example (True) or per batch (False).

  Returns:
    ``(x_mixed, y_mixed)``: ``x``'s structure with mixed leaves, and
    ``[B, n_classes]`` mixed targets, in the input dtypes.

  Raises:
    ValueError: for a non-positive ``alpha``, a non-floating leaf, or leaves
      whose batch sizes differ from ``y_onehot``'s.

  References:
    H. Zhang, M. Cisse, Y. N. Dauphin, D. Lopez-Paz. mixup: Beyond Empirical
    Risk Minimization. ICLR 2018. F. A. Heinsen 2019, Sec. 4.2 and Fig. 5 (d).
  """
  _check_number("alpha", alpha, low=0.0, low_open=True)
  batch, _ = _shapes.check_ndim("y_onehot", y_onehot, 2, "[B, n_classes]")
  leaves = jax.tree.leaves(x)
  if not leaves:
    raise ValueError("x must contain at least one array.")
  for leaf in leaves + [y_onehot]:
    shape = jnp.shape(leaf)
    if not shape or shape[0] != batch:
      raise ValueError(
          f"every leaf of x must have leading batch axis B = {batch} "
          f"(y_onehot's), got shape {shape}.")
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise ValueError(
          f"mixup needs floating inputs, got dtype {jnp.result_type(leaf)} "
          f"(cast masks to float before mixing).")
  k_lam, k_perm = jax.random.split(rng)
  lam = jax.random.beta(k_lam, alpha, alpha,
                        (batch,) if per_example else (1,), jnp.float32)
  lam = jnp.broadcast_to(lam, (batch,))
  perm = jax.random.permutation(k_perm, batch)

  def mix(v):
    v = jnp.asarray(v)
    w = lam.astype(v.dtype).reshape((batch,) + (1,) * (v.ndim - 1))
    return v + w * (v[perm] - v)

  return jax.tree.map(mix, x), mix(y_onehot)
