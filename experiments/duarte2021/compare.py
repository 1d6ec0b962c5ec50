r"""Self-attention routing vs the baselines, trained alike, in one table.

  python -m experiments.duarte2021.compare \
      --config=experiments/duarte2021/configs/synthetic.py --workdir=/tmp/duarte_cmp

Trains each of ``--variants`` with the same data, seed, batches and number
of steps, each in ``<workdir>/<variant>[_seed<k>]`` (a rerun resumes, or
only re-evaluates a finished run), then prints one table: text-to-video
retrieval on the config's first evaluation set (R@1, R@5, R@10 in %, MedR,
MeanR), text-to-video+audio R@1, chance R@1 (1 / number of clips) and the
wall time of each run in this invocation (including compilation and
evaluations; on a shared machine, a loaded-machine figure; a run finished
earlier is only re-evaluated, so its time is the evaluation's). ``--seeds=0,1,2`` repeats every variant
with other initialisations and batch orders and adds mean rows.

Default variants: ``self_attention`` (the paper's routing, capsjax's
reading of Eq. 3: ``f_out(p̂_i x̂_i)`` on the routed poses);
``self_attention_primary`` (Eq. 3 as written: ``f_out(p̂_i x_i)``, the
primary poses weighted by the routed activations, ``model.pool =
"primary"``); ``none`` (Table 3's "No Routing") and ``fc`` (Table 5's
"Fully Connected"). The self-attention rows use the config's reading of
Sec. 3.1's "two linear layers for all functions h" (``model.qkv_*``; the
paper configs: two linear layers, no nonlinearity); ``self_attention_h1``
(one affine map per ``h``) and ``self_attention_h_relu`` (a ReLU between
the two layers) are the other readings, both with ``f_out`` on the routed
poses. Also available: ``dynamic``, ``em`` (4x4 matrix poses,
d1 = d2 = 16, when the config's are not square), ``set_transformer`` and
``self_attention_baseline`` (Table 5's "Self-Attention"). Only the model
fields differ between rows; any config works (e.g. ``routing.py`` with real
features).
"""

from __future__ import annotations

import copy
import math
import os
import sys

import numpy as np
from absl import flags

from capsjax.models import duarte2021
from capsjax.train import entrypoint
from experiments.duarte2021 import main

BASELINES = {"fc": "fc", "self_attention_baseline": "self_attention"}
# Self-attention routing with Eq. (3) read literally: f_out weights the
# primary poses x_i by the routed activations (model.pool = "primary").
PRIMARY_POOL = "self_attention_primary"
# The other readings of Sec. 3.1's "two linear layers for all functions h"
# (the config's own model.qkv_* is the default reading): the model fields
# each sets, on top of routing = "self_attention".
H_READINGS = {
    "self_attention_h1": {"qkv_layers": 1, "qkv_hidden": None,
                          "qkv_activation": None},
    "self_attention_h_relu": {"qkv_layers": 2, "qkv_activation": "relu"},
}
VARIANTS = (tuple(r for r in duarte2021.ROUTINGS if r != "fc")
            + (PRIMARY_POOL,) + tuple(H_READINGS) + tuple(BASELINES))

_VARIANTS = flags.DEFINE_list(
    "variants", ["self_attention", PRIMARY_POOL, "none", "fc"],
    f"Rows of the table, any of {', '.join(VARIANTS)}.")
_SEEDS = flags.DEFINE_list(
    "seeds", ["0"], "train.seed of each repetition (init and batch order).")

COLUMNS = ("R@1", "R@5", "R@10", "MedR", "MeanR")


