"""Compiled train and eval steps built from (graph definition, loss, optimiser).

The loss contract (what an experiment writes)::

    def loss_fn(model: nnx.Module, batch, rng: jax.Array
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
      ...
      return loss, {"accuracy": acc}

* ``model`` is the NNX module rebuilt from the train state, in training mode.
  Calling it may update non-parameter variables (BatchNorm statistics,
  dropout RNG counts); those updates are kept in the new state.
* ``batch`` is the global batch: the host batch's pytree with every leaf a
  ``jax.Array`` sharded over the mesh's ``data`` axis.
* ``rng`` is this step's typed key, ``fold_in(base_key, step)``: use it (split
  as needed) for anything random in the loss (mixup, noise). Dropout layers
  draw from their own ``nnx.Rngs`` streams, which live in ``model_state``.
* ``loss`` is a scalar (the mean over the global batch); the aux dict holds
  scalars only, reported as per-step metrics next to ``loss``.

An eval ``metric_fn(model, batch) -> dict[str, jax.Array]`` returns per-batch
*sums* (e.g. ``{"correct": ..., "count": ...}``); :func:`make_evaluator`
adds them over the eval set and divides every key by ``count``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from capsjax.train import mesh as mesh_lib
from capsjax.train.state import TrainState

__all__ = [
  "LossFn",
  "MetricFn",
  "make_eval_step",
  "make_evaluator",
  "make_train_step",
]

LossFn = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
MetricFn = Callable[[nnx.Module, Any], Mapping[str, jax.Array]]
_RESERVED = ("loss", "learning_rate", "grad_norm")


def _learning_rate(opt_state: Any) -> jax.Array | None:
  """The ``learning_rate`` of an ``optax.inject_hyperparams`` state, if any."""
  found = []

  def visit(node):
    hyper = getattr(node, "hyperparams", None)
    if isinstance(hyper, Mapping) and "learning_rate" in hyper:
      found.append(hyper["learning_rate"])
    elif isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, Mapping):
      for child in node.values():
        visit(child)

  visit(opt_state)
  return found[0] if len(found) == 1 else None


def make_train_step(
    graphdef: nnx.GraphDef,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
  """Returns ``train_step(state, batch) -> (new_state, metrics)``, jitted.

  The step is one ``jax.jit`` with explicit shardings (state replicated,
  batch split over ``data``, metrics replicated) and the state donated:
  after the call, the ``state`` passed in must not be used again.

  Args:
    graphdef: the model's training-mode graph definition (``graphs.train``
      of :func:`capsjax.train.create_train_state`).
    loss_fn: see the module docstring.
    tx: the optimiser the state was created with.
    mesh: the training mesh.
    learning_rate_fn: ``schedule(step)`` giving the learning rate reported
      for the update from ``step``; if None, it is read from an
      ``optax.inject_hyperparams`` state inside the optimiser state, and
      left out of the metrics when there is none.

  Returns:
    The compiled step. ``metrics`` holds ``loss``, ``grad_norm`` (global
    gradient norm), ``learning_rate`` (see above) and the loss's aux scalars,
    all ``float32[]`` device arrays.
  """

  def train_step(state: TrainState, batch: Any):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def compute_loss(params):
      # copy=True: merging without it ties the traced params to the module
      # and BatchNorm's in-place statistics update fails (flax 0.12).
      model = nnx.merge(graphdef, params, state.model_state, copy=True)
      loss, aux = loss_fn(model, batch, rng)
      _, _, model_state = nnx.split(model, nnx.Param, ...)
      return loss, (aux, model_state)

    (loss, (aux, model_state)), grads = jax.value_and_grad(
        compute_loss, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    clash = sorted(set(aux) & set(_RESERVED))
    if clash:
      raise ValueError(f"loss_fn: its aux metrics use reserved names {clash}")
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    if learning_rate_fn is not None:
      metrics["learning_rate"] = learning_rate_fn(state.step)
    elif (lr := _learning_rate(opt_state)) is not None:
      metrics["learning_rate"] = lr
    metrics.update(aux)
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    bad = [k for k, v in metrics.items() if v.shape != ()]
    if bad:
      raise ValueError(f"loss_fn: metrics must be scalars, got shapes "
                       f"{ {k: metrics[k].shape for k in bad} }")
    new_state = TrainState(step=state.step + 1, params=params,
                           model_state=model_state, opt_state=opt_state,
                           rng=state.rng)
    return new_state, metrics

  rep = mesh_lib.replicated(mesh)
  return jax.jit(train_step, in_shardings=(rep, mesh_lib.data_sharding(mesh)),
                 out_shardings=(rep, rep), donate_argnums=0)


def make_eval_step(
    graphdef: nnx.GraphDef,
    metric_fn: MetricFn,
    mesh: Mesh,
) -> Callable[[TrainState, Any], dict[str, jax.Array]]:
  """Returns ``eval_step(state, batch) -> metric sums``, jitted.

  Args:
    graphdef: the model's eval-mode graph definition (``graphs.eval``).
    metric_fn: ``metric_fn(model, batch) -> {name: sum over the batch}``.
    mesh: the training mesh.

  Returns:
    The compiled step; the state is only read (not donated), and the
    model's variables are not updated.
  """

  def eval_step(state: TrainState, batch: Any):
    model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
    return {k: jnp.asarray(v) for k, v in metric_fn(model, batch).items()}

  rep = mesh_lib.replicated(mesh)
  return jax.jit(eval_step, in_shardings=(rep, mesh_lib.data_sharding(mesh)),
                 out_shardings=rep)


def make_evaluator(
    graphdef: nnx.GraphDef,
    metric_fn: MetricFn,
    batches: Callable[[], Iterable[Any]],
    mesh: Mesh,
) -> Callable[[TrainState], dict[str, float]]:
  """Builds an ``eval_fn(state) -> {name: value}`` for :func:`train`.

  Args:
    graphdef: the eval-mode graph definition (``graphs.eval``).
    metric_fn: returns per-batch sums including ``count``, the number of real
      (unpadded) examples in the batch.
    batches: returns a fresh iterable of host batches over the eval set each
      time it is called (every process its own slice, as for training).
    mesh: the training mesh.

  Returns:
    ``eval_fn``: sums ``metric_fn`` over all batches and returns each sum
    divided by the total ``count`` (and ``count`` itself), as Python floats.
  """
  eval_step = make_eval_step(graphdef, metric_fn, mesh)

  def eval_fn(state: TrainState) -> dict[str, float]:
    totals = None
    for host_batch in batches():
      out = eval_step(state, mesh_lib.global_batch(host_batch, mesh))
      totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    if totals is None:
      raise ValueError("batches: the eval set yielded no batch")
    if "count" not in totals:
      raise ValueError("metric_fn: must return a 'count' of examples, got "
                       f"keys {sorted(totals)}")
    totals = {k: float(np.asarray(v, np.float64)) for k, v in
              jax.device_get(totals).items()}
    count = totals.pop("count")
    if count <= 0:
      raise ValueError(f"metric_fn: total count is {count}, expected > 0")
    return {**{k: v / count for k, v in totals.items()}, "count": count}

  return eval_fn
