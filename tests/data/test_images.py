"""Image pipelines on ``tfds.testing.mock_data`` (no real data, no TensorFlow).

Every record of the mock sources is random, read back by index from the same
source, so references are computed from the raw records with NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

from capsjax.data import images, pipeline

N = 10  # mock examples per split
_ABSENT = "/nonexistent/capsjax-test-data"  # mock_data ignores data_dir


@pytest.fixture(scope="module", autouse=True)
def mock_tfds():
  with tfds.testing.mock_data(num_examples=N):
    yield


def _raw(name: str, index: int, split: str = "test") -> tuple[np.ndarray, int]:
  """Record ``index`` as (uint8 image [H, W, C], label), read independently."""
  record = tfds.data_source(name, split=split)[index]
  if name == "smallnorb":
    return (np.concatenate([record["image"], record["image2"]], -1),
            int(record["label_category"]))
  return record["image"], int(record["label"])


def _reference(name: str, image: np.ndarray) -> np.ndarray:
  x = image.astype(np.float64) / 255.0
  stats = {"cifar10": (images.CIFAR10_MEAN, images.CIFAR10_STD),
           "cifar100": (images.CIFAR100_MEAN, images.CIFAR100_STD),
           "svhn_cropped": (images.SVHN_MEAN, images.SVHN_STD)}
  if name in stats:
    mean, std = stats[name]
    x = (x - np.asarray(mean)) / np.asarray(std)
  return x


def _iterator(name, **kwargs):
  kwargs = {"split": "train", "data_dir": _ABSENT, "batch_size": 4,
            "seed": 3, "train": True, "process_index": 0,
            "process_count": 1, **kwargs}
  split = kwargs.pop("split")
  return images.image_iterator(name, split, **kwargs)


_SHAPES = {"cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100),
           "svhn_cropped": ((32, 32, 3), 10), "smallnorb": ((96, 96, 2), 5),
           "mnist": ((28, 28, 1), 10)}


@pytest.mark.parametrize("name", sorted(_SHAPES))
def test_batches_have_the_dataset_shapes_dtypes_and_values(name):
  shape, n_classes = _SHAPES[name]
  x, y = next(_iterator(name))
  assert x.shape == (4, *shape) and x.dtype == np.float32
  assert y.shape == (4,) and y.dtype == np.int32
  assert np.all((0 <= y) & (y < n_classes))
  assert images.spec(name).num_classes == n_classes
  if name in ("smallnorb", "mnist"):
    assert 0.0 <= x.min() and x.max() <= 1.0
  # Evaluation: source order, no augmentation, exactly the normalised record.
  ex, ey, valid = next(iter(images.image_eval_batches(
      name, "test", data_dir=_ABSENT, batch_size=4, process_index=0,
      process_count=1)))
  for i in range(4):
    image, label = _raw(name, i)
    np.testing.assert_allclose(ex[i], _reference(name, image), atol=1e-5)
    assert ey[i] == label
  np.testing.assert_array_equal(valid, np.ones(4, np.float32))


def _find_shift(out: np.ndarray, raw: np.ndarray, pad: int,
                fill: np.ndarray) -> tuple[int, int, bool] | None:
  """The (dy, dx, flipped) for which ``out`` is ``raw`` shifted (+ flipped)."""
  h, w, _ = raw.shape
  for flipped in (False, True):
    src = raw[:, ::-1] if flipped else raw
    for dy in range(-pad, pad + 1):
      for dx in range(-pad, pad + 1):
        expect = np.broadcast_to(fill, raw.shape).copy()
        ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
        expect[ys, xs] = src[max(0, dy):min(h, h + dy), max(0, dx):min(w, w + dx)]
        if np.allclose(out, expect, atol=1e-5):
          return dy, dx, flipped
  return None


@pytest.mark.parametrize("name,flips", [("cifar10", True),
                                        ("svhn_cropped", False)])
def test_training_images_are_shifted_and_flipped_source_images(name, flips):
  it = _iterator(name, batch_size=N, num_epochs=3)
  pad = images.spec(name).pad
  fill = _reference(name, np.zeros((1, 1, 3), np.uint8))  # black padding
  raws = [_raw(name, i, "train") for i in range(N)]
  found = []
  for x, y in it:
    for image, label in zip(x, y):
      matches = [(i, _find_shift(image, _reference(name, raws[i][0]), pad, fill))
                 for i in range(N) if raws[i][1] == label]
      matches = [(i, m) for i, m in matches if m is not None]
      assert matches, "a training image is no shifted source image"
      found.append(matches[0][1])
  assert len(found) == 3 * N
  shifts = {(dy, dx) for dy, dx, _ in found}
  assert len(shifts) > 5  # crops really move the content, and vary
  flipped = [f for _, _, f in found]
  if flips:
    assert 0 < sum(flipped) < len(flipped)
  else:
    assert not any(flipped)


def test_augment_image_maps_pixels_as_documented():
  image = np.arange(6 * 5 * 2, dtype=np.int32).reshape(6, 5, 2) + 1
  seen = set()
  for seed in range(40):
    rng = np.random.default_rng(seed)
    dy, dx = np.random.default_rng(seed).integers(0, 7, size=2)
    out = images.augment_image(image, rng, pad=3, flip=False)
    for y in range(6):
      for x in range(5):
        sy, sx = y + dy - 3, x + dx - 3
        want = image[sy, sx] if 0 <= sy < 6 and 0 <= sx < 5 else 0
        np.testing.assert_array_equal(out[y, x], want)
    seen.add((int(dy), int(dx)))
  assert len(seen) > 10
  # Flip: mirrored exactly when the generator's draw is below 1/2.
  outcomes = set()
  for seed in range(8):
    flip = np.random.default_rng(seed).random() < 0.5
    out = images.augment_image(image, np.random.default_rng(seed), pad=0,
                               flip=True)
    np.testing.assert_array_equal(out, image[:, ::-1] if flip else image)
    outcomes.add(bool(flip))
  assert outcomes == {True, False}


def test_smallnorb_crop_pads_16_and_keeps_the_stereo_pair_aligned():
  x, y = next(_iterator("smallnorb", batch_size=4, seed=1))
  raws = [_raw("smallnorb", i, "train") for i in range(N)]
  zero = np.zeros(2)
  for image, label in zip(x, y):
    candidates = [i for i in range(N) if raws[i][1] == label]
    hits = []
    for i in candidates:
      ref = raws[i][0] / 255.0
      # Locate the shift from one pixel row, then check the whole image.
      for dy in range(-16, 17):
        for dx in range(-16, 17):
          ys = slice(max(0, -dy), min(96, 96 - dy))
          xs = slice(max(0, -dx), min(96, 96 - dx))
          src = ref[max(0, dy):min(96, 96 + dy), max(0, dx):min(96, 96 + dx)]
          if np.allclose(image[ys, xs], src, atol=1e-6):
            expect = np.broadcast_to(zero, ref.shape).copy()
            expect[ys, xs] = src
            if np.allclose(image, expect, atol=1e-6):
              hits.append((dy, dx))
    assert hits, "a smallNORB training image is no shifted stereo pair"


def test_no_augmentation_when_not_training_or_asked_for_none():
  refs = [_reference("cifar10", _raw("cifar10", i, "train")[0])
          for i in range(N)]
  x, _ = next(_iterator("cifar10", train=False))  # source order, as stored
  for i in range(4):
    np.testing.assert_allclose(x[i], refs[i], atol=1e-5)
  x, _ = next(_iterator("cifar10", augment="none", seed=5))  # shuffled only
  for image in x:
    assert any(np.allclose(image, r, atol=1e-5) for r in refs)


def test_iterator_resumes_exactly_with_augmentation():
  it = _iterator("cifar10", batch_size=4, seed=7)
  for _ in range(4):  # past the first epoch (10 examples, 2 batches each)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = _iterator("cifar10", batch_size=4, seed=7)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  # Another seed draws other crops: the seed matters.
  other = _iterator("cifar10", batch_size=4, seed=8)
  assert not np.array_equal(next(other)[0], next(_iterator(
      "cifar10", batch_size=4, seed=7))[0])


def test_two_hosts_reassemble_the_one_host_global_batches():
  one = _iterator("svhn_cropped", batch_size=4, seed=2)
  hosts = [_iterator("svhn_cropped", batch_size=4, seed=2, process_index=p,
                     process_count=2) for p in range(2)]
  for _ in range(6):  # three epochs of 2 global batches
    x, y = next(one)
    parts = [next(h) for h in hosts]
    assert parts[0][0].shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)


def test_eval_batches_count_every_example_once_on_each_host_split():
  single = list(images.image_eval_batches(
      "mnist", "test", data_dir=_ABSENT, batch_size=4, process_index=0,
      process_count=1))
  assert len(single) == 3  # ceil(10 / 4)
  x = np.concatenate([b[0] for b in single])
  y = np.concatenate([b[1] for b in single])
  valid = np.concatenate([b[2] for b in single])
  np.testing.assert_array_equal(valid, [1] * N + [0, 0])
  for i in range(N):
    image, label = _raw("mnist", i)
    np.testing.assert_allclose(x[i], image / 255.0, atol=1e-6)
    assert y[i] == label
  np.testing.assert_array_equal(x[N:], 0.0)
  hosts = [list(images.image_eval_batches(
      "mnist", "test", data_dir=_ABSENT, batch_size=4, process_index=p,
      process_count=2)) for p in range(2)]
  for g, batch in enumerate(single):
    for field in range(3):
      np.testing.assert_array_equal(
          np.concatenate([hosts[0][g][field], hosts[1][g][field]]),
          batch[field])
  # Re-iterable: a second evaluation sees the same batches.
  again = images.image_eval_batches("mnist", "test", data_dir=_ABSENT,
                                    batch_size=4, process_index=0,
                                    process_count=1)
  assert sum(float(b[2].sum()) for b in again) == N
  assert sum(float(b[2].sum()) for b in again) == N


def test_pipeline_eval_batches_match_padded_batches_on_arrays():
  from capsjax.train import entrypoint  # pylint: disable=g-import-not-at-top
  xs = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
  ys = np.arange(7, dtype=np.int32)
  source = list(zip(xs, ys))
  for p in range(2):
    want = entrypoint.padded_batches((xs, ys), 4, process_index=p,
                                     process_count=2)
    got = list(pipeline.eval_batches(source, 4, process_index=p,
                                     process_count=2))
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
      for a, b in zip(g, w):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_are_rejected():
  with pytest.raises(ValueError, match="name must be one of"):
    images.spec("imagenet")
  with pytest.raises(ValueError, match="augment must be one of"):
    _iterator("cifar10", augment="rotate")
  with pytest.raises(ValueError, match="needs a crop padding"):
    _iterator("mnist", augment="crop")
