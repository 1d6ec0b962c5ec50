r"""Regenerate the papers' resource figures: Duarte Tables 3-4, Tsai Fig. 4.

* Duarte et al. (2021) **Table 3**: memory and run time per training batch of
  the multimodal capsule network with no routing, dynamic, EM, Set
  Transformer and self-attention routing, at C = 64 capsules, d1 = d2 = 16.
* Duarte et al. (2021) **Table 4**: the same with self-attention routing for
  C in {32, 64, 128, 256} capsules, d1 = 32, d2 = 256.
* Tsai et al. (2020) **Fig. 4, bottom right**: memory and inference time of
  the CIFAR-10 simple-backbone CapsNet (0.56M parameters) with inverted
  dot-product attention routing, for 1 to 5 routing iterations.

Each row compiles the model's full train step (the paper's loss, gradient and
optax update, as ``benchmarks/models.py``) and its eval-mode forward, and
reports the parameters, the time per batch of what the paper timed (a training
step for Duarte, an inference forward for Tsai) and the peak memory of both
compiled programs (XLA memory analysis: arguments + outputs + temporaries).
The paper's numbers are printed alongside: GPU figures (Duarte: 4 V100s,
batch 4096; Tsai: 8 GPUs, batch 128), for their trend, not to compare
absolute values with a CPU at a smaller batch. A PNG plots every series
relative to its first row, ours next to the paper's.

  python benchmarks/resources.py                   # every row (~30 min on 2 heavily loaded cores)
  python benchmarks/resources.py --only=table3     # rows whose name matches a regex
  python benchmarks/resources.py --batch=256 --out=/tmp/resources.png

Row names: ``table3/<routing>``, ``table4/C=<C>``, ``fig4/iters=<n>``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
import jax
import numpy as np
import optax
from flax import nnx

import harness
import models as model_bench
from capsjax.models import duarte2021, tsai2020
from capsjax.train import optim

# Batches that keep the whole run within minutes on a 2-core CPU.
CPU_BATCH = {"duarte": 64, "tsai": 32}
PAPER_BATCH = {"duarte": 4096, "tsai": 128}

# Duarte et al. (2021), Tables 3 and 4: (memory usage GB, run time s/batch),
# 4 V100 GPUs, batch 4096 (Sec. 4.1).
DUARTE_TABLE3 = {"none": (9.12, 0.687), "dynamic": (20.50, 1.534),
                 "em": (19.13, 1.272), "set_transformer": (9.11, 0.707),
                 "self_attention": (9.11, 0.722)}
DUARTE_TABLE4 = {32: (9.15, 0.730), 64: (11.24, 0.768), 128: (15.97, 0.879),
                 256: (27.98, 1.096)}
# Tsai et al. (2020) Fig. 4 plots its memory and inference time only as a
# figure; the paper's text gives no values, so none are printed.
TSAI_ITERS = (1, 2, 3, 4, 5)
_LABELS = {"none": "No Routing", "dynamic": "Dynamic", "em": "EM",
           "set_transformer": "Set Transformer", "self_attention": "Self-Attention"}


@dataclasses.dataclass(frozen=True)
class ResourceCase:
  """One row: a model, what the paper timed and what the paper reported.

  Attributes:
    name: ``table3/<routing>``, ``table4/C=<C>`` or ``fig4/iters=<n>``.
    figure: ``"table3"``, ``"table4"`` or ``"fig4"``.
    label: the variant as the paper names it.
    x: the swept value (capsules C, routing iterations) or the row index.
    family: ``"duarte"`` or ``"tsai"`` (picks the batch and inputs).
    make_model: ``make_model(rngs)``.
    timed: ``"train"`` (time the train step) or ``"inference"``.
    paper_gb, paper_s: the paper's memory (GB) and seconds per batch, or None.
  """
  name: str
  figure: str
  label: str
  x: int
  family: str
  make_model: Callable[[nnx.Rngs], nnx.Module]
  timed: str
  paper_gb: float | None = None
  paper_s: float | None = None


def resource_cases() -> list[ResourceCase]:
  cases = []
  for k, (routing, (gb, s)) in enumerate(DUARTE_TABLE3.items()):
    cases.append(ResourceCase(
        f"table3/{routing}", "table3", _LABELS[routing], k, "duarte",
        lambda rngs, r=routing: duarte2021.duarte2021_routing_ablation(r, rngs=rngs),
        "train", gb, s))
  for c, (gb, s) in DUARTE_TABLE4.items():
    cases.append(ResourceCase(
        f"table4/C={c}", "table4", f"C = {c}", c, "duarte",
        lambda rngs, c=c: duarte2021.duarte2021_capsules(c, rngs=rngs),
        "train", gb, s))
  for n in TSAI_ITERS:
    cases.append(ResourceCase(
        f"fig4/iters={n}", "fig4", f"{n} iteration{'s' * (n > 1)}", n, "tsai",
        lambda rngs, n=n: tsai2020.cifar10_simple(n_iters=n, rngs=rngs),
        "inference"))
  return cases


def _setup(family: str) -> tuple[Callable, Any, Callable, Callable[[], optax.GradientTransformation]]:
  """(make_batch, loss_fn, forward, make_tx) of a family, as models.py trains it."""
  if family == "duarte":
    return (model_bench._duarte_inputs(dict(duarte2021.DEFAULT_INPUT_DIMS)),
            model_bench._duarte_loss,
            lambda m, b: {k: v.embedding for k, v in m(b).items()},
            lambda: optim.duarte_optimizer(20_000)[0])
  return (model_bench._images(32, 3, 10),
          model_bench._cross_entropy_loss(lambda o: o.logits),
          lambda m, b: m(b[0]).logits,
          lambda: optim.tsai_optimizer(1000)[0])


def measure_case(case: ResourceCase, batch: int, *, min_time: float = 1.0,
                 time_it: bool = True) -> dict[str, Any]:
  """Compiles ``case``'s train step and inference forward, and times one.

  Returns:
    ``{"params", "batch", "seconds" (per batch of what ``case.timed`` names,
    None untimed), "train_mib", "inference_mib"}``.
  """
  make_batch, loss_fn, forward, make_tx = _setup(case.family)
  host_batch = make_batch(np.random.default_rng(0), batch)
  # Only what the paper timed is run; the other program is compiled for its
  # memory.
  m = model_bench.measure_model(
      case.make_model, host_batch, loss_fn, make_tx(), forward=forward,
      time_train=time_it and case.timed == "train",
      time_inference=time_it and case.timed == "inference", min_time=min_time)
  seconds = m.train_s if case.timed == "train" else m.infer_s
  return {"params": m.params, "batch": batch, "seconds": seconds,
          "train_mib": harness.mib(m.train.peak_bytes),
          "inference_mib": harness.mib(m.infer.peak_bytes)}


HEADER = ["figure", "variant", "params", "batch", "timed", "time/batch ms",
          "train peak MiB", "inference peak MiB", "paper GB (GPU)", "paper s/batch (GPU)"]


def table_row(case: ResourceCase, r: dict[str, Any]) -> list[Any]:
  ms = "-" if r["seconds"] is None else r["seconds"] * 1e3
  return [case.figure, case.label, f"{r['params'] / 1e6:.3f}M",
          f"{r['batch']} (paper {PAPER_BATCH[case.family]})", case.timed, ms,
          r["train_mib"], r["inference_mib"],
          "-" if case.paper_gb is None else case.paper_gb,
          "-" if case.paper_s is None else case.paper_s]


def _relative(values: Sequence[float | None]) -> list[float]:
  """Each value over the first one (NaN where missing)."""
  base = values[0]
  return [np.nan if v is None or not base else v / base for v in values]


def plot(results: Sequence[tuple[ResourceCase, dict[str, Any]]], path: str) -> bool:
  """Writes the figure to ``path``; False when matplotlib is missing."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  figures = [f for f in ("table3", "table4", "fig4") if any(c.figure == f for c, _ in results)]
  fig, axes = plt.subplots(2, len(figures), figsize=(4.6 * len(figures), 7), squeeze=False)
  titles = {"table3": "Duarte Table 3 (C=64, d=16)",
            "table4": "Duarte Table 4 (d1=32, d2=256)",
            "fig4": "Tsai Fig. 4 (CIFAR-10 simple)"}
  for col, figure in enumerate(figures):
    rows = [(c, r) for c, r in results if c.figure == figure]
    cases = [c for c, _ in rows]
    ours_t = _relative([r["seconds"] for _, r in rows])
    ours_m = _relative([r["train_mib"] if c.timed == "train" else r["inference_mib"]
                        for c, r in rows])
    paper_t = _relative([c.paper_s for c in cases])
    paper_m = _relative([c.paper_gb for c in cases])
    what = "train step" if cases[0].timed == "train" else "inference"
    memory_label = "peak memory" if what == "inference" else f"{what} peak memory"
    for row, (ours, paper, ylabel) in enumerate((
        (ours_t, paper_t, f"{what} time per batch"),
        (ours_m, paper_m, memory_label))):
      ax = axes[row, col]
      if figure == "table3":
        x = np.arange(len(cases))
        ax.bar(x - 0.2, ours, 0.4, label="capsjax (CPU)")
        if not np.all(np.isnan(paper)):
          ax.bar(x + 0.2, paper, 0.4, label="paper (GPU)")
        ax.set_xticks(x, [c.label for c in cases], rotation=30, ha="right", fontsize=8)
      else:
        x = [c.x for c in cases]
        both = row == 1 and what == "inference"  # the train step's memory too
        ax.plot(x, ours, "o-", label=f"capsjax {what} (CPU)" if both else "capsjax (CPU)")
        if not np.all(np.isnan(paper)):
          ax.plot(x, paper, "s--", label="paper (GPU)")
        if both:
          # The train step is compiled too: its memory grows differently.
          ax.plot(x, _relative([r["train_mib"] for _, r in rows]), "^:", color="C2",
                  label="capsjax train step (CPU)")
        ax.set_xticks(x)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("capsules C" if figure == "table4" else "routing iterations")
      ax.axhline(1.0, color="gray", lw=0.5)
      ax.set_ylabel(f"{ylabel}\n(x {cases[0].label})", fontsize=9)
      ax.grid(True, axis="y", alpha=0.3)
      if row == 0:
        ax.set_title(titles[figure], fontsize=10)
      ax.legend(fontsize=8)
  fig.suptitle("Resources relative to each figure's first row (absolute values: "
               "benchmarks/RESULTS.md)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True


def main(only: str, batch: int, out: str, min_time: float) -> None:
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, "
        f"{jax.device_count()} device(s)")
  results = []
  for case in resource_cases():
    if only and not re.search(only, case.name):
      continue
    b = batch or CPU_BATCH[case.family]
    results.append((case, measure_case(case, b, min_time=min_time)))
    print(f"  done {case.name}", flush=True)
  print(harness.format_table(HEADER, [table_row(c, r) for c, r in results]))
  print("time/batch: Duarte rows time a whole train step (loss + gradient + Adam "
        "update), as the paper's run time per batch; Tsai rows time the "
        "eval-mode forward, as Fig. 4's inference time. Peak MiB: XLA's memory "
        "analysis of the compiled program (arguments + outputs + temporaries - "
        "donated), at this batch. Paper columns: GPU numbers from the paper "
        "(Duarte: 4 V100s, batch 4096; Tsai Fig. 4 gives no values in its text).")
  if out and results:
    if plot(results, out):
      print(f"plot written to {out}")
    else:
      print("matplotlib is not installed: no plot written.")


if __name__ == "__main__":
  # Flags are defined only when run as a script (see models.py).
  _ONLY = flags.DEFINE_string("only", "", "Run only the rows whose name matches this regex.")
  _BATCH = flags.DEFINE_integer(
      "batch", 0, "Batch size of every row; 0: each figure's CPU default "
      "(Duarte 64 of the paper's 4096, Tsai 32 of 128).")
  _OUT = flags.DEFINE_string("out", "benchmarks/resources.png",
                             "Where to write the plot (needs matplotlib); '' for none.")
  _MIN_TIME = flags.DEFINE_float(
      "min_time", 1.0, "Repeat each timed call until this many seconds have passed.")
  app.run(lambda argv: main(_ONLY.value, _BATCH.value, _OUT.value, _MIN_TIME.value))
