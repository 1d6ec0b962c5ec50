"""The train state: one pytree holding everything a run needs to continue.

An NNX model is split once into a static graph definition and array state
(``nnx.split(model, nnx.Param, ...)``); the arrays travel through ``jax.jit``,
optax and orbax as a :class:`TrainState`, and the model is rebuilt inside the
compiled step with ``nnx.merge``. The state is created the big_vision way:
its abstract shape comes from ``jax.eval_shape``, the shardings are derived
from it, and ``jax.jit(init, out_shardings=...)`` materialises it directly
in place on the mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from capsjax.train import mesh as mesh_lib

__all__ = [
  "ModelGraphs",
  "TrainState",
  "abstract_state",
  "all_finite",
  "create_train_state",
  "model_from_state",
  "split_model",
  "state_sharding",
]


class TrainState(NamedTuple):
  """Everything that changes during training, as one pytree.

  Attributes:
    step: ``int32[]``, the number of optimiser updates applied so far.
    params: the model's ``nnx.Param`` variables (an ``nnx.State``).
    model_state: every other model variable: BatchNorm statistics, the
      RNG streams of dropout layers, ... (an ``nnx.State``).
    opt_state: the optax state of ``tx`` over ``params``.
    rng: ``uint32[2]``, raw threefry key data of the run's base key; step
      ``s`` uses ``jax.random.fold_in(wrap_key_data(rng), s)``, so the RNG
      needs no state of its own (stored raw so any checkpointer can save it).
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  rng: jax.Array


class ModelGraphs(NamedTuple):
  """The static halves of a split model, one per mode.

  Attributes:
    train: graph definition with ``model.train()`` applied (dropout on,
      BatchNorm with batch statistics).
    eval: graph definition with ``model.eval()`` applied.
  """
  train: nnx.GraphDef
  eval: nnx.GraphDef


def split_model(model: nnx.Module) -> tuple[ModelGraphs, Any, Any]:
  """Splits ``model`` into its train/eval graph definitions and its arrays.

  The mode switches flip static attributes (``deterministic``,
  ``use_running_average``), so each mode has its own graph definition over
  the same arrays. ``model`` is left in training mode.

  Returns:
    ``(graphs, params, model_state)``; ``params`` are the ``nnx.Param``
    variables, ``model_state`` everything else.
  """
  model.eval()
  eval_graph = nnx.graphdef(model)
  model.train()
  train_graph, params, model_state = nnx.split(model, nnx.Param, ...)
  return ModelGraphs(train=train_graph, eval=eval_graph), params, model_state


def state_sharding(state: Any, mesh: Mesh) -> Any:
  """Shardings for ``state`` (concrete or abstract): all leaves replicated."""
  rep = mesh_lib.replicated(mesh)
  return jax.tree.map(lambda _: rep, state)


def abstract_state(state: Any) -> Any:
  """``jax.ShapeDtypeStruct`` leaves (with their shardings) for restoring."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      state)


def create_train_state(
    model: nnx.Module | Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    seed: int = 0,
) -> tuple[ModelGraphs, TrainState]:
  """Builds the replicated :class:`TrainState` for ``model`` and ``tx``.

  Args:
    model: an NNX module (its current parameters are the starting point and
      it is left in training mode), or a factory ``model(rngs) -> module``
      called with ``nnx.Rngs(seed)``; a factory is first traced with
      ``nnx.eval_shape`` and then run inside the jitted initialiser, so no
      unsharded copy of the parameters is ever made.
    tx: the optax optimiser.
    mesh: the training mesh; every leaf is replicated over it.
    seed: seeds the run's base RNG key (and the factory's ``nnx.Rngs``).

  Returns:
    ``(graphs, state)`` with ``state.step == 0``.
  """
  rng = jax.random.key_data(jax.random.key(seed))

  def assemble(params, model_state):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state=model_state, opt_state=tx.init(params),
                      rng=rng)

  if isinstance(model, nnx.Module):
    graphs, params, model_state = split_model(model)

    def init(params, model_state):
      # Copies, so that the state never aliases the module's buffers (jit
      # forwards unchanged inputs, and the train step donates the state).
      params, model_state = jax.tree.map(jnp.copy, (params, model_state))
      return assemble(params, model_state)

    args = (params, model_state)
  elif callable(model):
    factory = model
    graphs, _, _ = split_model(nnx.eval_shape(lambda: factory(nnx.Rngs(seed))))

    def init():
      _, params, model_state = nnx.split(factory(nnx.Rngs(seed)), nnx.Param, ...)
      return assemble(params, model_state)

    args = ()
  else:
    raise TypeError(f"model: got {type(model).__name__}, expected an "
                    "nnx.Module or a callable rngs -> nnx.Module")

  shapes = jax.eval_shape(init, *args)
  state = jax.jit(init, out_shardings=state_sharding(shapes, mesh))(*args)
  return graphs, state


def model_from_state(graphdef: nnx.GraphDef, state: TrainState) -> nnx.Module:
  """Rebuilds a module from a graph definition and a state's arrays.

  Use ``graphs.eval`` for evaluation code that needs the model itself (e.g.
  computing embeddings for retrieval); the arrays are copied, so the module
  can be used freely while training continues.
  """
  return nnx.merge(graphdef, state.params, state.model_state, copy=True)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def all_finite(state: TrainState) -> bool:
  """Whether every floating-point array of the state is free of NaN/Inf."""
  return bool(_all_finite((state.params, state.model_state, state.opt_state)))
