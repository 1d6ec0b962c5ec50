"""A tiny NNX model, loss, dataset and config shared by the training tests.

Also imported by the subprocess workers (8 simulated devices; two
``jax.distributed`` processes), so it must not import pytest or conftest.
"""

from __future__ import annotations

import os
import signal

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

N_EXAMPLES = 96
D_IN, D_HID, N_CLASSES = 6, 16, 3
GLOBAL_BATCH = 16


class TinyMLP(nnx.Module):
  """Linear -> BatchNorm -> ReLU -> Dropout -> Linear: params, batch
  statistics and a dropout RNG stream, i.e. every kind of model state.

  The first Linear has no bias: BatchNorm cancels it, so its gradient would
  be pure rounding noise that Adam blows up to full-size steps, and runs
  that differ only in summation order (1 vs 8 devices) would drift apart.
  """

  def __init__(self, *, rngs: nnx.Rngs):
    self.l1 = nnx.Linear(D_IN, D_HID, use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(D_HID, rngs=rngs)
    self.drop = nnx.Dropout(0.25, rngs=rngs)
    self.l2 = nnx.Linear(D_HID, N_CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.drop(nnx.relu(self.bn(self.l1(x)))))


def make_model(seed: int = 0) -> TinyMLP:
  return TinyMLP(rngs=nnx.Rngs(seed))


def make_tx():
  # inject_hyperparams: the step reports the learning rate it used.
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=optax.linear_schedule(3e-2, 3e-3, 20))


def loss_fn(model, batch, rng, *, poison_from: int | None = None):
  """Cross-entropy on inputs jittered with the step's key (exercises the
  per-step RNG); NaN once a batch holds an example index >= poison_from."""
  x = batch["x"] + 0.05 * jax.random.normal(rng, batch["x"].shape)
  logits = model(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
  if poison_from is not None:
    loss = loss + jnp.where(jnp.max(batch["i"]) >= poison_from, jnp.nan, 0.0)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["y"])
  return loss, {"accuracy": accuracy}


def metric_fn(model, batch):
  logits = model(batch["x"])
  return {"correct": jnp.sum(jnp.argmax(logits, -1) == batch["y"]),
          "loss": optax.softmax_cross_entropy_with_integer_labels(
              logits, batch["y"]).sum(),
          "count": jnp.asarray(batch["x"].shape[0], jnp.float32)}


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(N_EXAMPLES, D_IN)).astype(np.float32)
  w = rng.normal(size=(D_IN, N_CLASSES))
  return {"x": x, "y": np.argmax(x @ w, -1).astype(np.int32),
          "i": np.arange(N_EXAMPLES, dtype=np.int32)}


class ArraySource:
  """A grain random-access source over the rows of a dict of arrays."""

  def __init__(self, data: dict[str, np.ndarray]):
    self._data = data

  def __len__(self) -> int:
    return len(self._data["i"])

  def __getitem__(self, index):
    return {k: v[index] for k, v in self._data.items()}


def train_iterator(*, process_index: int = 0, process_count: int = 1,
                   shuffle: bool = True, on_element=None):
  """An endless grain iterator of this process's slice of each global batch.

  Every process builds the same global batches (same seed) and keeps rows
  ``[p * b_local, (p + 1) * b_local)``, the order in which
  ``jax.make_array_from_process_local_data`` stacks them. ``on_element(row)``
  is called as each example is read (used to send a signal mid-run).
  """
  ds = grain.MapDataset.source(ArraySource(arrays()))
  if shuffle:
    ds = ds.shuffle(seed=7)
  ds = ds.repeat(None)
  if on_element is not None:
    ds = ds.map(lambda row: (on_element(row), row)[1])
  ds = ds.batch(GLOBAL_BATCH, drop_remainder=True)
  b = GLOBAL_BATCH // process_count
  ds = ds.map(lambda g: {k: v[process_index * b:(process_index + 1) * b]
                         for k, v in g.items()})
  # No reader threads: elements are read in order inside next(), so a signal
  # sent from on_element arrives while its own batch is fetched.
  return iter(ds.to_iter_dataset(
      grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def eval_batches():
  data = arrays(seed=1)
  return [{k: v[s:s + GLOBAL_BATCH] for k, v in data.items()}
          for s in range(0, N_EXAMPLES, GLOBAL_BATCH)]


def at_read(n: int, action):
  """An ``on_element`` hook running ``action()`` once, as the ``n``-th example
  (1-based) is read: with ``GLOBAL_BATCH`` examples per step, reading
  ``n = GLOBAL_BATCH * (k - 1) + 1`` happens while fetching step ``k``'s batch."""
  count = [0]

  def hook(row):
    del row
    count[0] += 1
    if count[0] == n:
      action()

  return hook


def send_sigterm():
  os.kill(os.getpid(), signal.SIGTERM)


def config(**overrides):
  base = dict(num_steps=10, seed=3, log_every=3, eval_every=4,
              checkpoint_every=4, keep_checkpoints=2, progress=False)
  base.update(overrides)
  return base


def flat_params(state) -> dict[str, np.ndarray]:
  """``{path: array}`` of a state's params and model state, on the host."""
  tree = {"params": state.params, "model_state": state.model_state}
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[jax.tree_util.keystr(path)] = np.asarray(jax.device_get(leaf))
  return out
