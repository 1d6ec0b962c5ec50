"""The training loop on one device: exact resume, NaN handling, config and
input errors, and the metric files."""

from __future__ import annotations

import json
import os
import struct
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from capsjax import train as T
from tests.train import tiny

B = tiny.GLOBAL_BATCH


def _run(workdir, *, iterator=None, loss_fn=tiny.loss_fn, **overrides):
  """One train() call on the tiny model; returns (result, its iterator)."""
  it = tiny.train_iterator() if iterator is None else iterator
  graphs, _, _ = T.split_model(tiny.make_model())
  evaluate = T.make_evaluator(graphs.eval, tiny.metric_fn, tiny.eval_batches,
                              T.make_mesh())
  model = tiny.make_model()
  result = T.train(tiny.config(**overrides), model, loss_fn,
                   tiny.make_tx(), it, evaluate, str(workdir))
  return result, it, model


def _records(workdir):
  """metrics.jsonl without the timing records (those differ run to run)."""
  return [r for r in T.read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if r["split"] != "perf"]


def _assert_bitwise(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 10-step run (eval at 4, 8, 10; checkpoints at 4, 8, 10)."""
  workdir = tmp_path_factory.mktemp("reference")
  result, it, model = _run(workdir)
  return result, _records(workdir), next(it), model


def test_reference_run(reference):
  result, records, _, model = reference
  # The module passed in now holds the trained parameters and statistics.
  _, params, model_state = nnx.split(model, nnx.Param, ...)
  _assert_bitwise(tiny.flat_params(result.state), tiny.flat_params(
      types.SimpleNamespace(params=params, model_state=model_state)))
  assert result.step == 10 and not result.preempted
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == list(range(1, 11))
  assert {"loss", "accuracy", "grad_norm", "learning_rate"} <= train[0].keys()
  # The logged learning rate is the one each update used (linear schedule).
  np.testing.assert_allclose([r["learning_rate"] for r in train],
                             3e-2 - np.arange(10) * (2.7e-2 / 20), rtol=1e-6)
  assert [r["step"] for r in records if r["split"] == "eval"] == [4, 8, 10]
  assert result.eval_metrics["count"] == tiny.N_EXAMPLES
  assert all(np.isfinite(r["loss"]) for r in train)


def test_sigterm_then_resume_is_bitwise_identical(reference, tmp_path):
  ref_result, ref_records, ref_next, _ = reference
  # SIGTERM while fetching step 5's batch: the loop finishes step 5, saves
  # state and input position, and returns.
  stop = tiny.train_iterator(on_element=tiny.at_read(4 * B + 1, tiny.send_sigterm))
  first, _, _ = _run(tmp_path, iterator=stop)
  assert first.preempted and first.step == 5
  assert T.Checkpointer(tmp_path / "checkpoints", save_every=4).all_steps() == [4, 5]

  second, it, _ = _run(tmp_path)  # same workdir, fresh model and input: resumes
  assert second.step == 10 and not second.preempted
  _assert_bitwise(tiny.flat_params(second.state), tiny.flat_params(ref_result.state))
  assert _records(tmp_path) == ref_records
  assert second.eval_metrics == ref_result.eval_metrics
  # The input position was restored too: the next batch is the same.
  _assert_bitwise(next(it), ref_next)

  # Restarting a finished run trains nothing, reports, and rewrites nothing.
  third, _, _ = _run(tmp_path)
  assert third.step == 10 and third.train_metrics is None
  assert third.eval_metrics == ref_result.eval_metrics
  assert _records(tmp_path) == ref_records


def test_crash_then_resume_replays_from_last_checkpoint(reference, tmp_path):
  ref_result, ref_records, _, _ = reference

  def crash():
    raise RuntimeError("simulated crash")

  # Crash while fetching step 8's batch: checkpoint 4 exists, metrics of
  # steps 5-6 were already written and must be replaced, not duplicated.
  crashing = tiny.train_iterator(on_element=tiny.at_read(7 * B + 1, crash))
  with pytest.raises(Exception, match="simulated crash"):
    _run(tmp_path, iterator=crashing)
  assert max(r["step"] for r in _records(tmp_path)) == 6
  assert T.Checkpointer(tmp_path / "checkpoints", save_every=4).latest_step() == 4

  second, _, _ = _run(tmp_path)
  _assert_bitwise(tiny.flat_params(second.state), tiny.flat_params(ref_result.state))
  assert _records(tmp_path) == ref_records


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  # Unshuffled: step k reads examples 16(k-1)..16k-1, so step 6 sees i >= 80.
  def poisoned(model, batch, rng):
    return tiny.loss_fn(model, batch, rng, poison_from=80)

  with pytest.raises(FloatingPointError,
                     match=r"non-finite loss \(nan\) at step 6.*last good "
                           r"checkpoint \(step 4\).*intact"):
    _run(tmp_path, iterator=tiny.train_iterator(shuffle=False),
         loss_fn=poisoned, checkpoint_every=2, log_every=4, eval_every=0)
  ckpt = T.Checkpointer(tmp_path / "checkpoints", save_every=2)
  assert ckpt.all_steps() == [2, 4]
  records = _records(tmp_path)
  assert records[-1]["step"] == 6 and records[-1]["loss"] == "nan"
  assert all(np.isfinite(r["loss"]) for r in records[:-1])
  # The checkpoint restores (state and input position) and is finite.
  _, target = T.create_train_state(tiny.make_model(), tiny.make_tx(), T.make_mesh())
  it = tiny.train_iterator(shuffle=False)
  restored = ckpt.restore(target, it)
  ckpt.close()
  assert int(restored.step) == 4 and T.all_finite(restored)
  np.testing.assert_array_equal(next(it)["i"], np.arange(4 * B, 5 * B))


def test_checkpointer_never_saves_non_finite_state(tmp_path):
  _, state = T.create_train_state(tiny.make_model(), tiny.make_tx(), T.make_mesh())
  ckpt = T.Checkpointer(tmp_path, save_every=1)
  assert ckpt.save(state)
  bad = state._replace(step=state.step + 1, params=jax.tree.map(
      lambda x: x.at[0].set(jnp.inf), state.params))
  with pytest.raises(FloatingPointError, match="refusing to checkpoint step 1"):
    ckpt.save(bad)
  assert ckpt.all_steps() == [0]
  with pytest.raises(ValueError, match="no input iterator state"):
    ckpt.restore(state, tiny.train_iterator())

  class Other(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(tiny.D_IN, 5, rngs=rngs)

  _, other = T.create_train_state(Other(nnx.Rngs(0)), tiny.make_tx(), T.make_mesh())
  with pytest.raises(ValueError, match="step 0 .* does not match the state"):
    ckpt.restore(other)
  ckpt.close()


def test_create_train_state_from_factory_matches_module():
  mesh = T.make_mesh()
  graphs, state = T.create_train_state(tiny.make_model(seed=5), tiny.make_tx(), mesh)
  graphs_f, state_f = T.create_train_state(
      lambda rngs: tiny.TinyMLP(rngs=rngs), tiny.make_tx(), mesh, seed=5)
  assert graphs_f == graphs
  assert int(state_f.step) == 0
  _assert_bitwise(tiny.flat_params(state_f), tiny.flat_params(state))
  assert all(x.sharding == T.replicated(mesh) for x in jax.tree.leaves(state_f))


def test_exhausted_iterator_is_a_clear_error(tmp_path):
  two_batches = iter([{k: v[:B] for k, v in tiny.arrays().items()}] * 2)
  with pytest.raises(ValueError, match="ran out of batches after step 2 of 10"):
    _run(tmp_path, iterator=two_batches, eval_every=0)
  assert T.Checkpointer(tmp_path / "checkpoints", save_every=4).all_steps() == [2]


@pytest.mark.parametrize("config, message", [
    (dict(seed=1), "missing field 'num_steps'"),
    (dict(num_steps=0), r"config.num_steps: got 0, expected > 0"),
    (dict(num_steps=5, log_every=2.5), r"config.log_every: got 2.5, expected an int"),
    (dict(num_steps=5, eval_every=-1), r"config.eval_every: got -1"),
])
def test_loop_config_errors(config, message):
  with pytest.raises(ValueError, match=message):
    T.LoopConfig.from_config(config)
  with pytest.raises(ValueError, match=message):
    T.LoopConfig.from_config(ml_collections.ConfigDict(config))


def test_loop_config_bool_field():
  with pytest.raises(ValueError, match="config.progress: got 'no', expected a bool"):
    T.LoopConfig.from_config(dict(num_steps=1, progress="no"))


def test_loop_config_reads_objects_and_ignores_other_fields():
  class Cfg:
    num_steps = 7
    log_every = 2
    model = "whatever"

  cfg = T.LoopConfig.from_config(Cfg())
  assert (cfg.num_steps, cfg.log_every, cfg.checkpoint_every) == (7, 2, 1000)


def test_global_batch_and_batch_size_errors():
  mesh = T.make_mesh()
  batch = T.global_batch({"x": np.ones((4, 3), np.float32)}, mesh)
  assert batch["x"].shape == (4, 3)
  assert batch["x"].sharding.spec == jax.sharding.PartitionSpec("data")
  with pytest.raises(ValueError, match=r"\['y'\]: got shape \(\)"):
    T.global_batch({"y": np.float32(1)}, mesh)
  assert T.process_batch_size(8, mesh) == 8
  with pytest.raises(ValueError, match="global_batch_size: got 0"):
    T.process_batch_size(0, mesh)


def test_maybe_initialize_distributed(monkeypatch):
  for var in ("JAX_NUM_PROCESSES", "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS",
              "OMPI_COMM_WORLD_SIZE", "CAPSJAX_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  assert not T.maybe_initialize_distributed()
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  with pytest.raises(ValueError, match="coordinator_address, process_id is not set"):
    T.maybe_initialize_distributed()
  monkeypatch.setenv("CAPSJAX_DISTRIBUTED", "0")
  assert not T.maybe_initialize_distributed()


# ------------------------------------------------- TensorBoard event files ---

def _event_classes():
  """Event/Summary message classes built from their .proto field numbers
  (tensorflow/core/util/event.proto, framework/summary.proto), independently
  of the writer's hand encoder."""
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # pylint: disable=g-import-not-at-top
  f = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(name="capsjax_test_event.proto",
                                           package="capsjax_test")

  def message(name, fields):
    m = fdp.message_type.add(name=name)
    for field_name, number, ftype, label, type_name in fields:
      m.field.add(name=field_name, number=number, type=ftype, label=label,
                  type_name=type_name)

  opt, rep = f.LABEL_OPTIONAL, f.LABEL_REPEATED
  message("Value", [("tag", 1, f.TYPE_STRING, opt, None),
                    ("simple_value", 2, f.TYPE_FLOAT, opt, None)])
  message("Summary", [("value", 1, f.TYPE_MESSAGE, rep, ".capsjax_test.Value")])
  message("Event", [("wall_time", 1, f.TYPE_DOUBLE, opt, None),
                    ("step", 2, f.TYPE_INT64, opt, None),
                    ("file_version", 3, f.TYPE_STRING, opt, None),
                    ("summary", 5, f.TYPE_MESSAGE, opt, ".capsjax_test.Summary")])
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName("capsjax_test.Event"))


