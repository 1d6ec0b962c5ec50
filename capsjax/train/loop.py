"""The training loop shared by every experiment.

:func:`train` resumes from the newest checkpoint in ``workdir`` (state and
input position), runs the compiled train step, evaluates periodically,
checkpoints every N steps, at the end and on SIGTERM/SIGINT, writes
``metrics.jsonl`` and TensorBoard events, shows a progress bar, and stops with
a :class:`FloatingPointError` at the first non-finite loss without touching
the last good checkpoint. It knows nothing about any paper: the experiment
supplies the model, the loss, the optimiser, the input iterator and the
evaluation.

Call :func:`capsjax.train.maybe_initialize_distributed` first on multi-host
runs (before anything touches a device).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from capsjax.train import checkpoint as checkpoint_lib
from capsjax.train import mesh as mesh_lib
from capsjax.train import metrics as metrics_lib
from capsjax.train import state as state_lib
from capsjax.train import step as step_lib
from capsjax.train.state import TrainState

__all__ = ["LoopConfig", "TrainResult", "train"]

EvalFn = Callable[[TrainState], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The loop's own settings (any other config fields are ignored).

  Attributes:
    num_steps: optimiser steps of the whole run (resumed runs count from 0).
    seed: seeds the run's base RNG key.
    log_every: steps between metric fetches, progress updates and NaN checks
      (every step's metrics are written, fetched in groups).
    eval_every: steps between evaluations; 0 evaluates only at the end.
    checkpoint_every: steps between regular checkpoints.
    keep_checkpoints: how many of the newest checkpoints to keep.
    progress: show a progress bar (process 0 only).
  """
  num_steps: int
  seed: int = 0
  log_every: int = 50
  eval_every: int = 0
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  progress: bool = True

  @classmethod
  def from_config(cls, config: Any) -> LoopConfig:
    """Reads the fields from a ``ConfigDict``, dataclass, mapping or object."""
    if isinstance(config, cls):
      return config
    values = {}
    for f in dataclasses.fields(cls):
      if isinstance(config, Mapping):
        present, value = f.name in config, config.get(f.name)
      else:
        present = hasattr(config, f.name)
        value = getattr(config, f.name, None)
      if not present:
        if f.default is dataclasses.MISSING:
          raise ValueError(f"config: missing field {f.name!r} (the number of "
                           "optimiser steps to run); add it to the config")
        continue
      if f.type == "bool":
        if not isinstance(value, (bool, np.bool_)):
          raise ValueError(f"config.{f.name}: got {value!r}, expected a bool")
        values[f.name] = bool(value)
        continue
      if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"config.{f.name}: got {value!r}, expected an int")
      values[f.name] = int(value)
    out = cls(**values)
    for name in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
      if getattr(out, name) <= 0:
        raise ValueError(f"config.{name}: got {getattr(out, name)}, expected > 0")
    if out.eval_every < 0:
      raise ValueError(f"config.eval_every: got {out.eval_every}, expected >= 0")
    return out


class TrainResult(NamedTuple):
  """What :func:`train` returns.

  Attributes:
    state: the final train state (replicated on the mesh).
    step: the step reached.
    train_metrics: the last step's train metrics (None if no step ran).
    eval_metrics: the last evaluation's metrics (None if none ran).
    preempted: True if a signal stopped the run early (after a checkpoint);
      rerun the same command to continue.
    seconds: wall time of this call.
  """
  state: TrainState
  step: int
  train_metrics: dict[str, float] | None
  eval_metrics: dict[str, float] | None
  preempted: bool
  seconds: float


