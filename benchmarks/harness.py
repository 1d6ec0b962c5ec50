"""Measurement helpers shared by the benchmark scripts in this folder.

Everything here measures compiled XLA programs ahead of time, so compile time
is separated from run time:

* ``compile_fn`` lowers and compiles a jitted function and reports the compile
  time, XLA's FLOP and byte counts and its memory analysis;
* ``time_compiled`` runs a compiled program until ``min_time`` has passed (and
  at least ``min_reps`` times) after one warm-up call and returns the median;
* ``matmul_gflops`` / ``copy_gbps`` measure this machine's attainable matmul
  and memory-copy rates in the same run, the floors the kernels compare with.

Absolute times on a shared machine swing with load; compare ratios taken in
one run, never figures from different runs.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Compiled:
  """A compiled program and what XLA says about it."""
  fn: Any                 # jax.stages.Compiled
  compile_s: float        # lower + compile, seconds
  flops: float            # XLA cost analysis (0 when unknown)
  bytes_accessed: float   # XLA cost analysis (0 when unknown)
  peak_bytes: int         # arguments + outputs + temporaries - aliased


def _cost(compiled) -> dict[str, float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returns one dict per device
    cost = cost[0] if cost else {}
  return cost or {}


def peak_bytes(compiled) -> int:
  """Peak memory of a compiled program from XLA's memory analysis."""
  mem = compiled.memory_analysis()
  if mem is None:
    return 0
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes
             + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def compile_fn(fn: Callable, *args, **jit_kwargs) -> Compiled:
  """Lowers and compiles ``jax.jit(fn, **jit_kwargs)`` for ``args``."""
  start = time.perf_counter()
  compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
  compile_s = time.perf_counter() - start
  cost = _cost(compiled)
  return Compiled(compiled, compile_s, float(cost.get("flops", 0.0)),
                  float(cost.get("bytes accessed", 0.0)), peak_bytes(compiled))


def time_compiled(compiled_fn, *args, min_time: float = 0.5, min_reps: int = 1,
                  max_reps: int = 20) -> float:
  """Median wall time in seconds of ``compiled_fn(*args)`` after a warm-up.

  Repeats until ``min_time`` seconds have passed (at least ``min_reps``
  times), so a multi-second step is timed once after its warm-up.
  """
  jax.block_until_ready(compiled_fn(*args))
  times: list[float] = []
  while len(times) < max_reps and (len(times) < min_reps or sum(times) < min_time):
    start = time.perf_counter()
    jax.block_until_ready(compiled_fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


_MATMUL_CACHE: dict[int, float] = {}


def matmul_gflops(n: int) -> float:
  """Measured float32 GFLOP/s of an ``[n, n] @ [n, n]`` matmul."""
  if n not in _MATMUL_CACHE:
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), np.float32))
    c = compile_fn(jnp.matmul, a, b)
    _MATMUL_CACHE[n] = 2.0 * n**3 / time_compiled(c.fn, a, b) / 1e9
  return _MATMUL_CACHE[n]


def matmul_size_for(flops: float, lo: int = 128, hi: int = 2048) -> int:
  """The square matmul size whose FLOP count is closest to ``flops``."""
  n = int(round((max(flops, 1.0) / 2.0) ** (1.0 / 3.0)))
  n = int(np.clip(n, lo, hi))
  return max(lo, (n // 64) * 64)


def copy_gbps(n_bytes: int = 256 * 2**20) -> float:
  """Measured GB/s of an elementwise copy (read + write) of ``n_bytes``."""
  x = jnp.ones((n_bytes // 4,), jnp.float32)
  c = compile_fn(lambda v: v + 1.0, x)
  return 2.0 * n_bytes / time_compiled(c.fn, x) / 1e9


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A Markdown table with right-aligned numeric columns."""
  cells = [[str(h) for h in header]] + [[_fmt(v) for v in r] for r in rows]
  widths = [max(len(r[k]) for r in cells) for k in range(len(header))]
  lines = []
  for k, r in enumerate(cells):
    lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")
    if k == 0:
      lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  return "\n".join(lines)


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    if v == 0:
      return "0"
    if abs(v) >= 100:
      return f"{v:.0f}"
    if abs(v) >= 1:
      return f"{v:.2f}"
    return f"{v:.3g}"
  return str(v)


def mib(n_bytes: float) -> float:
  return n_bytes / 2**20


def compile_jitted(jitted_fn, *args) -> Compiled:
  """As :func:`compile_fn` for a function already wrapped in ``jax.jit``.

  Keeps the shardings and ``donate_argnums`` the caller jitted it with (a
  train step from ``capsjax.train.make_train_step``, say).
  """
  start = time.perf_counter()
  compiled = jitted_fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  cost = _cost(compiled)
  return Compiled(compiled, compile_s, float(cost.get("flops", 0.0)),
                  float(cost.get("bytes accessed", 0.0)), peak_bytes(compiled))


def time_state_step(compiled_step, state, *args, min_time: float = 0.5,
                    min_reps: int = 1, max_reps: int = 20) -> tuple[float, Any]:
  """Median wall time of ``state = compiled_step(state, *args)[0]``.

  For steps that donate their state: each call consumes the state the
  previous one returned, so nothing donated is used twice. One warm-up call,
  then as :func:`time_compiled`.

  Returns:
    ``(median seconds, the last state)``.
  """
  state = compiled_step(state, *args)[0]
  jax.block_until_ready(state)
  times: list[float] = []
  while len(times) < max_reps and (len(times) < min_reps or sum(times) < min_time):
    start = time.perf_counter()
    state = compiled_step(state, *args)[0]
    jax.block_until_ready(state)
    times.append(time.perf_counter() - start)
  return statistics.median(times), state