def variant_config(config, variant: str):
  """``config`` with the model of ``variant`` (a copy; the rest unchanged)."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
  c = copy.deepcopy(config)
  if variant in BASELINES:
    c.model.architecture = BASELINES[variant]
  elif variant == PRIMARY_POOL:
    c.model.architecture = "capsules"
    c.model.routing = "self_attention"
    c.model.pool = "primary"
  elif variant in H_READINGS:
    c.model.architecture = "capsules"
    c.model.routing = "self_attention"
    c.model.update(H_READINGS[variant])
  else:
    c.model.architecture = "capsules"
    c.model.routing = variant
  if variant == "em" and (c.model.d1 != c.model.d2
                          or math.isqrt(c.model.d1) ** 2 != c.model.d1):
    # EM routing keeps square matrix poses: Table 3's 4x4.
    c.model.d1 = c.model.d2 = 16
  return c


def format_table(rows: list[dict]) -> str:
  """The comparison as a fixed-width text table (recalls in %)."""
  head = (f"{'variant':<24}{'seed':>5}" + "".join(f"{c:>8}" for c in COLUMNS)
          + f"{'t2va R@1':>10}{'chance R@1':>12}{'wall s':>9}")
  lines = [head, "-" * len(head)]
  for r in rows:
    vals = [100 * r["R@1"], 100 * r["R@5"], 100 * r["R@10"], r["MedR"],
            r["MeanR"]]
    lines.append(f"{r['variant']:<24}{r['seed']:>5}"
                 + "".join(f"{v:>8.1f}" for v in vals)
                 + f"{100 * r['t2va R@1']:>10.1f}{100 * r['chance']:>12.2f}"
                 + f"{r['seconds']:>9.0f}")
  return "\n".join(lines)


def _mean_rows(rows: list[dict]) -> list[dict]:
  out = []
  for v in dict.fromkeys(r["variant"] for r in rows):
    group = [r for r in rows if r["variant"] == v]
    if len(group) > 1:
      mean = {k: float(np.mean([r[k] for r in group]))
              for k in (*COLUMNS, "t2va R@1", "chance", "seconds")}
      out.append({"variant": v, "seed": "mean", **mean})
  return out


def compare(config, workdir: str, variants, seeds) -> list[dict]:
  """Trains every (variant, seed) and returns the table's rows."""
  dataset = config.eval.retrieval[0].split("/")[0]
  rows = []
  for seed in seeds:
    for v in variants:
      c = variant_config(config, v)
      c.train.seed = int(seed)
      name = v if len(seeds) == 1 else f"{v}_seed{seed}"
      result = main.run(c, os.path.join(workdir, name))
      if result.preempted:
        # Stopped by a signal (checkpoint saved): do not start the next run.
        raise SystemExit(f"stopped during {name!r}; rerun the same command "
                         "to resume")
      e = result.eval_metrics
      count = c.eval.get("num_examples") or None
      rows.append({
          "variant": v, "seed": str(seed),
          **{k: e[f"{dataset}/t2v/{k}"] for k in COLUMNS},
          "t2va R@1": e[f"{dataset}/t2va/R@1"],
          "chance": 1.0 / count if count else float("nan"),
          "seconds": result.seconds})
  return rows + _mean_rows(rows)


def run(config, workdir: str) -> list[dict]:
  """The entrypoint's ``run``: compares ``--variants`` and prints the table."""
  rows = compare(config, workdir, list(_VARIANTS.value), list(_SEEDS.value))
  steps = config.train.num_steps
  table = format_table(rows)
  print(f"\ntext-to-video retrieval on {config.eval.retrieval[0]} after "
        f"{steps} steps (batch {config.data.batch_size}), recalls in %:\n"
        f"{table}", flush=True)
  with open(os.path.join(workdir, "compare.txt"), "w") as f:
    f.write(table + "\n")
  return rows


if __name__ == "__main__":
  for v in (a.split("=", 1)[1] for a in sys.argv if a.startswith("--variants=")):
    bad = sorted(set(v.split(",")) - set(VARIANTS))
    if bad:
      sys.exit(f"error: --variants: unknown {bad}; choose from {VARIANTS}")
  entrypoint.main(run, fields=main.FIELDS)
