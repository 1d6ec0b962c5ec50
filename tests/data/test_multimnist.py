"""Tests of ``capsjax.data.multimnist``: DiverseMultiMNIST (Tsai et al., App. B.2)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from capsjax.data import images, pipeline
from capsjax.data import multimnist as mm
from capsjax.data.errors import DatasetUnavailableError

_N_TRAIN, _N_TEST = 40, 30
_TRAIN_VALUE, _TEST_VALUE = 51, 153   # 0.2 and 0.6 after / 255


def _fake_mnist(n: int, value: int, seed: int) -> list[dict[str, np.ndarray]]:
  """MNIST-like records: random blobs of one grey value, labels k % 10."""
  rng = np.random.default_rng(seed)
  records = []
  for k in range(n):
    mask = rng.random((28, 28, 1)) < 0.3
    records.append({"image": (mask * value).astype(np.uint8),
                    "label": np.int64(k % 10)})
  return records


_FAKE_TRAIN = _fake_mnist(_N_TRAIN, _TRAIN_VALUE, 0)
_FAKE_TEST = _fake_mnist(_N_TEST, _TEST_VALUE, 1)


def _reference(source, recipe) -> np.ndarray:
  """The record by hand: pad each digit by 4, roll it by its shift, add, clip."""
  total = np.zeros((36, 36, 1))
  for pos, (dy, dx) in zip(recipe.positions, recipe.shifts):
    digit = source[pos]["image"].astype(np.float64) / 255.0
    padded = np.pad(digit, ((4, 4), (4, 4), (0, 0)))
    total += np.roll(padded, (dy, dx), axis=(0, 1))  # no wrap: |shift| <= 4
  return np.minimum(total, 1.0)


def test_records_match_the_hand_composition():
  src = mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", num_examples=200)
  assert len(src) == 200 and src.canvas_size == 36
  n_two = 0
  for i in range(60):
    image, target = src[i]
    r = src.recipe(i)
    assert image.shape == (36, 36, 1) and image.dtype == np.float32
    assert target.shape == (10,) and target.dtype == np.float32
    np.testing.assert_allclose(image, _reference(_FAKE_TRAIN, r), atol=1e-6)
    assert len(r.positions) in (1, 2)
    assert list(np.flatnonzero(target)) == sorted(r.classes)
    assert r.classes == tuple(int(_FAKE_TRAIN[p]["label"]) for p in r.positions)
    n_two += len(r.positions) == 2
  assert 0 < n_two < 60


def test_proportions_distinct_classes_and_shift_range():
  src = mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", num_examples=1200)
  recipes = [src.recipe(i) for i in range(1200)]
  singles = sum(len(r.positions) == 1 for r in recipes)
  # 1/6 single-digit images (App. B.2): 200 expected, binomial sd ~12.9.
  assert abs(singles - 200) < 4 * 12.9
  assert all(len(set(r.classes)) == len(r.classes) for r in recipes)
  shifts = np.array([s for r in recipes for s in r.shifts])
  assert shifts.min() == -4 and shifts.max() == 4  # up to 4 px each way
  firsts = np.bincount([r.positions[0] for r in recipes], minlength=_N_TRAIN)
  assert firsts.min() > 0  # every digit gets drawn


def test_train_and_test_compose_only_their_own_split(monkeypatch):
  asked = []

  def fake_tfds_source(name, split, *, data_dir):
    asked.append((name, split, data_dir))
    return {"train": _FAKE_TRAIN, "test": _FAKE_TEST}[split]

  monkeypatch.setattr(images, "tfds_source", fake_tfds_source)
  train = mm.diverse_multimnist("train", data_dir="/d", num_examples=100)
  test = mm.diverse_multimnist("test", data_dir="/d", num_examples=100)
  assert asked == [("mnist", "train", "/d"), ("mnist", "test", "/d")]
  # Train pixels are sums of 0.2s, test pixels sums of 0.6s (clipped at 1).
  train_values = np.unique(np.concatenate([train[i][0].ravel() for i in range(100)]))
  test_values = np.unique(np.concatenate([test[i][0].ravel() for i in range(100)]))
  np.testing.assert_allclose(train_values, [0.0, 0.2, 0.4], atol=1e-6)
  np.testing.assert_allclose(test_values, [0.0, 0.6, 1.0], atol=1e-6)


def test_deterministic_per_seed_and_index_in_any_order():
  a = mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", num_examples=50, seed=3)
  b = mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", num_examples=50, seed=3)
  c = mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", num_examples=50, seed=4)
  forward = [a[i] for i in range(10)]
  backward = [b[i] for i in reversed(range(10))][::-1]
  for (xa, ya), (xb, yb) in zip(forward, backward):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert any(a.recipe(i) != c.recipe(i) for i in range(10))
  # The split is part of the seed: same MNIST, same seed, other draws.
  t = mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "test", num_examples=50, seed=3)
  assert any(a.recipe(i) != t.recipe(i) for i in range(10))


def test_iterator_resumes_exactly_and_hosts_rebuild_the_global_batch():
  src = mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", num_examples=48)
  kw = {"seed": 5, "process_index": 0, "process_count": 1}
  it = pipeline.batched_iterator(src, 8, **kw)
  for _ in range(7):   # past the first epoch (6 batches)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = pipeline.batched_iterator(src, 8, **kw)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])

  whole = next(iter(pipeline.batched_dataset(src, 8, **kw)))
  hosts = [next(iter(pipeline.batched_dataset(
      src, 8, seed=5, process_index=p, process_count=2))) for p in range(2)]
  for field in range(2):
    np.testing.assert_array_equal(
        np.concatenate([h[field] for h in hosts]), whole[field])


def test_reads_prepared_mnist_through_tfds():
  with tfds.testing.mock_data(num_examples=20):
    src = mm.diverse_multimnist("test", data_dir=None, num_examples=12, seed=1)
    image, target = src[7]
    r = src.recipe(7)
    mnist = tfds.data_source("mnist", split="test")
    np.testing.assert_allclose(image, _reference(mnist, r), atol=1e-6)
  assert image.shape == (36, 36, 1) and 0.0 <= image.min() <= image.max() <= 1.0
  assert target.sum() in (1.0, 2.0)


def test_missing_mnist_is_one_clear_error(tmp_path):
  with pytest.raises(DatasetUnavailableError) as e:
    mm.diverse_multimnist("train", data_dir=str(tmp_path))
  message = str(e.value)
  assert "dataset 'diverse_multimnist'" in message
  assert "capsjax.data.prepare --datasets=mnist" in message


def test_bad_arguments():
  with pytest.raises(ValueError, match="split"):
    mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "val")
  with pytest.raises(ValueError, match="num_examples"):
    mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", num_examples=0)
  with pytest.raises(ValueError, match="single_prob"):
    mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", single_prob=1.5)
  with pytest.raises(ValueError, match="max_shift"):
    mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", max_shift=-1)
  with pytest.raises(ValueError, match="overlay"):
    mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", overlay="mean")
  with pytest.raises(IndexError):
    mm.DiverseMultiMNISTSource(_FAKE_TRAIN, "train", num_examples=3)[3]
  bad = [{"image": np.zeros((32, 32, 1), np.uint8), "label": 0},
         {"image": np.zeros((32, 32, 1), np.uint8), "label": 1}]
  with pytest.raises(ValueError, match="expected shape"):
    mm.DiverseMultiMNISTSource(bad, "train")[0]
