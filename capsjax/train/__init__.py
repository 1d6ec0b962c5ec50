"""capsjax.train: the generic, paper-agnostic training floor.

A data-parallel mesh over all devices of all hosts (:mod:`.mesh`), the train
state pytree (:mod:`.state`), compiled train/eval steps (:mod:`.step`), orbax
checkpoints of state and input position (:mod:`.checkpoint`), metric files
and progress (:mod:`.metrics`) and the loop that ties them together
(:mod:`.loop`). See ARCHITECTURE.md, "training".
"""

from capsjax.train.checkpoint import Checkpointer, is_checkpointable_iterator
from capsjax.train.loop import LoopConfig, TrainResult, train
from capsjax.train.mesh import (
    DATA_AXIS,
    data_sharding,
    global_batch,
    make_mesh,
    maybe_initialize_distributed,
    process_batch_size,
    replicated,
)
from capsjax.train.metrics import EventFileWriter, MetricWriter, Progress, read_metrics
from capsjax.train.state import (
    ModelGraphs,
    TrainState,
    abstract_state,
    all_finite,
    create_train_state,
    model_from_state,
    split_model,
    state_sharding,
)
from capsjax.train.step import (
    LossFn,
    MetricFn,
    make_eval_step,
    make_evaluator,
    make_train_step,
)

__all__ = [
    "DATA_AXIS",
    "Checkpointer",
    "EventFileWriter",
    "LoopConfig",
    "LossFn",
    "MetricFn",
    "MetricWriter",
    "ModelGraphs",
    "Progress",
    "TrainResult",
    "TrainState",
    "abstract_state",
    "all_finite",
    "create_train_state",
    "data_sharding",
    "global_batch",
    "is_checkpointable_iterator",
    "make_eval_step",
    "make_evaluator",
    "make_mesh",
    "make_train_step",
    "maybe_initialize_distributed",
    "model_from_state",
    "process_batch_size",
    "read_metrics",
    "replicated",
    "split_model",
    "state_sharding",
    "train",
]
