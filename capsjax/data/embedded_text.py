"""Precomputed transformer token embeddings on disk, and a source over them.

Heinsen's SST model reads frozen embeddings of **every layer** of a
pretrained transformer (GPT-2-large: 37 layers x 1280 per token). They are
computed once by ``python -m capsjax.data.sst_embed`` and stored here in
shards that training streams from memory-mapped files.

On-disk format (``FORMAT``, version ``VERSION``), one folder::

  index.json                 what every shard holds (written last)
  <split>-<k>.npy            shard k's embeddings [S_k, L, D] (float16 or
                             float32): the S_k tokens of its records, record
                             after record, each token's L layers of size D
  <split>-<k>.npz            shard k's records: ``lengths`` int32 [n_k]
                             (tokens per record, summing to S_k),
                             ``label_<name>`` int32 [n_k] per label set (-1
                             = not an example of that task), ``token_ids``
                             int32 [S_k], ``texts`` unicode [n_k]

``index.json`` holds ``format``, ``version``, ``model``, ``n_layers``,
``d_emb``, ``dtype``, ``labels`` (the label set names), ``max_tokens`` (the
longest record of any split) and per split ``num_records``, ``num_tokens``,
``max_tokens`` and the list of ``shards`` (``embeddings``, ``records``,
``num_records``, ``num_tokens``), plus free-form ``producer`` details.
Tokens are stored unpadded; :class:`EmbeddedTextSource` pads each record to
a fixed length when it is read, so every batch has one shape.

The writer (:func:`write_shard`, :func:`write_index`) needs only NumPy:
tests write small shards in this exact format without any transformer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from capsjax import _shapes
from capsjax.data.errors import DatasetUnavailableError

__all__ = [
    "EMBED_COMMAND",
    "FORMAT",
    "INDEX_FILE",
    "VERSION",
    "EmbeddedTextSource",
    "read_index",
    "shard_complete",
    "shard_names",
    "write_index",
    "write_shard",
]

FORMAT = "capsjax.embedded_text"
VERSION = 1
INDEX_FILE = "index.json"
EMBED_COMMAND = ("python -m capsjax.data.sst_embed --model=gpt2-large "
                 "--trees_dir=DIR/trees --out_dir=DIR/embeddings")
_DTYPES = ("float16", "float32")


def shard_names(split: str, index: int) -> tuple[str, str]:
  """File names ``(embeddings .npy, records .npz)`` of shard ``index``."""
  stem = f"{split}-{index:05d}"
  return stem + ".npy", stem + ".npz"


def _atomic_save(path: str, save) -> None:
  # Write to a temporary name and rename: a killed run leaves no half shard.
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    save(f)
  os.replace(tmp, path)


def write_shard(
    out_dir: str,
    split: str,
    index: int,
    embeddings: Sequence[np.ndarray],
    labels: Mapping[str, Sequence[int]],
    *,
    texts: Sequence[str] | None = None,
    token_ids: Sequence[Sequence[int]] | None = None,
    dtype: str = "float16",
) -> dict[str, Any]:
  """Writes one shard and returns its entry for ``index.json``.

  Args:
    out_dir: the dataset folder (created if needed).
    split: split name, e.g. ``"train"``.
    index: shard number within the split.
    embeddings: one ``[T_i, L, D]`` array per record (``T_i >= 1`` tokens).
    labels: label set name -> ``[n]`` integer labels (-1: not an example of
      that task), e.g. ``{"sst5": ..., "sst2": ...}``.
    texts: the records' texts (stored for inspection).
    token_ids: the records' token ids, ``T_i`` each.
    dtype: storage dtype, ``"float16"`` (half the disk) or ``"float32"``.

  Returns:
    ``{"embeddings", "records", "num_records", "num_tokens", "max_tokens"}``.

  Raises:
    ValueError: on inconsistent shapes, or values that float16 cannot hold.
  """
  if dtype not in _DTYPES:
    raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}.")
  n = len(embeddings)
  if n == 0:
    raise ValueError("embeddings: a shard needs at least one record.")
  first = np.shape(embeddings[0])
  if len(first) != 3:
    raise ValueError(f"embeddings[0] must be [T, L, D], got shape {first}.")
  lengths = np.zeros(n, np.int32)
  for i, e in enumerate(embeddings):
    shape = np.shape(e)
    if len(shape) != 3 or shape[1:] != first[1:] or shape[0] < 1:
      raise ValueError(f"embeddings[{i}] must be [T>=1, {first[1]}, "
                       f"{first[2]}], got shape {shape}.")
    lengths[i] = shape[0]
  with np.errstate(over="ignore"):  # overflow is reported just below
    flat = np.concatenate([np.asarray(e) for e in embeddings]).astype(dtype)
  if not np.all(np.isfinite(flat)):
    raise ValueError(
        "embeddings: non-finite values after conversion to "
        f"{dtype} (float16 holds |x| <= 65504; store as float32).")
  records: dict[str, np.ndarray] = {"lengths": lengths}
  for name, values in labels.items():
    values = np.asarray(values, np.int32)
    if values.shape != (n,):
      raise ValueError(f"labels[{name!r}] must have shape ({n},), got "
                       f"{values.shape}.")
    records[f"label_{name}"] = values
  if texts is not None:
    if len(texts) != n:
      raise ValueError(f"texts: expected {n}, got {len(texts)}.")
    records["texts"] = np.array(list(texts), dtype=str)
  if token_ids is not None:
    if [len(t) for t in token_ids] != lengths.tolist():
      raise ValueError("token_ids: each record needs one id per token.")
    records["token_ids"] = np.concatenate(
        [np.asarray(t, np.int32) for t in token_ids])
  os.makedirs(out_dir, exist_ok=True)
  emb_name, rec_name = shard_names(split, index)
  _atomic_save(os.path.join(out_dir, emb_name), lambda f: np.save(f, flat))
  # The records file is written last: its presence marks a complete shard.
  _atomic_save(os.path.join(out_dir, rec_name),
               lambda f: np.savez(f, **records))
  return {"embeddings": emb_name, "records": rec_name, "num_records": n,
          "num_tokens": int(lengths.sum()), "max_tokens": int(lengths.max())}


def shard_complete(out_dir: str, split: str, index: int,
                   num_records: int) -> dict[str, Any] | None:
  """The index entry of an already written shard, or ``None``.

  Lets an interrupted embedding run skip the shards it finished.
  """
  emb_name, rec_name = shard_names(split, index)
  emb_path = os.path.join(out_dir, emb_name)
  rec_path = os.path.join(out_dir, rec_name)
  if not (os.path.isfile(emb_path) and os.path.isfile(rec_path)):
    return None
  with np.load(rec_path) as records:
    lengths = records["lengths"]
  if len(lengths) != num_records:
    return None
  return {"embeddings": emb_name, "records": rec_name,
          "num_records": int(num_records), "num_tokens": int(lengths.sum()),
          "max_tokens": int(lengths.max())}


def write_index(out_dir: str, *, model: str, n_layers: int, d_emb: int,
                dtype: str, labels: Sequence[str],
                splits: Mapping[str, Sequence[Mapping[str, Any]]],
                producer: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Writes ``index.json`` for the shards of every split; returns it.

  Args:
    out_dir: the dataset folder.
    model: the transformer's name (e.g. ``"gpt2-large"``).
    n_layers: layers per token (hidden states, the embedding layer included).
    d_emb: embedding size.
    dtype: the shards' storage dtype.
    labels: the label set names in the shards (``label_<name>``).
    splits: split name -> its shard entries from :func:`write_shard`.
    producer: free-form details of how the embeddings were made.
  """
  out = {"format": FORMAT, "version": VERSION, "model": model,
         "n_layers": int(n_layers), "d_emb": int(d_emb), "dtype": dtype,
         "labels": list(labels), "splits": {}, "producer": dict(producer or {})}
  for split, shards in splits.items():
    shards = [dict(s) for s in shards]
    out["splits"][split] = {
        "num_records": sum(s["num_records"] for s in shards),
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "max_tokens": max(s["max_tokens"] for s in shards),
        "shards": shards}
  out["max_tokens"] = max(s["max_tokens"] for s in out["splits"].values())
  _atomic_save(os.path.join(out_dir, INDEX_FILE),
               lambda f: f.write(json.dumps(out, indent=1).encode()))
  return out


