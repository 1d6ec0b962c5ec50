"""The prepare CLI, a prepare -> read round trip, and the missing-data error.

Nothing here downloads: the CLI tests use a fake builder; the round trip runs
TFDS's real CIFAR-10 builder and writer on a few generated images (only the
raw-file download and TensorFlow's PNG encoder are replaced); the
missing-data test reads an empty directory with the real
``tfds.data_source(download=False)``.
"""

from __future__ import annotations

import importlib.resources
import io
import sys
from typing import ClassVar

import numpy as np
import pytest

from capsjax.data import errors, images, prepare


class _FakeBuilder:
  calls: ClassVar[list[tuple[str, str | None, str]]] = []

  def __init__(self, name, *, data_dir=None):
    self.name, self.data_dir = name, data_dir

  def download_and_prepare(self, *, file_format=None):
    _FakeBuilder.calls.append((self.name, self.data_dir, file_format))


@pytest.fixture
def fake_tfds(monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _FakeBuilder.calls = []
  monkeypatch.setattr(tfds, "builder", _FakeBuilder)
  monkeypatch.setattr(prepare, "_require_tensorflow", lambda: None)
  return _FakeBuilder.calls


def test_cli_prepares_each_dataset_as_array_record(fake_tfds, tmp_path):
  status = prepare.main(["--datasets=cifar10, mnist", f"--data_dir={tmp_path}"])
  assert status == 0
  assert fake_tfds == [("cifar10", str(tmp_path), "array_record"),
                       ("mnist", str(tmp_path), "array_record")]


def test_cli_all_and_default_data_dir(fake_tfds):
  assert prepare.main(["--datasets", "all"]) == 0
  assert [c[0] for c in fake_tfds] == ["cifar10", "cifar100", "svhn_cropped",
                                       "smallnorb", "mnist"]
  assert {c[1] for c in fake_tfds} == {None}


@pytest.mark.parametrize("arg,message", [
    ("--datasets=imagenet", "unknown dataset"),
    ("--datasets=mnist,mnist", "named twice"),
    ("--datasets=,", "is empty"),
])
def test_cli_rejects_bad_dataset_lists(fake_tfds, capsys, arg, message):
  with pytest.raises(SystemExit) as e:
    prepare.main([arg])
  assert e.value.code == 2
  assert message in capsys.readouterr().err
  assert fake_tfds == []


def test_cli_without_tensorflow_names_the_extra(monkeypatch, capsys):
  monkeypatch.setattr(prepare.importlib.util, "find_spec", lambda name: None)
  called = []
  monkeypatch.setattr(prepare, "prepare", lambda *a, **k: called.append(a))
  assert prepare.main(["--datasets=mnist"]) == 1
  assert "pip install 'capsjax[prepare]'" in capsys.readouterr().err
  assert called == []


def test_missing_data_stops_with_the_prepare_command(tmp_path):
  with pytest.raises(errors.DatasetUnavailableError) as e:
    images.image_iterator("cifar100", "train", data_dir=str(tmp_path),
                          batch_size=4, seed=0, train=True, process_index=0,
                          process_count=1)
  message = str(e.value)
  assert isinstance(e.value, FileNotFoundError)
  assert "'cifar100'" in message
  assert ("python -m capsjax.data.prepare --datasets=cifar100 "
          f"--data_dir={tmp_path}") in message
  with pytest.raises(errors.DatasetUnavailableError, match="smallnorb"):
    images.num_examples("smallnorb", "test", data_dir=str(tmp_path))
  assert list(tmp_path.iterdir()) == []  # nothing downloaded or created


def _png(encoder, image: np.ndarray) -> bytes:
  """PNG bytes as TFDS writes them, with Pillow instead of TensorFlow."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  del encoder
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def test_prepared_array_record_files_are_read_back(monkeypatch, tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.features import image_feature  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import cifar  # pylint: disable=g-import-not-at-top
  # TFDS's builder needs importlib_resources (the `prepare` extra); the
  # standard library's module has the same API for what it uses.
  monkeypatch.setitem(sys.modules, "importlib_resources",
                      sys.modules.get("importlib_resources", importlib.resources))
  monkeypatch.setattr(image_feature._ImageEncoder, "_encode_image", _png)
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 12)

  def split_generators(self, dl_manager):  # instead of the download
    del self, dl_manager
    def examples(lo, hi):
      for i in range(lo, hi):
        yield i, {"id": f"x{i}", "image": pixels[i], "label": int(labels[i])}
    return {"train": examples(0, 7), "test": examples(7, 12)}

  monkeypatch.setattr(cifar.Cifar10, "_split_generators", split_generators)
  prepare.prepare(["cifar10"], str(tmp_path), builder=tfds.builder,
                  log=lambda _: None)
  files = {p.name for p in (tmp_path / "cifar10").glob("*/*")}
  assert {"dataset_info.json", "features.json"} <= files
  assert any(".array_record-" in f for f in files)

  data_dir = str(tmp_path)
  assert images.num_examples("cifar10", "train", data_dir=data_dir) == 7
  batches = list(images.image_eval_batches(
      "cifar10", "test", data_dir=data_dir, batch_size=4, process_index=0,
      process_count=1))
  x = np.concatenate([b[0] for b in batches])
  y = np.concatenate([b[1] for b in batches])
  valid = np.concatenate([b[2] for b in batches])
  np.testing.assert_array_equal(valid, [1, 1, 1, 1, 1, 0, 0, 0])
  # TFDS stores the records in its own (hashed) order: compare as a set.
  mean, std = np.asarray(images.CIFAR10_MEAN), np.asarray(images.CIFAR10_STD)
  want = {int(labels[i]): [] for i in range(7, 12)}
  for i in range(7, 12):
    want[int(labels[i])].append((pixels[i] / 255.0 - mean) / std)
  for image, label in zip(x[:5], y[:5]):
    assert any(np.allclose(image, w, atol=1e-5) for w in want[int(label)])
  x, y = next(images.image_iterator(
      "cifar10", "train", data_dir=data_dir, batch_size=4, seed=0, train=True,
      process_index=0, process_count=1))
  assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
  assert set(y.tolist()) <= set(labels[:7].tolist())
