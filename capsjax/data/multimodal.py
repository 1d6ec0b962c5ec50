r"""Pre-extracted multimodal clip features on disk: format, writer, reader, converter.

Duarte et al. (2021) and Swetha et al. (2023) train and evaluate on features
extracted once by frozen backbones: video (2D ResNet-152 at 1 fps + 3D
ResNeXt-101 at 1.5 fps, 2048-d each), audio and text (word2vec, 300-d per
word). This module stores such features per clip in a simple memory-mapped
layout that a grain pipeline reads at random (host sharding, exact resume),
and converts the public feature releases of AVLnet / Everything-At-Once
(EAO) into it.

On-disk format (version 1), one directory per split::

  DIR/meta.json         {"format": "capsjax.multimodal_features", "version": 1,
                         "num_clips": N, "num_queries": Q,
                         "modalities": {m: {"dim": d_m, "max_len": L_m,
                                            "dtype": "float32"|"float16",
                                            "parts": [..] | null}, ...},
                         "ids": [N clip ids], "has_labels": bool,
                         "num_classes": int | null, "source": str}
  DIR/<m>.npy           [N, L_m, d_m] features, zero beyond each clip's length
  DIR/<m>_mask.npy      [N, L_m] bool, True for real tokens (a prefix)
  DIR/labels.npy        [N] int32 (only with has_labels)

* Every modality is a **sequence** padded to ``max_len`` (a pooled feature is
  a sequence of length 1). Arrays are ``.npy`` files opened with
  ``mmap_mode="r"``, so a reader touches only the clips it reads.
* ``parts``: the widths of concatenated blocks inside a token (video:
  ``[2048, 2048]`` = 2D then 3D); the transforms normalise each block on its
  own, as the papers' loaders do.
* ``num_queries``: the complete size of an evaluation set when some clips
  lack features (their queries count as misses; see
  ``capsjax.evaluation.retrieval_metrics``).
* ``meta.json`` is written last: a directory without it is incomplete.

Records (:class:`FeatureClipSource`, and
``capsjax.data.synthetic_multimodal.SyntheticTriModal`` in the same layout)
are dicts ``{m: float32 [L_m, d_m], f"{m}_mask": bool [L_m]}`` plus
``"label": int32 []`` when the split has labels; grain batches them into the
same dict with a leading batch axis, which is what
``capsjax.models.swetha2023.Swetha2023Model`` takes (``text``, ``text_mask``,
...). :func:`pool_record` turns a record into the per-clip vectors of
``capsjax.models.duarte2021`` (``{m: [d_m]}``), :func:`normalize_record`
applies the per-token normalisation of EAO.

Converters (``python -m capsjax.data.multimodal convert ...`` and
``convert_howto100m ...``) from the public AVLnet / Everything-At-Once feature
releases live in :mod:`capsjax.data.multimodal_convert`, whose docstring
lists every assumption about those files.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from capsjax import _shapes
from capsjax.data.errors import DatasetUnavailableError

__all__ = [
    "FORMAT",
    "VERSION",
    "FeatureClipSource",
    "FeatureClipWriter",
    "ModalitySpec",
    "main",
    "normalize_record",
    "pool_record",
    "write_feature_clips",
]

FORMAT = "capsjax.multimodal_features"
VERSION = 1
_DTYPES = ("float32", "float16")
_CONVERT_HINT = ("python -m capsjax.data.multimodal convert --input=FILE.pkl "
                 "--output=DIR --word_vectors=GoogleNews-vectors-negative300.bin")


# ----------------------------------------------------------------------------
# Format: writer and reader.
# ----------------------------------------------------------------------------


class ModalitySpec(dict):
  """One modality's entry of ``meta.json``: ``dim``, ``max_len``, ``dtype``,
  ``parts`` (a plain dict, so it serialises as it is)."""

  def __init__(self, dim: int, max_len: int, *, dtype: str = "float32",
               parts: Sequence[int] | None = None):
    _shapes.check_positive_int("dim", dim)
    _shapes.check_positive_int("max_len", max_len)
    if dtype not in _DTYPES:
      raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
    if parts is not None:
      parts = [int(p) for p in parts]
      if any(p < 1 for p in parts) or sum(parts) != dim:
        raise ValueError(
            f"parts must be positive widths summing to dim = {dim}, got "
            f"{parts}.")
    super().__init__(dim=int(dim), max_len=int(max_len), dtype=dtype,
                     parts=parts)


def _check_modality_name(name: str) -> None:
  if (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]+", name)
      or name.endswith("_mask") or name in ("label", "labels", "meta")):
    raise ValueError(
        f"modality names must be [A-Za-z0-9_]+, not end in '_mask' and not "
        f"be 'label', 'labels' or 'meta'; got {name!r}.")


class FeatureClipWriter:
  """Writes clips one by one into the on-disk format (streams to disk).

  Use as a context manager, or call :meth:`close` after the last
  :meth:`add`; ``meta.json`` is written by a successful close only.
  """

  def __init__(self, directory: str, modalities: Mapping[str, ModalitySpec],
               num_clips: int, *, has_labels: bool = False,
               num_classes: int | None = None, num_queries: int | None = None,
               source: str = ""):
    """Creates the arrays.

    Args:
      directory: the split's directory (created; must not hold a
        ``meta.json`` yet).
      modalities: ``{name: ModalitySpec}``.
      num_clips: clips that will be added.
      has_labels: whether each clip gets an integer label.
      num_classes: optional, stored in the meta data.
      num_queries: complete evaluation size (default ``num_clips``).
      source: free text saved in the meta data (where the features came
        from).
    """
    _shapes.check_positive_int("num_clips", num_clips)
    if not modalities:
      raise ValueError("modalities must name at least one modality.")
    if num_queries is not None and num_queries < num_clips:
      raise ValueError(f"num_queries = {num_queries} must be >= num_clips = "
                       f"{num_clips}.")
    specs = {}
    for name, spec in modalities.items():
      _check_modality_name(name)
      specs[name] = ModalitySpec(spec["dim"], spec["max_len"],
                                 dtype=spec.get("dtype", "float32"),
                                 parts=spec.get("parts"))
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(os.path.join(directory, "meta.json")):
      raise FileExistsError(
          f"{directory!r} already holds a feature split (meta.json); remove it "
          f"or choose another directory.")
    self.directory, self.specs, self.num_clips = directory, specs, num_clips
    self.meta = {"num_classes": num_classes, "source": source,
                 "num_queries": num_queries or num_clips,
                 "has_labels": bool(has_labels)}
    open_memmap = np.lib.format.open_memmap
    self._features, self._masks = {}, {}
    for name, spec in specs.items():
      self._features[name] = open_memmap(
          os.path.join(directory, f"{name}.npy"), mode="w+",
          dtype=spec["dtype"], shape=(num_clips, spec["max_len"], spec["dim"]))
      self._masks[name] = open_memmap(
          os.path.join(directory, f"{name}_mask.npy"), mode="w+",
          dtype=np.bool_, shape=(num_clips, spec["max_len"]))
    self._labels = (np.zeros(num_clips, np.int32) if has_labels else None)
    self._ids: list[str] = []

  def add(self, clip_id: str, features: Mapping[str, np.ndarray],
          label: int | None = None) -> None:
    """Appends one clip.

    Args:
      clip_id: its id (kept in ``meta.json``).
      features: ``{m: [T_m, d_m]}`` for every modality (``T_m`` may be 0;
        longer sequences are cut to ``max_len``).
      label: its class, iff the writer has labels.
    """
    i = len(self._ids)
    if i >= self.num_clips:
      raise ValueError(f"all {self.num_clips} clips were already added.")
    if set(features) != set(self.specs):
      raise ValueError(f"features must have the modalities {sorted(self.specs)}"
                       f", got {sorted(features)}.")
    if (label is None) != (self._labels is None):
      raise ValueError("label must be given iff the writer has labels.")
    for name, x in features.items():
      spec = self.specs[name]
      x = np.asarray(x, np.float32)
      _shapes.check_shape(f"features[{name!r}]", x, (None, spec["dim"]),
                          f"[T, {name}_dim]")
      if not np.isfinite(x).all():
        raise ValueError(f"features[{name!r}] of clip {clip_id!r} is not "
                         "finite.")
      t = min(len(x), spec["max_len"])
      self._features[name][i, :t] = x[:t]
      self._masks[name][i, :t] = True
    if label is not None:
      self._labels[i] = int(label)
    self._ids.append(str(clip_id))

  def close(self) -> None:
    """Flushes the arrays and writes ``meta.json`` (all clips must be added)."""
    if len(self._ids) != self.num_clips:
      raise ValueError(f"{len(self._ids)} of {self.num_clips} clips were "
                       "added; add them all before closing.")
    for arr in (*self._features.values(), *self._masks.values()):
      arr.flush()
    if self._labels is not None:
      np.save(os.path.join(self.directory, "labels.npy"), self._labels)
    meta = {"format": FORMAT, "version": VERSION, "num_clips": self.num_clips,
            "modalities": self.specs, "ids": self._ids, **self.meta}
    tmp = os.path.join(self.directory, "meta.json.tmp")
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=1)
    os.replace(tmp, os.path.join(self.directory, "meta.json"))

  def __enter__(self) -> Self:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()


def write_feature_clips(directory: str, clips: Sequence[Mapping[str, np.ndarray]],
                        *, max_lens: Mapping[str, int] | None = None,
                        ids: Sequence[str] | None = None,
                        labels: Sequence[int] | None = None,
                        parts: Mapping[str, Sequence[int]] | None = None,
                        dtype: str = "float32", **writer_kwargs: Any) -> None:
  """Writes a list of clips ``{m: [T_m, d_m]}`` in one call.

  Args:
    directory: the split's directory.
    clips: the clips; every clip has the same modalities and widths.
    max_lens: ``{m: L_m}``; default the longest sequence of each modality.
    ids: clip ids (default ``"0", "1", ...``).
    labels: optional ``[N]`` classes.
    parts: optional ``{m: widths}`` of concatenated blocks.
    dtype: storage dtype, ``"float32"`` or ``"float16"``.
    **writer_kwargs: ``num_classes``, ``num_queries``, ``source``.
  """
  if not clips:
    raise ValueError("clips must hold at least one clip.")
  names = list(clips[0])
  specs = {}
  for m in names:
    dim = _shapes.check_ndim(f"clips[0][{m!r}]", clips[0][m], 2, "[T, d]")[1]
    longest = max(1, max(len(c[m]) for c in clips))
    specs[m] = ModalitySpec(dim, (max_lens or {}).get(m, longest), dtype=dtype,
                            parts=(parts or {}).get(m))
  ids = [str(i) for i in range(len(clips))] if ids is None else ids
  if len(ids) != len(clips) or (labels is not None and len(labels) != len(clips)):
    raise ValueError("ids and labels must have one entry per clip.")
  with FeatureClipWriter(directory, specs, len(clips),
                         has_labels=labels is not None, **writer_kwargs) as w:
    for k, clip in enumerate(clips):
      w.add(ids[k], clip, None if labels is None else labels[k])


class FeatureClipSource:
  """Random-access reader of one split (a grain data source).

  ``source[i]`` is ``{m: float32 [L_m, d_m], f"{m}_mask": bool [L_m]}`` (+
  ``"label": int32 []``), read from memory-mapped files, so it can feed
  ``capsjax.data.digits.batched_dataset`` (shuffling, host sharding, exact
  resume) and be opened by every host.

  Attributes:
    directory: the split's directory.
    meta: the parsed ``meta.json``.
    modalities: the modalities read.
    ids: the clip ids.
    dims: ``{m: d_m}``; ``max_lens``: ``{m: L_m}``; ``parts``: ``{m: widths
      or None}``.
    num_queries: the complete evaluation size (>= ``len(self)``).
  """

  def __init__(self, directory: str, *, modalities: Sequence[str] | None = None):
    """Opens the split.

    Args:
      directory: the split's directory (holding ``meta.json``).
      modalities: the modalities to read (default all of them).

    Raises:
      DatasetUnavailableError: if ``directory`` holds no ``meta.json`` (not
        converted, or an interrupted conversion); the message names the
        converter command.
      ValueError: on another format or version, an unknown modality, or
        arrays whose shapes disagree with the meta data.
    """
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.exists(meta_path):
      raise DatasetUnavailableError(
          f"no multimodal feature split at {directory!r} (its meta.json is "
          f"missing). Obtain the pre-extracted features (e.g. the YouCook2 / "
          f"MSR-VTT pickles released with AVLnet or Everything-At-Once) and "
          f"convert them: {_CONVERT_HINT}")
    with open(meta_path) as f:
      meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
      raise ValueError(
          f"{meta_path} is not a {FORMAT} version {VERSION} file (format "
          f"{meta.get('format')!r}, version {meta.get('version')!r}).")
    available = list(meta["modalities"])
    modalities = available if modalities is None else list(modalities)
    for m in modalities:
      if m not in available:
        raise ValueError(f"modality {m!r} is not in {directory!r}; it has "
                         f"{available}.")
    n = meta["num_clips"]
    self.directory, self.meta, self.modalities = directory, meta, tuple(modalities)
    self.ids = list(meta["ids"])
    self.num_queries = int(meta.get("num_queries") or n)
    self.dims = {m: meta["modalities"][m]["dim"] for m in modalities}
    self.max_lens = {m: meta["modalities"][m]["max_len"] for m in modalities}
    self.parts = {m: meta["modalities"][m].get("parts") for m in modalities}
    self._features, self._masks = {}, {}
    for m in modalities:
      x = np.load(os.path.join(directory, f"{m}.npy"), mmap_mode="r")
      mask = np.load(os.path.join(directory, f"{m}_mask.npy"), mmap_mode="r")
      _shapes.check_shape(f"{m}.npy", x, (n, self.max_lens[m], self.dims[m]),
                          "[num_clips, max_len, dim]")
      _shapes.check_shape(f"{m}_mask.npy", mask, (n, self.max_lens[m]),
                          "[num_clips, max_len]")
      self._features[m], self._masks[m] = x, mask
    self.labels = None
    if meta.get("has_labels"):
      self.labels = np.load(os.path.join(directory, "labels.npy"))
      _shapes.check_shape("labels.npy", self.labels, (n,), "[num_clips]")

  def __len__(self) -> int:
    return self.meta["num_clips"]

  def __getstate__(self) -> dict[str, Any]:
    # Pickled (e.g. for grain worker processes) as its arguments only: a
    # pickled memmap would copy the whole array.
    return {"directory": self.directory, "modalities": self.modalities}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["directory"], modalities=state["modalities"])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    if not -len(self) <= index < len(self):
      raise IndexError(f"clip {index} out of range for {len(self)} clips.")
    record = {}
    for m in self.modalities:
      record[m] = np.asarray(self._features[m][index], np.float32)
      record[f"{m}_mask"] = np.array(self._masks[m][index])
    if self.labels is not None:
      record["label"] = np.int32(self.labels[index])
    return record

  def __repr__(self) -> str:
    shapes = ", ".join(f"{m}=[{self.max_lens[m]}, {self.dims[m]}]"
                       for m in self.modalities)
    return f"FeatureClipSource({self.directory!r}, n={len(self)}, {shapes})"


# ----------------------------------------------------------------------------
# Record transforms (pure functions of one record; use as grain maps).
# ----------------------------------------------------------------------------


def _l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  norm = np.sqrt(np.sum(np.square(x, dtype=np.float64), axis=-1, keepdims=True))
  return (x / np.maximum(norm, eps)).astype(np.float32)


def _normalize_parts(x: np.ndarray, parts: Sequence[int] | None) -> np.ndarray:
  """L2-normalises each block of widths ``parts`` of the last axis."""
  if not parts:
    return _l2_normalize(x)
  bounds = np.cumsum([0, *parts])
  if bounds[-1] != x.shape[-1]:
    raise ValueError(f"parts {list(parts)} must sum to the feature size "
                     f"{x.shape[-1]}.")
  return np.concatenate([_l2_normalize(x[..., a:b])
                         for a, b in itertools.pairwise(bounds)], axis=-1)


def normalize_record(record: Mapping[str, np.ndarray], *,
                     parts: Mapping[str, Sequence[int] | None]
                     ) -> dict[str, np.ndarray]:
  """L2-normalises every token of the named modalities, block by block.

  EAO's loaders feed each video token as ``[2D / |2D|, 3D / |3D|]``; pass
  ``parts={"video": source.parts["video"]}``. Padding (zero) stays zero.

  Args:
    record: a record (``{m: [L, d], f"{m}_mask": [L], ...}``).
    parts: ``{m: widths or None}``; ``None`` normalises the whole token.

  Returns:
    A new record; modalities not in ``parts`` are unchanged.
  """
  out = dict(record)
  for m, widths in parts.items():
    out[m] = _normalize_parts(np.asarray(record[m], np.float32), widths)
  return out


def pool_record(record: Mapping[str, np.ndarray], *,
                how: Mapping[str, str] | None = None,
                parts: Mapping[str, Sequence[int] | None] | None = None,
                ) -> dict[str, np.ndarray]:
  """One vector per modality from its valid tokens (Duarte et al.'s inputs).

  Sec. 4.1: video features max-pooled over time (2D and 3D each, then
  concatenated), word embeddings max-pooled over the sentence; the audio
  representation is averaged over time (AVLnet's DAVEnet pools its output
  by a mean). A modality without any valid token gives zeros.

  Args:
    record: ``{m: [L, d], f"{m}_mask": [L], ...}``.
    how: ``{m: "max" | "mean"}``; default ``max`` for every modality except
      ``audio`` (``mean``).
    parts: ``{m: widths or None}`` of modalities to L2-normalise per block
      after pooling (AVLnet normalises the pooled 2D and 3D features:
      ``parts={"video": source.parts["video"]}``); default none.

  Returns:
    ``{m: float32 [d]}``, plus ``"label"`` when the record has one.
  """
  how = dict(how or {})
  out = {}
  for key, value in record.items():
    if key.endswith("_mask"):
      continue
    if key == "label":
      out[key] = value
      continue
    x = np.asarray(value, np.float32)
    mask = np.asarray(record[f"{key}_mask"], bool)
    mode = how.get(key, "mean" if key == "audio" else "max")
    if mode not in ("max", "mean"):
      raise ValueError(f"how[{key!r}] must be 'max' or 'mean', got {mode!r}.")
    if not mask.any():
      pooled = np.zeros(x.shape[-1], np.float32)
    elif mode == "max":
      pooled = x[mask].max(axis=0)
    else:
      pooled = x[mask].mean(axis=0)
    if parts and key in parts:
      pooled = _normalize_parts(pooled, parts[key])
    out[key] = pooled.astype(np.float32)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m capsjax.data.multimodal {convert, convert_howto100m, info}``.

  See :func:`capsjax.data.multimodal_convert.main`.
  """
  from capsjax.data import multimodal_convert  # pylint: disable=g-import-not-at-top
  try:
    return multimodal_convert.main(argv)
  except (DatasetUnavailableError, FileNotFoundError, ValueError) as e:
    # The user's to fix (a path or an argument): one message, no traceback.
    print(f"error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