def read_index(data_dir: str) -> dict[str, Any]:
  """Reads and checks ``index.json``.

  Raises:
    DatasetUnavailableError: if the folder or its index is missing, naming
      the command that writes them.
    ValueError: if the index is of another format or version.
  """
  path = os.path.join(data_dir or "", INDEX_FILE)
  if not data_dir or not os.path.isfile(path):
    where = repr(data_dir) if data_dir else "(config.data.dir is empty)"
    raise DatasetUnavailableError(
        "dataset 'sst' (transformer embeddings) is needed by this config but "
        f"cannot be read:\n  expected under {where}: {INDEX_FILE} and its "
        "shards (missing)\n  Compute them once with\n    "
        f"{EMBED_COMMAND}\n  (SST trees: "
        "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip; "
        "needs the 'embed' extra: pip install capsjax[embed]).")
  with open(path, encoding="utf-8") as f:
    index = json.load(f)
  if index.get("format") != FORMAT or index.get("version") != VERSION:
    raise ValueError(
        f"{path}: expected format {FORMAT!r} version {VERSION}, got "
        f"{index.get('format')!r} version {index.get('version')!r}.")
  return index


class EmbeddedTextSource:
  """Random-access source over one split of stored token embeddings.

  Records are ``(embeddings [T, L, D], mask [T] float32, label int32)``:
  the record's tokens in the first positions and zeros after them,
  ``mask`` 1 for tokens and 0 for padding, ``T = max_tokens`` for every
  record (one shape, one compilation). The layout ``[tokens, layers, size]``
  is what :class:`capsjax.models.heinsen2019.SSTClassifier` takes per
  example. Only the records whose label in ``label_set`` is not -1 are
  served (e.g. SST-2 drops neutral ones).

  Shards are memory-mapped on first use, so a source is cheap to build and
  to pickle (grain worker processes reopen the files).

  Attributes:
    index: the parsed ``index.json``.
    max_tokens: ``T``.
    n_layers, d_emb: ``L`` and ``D``.
    labels: ``[N]`` int32 labels of the served records.
    lengths: ``[N]`` int32 tokens per served record.
  """

  def __init__(self, data_dir: str, split: str, *, label_set: str,
               max_tokens: int | None = None, dtype: Any = None):
    """Opens a split.

    Args:
      data_dir: the folder with ``index.json``.
      split: e.g. ``"train"``, ``"dev"``, ``"test"``.
      label_set: which ``label_<name>`` to serve (e.g. ``"sst5"``).
      max_tokens: pad length ``T``; ``None`` uses the index's longest record
        over all splits, so every split pads alike.
      dtype: dtype of the returned embeddings; ``None`` keeps the stored one
        (float16 halves host memory and transfer; the model computes in its
        own dtype).

    Raises:
      DatasetUnavailableError: if the index or a shard is missing.
      ValueError: unknown split or label set, or records longer than
        ``max_tokens``.
    """
    self.index = read_index(data_dir)
    self.data_dir = data_dir
    splits = self.index["splits"]
    if split not in splits:
      raise ValueError(f"split must be one of {sorted(splits)} (in "
                       f"{data_dir}), got {split!r}.")
    if label_set not in self.index["labels"]:
      raise ValueError(f"label_set must be one of {self.index['labels']}, "
                       f"got {label_set!r}.")
    self.split, self.label_set = split, label_set
    self.n_layers, self.d_emb = self.index["n_layers"], self.index["d_emb"]
    self.max_tokens = (self.index["max_tokens"] if max_tokens is None
                       else max_tokens)
    _shapes.check_positive_int("max_tokens", self.max_tokens)
    self.dtype = np.dtype(self.index["dtype"] if dtype is None else dtype)
    self._shards = splits[split]["shards"]
    lengths, labels, shard_of, start = [], [], [], []
    for k, shard in enumerate(self._shards):
      path = os.path.join(data_dir, shard["records"])
      if not os.path.isfile(path):
        raise DatasetUnavailableError(
            f"{path} is listed in {INDEX_FILE} but missing: rerun "
            f"{EMBED_COMMAND.split(' --')[0]} (it resumes).")
      with np.load(path) as rec:
        n_k = rec["lengths"]
        lab = rec[f"label_{label_set}"]
      lengths.append(n_k)
      labels.append(lab)
      shard_of.append(np.full(len(n_k), k, np.int32))
      start.append(np.concatenate([[0], np.cumsum(n_k)[:-1]]).astype(np.int64))
    lengths = np.concatenate(lengths)
    labels = np.concatenate(labels)
    keep = np.flatnonzero(labels != -1)
    self.lengths, self.labels = lengths[keep], labels[keep]
    self._shard_of = np.concatenate(shard_of)[keep]
    self._start = np.concatenate(start)[keep]
    if len(keep) and self.lengths.max() > self.max_tokens:
      raise ValueError(
          f"max_tokens = {self.max_tokens} but split {split!r} has records of "
          f"{int(self.lengths.max())} tokens; raise max_tokens (or leave it "
          "unset to use the longest record).")
    self._arrays: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self.labels)

  def _embeddings(self, k: int) -> np.ndarray:
    array = self._arrays.get(k)
    if array is None:
      path = os.path.join(self.data_dir, self._shards[k]["embeddings"])
      if not os.path.isfile(path):
        raise DatasetUnavailableError(f"{path} is listed in {INDEX_FILE} "
                                      "but missing.")
      array = np.load(path, mmap_mode="r")
      self._arrays[k] = array
    return array

  def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.int32]:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} records.")
    n = int(self.lengths[index])
    start = int(self._start[index])
    tokens = self._embeddings(int(self._shard_of[index]))[start:start + n]
    out = np.zeros((self.max_tokens, self.n_layers, self.d_emb), self.dtype)
    out[:n] = tokens
    mask = np.zeros(self.max_tokens, np.float32)
    mask[:n] = 1.0
    return out, mask, self.labels[index]

  def __getstate__(self) -> dict[str, Any]:
    state = dict(self.__dict__)
    state["_arrays"] = {}  # memory maps are reopened in the new process
    return state

  def __repr__(self) -> str:
    return (f"EmbeddedTextSource(split={self.split!r}, "
            f"label_set={self.label_set!r}, n={len(self)}, "
            f"max_tokens={self.max_tokens}, layers={self.n_layers}, "
            f"d_emb={self.d_emb}, dtype={self.dtype.name})")