class _StopSignals:
  """Turns SIGTERM/SIGINT into a stop request checked between steps.

  On one process a handler records the signal (a second SIGINT interrupts at
  once). On several, JAX's preemption service owns SIGTERM and agrees on a
  step at which every process stops, so no handler is installed.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}
    self._multi = jax.process_count() > 1

  def __enter__(self) -> _StopSignals:
    if not self._multi and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum

  def requested(self, step: int) -> bool:
    if self.signum is not None:
      return True
    if self._multi:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # preemption service disabled
        return False
    return False

  def __exit__(self, *exc: object) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _fmt(values: Mapping[str, float]) -> str:
  return " ".join(f"{k}={v:.4g}" for k, v in values.items())


def train(
    config: Any,
    model: nnx.Module | Callable[[nnx.Rngs], nnx.Module],
    loss_fn: step_lib.LossFn,
    tx: optax.GradientTransformation,
    train_iter: Iterator[Any],
    eval_fn: EvalFn | None,
    workdir: str,
    *,
    mesh: Mesh | None = None,
    learning_rate_fn: Callable[[Any], Any] | None = None,
) -> TrainResult:
  """Trains ``model`` until ``config.num_steps``, resuming if possible.

  Args:
    config: anything :meth:`LoopConfig.from_config` reads (e.g. the
      experiment's ``ConfigDict`` or its ``train`` sub-config).
    model: an NNX module (updated in place with the final parameters and
      statistics at the end) or a factory ``rngs -> module``.
    loss_fn: ``loss_fn(model, batch, rng) -> (loss, aux_metrics)``, see
      :mod:`capsjax.train.step`.
    tx: the optax optimiser.
    train_iter: an endless iterator of host batches (this process's slice of
      each global batch). A grain ``DatasetIterator``/``DataLoaderIterator``
      is checkpointed with the state, so a resumed run sees exactly the
      batches an uninterrupted one would; any other iterator is not (a
      warning says so).
    eval_fn: ``eval_fn(state) -> {name: value}`` (e.g. from
      :func:`capsjax.train.make_evaluator`), run every ``eval_every`` steps
      and at the end on every process; or None.
    workdir: holds ``checkpoints/``, ``metrics.jsonl`` and the TensorBoard
      event files; a second call with the same workdir resumes.
    mesh: the device mesh (default :func:`capsjax.train.make_mesh`).
    learning_rate_fn: passed to :func:`capsjax.train.make_train_step`.

  Returns:
    A :class:`TrainResult`.

  Raises:
    FloatingPointError: at the first non-finite loss (or state); the newest
      checkpoint is the last good one.
    ValueError: on a bad config field or an exhausted ``train_iter``.
  """
  start = time.perf_counter()
  cfg = LoopConfig.from_config(config)
  mesh = mesh_lib.make_mesh() if mesh is None else mesh
  if not hasattr(train_iter, "__next__"):
    train_iter = iter(train_iter)
  data_iter = (train_iter if checkpoint_lib.is_checkpointable_iterator(train_iter)
               else None)
  if data_iter is None:
    logging.warning("train_iter (%s) is not a grain iterator: its position is "
                    "not checkpointed, so a resumed run reads other batches",
                    type(train_iter).__name__)

  graphs, state = state_lib.create_train_state(model, tx, mesh, seed=cfg.seed)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                     save_every=cfg.checkpoint_every,
                                     max_to_keep=cfg.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state, data_iter)
  step = int(state.step)
  first_step = step
  train_step = step_lib.make_train_step(graphs.train, loss_fn, tx, mesh,
                                        learning_rate_fn=learning_rate_fn)
  writer = metrics_lib.MetricWriter(workdir)
  writer.truncate_after(step)
  progress = metrics_lib.Progress(cfg.num_steps, step,
                                  enabled=cfg.progress and jax.process_index() == 0)

  def say(line: str) -> None:
    logging.info(line)
    progress.write(line)

  if step:
    say(f"resumed from the checkpoint of step {step} in {workdir}")

  last_train: dict[str, float] | None = None
  last_eval: dict[str, float] | None = None
  pending: list[tuple[int, Any]] = []
  batch_size = 0
  preempted = False
  t_mark, step_mark = time.perf_counter(), step

  def flush() -> None:
    nonlocal last_train
    for s, m in jax.device_get(pending):
      values = {k: float(v) for k, v in m.items()}
      writer.write(s, "train", values)
      last_train = values
      if not math.isfinite(values["loss"]):
        writer.flush()
        raise FloatingPointError(
            f"non-finite loss ({values['loss']}) at step {s} (metrics: "
            f"{_fmt(values)}). The run stopped without saving; the last good "
            f"checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is "
            "intact. Look for NaN/Inf in the inputs, lower the learning rate "
            "or clip gradients, or rerun with JAX_DEBUG_NANS=True to find "
            "the operation that produced it.")
    pending.clear()

  def evaluate(record: bool = True) -> None:
    nonlocal last_eval
    last_eval = {k: float(v) for k, v in eval_fn(state).items()}
    if record:
      writer.write(step, "eval", last_eval)
    say(f"step {step}: eval {_fmt(last_eval)}")

  try:
    with _StopSignals() as stop:
      while step < cfg.num_steps:
        try:
          host_batch = next(train_iter)
        except StopIteration:
          flush()
          ckpt.save(state, data_iter, step=step)
          raise ValueError(
              f"train_iter: ran out of batches after step {step} of "
              f"{cfg.num_steps} (state saved); make it endless, e.g. "
              "`.repeat()` the dataset") from None
        batch = mesh_lib.global_batch(host_batch, mesh)
        batch_size = batch_size or jax.tree.leaves(batch)[0].shape[0]
        state, metrics = train_step(state, batch)
        step += 1
        pending.append((step, metrics))

        stopping = stop.requested(step)
        final = step == cfg.num_steps
        do_eval = eval_fn is not None and (
            final or (cfg.eval_every and step % cfg.eval_every == 0))
        do_save = final or stopping or ckpt.should_save(step)
        if not (do_eval or do_save or stopping or step % cfg.log_every == 0):
          continue
        flush()
        now = time.perf_counter()
        rate = (step - step_mark) * batch_size / max(now - t_mark, 1e-9)
        writer.write(step, "perf", {"examples_per_sec": rate,
                                    "steps_per_sec": rate / batch_size})
        progress.update(step, last_train["loss"], rate)
        if stopping:  # save first: the grace period may be short
          ckpt.save(state, data_iter, step=step)
          if do_eval:
            evaluate()
          preempted = not final
          name = signal.Signals(stop.signum or signal.SIGTERM).name
          say(f"stopped by {name} at step {step}; checkpoint saved, rerun to "
              "resume")
          break
        if do_eval:  # before saving, so a kill here replays the evaluation
          evaluate()
        if do_save:
          ckpt.save(state, data_iter, step=step)
        writer.flush()
        t_mark, step_mark = time.perf_counter(), step
      if step == first_step and eval_fn is not None:
        evaluate(record=False)  # a finished run restarted: report it again
  finally:
    progress.close()
    writer.close()
    ckpt.close()

  if isinstance(model, nnx.Module):
    nnx.update(model, state.params, state.model_state)
  seconds = time.perf_counter() - start
  trained = step - first_step
  summary = (f"capsjax.train: step {step}/{cfg.num_steps}"
             f"{' (preempted)' if preempted else ''}, {trained} steps in "
             f"{seconds:.1f} s")
  if last_train is not None:
    summary += f"; train loss {last_train['loss']:.4g}"
  if last_eval is not None:
    summary += f"; eval {_fmt(last_eval)}"
  logging.info(summary)
  if jax.process_index() == 0:
    print(summary, flush=True)
  return TrainResult(state=state, step=step, train_metrics=last_train,
                     eval_metrics=last_eval, preempted=preempted,
                     seconds=seconds)