def test_crc32c_check_value():
  assert T.metrics.crc32c(b"123456789") == 0xE3069283  # the standard check


def test_metric_writer_event_file_and_jsonl(tmp_path):
  writer = T.MetricWriter(str(tmp_path), enabled=True)
  writer.write(1, "train", {"loss": 0.5, "learning_rate": 1e-3})
  writer.write(2, "train", {"loss": float("nan")})
  writer.write(3, "eval", {"accuracy": 0.75})
  writer.close()

  assert T.read_metrics(str(tmp_path / "metrics.jsonl")) == [
      {"step": 1, "split": "train", "loss": 0.5, "learning_rate": 1e-3},
      {"step": 2, "split": "train", "loss": "nan"},
      {"step": 3, "split": "eval", "accuracy": 0.75}]

  (path,) = [p for p in os.listdir(tmp_path) if p.startswith("events.out.tfevents.")]
  data = (tmp_path / path).read_bytes()
  masked = lambda b: ((((c := T.metrics.crc32c(b)) >> 15) | (c << 17))
                      + 0xA282EAD8) & 0xFFFFFFFF
  event_cls, events, pos = _event_classes(), [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked(header)
    payload = data[pos + 12:pos + 12 + length]
    assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked(payload)
    events.append(event_cls.FromString(payload))
    pos += 16 + length
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:]
             for v in e.summary.value]
  assert scalars[0] == (1, "train/loss", 0.5)
  assert scalars[1][:2] == (1, "train/learning_rate")
  assert scalars[1][2] == pytest.approx(1e-3, rel=1e-7)
  assert scalars[2][:2] == (2, "train/loss") and np.isnan(scalars[2][2])
  assert scalars[3] == (3, "eval/accuracy", 0.75)


def test_truncate_after_drops_later_and_partial_records(tmp_path):
  writer = T.MetricWriter(str(tmp_path), enabled=True)
  for s in range(1, 5):
    writer.write(s, "train", {"loss": s})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "spl')  # cut short by a kill
  writer = T.MetricWriter(str(tmp_path), enabled=True)
  writer.truncate_after(2)
  writer.close()
  assert [r["step"] for r in T.read_metrics(str(tmp_path / "metrics.jsonl"))] == [1, 2]
  assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss"] == 2
