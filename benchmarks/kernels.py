r"""Benchmark every routing kernel at the shapes the papers use.

For each kernel, vmapped over the paper's batch and jitted, prints one Markdown
table row: compile time, forward and forward+backward time per batch, the
peak memory of the compiled forward+backward step (XLA memory analysis), the
FLOPs XLA counts for that step, the GFLOP/s achieved, and the GFLOP/s of a
float32 matmul of similar FLOP count measured in the same run.

  python benchmarks/kernels.py                   # every row, ~3-5 min on 2 cores
  python benchmarks/kernels.py --only=heinsen    # rows whose name matches a regex
  python benchmarks/kernels.py --batch_scale=0.25
  python benchmarks/kernels.py --scaling            # cost as input capsules double
  python benchmarks/kernels.py --iters              # memory as n_iters grows, remat off / on

Each row also shows the step's floor on this machine: XLA's FLOP count at the
matmul rate and XLA's byte count at the memory-copy rate, both measured in the
same run, whichever is slower; "x floor" is the measured time over it. XLA's
byte count adds up every operand access of every fused op, including ones
served from cache, so it overstates memory traffic: a row below 1x means that
byte floor is loose, not that the kernel beats the hardware.

Times on a busy machine swing 2x between runs: compare the ratios within one
table, not absolute figures across tables.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

import harness
from capsjax import losses, ot, routing

_ONLY = flags.DEFINE_string("only", "", "Run only the rows (with --scaling: the families) whose name matches this regex.")
_BATCH_SCALE = flags.DEFINE_float(
    "batch_scale", 1.0, "Multiply every paper batch size by this (>= 1 sample).")
_SCALING = flags.DEFINE_bool(
    "scaling", False, "Print the scaling table (and plot it to --plot) instead.")
_ITERS = flags.DEFINE_bool(
    "iters", False, "Print the iterations table (fwd+bwd memory and time as n_iters "
    "grows, with and without remat) instead.")
_PLOT = flags.DEFINE_string(
    "plot", "benchmarks/scaling.png", "Where --scaling writes its plot (needs matplotlib).")
_MIN_TIME = flags.DEFINE_float(
    "min_time", 1.0, "Repeat each timed call until this many seconds have passed.")


@dataclasses.dataclass(frozen=True)
class Case:
  """One benchmark row: a per-sample kernel and its paper-shaped inputs.

  ``make_args(rng)`` returns the per-sample arguments; those whose index is in
  ``batched`` get a leading batch axis of size ``batch`` and are vmapped over
  (a ``batch`` of 0 means the kernel already works on a whole set, no vmap).
  The forward+backward step differentiates the sum of squares of every
  floating output with respect to the arguments in ``diff``.
  """
  name: str
  shape: str
  batch: int
  fn: Callable[..., Any]
  make_args: Callable[[np.random.Generator], Sequence[np.ndarray]]
  batched: tuple[int, ...] = ()
  diff: tuple[int, ...] = ()


def _normal(rng, *shape, scale=1.0):
  return (scale * rng.standard_normal(shape)).astype(np.float32)


def _heinsen_case(name, n_inp, n_out, var_inp, batch, algorithm="auto", n_iters=3,
                  remat=False):
  d_cov = d_inp = d_out = 4
  n_w = 1 if var_inp else n_inp

  def make(rng):
    return (_normal(rng, n_inp), _normal(rng, n_inp, d_cov, d_inp),
            _normal(rng, n_w, n_out, d_inp, d_out, scale=1 / d_inp),
            _normal(rng, n_w, n_out, d_cov, d_out, scale=0.1),
            _normal(rng, n_w, n_out, scale=0.1), _normal(rng, n_w, n_out, scale=0.1))

  # What the next layer reads (R, the routing probabilities, is diagnostic).
  return Case(name, f"{n_inp} -> {n_out} caps 4x4, {algorithm}", batch,
              lambda a, mu, w, b, bu, bi: routing.heinsen_routing(
                  a, mu, w, b, bu, bi, n_iters=n_iters, algorithm=algorithm,
                  remat=remat)[:3],
              make, batched=(0, 1), diff=(1, 2, 3, 4, 5))


def _tsai_conv_case(name, hw, hw_out, stride, batch):
  n_caps, s, k = 32, 4, 3

  def make(rng):
    return (_normal(rng, hw, hw, n_caps, s * s),
            _normal(rng, k, k, n_caps, n_caps, s, s, scale=(n_caps / (s * n_caps * k * k))**0.5),
            _normal(rng, hw_out, hw_out, n_caps, s * s))

  return Case(name, f"{hw}x{hw}x{n_caps} -> {hw_out}x{hw_out}x{n_caps}, k3 s{stride}, 4x4",
              batch,
              lambda x, w, xo: routing.inverted_attention_conv(
                  x, w, xo, stride=stride, matrix_pose=True),
              make, batched=(0, 2), diff=(0, 1, 2))


def _tsai_fc_case(batch, n_inp=800):
  n_out, s = 10, 4

  def make(rng):
    return (_normal(rng, n_inp, s * s),
            _normal(rng, n_inp, n_out, s, s, scale=(n_out / (s * n_inp))**0.5),
            _normal(rng, n_out, s * s))

  return Case("tsai_cifar10_class_fc", f"{n_inp} -> {n_out} caps 4x4", batch,
              lambda x, w, xo: routing.inverted_attention_fc(x, w, xo, matrix_pose=True),
              make, batched=(0, 2), diff=(0, 1, 2))


def _self_attention_case(n_caps, d1, d2, batch, n_heads=8, hidden=1024, chunk_size=None):
  def make(rng):
    def w(*shape):
      return _normal(rng, *shape, scale=shape[0]**-0.5)
    params = routing.SelfAttentionParams(
        w_q=w(d1, d2), b_q=np.zeros(d2, np.float32), w_k=w(d1, d2), b_k=np.zeros(d2, np.float32),
        w_v=w(d1, d2), b_v=np.zeros(d2, np.float32), ln1_scale=np.ones(d2, np.float32),
        ln1_bias=np.zeros(d2, np.float32), w_mlp1=w(d2, hidden), b_mlp1=np.zeros(hidden, np.float32),
        w_mlp2=w(hidden, d2), b_mlp2=np.zeros(d2, np.float32), ln2_scale=np.ones(d2, np.float32),
        ln2_bias=np.zeros(d2, np.float32), w_p=w(d2, 1), b_p=np.zeros(1, np.float32))
    return (_normal(rng, n_caps, d1), rng.uniform(size=n_caps).astype(np.float32), params)

  return Case("duarte_self_attention", f"C={n_caps}, d1={d1} -> d2={d2}, {n_heads} heads", batch,
              lambda x, p, params: routing.self_attention_routing(
                  x, p, params, n_heads=n_heads, chunk_size=chunk_size),
              make, batched=(0, 1), diff=(0, 1, 2))


def _cases() -> list[Case]:
  return [
      # Heinsen (2019) smallNORB, Fig. 3: batch 20, 3 iterations. Layer 1 also
      # with the vote-materialising algorithm of the official code, the
      # in-run baseline.
      _heinsen_case("heinsen_smallnorb_layer1", 5184, 64, var_inp=True, batch=20),
      _heinsen_case("heinsen_smallnorb_layer1_votes", 5184, 64, var_inp=True, batch=20,
                    algorithm="votes"),
      _heinsen_case("heinsen_smallnorb_layer2", 64, 5, var_inp=False, batch=20),
      # Tsai et al. (2020) CIFAR-10 ResNet backbone (resnet_backbone_CIFAR10.json):
      # one routing step with poses of the layer above, batch 128.
      _tsai_conv_case("tsai_cifar10_conv1", 16, 7, 2, batch=128),
      _tsai_conv_case("tsai_cifar10_conv2", 7, 5, 1, batch=128),
      _tsai_fc_case(batch=128),
      # The shape of ENVIRONMENT.md's timing of the authors' code (batch 32).
      _tsai_conv_case("tsai_cifar10_conv1_b32", 16, 7, 2, batch=32),
      # Duarte et al. (2021): C=128, d1=32, d2=256, batch 512.
      _self_attention_case(128, 32, 256, batch=512),
      # Baselines at Sabour et al.'s MNIST shape (1152 -> 10 capsules of 16).
      Case("dynamic_routing", "1152 -> 10 caps of 16", 128,
           lambda u: routing.dynamic_routing(u, n_iters=3),
           lambda rng: (_normal(rng, 1152, 10, 16, scale=0.05),), batched=(0,), diff=(0,)),
      Case("em_routing", "1152 -> 10 caps of 16", 128,
           lambda a, v, bu, ba: routing.em_routing(a, v, bu, ba, n_iters=3),
           lambda rng: (rng.uniform(size=1152).astype(np.float32),
                        _normal(rng, 1152, 10, 16), _normal(rng, 10), _normal(rng, 10)),
           batched=(0, 1), diff=(0, 1, 2, 3)),
      # Swetha et al. (2023): queue 5500 + batch 216 samples, 64 anchors.
      Case("multi_sinkhorn", "5716 x 64 anchors, 20 it", 0,
           lambda s: ot.multi_sinkhorn(s, eps=0.07, n_iters=20, required_properties=32),
           lambda rng: (rng.uniform(-1, 1, (5716, 64)).astype(np.float32),)),
      # Li et al. (2018): feedback loss between two batches of 128 features.
      Case("sinkhorn_divergence", "128 vs 128 samples of 256", 0,
           lambda x, y: ot.sinkhorn_divergence(x, y, epsilon=0.1, n_iters=10),
           lambda rng: (_normal(rng, 128, 256), _normal(rng, 128, 256)), diff=(0, 1)),
      # Duarte et al. (2021): MMS loss over a batch of 4096.
      Case("mms_loss", "S 4096 x 4096", 0, lambda s: losses.mms_loss(s),
           lambda rng: (_normal(rng, 4096, 4096),), diff=(0,)),
  ]


def _batched_fn(case: Case, n_args: int) -> Callable[..., Any]:
  """The kernel vmapped over the batched arguments (as is, for set kernels)."""
  if not case.batch:
    return case.fn
  return jax.vmap(case.fn, in_axes=tuple(0 if k in case.batched else None
                                         for k in range(n_args)))


def _sum_squares(tree) -> jax.Array:
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def run_case(case: Case, batch_scale: float, min_time: float,
             copy_gbps: float) -> list[Any]:
  rng = np.random.default_rng(0)
  args = list(case.make_args(rng))
  batch = max(1, int(round(case.batch * batch_scale))) if case.batch else 0
  for k in case.batched:
    args[k] = np.stack([args[k]] + [case.make_args(rng)[k] for _ in range(batch - 1)])
  args = jax.tree.map(jnp.asarray, args)
  fn = _batched_fn(case, len(args))

  fwd = harness.compile_fn(fn, *args)
  fwd_s = harness.time_compiled(fwd.fn, *args, min_time=min_time)
  if case.diff:
    step = harness.compile_fn(
        jax.value_and_grad(lambda *a: _sum_squares(fn(*a)), argnums=case.diff), *args)
    step_s = harness.time_compiled(step.fn, *args, min_time=min_time)
  else:  # a target-making kernel without gradients: the step is the forward
    step, step_s = fwd, fwd_s
  gflops = step.flops / 1e9
  achieved = gflops / step_s
  mm = harness.matmul_gflops(harness.matmul_size_for(step.flops))
  floor_s = max(gflops / mm, step.bytes_accessed / 1e9 / copy_gbps)
  return [case.name, case.shape, batch or "-", fwd.compile_s + (step.compile_s if case.diff else 0),
          fwd_s * 1e3, step_s * 1e3 if case.diff else "-", harness.mib(step.peak_bytes), gflops,
          achieved, mm, f"{100 * achieved / mm:.0f}%", step.bytes_accessed / 1e9,
          floor_s * 1e3, step_s / floor_s]


HEADER = ["kernel", "shape", "batch", "compile s", "fwd ms", "fwd+bwd ms",
          "peak MiB", "GFLOP", "GFLOP/s", "matmul GFLOP/s", "of matmul",
          "GB moved", "floor ms", "x floor"]


def _scaling_cases() -> list[tuple[str, int, Case]]:
  """(family, size, case): input capsules doubling, at a reduced batch."""
  cases = [("heinsen (moments)", n, _heinsen_case(f"heinsen_{n}", n, 64, True, batch=4))
           for n in (5184, 10368, 20736, 41472)]
  cases += [("heinsen (votes)", n, _heinsen_case(f"heinsen_votes_{n}", n, 64, True, batch=4,
                                                 algorithm="votes"))
            for n in (5184, 10368, 20736)]
  # Queries in blocks of 32 at every size (each block attends to all C keys),
  # so no size holds the C x C scores.
  cases += [("duarte self-attention", c, _self_attention_case(c, 32, 256, batch=64,
                                                              chunk_size=32))
            for c in (32, 64, 128, 256, 512)]
  cases += [("dynamic", n, Case(f"dynamic_{n}", "", 16, lambda u: routing.dynamic_routing(u),
                                lambda rng, n=n: (_normal(rng, n, 10, 16, scale=0.05),),
                                batched=(0,), diff=(0,)))
            for n in (1152, 2304, 4608, 9216)]
  cases += [("em", n, Case(f"em_{n}", "", 16,
                           lambda a, v, bu, ba: routing.em_routing(a, v, bu, ba, n_iters=3),
                           lambda rng, n=n: (rng.uniform(size=n).astype(np.float32),
                                             _normal(rng, n, 10, 16), _normal(rng, 10),
                                             _normal(rng, 10)),
                           batched=(0, 1), diff=(0, 1, 2, 3)))
            for n in (1152, 2304, 4608, 9216)]
  cases += [("tsai inverted attention (fc)", n, _tsai_fc_case(16, n_inp=n))
            for n in (800, 1600, 3200, 6400)]
  return cases


def run_scaling(min_time: float, plot_path: str) -> None:
  """Time and peak memory of fwd+bwd as the number of input capsules doubles."""
  rows, series = [], {}
  for family, size, case in _scaling_cases():
    if _ONLY.value and not re.search(_ONLY.value, family):
      continue
    r = run_case(case, 1.0, min_time, copy_gbps=1.0)
    ms, mib = r[5], r[6]
    prev = series.get(family, [])[-1:] or [None]
    growth = "-" if prev[0] is None else f"{mib / prev[0][2]:.2f}x"
    series.setdefault(family, []).append((size, ms, mib))
    rows.append([family, size, case.batch, ms, mib, growth])
    print(f"  done {case.name}", flush=True)
  print(harness.format_table(
      ["family", "input capsules", "batch", "fwd+bwd ms", "peak MiB",
       "memory growth per doubling"], rows))
  print("Linear memory doubles with the inputs (growth 2.00x); a quadratic term shows "
        "as growth toward 4x.")
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no plot written.")
    return
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for family, pts in series.items():
    sizes, ms, mib = zip(*pts)
    axes[0].loglog(sizes, ms, "o-", label=family)
    axes[1].loglog(sizes, mib, "o-", label=family)
  for ax, label in zip(axes, ("fwd+bwd time per batch (ms)", "peak memory (MiB)")):
    ax.set_xlabel("input capsules")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(plot_path, dpi=120)
  print(f"plot written to {plot_path}")


def _iteration_cases(n_iters: int, remat: bool) -> list[tuple[str, Case]]:
  """(family, case) of the iterative kernels at n_iters, at reduced batches."""
  kw = {"n_iters": n_iters, "remat": remat}
  return [
      ("dynamic", Case(f"dynamic_it{n_iters}", "", 16,
                       lambda u: routing.dynamic_routing(u, **kw),
                       lambda rng: (_normal(rng, 1152, 10, 16, scale=0.05),),
                       batched=(0,), diff=(0,))),
      ("em", Case(f"em_it{n_iters}", "", 16,
                  lambda a, v, bu, ba: routing.em_routing(a, v, bu, ba, **kw),
                  lambda rng: (rng.uniform(size=1152).astype(np.float32),
                               _normal(rng, 1152, 10, 16), _normal(rng, 10), _normal(rng, 10)),
                  batched=(0, 1), diff=(0, 1, 2, 3))),
      ("heinsen (votes)", _heinsen_case(f"heinsen_votes_it{n_iters}", 1152, 64, True, batch=4,
                                        algorithm="votes", **kw)),
  ]


def run_iterations(min_time: float) -> None:
  """fwd+bwd peak memory and time as n_iters grows, without and with remat."""
  rows = []
  for n_iters in (1, 2, 4, 8):
    for remat in (False, True):
      for family, case in _iteration_cases(n_iters, remat):
        if _ONLY.value and not re.search(_ONLY.value, family):
          continue
        r = run_case(case, 1.0, min_time, copy_gbps=1.0)
        rows.append([family, n_iters, "on" if remat else "off", case.batch, r[5], r[6]])
        print(f"  done {case.name} remat={remat}", flush=True)
  rows.sort(key=lambda row: (row[0], row[2], row[1]))
  print(harness.format_table(
      ["family", "n_iters", "remat", "batch", "fwd+bwd ms", "peak MiB"], rows))
  print("remat: the routing iterations rematerialised on the backward pass "
        "(the kernels' remat=True): only each iteration's carry is kept.")


def main(argv):
  del argv
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{jax.device_count()} device(s)")
  if _SCALING.value:
    run_scaling(_MIN_TIME.value, _PLOT.value)
    return
  if _ITERS.value:
    run_iterations(_MIN_TIME.value)
    return
  copy = harness.copy_gbps()
  print(f"memory copy: {copy:.1f} GB/s")
  rows = []
  for case in _cases():
    if _ONLY.value and not re.search(_ONLY.value, case.name):
      continue
    rows.append(run_case(case, _BATCH_SCALE.value, _MIN_TIME.value, copy))
    print(f"  done {case.name}", flush=True)
  print(harness.format_table(HEADER, rows))
  print("peak MiB: the compiled forward+backward step (forward for multi_sinkhorn): "
        "arguments + outputs + temporaries; GFLOP: XLA's count for that step. Heinsen "
        "rows differentiate (a_out, mu_out, sig2_out), what the next layer reads. "
        "floor: max(GFLOP / matmul rate, GB moved / copy rate); XLA's GB moved overstates "
        "traffic (cache hits counted), so x floor < 1 marks a loose byte floor.")


if __name__ == "__main__":
  app.run(main)
