"""Checkpoints of the train state *and* the input iterator, with orbax.

One ``ocp.CheckpointManager`` per run directory; each checkpoint is an
``ocp.args.Composite`` of ``state`` (the :class:`TrainState`, saved with
``StandardSave``) and, when the iterator can report its position, ``data``
(``grain.checkpoint.CheckpointSave``: one small JSON file per process). A
restart restores both, so the next batch is exactly the one the interrupted
run would have read next (maxtext's approach; the Flax examples replay data).

Saving is synchronous: the iterator's position must be taken at the same
step as the state, and the train step donates the state buffers right after.
A state holding NaN/Inf is never written, so the newest checkpoint is always
a good one. Every process must call :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore` at the same steps.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import grain.checkpoint  # registers CheckpointSave/Restore with orbax
import orbax.checkpoint as ocp
from absl import logging

from capsjax.train import state as state_lib
from capsjax.train.state import TrainState

__all__ = ["Checkpointer", "is_checkpointable_iterator"]


def is_checkpointable_iterator(iterator: Any) -> bool:
  """Whether ``iterator`` is a grain iterator whose position can be saved."""
  return isinstance(iterator, (grain.DatasetIterator, grain.DataLoaderIterator))


class Checkpointer:
  """Saves and restores ``(TrainState, input iterator)`` pairs.

  Args:
    directory: where the step folders go (created if missing).
    save_every: period in steps of :meth:`should_save`'s regular saves.
    max_to_keep: how many of the newest checkpoints to keep.
  """

  def __init__(self, directory: str | os.PathLike[str], *, save_every: int,
               max_to_keep: int = 3):
    if save_every <= 0:
      raise ValueError(f"save_every: got {save_every}, expected > 0")
    if max_to_keep <= 0:
      raise ValueError(f"max_to_keep: got {max_to_keep}, expected > 0")
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every = save_every
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    """The step of the newest checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The steps of all kept checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    """True on every ``save_every``-th step."""
    return step > 0 and step % self.save_every == 0

  def save(self, state: TrainState, data_iterator: Any = None, *,
           step: int | None = None) -> bool:
    """Writes a checkpoint of ``state`` (and the iterator) at its step.

    Args:
      state: the train state; checked for NaN/Inf first.
      data_iterator: a grain iterator positioned just after the batches
        ``state`` has consumed, or None.
      step: ``int(state.step)``, if the caller already knows it (saves a
        device round trip).

    Returns:
      True if written, False if a checkpoint of this step already exists.

    Raises:
      FloatingPointError: if the state is not finite; nothing is written.
    """
    step = int(state.step) if step is None else step
    if not state_lib.all_finite(state):
      raise FloatingPointError(
          f"refusing to checkpoint step {step}: the train state holds NaN or "
          f"Inf. The last good checkpoint (step {self.latest_step()}) in "
          f"{self.directory} is kept as it is.")
    if step in self._manager.all_steps():
      return False
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    saved = self._manager.save(step, args=ocp.args.Composite(**items),
                               force=True)
    self._manager.wait_until_finished()
    if saved:
      logging.info("saved checkpoint of step %d in %s", step, self.directory)
    return bool(saved)

  def restore(self, target: TrainState, data_iterator: Any = None, *,
              step: int | None = None) -> TrainState:
    """Reads a checkpoint (default: the newest) onto ``target``'s shardings.

    Args:
      target: a state (concrete or abstract, e.g.
        :func:`capsjax.train.abstract_state`) giving structure, shapes,
        dtypes and shardings.
      data_iterator: a grain iterator whose position is set in place to the
        saved one; None to leave the input where it is.
      step: which checkpoint; default the newest.

    Returns:
      The restored state.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    items = {"state": ocp.args.StandardRestore(state_lib.abstract_state(target))}
    if data_iterator is not None:
      if "data" not in self._manager.item_metadata(step).keys():
        raise ValueError(
            f"checkpoint of step {step} in {self.directory} has no input "
            "iterator state; pass data_iterator=None to restore the model only")
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    except ValueError as e:
      raise ValueError(
          f"checkpoint of step {step} in {self.directory} does not match the "
          "state being restored (another model, optimiser or config wrote "
          "it?); resume with the config that wrote it, or use a fresh "
          f"workdir. Orbax says: {str(e)[:2000]}") from e
    logging.info("restored checkpoint of step %d from %s", step, self.directory)
    return restored["state"]

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()
