"""Tests of ``capsjax.data.digits``: offline digits, composites, grain pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from capsjax.data import digits as dg

# Built once: construction resizes the split (cheap, but reused anyway).
_TRAIN = dg.DigitsSource("train")
_TEST = dg.DigitsSource("test")
_MULTI_TRAIN = dg.MultiDigitsSource("train", num_examples=3000, seed=0)
_MULTI_TEST = dg.MultiDigitsSource("test", num_examples=600, seed=0)


# ------------------------------------------------------------ UCI digits


def test_uci_digits_are_bundled_and_normalised():
  images, labels = dg.load_uci_digits()
  assert images.shape == (1797, 8, 8) and images.dtype == np.float32
  assert labels.shape == (1797,) and labels.dtype == np.int32
  assert images.min() == 0.0 and images.max() == 1.0
  np.testing.assert_array_equal(images * 16, np.round(images * 16))  # 0..16
  counts = np.bincount(labels, minlength=10)
  assert counts.sum() == 1797 and counts.min() >= 170


def test_split_is_stratified_disjoint_and_seeded():
  _, labels = dg.load_uci_digits()
  train, test = dg.split_indices(labels, 0.2, seed=0)
  assert np.intersect1d(train, test).size == 0
  np.testing.assert_array_equal(np.union1d(train, test), np.arange(1797))
  for c in range(10):
    n_c = np.sum(labels == c)
    assert np.sum(labels[test] == c) == round(0.2 * n_c)
  again = dg.split_indices(labels, 0.2, seed=0)
  np.testing.assert_array_equal(again[1], test)
  other = dg.split_indices(labels, 0.2, seed=1)
  assert not np.array_equal(other[1], test)


def test_digits_source_records_and_label_distribution():
  assert len(_TRAIN) + len(_TEST) == 1797
  assert np.intersect1d(_TRAIN.source_ids, _TEST.source_ids).size == 0
  image, label = _TRAIN[5]
  assert image.shape == (8, 8, 1) and image.dtype == np.float32
  assert label.dtype == np.int32 and 0 <= label < 10
  assert 0.0 <= _TRAIN.images.min() and _TRAIN.images.max() <= 1.0
  # Stratified: every class is ~20 % of its digits in test, ~80 % in train.
  for src, frac in [(_TRAIN, 0.8), (_TEST, 0.2)]:
    counts = np.bincount(src.labels, minlength=10)
    full = np.bincount(dg.load_uci_digits()[1], minlength=10)
    assert np.all(np.abs(counts - frac * full) <= 1)
  originals = dg.load_uci_digits()[0][_TRAIN.source_ids]
  np.testing.assert_array_equal(_TRAIN.images[..., 0], originals)


@pytest.mark.parametrize("size", [16, 28])
def test_upsampled_sources(size):
  src = dg.DigitsSource("test", image_size=size)
  assert src.images.shape == (len(_TEST), size, size, 1)
  assert 0.0 <= src.images.min() and src.images.max() <= 1.0
  np.testing.assert_array_equal(src.labels, _TEST.labels)


def test_resize_by_hand():
  # 1-D [0, 1] -> 4 samples at half-pixel centres -0.25, 0.25, 0.75, 1.25 of
  # the input grid, clamped: 0, 0.25, 0.75, 1.
  img = np.array([[[0.0, 1.0], [0.0, 1.0]]])
  np.testing.assert_allclose(dg.resize_images(img, (2, 4))[0, 0],
                             [0.0, 0.25, 0.75, 1.0], atol=1e-7)
  np.testing.assert_array_equal(dg.resize_images(img, (2, 4), "nearest")[0, 0],
                                [0.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("size", [16, 28])
def test_resize_matches_jax_image_resize(size):
  import jax  # pylint: disable=g-import-not-at-top
  images = dg.load_uci_digits()[0][:6]
  for ours, theirs in [("bilinear", "linear"), ("nearest", "nearest")]:
    got = dg.resize_images(images, size, ours)
    want = np.asarray(jax.image.resize(images, (6, size, size), theirs))
    np.testing.assert_allclose(got, want, atol=2e-6, err_msg=ours)


# ----------------------------------------------------- overlapping digits


def _render(recipe, digits, canvas, s):
  """Independent composition: zero-pad each digit by ``s``, roll, max."""
  out = np.zeros((canvas, canvas), np.float32)
  for pos, (dy, dx) in zip(recipe.positions, recipe.shifts):
    padded = np.pad(digits.images[pos, :, :, 0], s)
    out = np.maximum(out, np.roll(padded, (dy, dx), axis=(0, 1)))
  return out


def test_multi_digits_shapes_labels_and_composition():
  m = _MULTI_TRAIN
  assert (m.digit_size, m.max_shift, m.canvas_size) == (16, 2, 20)
  n_single = 0
  shifts = set()
  for i in range(len(m)):
    image, target = m[i]
    r = m.recipe(i)
    assert image.shape == (20, 20, 1) and image.dtype == np.float32
    assert target.shape == (10,) and target.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.flatnonzero(target)) == set(r.classes)
    assert set(np.unique(target)) <= {0.0, 1.0}
    assert r.classes == tuple(int(m.digits.labels[p]) for p in r.positions)
    if len(r.positions) == 1:
      n_single += 1
    else:
      assert len(r.positions) == 2 and r.classes[0] != r.classes[1]
      assert target.sum() == 2
    shifts.update(r.shifts)
    if i < 200:
      np.testing.assert_array_equal(image[..., 0],
                                    _render(r, m.digits, 20, 2))
  # P(single) = 1/6: 500 expected of 3000, sd 20.4.
  assert abs(n_single - 500) < 5 * 20.4
  assert {dy for dy, _ in shifts} == set(range(-2, 3))
  assert {dx for _, dx in shifts} == set(range(-2, 3))


def test_multi_digits_train_and_test_use_disjoint_images():
  used = {}
  for name, m, split_ids in [("train", _MULTI_TRAIN, _TRAIN.source_ids),
                             ("test", _MULTI_TEST, _TEST.source_ids)]:
    np.testing.assert_array_equal(m.digits.source_ids, split_ids)
    pos = {p for i in range(len(m)) for p in m.recipe(i).positions}
    used[name] = set(m.digits.source_ids[sorted(pos)].tolist())
  assert used["train"].isdisjoint(used["test"])
  assert len(used["train"]) > 1000 and len(used["test"]) > 300


def test_multi_digits_deterministic_per_seed_and_random_access():
  a = dg.MultiDigitsSource("train", num_examples=50, seed=3)
  b = dg.MultiDigitsSource("train", num_examples=50, seed=3)
  c = dg.MultiDigitsSource("train", num_examples=50, seed=4)
  forward = [a[i] for i in range(50)]
  backward = [b[i] for i in reversed(range(50))][::-1]
  for (xa, ya), (xb, yb) in zip(forward, backward):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert any(not np.array_equal(forward[i][0], c[i][0]) for i in range(50))
  # Train and test draw differently even with the same seed.
  assert _MULTI_TRAIN.recipe(0) != _MULTI_TEST.recipe(0)


def test_bad_arguments():
  with pytest.raises(ValueError, match="split"):
    dg.DigitsSource("valid")
  with pytest.raises(ValueError, match="image_size"):
    dg.DigitsSource("train", image_size=0)
  with pytest.raises(ValueError, match="method"):
    dg.resize_images(np.zeros((1, 8, 8)), 16, "cubic")
  with pytest.raises(ValueError, match="test_fraction"):
    dg.DigitsSource("train", test_fraction=1.0)
  with pytest.raises(ValueError, match="max_shift"):
    dg.MultiDigitsSource("train", max_shift=-1)
  with pytest.raises(ValueError, match="num_examples"):
    dg.MultiDigitsSource("train", num_examples=0)
  with pytest.raises(IndexError):
    _MULTI_TEST.recipe(len(_MULTI_TEST))


# ---------------------------------------------------------- grain pipeline


def _assert_batches_equal(a, b):
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)


def test_iterator_batches_shapes():
  it = dg.batched_iterator(_MULTI_TEST, 32, seed=0, process_index=0,
                           process_count=1)
  images, targets = next(it)
  assert images.shape == (32, 20, 20, 1) and images.dtype == np.float32
  assert targets.shape == (32, 10)
  images, labels = next(dg.batched_iterator(_TRAIN, 20, seed=0))
  assert images.shape == (20, 8, 8, 1) and labels.shape == (20,)
  assert labels.dtype == np.int32


def test_iterator_resumes_exactly_across_epochs():
  # 359 test digits / 64 = 5 batches per epoch: batch 7 is in epoch 2.
  make = lambda: dg.batched_iterator(_TEST, 64, seed=5, process_index=0,
                                     process_count=1)
  it = make()
  for _ in range(7):
    next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  fresh = make()
  fresh.set_state(state)
  for w in want:
    _assert_batches_equal(next(fresh), w)
  # A different seed gives different batches.
  other = dg.batched_iterator(_TEST, 64, seed=6, process_index=0,
                              process_count=1)
  assert not np.array_equal(next(other)[1], next(make())[1])


def test_epochs_are_permutations_and_reshuffled():
  ids = list(range(40))
  ds = dg.batched_dataset(ids, 8, seed=1, num_epochs=2, process_index=0,
                          process_count=1)
  order = np.concatenate([np.asarray(b) for b in ds])
  assert order.shape == (80,)
  assert sorted(order[:40]) == ids and sorted(order[40:]) == ids
  assert not np.array_equal(order[:40], order[40:])
  assert not np.array_equal(order[:40], ids)
  evaluation = dg.batched_dataset(ids, 16, shuffle=False, num_epochs=1,
                                  drop_remainder=False, process_index=0,
                                  process_count=1)
  np.testing.assert_array_equal(
      np.concatenate([np.asarray(b) for b in evaluation]), ids)


@pytest.mark.parametrize("n_proc", [2, 4])
def test_host_shards_are_disjoint_and_form_the_global_batch(n_proc):
  ids = list(range(100))
  kw = {"seed": 2, "num_epochs": 1}
  single = [np.asarray(b) for b in dg.batched_dataset(
      ids, 8, process_index=0, process_count=1, **kw)]
  hosts = [[np.asarray(b) for b in dg.batched_dataset(
      ids, 8, process_index=p, process_count=n_proc, **kw)]
           for p in range(n_proc)]
  assert all(len(h) == len(single) == 12 for h in hosts)
  seen = [set(np.concatenate(h).tolist()) for h in hosts]
  for p in range(n_proc):
    for q in range(p + 1, n_proc):
      assert seen[p].isdisjoint(seen[q])
  for g, global_batch in enumerate(single):
    np.testing.assert_array_equal(
        np.concatenate([h[g] for h in hosts]), global_batch)


def test_host_shards_of_images_and_defaults_from_jax():
  import jax  # pylint: disable=g-import-not-at-top
  assert (jax.process_index(), jax.process_count()) == (0, 1)
  default = next(dg.batched_iterator(_MULTI_TEST, 16, seed=9))
  halves = [next(dg.batched_iterator(_MULTI_TEST, 16, seed=9,
                                     process_index=p, process_count=2))
            for p in range(2)]
  for k in range(2):
    np.testing.assert_array_equal(
        np.concatenate([h[k] for h in halves]), default[k])


def test_transform_and_pipeline_errors():
  ds = dg.batched_dataset(list(range(10)), 5, shuffle=False,
                          transform=lambda v: 2 * v, process_index=0,
                          process_count=1)
  np.testing.assert_array_equal(np.asarray(ds[0]), [0, 2, 4, 6, 8])
  with pytest.raises(ValueError, match="divisible"):
    dg.batched_dataset(list(range(10)), 10, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="drop_remainder"):
    dg.batched_dataset(list(range(10)), 4, drop_remainder=False,
                       process_index=0, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    dg.batched_dataset(list(range(10)), 4, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="batch_size"):
    dg.batched_dataset(list(range(10)), 0, process_index=0, process_count=1)
  assert dg.steps_per_epoch(1437, 20) == 71
