r"""Benchmark every paper model's full train step at the paper's input shapes.

For each paper model constructor, a whole optimiser step -- the paper's loss,
its gradient and the paper's optax update, built by
``capsjax.train.make_train_step`` (one ``jax.jit``, the state donated) -- is
compiled ahead of time and timed, and so is the model's inference forward
(eval mode). One Markdown table row per model, with the columns of
``benchmarks/kernels.py``: compile time, inference and train-step time per
batch, the peak memory of the compiled train step (XLA memory analysis),
XLA's FLOP and byte counts for the step and the floor they imply on this
machine (FLOPs at the measured matmul rate, bytes at the measured copy rate,
whichever is slower).

  python benchmarks/models.py                      # every row (17 min on 2 heavily loaded cores)
  python benchmarks/models.py --only='tsai|li'     # rows whose name matches a regex
  python benchmarks/models.py --batch_scale=1      # the papers' own batch sizes

The papers' batches (Heinsen 20, Tsai 128, Li 128, Duarte 4096, Swetha 224)
are multiplied by ``--batch_scale`` (default 1/16, so that every row fits a
few seconds on a 2-core CPU; at least one sample). Times on a busy machine
swing 2x between runs: compare ratios within one table.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import harness
from capsjax import losses
from capsjax import train as T
from capsjax.models import duarte2021, heinsen2019, li2018, swetha2023, tsai2020
from capsjax.train import optim

# Schedules need a run length; any value gives the same step cost.
_STEPS_PER_EPOCH = 1000


@dataclasses.dataclass(frozen=True)
class ModelCase:
  """One benchmark row: a paper model, its loss, optimiser and input shapes.

  Attributes:
    name: row name (``--only`` matches it).
    shape: the per-sample input, in words.
    batch: the paper's batch size.
    make_model: ``make_model(rngs) -> nnx.Module``.
    make_batch: ``make_batch(rng, b) -> host batch`` (a pytree of NumPy
      arrays with leading axis ``b``) for ``loss_fn``.
    loss_fn: the training loss, ``capsjax.train``'s contract
      ``loss_fn(model, batch, rng) -> (loss, aux)``.
    make_tx: ``make_tx() -> optax.GradientTransformation``, the paper's.
    forward: ``forward(model, batch)``: the inference call (eval mode).
  """
  name: str
  shape: str
  batch: int
  make_model: Callable[[nnx.Rngs], nnx.Module]
  make_batch: Callable[[np.random.Generator, int], Any]
  loss_fn: T.LossFn
  make_tx: Callable[[], optax.GradientTransformation]
  forward: Callable[[nnx.Module, Any], Any]


# ----------------------------------------------------------------------------
# Inputs and losses (the ones experiments/<paper>/main.py trains with).
# ----------------------------------------------------------------------------


def _images(size: int, channels: int, n_classes: int):
  def make(rng, b):
    return (rng.standard_normal((b, size, size, channels)).astype(np.float32),
            rng.integers(0, n_classes, b).astype(np.int32))
  return make


def _cross_entropy_loss(logits_of):
  """Softmax cross-entropy on ``logits_of(model(images))`` (Tsai Sec. 4.2)."""
  def loss_fn(model, batch, rng):
    del rng
    images, labels = batch
    logits = logits_of(model(images))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), {}
  return loss_fn


def _heinsen_loss(model, batch, rng):
  # Heinsen Sec. 4.2: mixup with Beta(0.2, 0.2), cross-entropy on softmax(a_out).
  images, labels = batch
  images, targets = optim.mixup(rng, images, jax.nn.one_hot(labels, model.n_objs), 0.2)
  return optax.softmax_cross_entropy(model(images).a_out, targets).mean(), {}


def _li_loss(model, batch, rng):
  # Li Sec. 3.2: margin loss + lambda (10) * the feedback units' divergences.
  del rng
  images, labels = batch
  out = model(images)
  targets = jax.nn.one_hot(labels, out.logits.shape[-1])
  margin = jnp.mean(jax.vmap(losses.margin_loss)(out.logits, targets))
  return margin + 10.0 * out.aux_loss, {}


def _duarte_inputs(dims: dict[str, int]):
  def make(rng, b):
    return {m: rng.standard_normal((b, n)).astype(np.float32) for m, n in dims.items()}
  return make


def _duarte_loss(model, batch, rng):
  del rng  # Eq. (5) with delta = 0.001 (Sec. 4.1)
  return duarte2021.duarte2021_loss(model(batch), margin=0.001), {}


# Everything-At-Once token counts (assumed, not in the Swetha supplement):
# EAO's configs cap text at 20 words; a 10 s HowTo100M clip gives 10 video
# features at 1 per second and 15 DAVEnet-v2 audio tokens at 1.5 per second.
_SWETHA_TOKENS = {"text": (20, 300), "video": (10, 4096), "audio": (15, 4096)}
_SWETHA_QUEUE = 5500  # the authors' SSPC queue length


class _QueueVar(nnx.Variable):
  """The SSPC queue: model state that is neither a parameter nor trained."""


class _SwethaWithQueue(nnx.Module):
  """The Swetha model plus its SSPC queue, so the queue lives in the state."""

  def __init__(self, rngs: nnx.Rngs):
    self.model = swetha2023.swetha2023_tva(rngs=rngs)
    queue = swetha2023.init_sspc_queue(self.model.embed_dim, self.model.projection_dim,
                                       queue_len=_SWETHA_QUEUE)
    # A full queue, so the SSPC term is active: the steady-state step.
    self.queue = _QueueVar(queue._replace(count=jnp.asarray(_SWETHA_QUEUE, jnp.int32)))

  def __call__(self, b):
    return self.model(b["text"], b["text_mask"], b["video"], b["video_mask"],
                      b["audio"], b["audio_mask"])


def _swetha_inputs(rng, b):
  out = {}
  for m, (n, d) in _SWETHA_TOKENS.items():
    out[m] = rng.standard_normal((b, n, d)).astype(np.float32)
    out[m + "_mask"] = np.arange(n)[None, :] < rng.integers(1, n + 1, (b, 1))
  return out


def _swetha_loss(model, batch, rng):
  del rng  # supplement Table 5: lambda_nce = lambda_sspc = 1
  out = swetha2023.swetha2023_loss(model(batch), model.queue.get_value())
  model.queue.set_value(out.queue)
  return out.loss, {}


def paper_cases() -> list[ModelCase]:
  """Every paper model constructor at its paper input shape and batch."""
  tsai_tx = lambda: optim.tsai_optimizer(_STEPS_PER_EPOCH)[0]
  li_tx = lambda: optim.li_optimizer(_STEPS_PER_EPOCH)[0]
  duarte_dims = dict(duarte2021.DEFAULT_INPUT_DIMS)
  return [
      # Heinsen (2019) Fig. 3: 96x96 stereo pairs, batch 20, RAdam one-cycle.
      ModelCase("heinsen2019_smallnorb", "96x96x2", 20,
                lambda rngs: heinsen2019.smallnorb_model(rngs=rngs),
                _images(96, 2, 5), _heinsen_loss,
                lambda: optim.heinsen_optimizer(50 * _STEPS_PER_EPOCH)[0],
                lambda m, b: m(b[0]).a_out),
      # Tsai et al. (2020) Table 1: CIFAR-10 32x32, batch 128, SGD, 2 iterations.
      ModelCase("tsai2020_cifar10_resnet", "32x32x3", 128,
                lambda rngs: tsai2020.cifar10_resnet(rngs=rngs),
                _images(32, 3, 10), _cross_entropy_loss(lambda o: o.logits), tsai_tx,
                lambda m, b: m(b[0]).logits),
      ModelCase("tsai2020_cifar10_simple", "32x32x3", 128,
                lambda rngs: tsai2020.cifar10_simple(rngs=rngs),
                _images(32, 3, 10), _cross_entropy_loss(lambda o: o.logits), tsai_tx,
                lambda m, b: m(b[0]).logits),
      # Li et al. (2018) Sec. 5: EncapNet-18 with feedback, CIFAR-10, batch 128, Adam.
      ModelCase("li2018_encapnet18", "32x32x3", 128,
                lambda rngs: li2018.encapnet18(rngs=rngs),
                _images(32, 3, 10), _li_loss, li_tx, lambda m, b: m(b[0]).logits),
      # Duarte et al. (2021) Sec. 4.1: C=128, d1=32, d2=256, D=4096, batch 4096, Adam.
      ModelCase("duarte2021", "video 4096 + audio 1024 + text 300", 4096,
                lambda rngs: duarte2021.duarte2021(rngs=rngs),
                _duarte_inputs(duarte_dims), _duarte_loss,
                lambda: optim.duarte_optimizer(20 * _STEPS_PER_EPOCH)[0],
                lambda m, b: {k: v.embedding for k, v in m(b).items()}),
      # Swetha et al. (2023): EAO + Multi-SK, batch 224 (EAO), Adam, queue 5500.
      ModelCase("swetha2023_tva", "tokens t20x300, v10x4096, a15x4096", 224,
                _SwethaWithQueue, _swetha_inputs, _swetha_loss,
                lambda: optim.swetha_optimizer(_STEPS_PER_EPOCH)[0],
                lambda m, b: m(b).video),
  ]


# ----------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepMeasure:
  """What :func:`measure_model` found for one model (times in seconds)."""
  params: int
  batch: int
  train: harness.Compiled        # the compiled train step
  train_s: float | None          # None when not timed
  infer: harness.Compiled | None  # None when inference was skipped
  infer_s: float | None


def scaled_batch(batch: int, scale: float) -> int:
  return max(1, int(round(batch * scale)))


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def measure_model(make_model: Callable[[nnx.Rngs], nnx.Module], host_batch: Any,
                  loss_fn: T.LossFn, tx: optax.GradientTransformation, *,
                  forward: Callable[[nnx.Module, Any], Any] | None = None,
                  time_train: bool = True, time_inference: bool = True,
                  min_time: float = 1.0) -> StepMeasure:
  """Compiles (and times) a model's train step and inference forward.

  Args:
    make_model: ``make_model(rngs)``, the model factory.
    host_batch: a pytree of NumPy arrays, leading axis the batch.
    loss_fn: ``capsjax.train``'s loss contract.
    tx: the optimiser.
    forward: ``forward(model, batch)`` in eval mode; None skips inference.
    time_train, time_inference: run and time the compiled train step /
      forward (False: compile only, for its memory and FLOP counts).
    min_time: repeat each timed call until this many seconds have passed.

  Returns:
    A :class:`StepMeasure`.
  """
  mesh = T.make_mesh(jax.devices()[:1])
  graphs, state = T.create_train_state(make_model, tx, mesh, seed=0)
  batch = T.global_batch(host_batch, mesh)
  b = jax.tree.leaves(host_batch)[0].shape[0]
  n_params = count_params(state.params)

  infer = infer_s = None
  if forward is not None:
    def infer_fn(params, model_state, batch):
      model = nnx.merge(graphs.eval, params, model_state, copy=True)
      return forward(model, batch)
    infer = harness.compile_fn(infer_fn, state.params, state.model_state, batch)
    if time_inference:
      infer_s = harness.time_compiled(infer.fn, state.params, state.model_state, batch,
                                      min_time=min_time)

  step = harness.compile_jitted(T.make_train_step(graphs.train, loss_fn, tx, mesh),
                                state, batch)
  step_s = None
  if time_train:
    step_s, state = harness.time_state_step(step.fn, state, batch, min_time=min_time)
  return StepMeasure(n_params, b, step, step_s, infer, infer_s)


def run_case(case: ModelCase, batch_scale: float, min_time: float,
             copy_gbps: float) -> list[Any]:
  """One table row (see ``HEADER``) for ``case``."""
  b = scaled_batch(case.batch, batch_scale)
  host_batch = case.make_batch(np.random.default_rng(0), b)
  m = measure_model(case.make_model, host_batch, case.loss_fn, case.make_tx(),
                    forward=case.forward, min_time=min_time)
  step = m.train
  gflops = step.flops / 1e9
  achieved = gflops / m.train_s
  mm = harness.matmul_gflops(harness.matmul_size_for(step.flops))
  floor_s = max(gflops / mm, step.bytes_accessed / 1e9 / copy_gbps)
  return [case.name, case.shape, f"{b} (paper {case.batch})", f"{m.params / 1e6:.2f}M",
          m.infer.compile_s + step.compile_s, m.infer_s * 1e3, m.train_s * 1e3,
          harness.mib(step.peak_bytes), gflops, achieved, mm,
          f"{100 * achieved / mm:.0f}%", step.bytes_accessed / 1e9, floor_s * 1e3,
          m.train_s / floor_s]


HEADER = ["model", "input", "batch", "params", "compile s", "inference ms",
          "train step ms", "peak MiB", "GFLOP", "GFLOP/s", "matmul GFLOP/s",
          "of matmul", "GB moved", "floor ms", "x floor"]


def main(only: str, batch_scale: float, min_time: float) -> None:
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{jax.device_count()} device(s); batch_scale {batch_scale}")
  copy = harness.copy_gbps()
  print(f"memory copy: {copy:.1f} GB/s")
  rows = []
  for case in paper_cases():
    if only and not re.search(only, case.name):
      continue
    rows.append(run_case(case, batch_scale, min_time, copy))
    print(f"  done {case.name}", flush=True)
  print(harness.format_table(HEADER, rows))
  print("train step: loss + gradient + optax update, one jit, state donated; "
        "inference: the eval-mode forward. peak MiB: the compiled train step "
        "(arguments + outputs + temporaries - donated); GFLOP, GB moved: XLA's "
        "counts for it. floor: max(GFLOP / matmul rate, GB moved / copy rate); "
        "XLA's GB moved overstates traffic (cache hits counted), so x floor < 1 "
        "marks a loose byte floor.")


if __name__ == "__main__":
  # Flags are defined only when run as a script, so that resources.py and
  # the tests can import this module next to other flag-defining modules.
  _ONLY = flags.DEFINE_string("only", "", "Run only the rows whose name matches this regex.")
  _BATCH_SCALE = flags.DEFINE_float(
      "batch_scale", 1 / 16, "Multiply every paper batch size by this (>= 1 sample).")
  _MIN_TIME = flags.DEFINE_float(
      "min_time", 1.0, "Repeat each timed call until this many seconds have passed.")
  app.run(lambda argv: main(_ONLY.value, _BATCH_SCALE.value, _MIN_TIME.value))
