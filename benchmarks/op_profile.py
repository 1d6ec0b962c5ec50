r"""Where the Tsai conv routing step spends its time: one line per XLA operation.

Runs capsjax's conv routing step (:mod:`tsai_conv`'s shape and inputs) under
the JAX profiler and sums the trace's durations per XLA operation name
(fusions, matmuls, loops), over ``--calls`` calls. The trace holds the
executed thunks of XLA:CPU's runtime, so every name is an operation of the
optimised program; find it with ``--xla_dump_to`` (XLA_FLAGS) to see what it
computes. How the kernel in ``capsjax/routing/_inverted_attention_conv.py``
was tuned: e.g. a 64-term fusion that took 4x its stand-alone time here was
reading transposed operands strided.

  python benchmarks/op_profile.py                     # fwd+bwd, batch 32
  python benchmarks/op_profile.py --forward_only --top=15
  python benchmarks/op_profile.py --batch=8 --trace_dir=/tmp/trace

``ms/call`` sums every run of an operation within one call (a loop body's
fusion runs once per iteration); ``runs/call`` counts them. Loop operations
(``while.*``) include the time of the operations they run only where the
runtime reports them that way: compare fusions with fusions.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile

import harness
import jax
import jax.numpy as jnp
import tsai_conv
from absl import app, flags

# --batch is tsai_conv's flag (importing it defines it): the same shape.
_BATCH = tsai_conv._BATCH
_CALLS = flags.DEFINE_integer("calls", 3, "Profiled calls (after two warm-up calls).")
_TOP = flags.DEFINE_integer("top", 25, "Operations printed, slowest first.")
_FORWARD_ONLY = flags.DEFINE_bool("forward_only", False, "Profile the forward pass only.")
_TRACE_DIR = flags.DEFINE_string(
    "trace_dir", "", "Where the profiler writes its trace (default: a temporary folder).")

# Trace events that are not XLA operations of the program.
_NOT_OPS = ("ThunkExecutor", "$", "PjitFunction", "CommonPjRt", "PjRt")


def op_times(trace_file: str, calls: int) -> list[tuple[str, float, float]]:
  """``(name, ms per call, runs per call)`` per XLA operation, slowest first."""
  with gzip.open(trace_file) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  total_us: collections.Counter[str] = collections.Counter()
  runs: collections.Counter[str] = collections.Counter()
  for event in events:
    name = event.get("name", "")
    if event.get("ph") != "X" or name.startswith(_NOT_OPS):
      continue
    total_us[name] += event.get("dur", 0)
    runs[name] += 1
  return [(name, us / 1e3 / calls, runs[name] / calls)
          for name, us in total_us.most_common()]


def profile(fn, args, calls: int, trace_dir: str) -> str:
  """Runs ``fn(*args)`` ``calls`` times under the profiler; the trace file."""
  for _ in range(2):
    jax.block_until_ready(fn(*args))
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(calls):
      jax.block_until_ready(fn(*args))
  files = glob.glob(os.path.join(trace_dir, "**", "*.json.gz"), recursive=True)
  if not files:
    raise RuntimeError(f"the profiler wrote no perfetto trace under {trace_dir}.")
  return max(files, key=os.path.getmtime)


def main(argv):
  del argv
  args = tsai_conv.make_inputs(_BATCH.value)
  step = tsai_conv.capsjax_routing_step()
  stride = tsai_conv._STRIDE
  if _FORWARD_ONLY.value:
    fn, what = jax.jit(lambda x, w, xo: step(x, w, xo, stride)), "forward"
  else:
    loss = lambda x, w, xo: jnp.sum(jnp.square(step(x, w, xo, stride)))
    fn, what = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))), "forward+backward"
  trace_dir = _TRACE_DIR.value or tempfile.mkdtemp(prefix="op_profile_")
  rows = op_times(profile(fn, args, _CALLS.value, trace_dir), _CALLS.value)
  print(f"jax {jax.__version__} on {jax.default_backend()}; Tsai conv routing step, "
        f"{what}, batch {_BATCH.value}; trace in {trace_dir}")
  print(harness.format_table(
      ("operation", "ms/call", "runs/call"),
      [(name, ms, runs) for name, ms, runs in rows[:_TOP.value]]))


if __name__ == "__main__":
  app.run(main)
