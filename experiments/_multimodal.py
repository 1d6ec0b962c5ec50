"""What the two multimodal experiments (Duarte et al., Swetha et al.) share:
embedding a whole evaluation set with the train state, and naming the
retrieval numbers.

Retrieval needs every embedding of the evaluation set at once (each query
ranks all targets), so these evaluators do not sum per-batch metrics like
:func:`capsjax.train.make_evaluator`: :func:`make_embedder` runs a jitted
embedding function over padded batches (every process its slice of each
global batch; the outputs are replicated, so every process sees all of them)
and returns the real rows on the host, where
:mod:`capsjax.evaluation` computes the metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from capsjax import evaluation
from capsjax import train as T
from capsjax.data import multimodal, pipeline
from capsjax.data.errors import DatasetUnavailableError
from capsjax.data.synthetic_multimodal import SyntheticTriModal

_VALID = "__valid__"

# retrieval_metrics' keys -> the names printed in the summary line.
METRIC_NAMES = {"r1": "R@1", "r5": "R@5", "r10": "R@10",
                "median_rank": "MedR", "mean_rank": "MeanR"}


def make_embedder(
    graphdef: nnx.GraphDef,
    embed_fn: Callable[[nnx.Module, Any], Mapping[str, Any]],
    mesh: Mesh,
) -> Callable[[Any, Iterable[Any]], dict[str, np.ndarray]]:
  """Returns ``embed(state, batches) -> {name: [N, ...] host array}``.

  Args:
    graphdef: the eval-mode graph definition (``graphs.eval``).
    embed_fn: ``embed_fn(model, batch) -> {name: [B, ...]}`` on a global
      batch; the batch's ``"valid"`` entry (1 for real rows, 0 for padding)
      selects the rows kept.
    mesh: the training mesh.

  Returns:
    The embedder: concatenates every batch's outputs and drops the padding.
  """
  def with_valid(model, batch):
    # The outputs are replicated, so every process can read all of them (the
    # sharded global batch itself is not addressable on other hosts).
    return {**embed_fn(model, batch), _VALID: batch["valid"]}

  step = T.make_eval_step(graphdef, with_valid, mesh)

  def embed(state, batches: Iterable[Any]) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    valid = []
    for host_batch in batches:
      out = step(state, T.global_batch(host_batch, mesh))
      valid.append(np.asarray(out.pop(_VALID)) > 0)
      for k, v in out.items():
        parts.setdefault(k, []).append(np.asarray(v))
    if not valid:
      raise ValueError("batches: the evaluation set yielded no batch.")
    keep = np.concatenate(valid)
    return {k: np.concatenate(v)[keep] for k, v in parts.items()}

  return embed


def retrieval_numbers(prefix: str, queries: np.ndarray, targets: np.ndarray,
                      *, num_queries: int | None = None) -> dict[str, float]:
  """Both directions of cosine retrieval, named ``prefix/t2x/R@1`` etc.

  Args:
    prefix: ``"<dataset>/<queries>2<targets>"`` of the forward direction,
      e.g. ``"youcook2/t2v"``; the reverse is named by swapping the two
      sides of the ``2`` (``"youcook2/v2t"``).
    queries: ``[N, D]`` (e.g. text embeddings).
    targets: ``[N, D]`` of the same clips in the same order.
    num_queries: the complete evaluation size when clips lack features
      (they count as misses; ``FeatureClipSource.num_queries``).

  Returns:
    ``{f"{prefix}/R@1": ..., ..., f"{reverse}/MeanR": ...}``; recalls are
    fractions, ranks 1-based.
  """
  dataset, direction = prefix.rsplit("/", 1)
  query, target = direction.split("2")
  sim = evaluation.cosine_similarity(queries, targets)
  out = {}
  for name, s in ((direction, sim), (f"{target}2{query}", sim.T)):
    for k, v in evaluation.retrieval_metrics(
        s, num_queries=num_queries).items():
      out[f"{dataset}/{name}/{METRIC_NAMES[k]}"] = v
  return out


def synthetic_splits(config, dims: Mapping[str, int], eval_names: Sequence[str],
                     knobs: Mapping[str, Any]) -> tuple[SyntheticTriModal,
                                                        dict[str, SyntheticTriModal]]:
  """``(train, {eval name: source})`` of synthetic tri-modal clips.

  Every eval name must be ``synthetic/<split>``; each eval split has
  ``config.eval.num_examples`` clips, the training split
  ``config.data.num_examples``; all share ``dims`` and the generator
  ``knobs`` (``config.data.synthetic``).
  """
  train = SyntheticTriModal("train", num_examples=config.data.num_examples,
                            dims=dict(dims), **knobs)
  evals = {}
  for name in eval_names:
    dataset, split = name.split("/")
    if dataset != "synthetic":
      raise ValueError(f"the synthetic config evaluates on "
                       f"'synthetic/<split>', got {name!r}.")
    evals[name] = SyntheticTriModal(
        split, num_examples=config.eval.num_examples, dims=dict(dims), **knobs)
  return train, evals


def open_feature_splits(
    data_dir: str, splits: Sequence[str], *, dataset: str,
    modalities: Sequence[str] | None = None,
) -> dict[str, multimodal.FeatureClipSource]:
  """Opens every ``"<dataset>/<split>"`` directory a config needs, or stops.

  All are checked before anything is trained or written, and the error
  names every missing one at once.

  Args:
    data_dir: the config's ``data.dir`` (the root of the converted splits).
    splits: ``"<dataset>/<split>"`` names relative to ``data_dir``.
    dataset: the config's ``data.name``, for the message.
    modalities: the modalities to read (default all).

  Returns:
    ``{split name: FeatureClipSource}``.

  Raises:
    DatasetUnavailableError: naming the missing splits, what to obtain and
      the convert command.
  """
  missing = [s for s in splits if not data_dir or not os.path.exists(
      os.path.join(data_dir, s, "meta.json"))]
  if missing:
    where = repr(data_dir) if data_dir else "(config.data.dir is empty)"
    lines = [
        f"dataset {dataset!r} is needed by this config but cannot be read:",
        f"  expected under {where}: "
        + ", ".join(f"{s}/meta.json" for s in missing) + " (missing)",
        ("  Obtain the pre-extracted features (the YouCook2 / MSR-VTT / ... "
         "pickles released with AVLnet or Everything-At-Once) and convert "
         "each split into capsjax's format:"),
        ("    python -m capsjax.data.multimodal convert --input=FILE.pkl "
         "--output=DATA_DIR/<dataset>/<split> "
         "--word_vectors=GoogleNews-vectors-negative300.bin"),
        ("  HowTo100M training clips come from the per-video release: "
         "python -m capsjax.data.multimodal convert_howto100m --csv=... "
         "--captions=... --features_2d=... --audio=... --word_vectors=... "
         "--output=DATA_DIR/howto100m/train (see the experiment's README, "
         "\"Reproducing\")."),
        "  To try the experiment offline, use configs/synthetic.py."]
    raise DatasetUnavailableError("\n".join(lines))
  return {s: multimodal.FeatureClipSource(os.path.join(data_dir, s),
                                          modalities=modalities)
          for s in splits}


def check_dims(source: multimodal.FeatureClipSource,
               dims: Mapping[str, tuple[int, str]]) -> None:
  """Stops with a clear message if the files' widths differ from the config's.

  Args:
    source: an opened split.
    dims: ``{modality: (width the model expects, config field holding it)}``.

  Raises:
    ValueError: naming the field and the value the files need.
  """
  for m, (d, field) in dims.items():
    if m in source.dims and source.dims[m] != d:
      raise ValueError(
          f"{source.directory}: the {m} features are {source.dims[m]}-d but "
          f"the config's {field} is {d}; set --config.{field}="
          f"{source.dims[m]} (or convert features of the configured width).")


def padded_eval_batches(source: Any, batch_size: int,
                        transform: Callable[[Any], Mapping[str, Any]]
                        ) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
  """A callable giving a fresh pass over this host's padded eval batches.

  Each batch is ``transform``'s dict with a leading batch axis plus
  ``"valid"`` (float32, 0 for padding), every clip exactly once
  (:func:`capsjax.data.pipeline.eval_batches`).
  """
  keys = sorted(transform(source[0]))

  def as_tuple(record):
    # eval_batches pads tuples of arrays field by field.
    out = transform(record)
    return tuple(np.asarray(out[k]) for k in keys)

  batches = pipeline.eval_batches(source, batch_size, transform=as_tuple)

  def fresh() -> Iterator[dict[str, np.ndarray]]:
    for *fields, valid in batches:
      yield {**dict(zip(keys, fields)), "valid": valid}

  return fresh
