"""Subprocess side of the sharding tests (run with ``python -m``).

``python -m tests.train.worker devices OUT_DIR``: on 8 simulated CPU devices
(the caller sets XLA_FLAGS), compares a train step and a whole run on all 8
devices with the same on 1 device; writes ``OUT_DIR/devices.json``.

``python -m tests.train.worker process ID N PORT WORKDIR``: one of N
``jax.distributed`` processes (coordinator 127.0.0.1:PORT) training the tiny
model into WORKDIR; process 0 writes ``WORKDIR/final.npz``.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np


def _cache() -> None:
  cache = os.environ.get("CAPSJAX_TEST_CACHE")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _max_rel(a: dict, b: dict) -> float:
  err = 0.0
  for k in a:
    x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
    scale = max(np.max(np.abs(y)), 1e-30)
    err = max(err, float(np.max(np.abs(x - y)) / scale))
  return err


def devices(out_dir: str) -> None:
  from capsjax import train as T  # pylint: disable=g-import-not-at-top
  from tests.train import tiny  # pylint: disable=g-import-not-at-top

  out: dict = {"n_devices": jax.device_count()}
  compile_events: list[str] = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *a, **k: compile_events.append(name) if "compil" in name else None)
  mesh8 = T.make_mesh()
  mesh1 = T.make_mesh(jax.devices()[:1])
  steps = {}
  for name, mesh in (("one", mesh1), ("eight", mesh8)):
    graphs, state = T.create_train_state(tiny.make_model(), tiny.make_tx(), mesh)
    train_step = T.make_train_step(graphs.train, tiny.loss_fn, tiny.make_tx(), mesh)
    it = tiny.train_iterator()
    losses = []
    for i in range(3):
      batch = T.global_batch(next(it), mesh)
      old = state
      if i == 1:
        out[f"{name}_compiles_first"] = len(compile_events)
        compile_events.clear()
      state, metrics = train_step(state, batch)
      losses.append(float(metrics["loss"]))
    # Compiled once: nothing compiles (or is even looked up) after step 1.
    out[f"{name}_compiles_after_first"] = len(compile_events)
    out[f"{name}_donated"] = all(x.is_deleted() for x in jax.tree.leaves(old.params))
    out[f"{name}_batch_spec"] = str(batch["x"].sharding.spec)
    out[f"{name}_batch_devices"] = len(batch["x"].sharding.device_set)
    out[f"{name}_state_replicated"] = all(
        x.sharding.is_fully_replicated and len(x.sharding.device_set) == mesh.size
        for x in jax.tree.leaves(state))
    evaluate = T.make_evaluator(graphs.eval, tiny.metric_fn, tiny.eval_batches, mesh)
    steps[name] = (losses, tiny.flat_params(state), evaluate(state))
  out["step_losses"] = {k: v[0] for k, v in steps.items()}
  out["step_param_rel_err"] = _max_rel(steps["eight"][1], steps["one"][1])
  out["eval"] = {k: v[2] for k, v in steps.items()}

  # The whole loop (checkpoints included) on 8 devices vs 1, then a resume on
  # 8 devices from the 8-device checkpoint.
  runs = {}
  for name, mesh in (("one", mesh1), ("eight", mesh8)):
    workdir = os.path.join(out_dir, name)
    cfg = tiny.config(num_steps=6, log_every=1, eval_every=0, checkpoint_every=3)
    result = T.train(cfg, tiny.make_model(), tiny.loss_fn, tiny.make_tx(),
                     tiny.train_iterator(), None, workdir, mesh=mesh)
    records = [r for r in T.read_metrics(os.path.join(workdir, "metrics.jsonl"))
               if r["split"] == "train"]
    runs[name] = ([r["loss"] for r in records], tiny.flat_params(result.state))
  out["loop_losses"] = {k: v[0] for k, v in runs.items()}
  out["loop_param_rel_err"] = _max_rel(runs["eight"][1], runs["one"][1])
  ckpt = T.Checkpointer(os.path.join(out_dir, "eight", "checkpoints"), save_every=3)
  _, target = T.create_train_state(tiny.make_model(), tiny.make_tx(), mesh8)
  restored = ckpt.restore(target)
  ckpt.close()
  out["restored_step"] = int(restored.step)
  out["restored_replicated"] = all(len(x.sharding.device_set) == 8
                                   for x in jax.tree.leaves(restored))
  out["restored_rel_err"] = _max_rel(tiny.flat_params(restored), runs["eight"][1])
  with open(os.path.join(out_dir, "devices.json"), "w") as f:
    json.dump(out, f)


def process(process_id: int, num_processes: int, port: int, workdir: str) -> None:
  from capsjax import train as T  # pylint: disable=g-import-not-at-top

  initialised = T.maybe_initialize_distributed(
      coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
      process_id=process_id)
  assert initialised and jax.process_count() == num_processes
  from tests.train import tiny  # pylint: disable=g-import-not-at-top
  result = run_tiny(T, tiny, workdir, process_id, num_processes)
  if process_id == 0:
    np.savez(os.path.join(workdir, "final.npz"), **{
        k: v for k, v in tiny.flat_params(result.state).items()},
        eval_correct=result.eval_metrics["correct"],
        n_global_devices=jax.device_count())
  jax.distributed.shutdown()


def run_tiny(T, tiny, workdir, process_index=0, process_count=1):  # pylint: disable=invalid-name
  """The run both sides of the multi-process test make."""
  mesh = T.make_mesh()
  b = tiny.GLOBAL_BATCH // process_count

  def eval_batches():
    return [{k: v[process_index * b:(process_index + 1) * b]
             for k, v in batch.items()} for batch in tiny.eval_batches()]

  graphs, _, _ = T.split_model(tiny.make_model())
  evaluate = T.make_evaluator(graphs.eval, tiny.metric_fn, eval_batches, mesh)
  cfg = tiny.config(num_steps=6, log_every=2, eval_every=3, checkpoint_every=3)
  return T.train(cfg, tiny.make_model(), tiny.loss_fn, tiny.make_tx(),
                 tiny.train_iterator(process_index=process_index,
                                     process_count=process_count),
                 evaluate, workdir, mesh=mesh)


if __name__ == "__main__":
  _cache()
  if sys.argv[1] == "devices":
    devices(sys.argv[2])
  elif sys.argv[1] == "process":
    process(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
  else:
    raise SystemExit(f"unknown mode {sys.argv[1]!r}")
