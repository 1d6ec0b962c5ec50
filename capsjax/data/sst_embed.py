r"""Embed every SST phrase with a frozen pretrained transformer, all layers.

  python -m capsjax.data.sst_embed --model=gpt2-large \
      --trees_dir=/data/sst/trees --out_dir=/data/sst/gpt2-large

Reads the PTB tree files (:mod:`capsjax.data.sst`: unique training phrases,
dev/test root sentences), runs a Hugging Face transformer over each text
with ``output_hidden_states=True`` and stores the hidden states of **every
layer** (the embedding layer included: 37 x 1280 for GPT-2-large) of every
token in the sharded format of :mod:`capsjax.data.embedded_text`, with both
label sets (``sst5``, ``sst2``) so one run serves SST-5/R and SST-2/R.

Tokenisation as in Heinsen's notebook: the tokenizer's tokens of the
space-joined words, then the end-of-sequence token (GPT-2's
``<|endoftext|>``) appended as a real token (mask 1). For another model,
``add_special_tokens=True`` adds its own markers (e.g. BERT's [CLS]/[SEP]);
``--append_eos`` adds the eos token if the tokenizer has one and it is not
already last. Texts are grouped by length within a shard and right-padded
with an attention mask; padded positions are dropped before storing, so
each token's vectors are what the model computes for the unpadded text.

An interrupted run restarts where it stopped: finished shards are kept. The
index is written last. Needs the ``embed`` extra (``transformers``,
``torch``); the model comes from the Hugging Face hub or a local folder
(``--model=/path`` saved with ``save_pretrained``).

Size: float16 storage takes ``2 * L * D`` bytes per token, 94.7 KB for
GPT-2-large; see ``experiments/heinsen2019/README.md`` for SST's totals.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from capsjax.data import embedded_text, sst

__all__ = ["embed_sst", "embed_texts", "load_model", "main", "tokenize"]


def load_model(name: str, *, device: str = "cpu",
               compute_dtype: str = "float32") -> tuple[Any, Any]:
  """Loads ``(tokenizer, model)``: a frozen ``AutoModel`` in eval mode.

  Args:
    name: hub name (e.g. ``"gpt2-large"``) or a local folder.
    device: torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
    compute_dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("The embedding step needs the 'embed' extra: "
                      "pip install 'capsjax[embed]' (transformers, torch).") from e
  dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}
  if compute_dtype not in dtypes:
    raise ValueError(f"compute_dtype must be one of {sorted(dtypes)}, got "
                     f"{compute_dtype!r}.")
  tokenizer = transformers.AutoTokenizer.from_pretrained(name)
  model = transformers.AutoModel.from_pretrained(name)
  model = model.to(device=device, dtype=dtypes[compute_dtype]).eval()
  for p in model.parameters():
    p.requires_grad_(False)
  return tokenizer, model


def tokenize(tokenizer: Any, texts: Sequence[str], *,
             append_eos: bool = True) -> list[list[int]]:
  """Token ids of each text (special tokens, then eos if asked and absent)."""
  eos = getattr(tokenizer, "eos_token_id", None)
  out = []
  for text in texts:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if append_eos and eos is not None and (not ids or ids[-1] != eos):
      ids.append(eos)
    if not ids:
      raise ValueError(f"the tokenizer gave no tokens for {text!r}.")
    out.append(ids)
  return out


def _pad_id(tokenizer: Any) -> int:
  for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
    value = getattr(tokenizer, name, None)
    if value is not None:
      return int(value)
  return 0  # never attended to (attention mask 0) and dropped afterwards


def embed_texts(model: Any, token_ids: Sequence[Sequence[int]], *,
                pad_id: int, batch_size: int = 32,
                dtype: str = "float32") -> list[np.ndarray]:
  """All hidden states of each token sequence: one ``[T_i, L, D]`` each.

  Sequences are batched by length (fewest pads), right-padded with
  ``pad_id`` under an attention mask, and the pads are cut off again.

  Args:
    model: a Hugging Face model returning ``hidden_states``.
    token_ids: one list of ids per text.
    pad_id: the id written in padded positions (masked out).
    batch_size: texts per forward pass.
    dtype: NumPy dtype of the returned arrays (float16 halves the memory a
      shard takes before it is written).
  """
  import torch  # pylint: disable=g-import-not-at-top
  device = next(model.parameters()).device
  order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
  out: list[np.ndarray | None] = [None] * len(token_ids)
  for b in range(0, len(order), batch_size):
    chunk = order[b:b + batch_size]
    width = max(len(token_ids[i]) for i in chunk)
    ids = np.full((len(chunk), width), pad_id, np.int64)
    mask = np.zeros((len(chunk), width), np.int64)
    for row, i in enumerate(chunk):
      ids[row, :len(token_ids[i])] = token_ids[i]
      mask[row, :len(token_ids[i])] = 1
    with torch.no_grad():
      result = model(input_ids=torch.from_numpy(ids).to(device),
                     attention_mask=torch.from_numpy(mask).to(device),
                     output_hidden_states=True)
    # L tensors [B, T, D] -> [B, T, L, D], as the SST model takes them.
    hidden = torch.stack(result.hidden_states, dim=2).float().cpu().numpy()
    for row, i in enumerate(chunk):
      out[i] = hidden[row, :len(token_ids[i])].astype(dtype)
  return out


def embed_sst(
    model_name: str,
    trees_dir: str,
    out_dir: str,
    *,
    splits: Sequence[str] = sst.SPLITS,
    shard_size: int = 1000,
    batch_size: int = 32,
    dtype: str = "float16",
    device: str = "cpu",
    compute_dtype: str = "float32",
    append_eos: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
  """Embeds the SST splits into ``out_dir``; returns the written index.

  Args:
    model_name: Hugging Face model name or local folder.
    trees_dir: folder with ``train.txt``, ``dev.txt``, ``test.txt``.
    out_dir: output folder (shards + ``index.json``).
    splits: which splits to embed.
    shard_size: texts per shard, all held in memory before writing
      (GPT-2-large, float16: ~0.5 GB per 1,000 training phrases of ~10
      tokens, ~2.4 GB per 1,000 sentences of ~25 tokens).
    batch_size: texts per forward pass.
    dtype: storage dtype, ``"float16"`` or ``"float32"``.
    device: torch device.
    compute_dtype: the transformer's dtype.
    append_eos: append the tokenizer's eos token (Heinsen's GPT-2 setup).
    log: progress messages.
  """
  for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  if not splits:
    raise ValueError("splits: name at least one of train, dev, test.")
  examples = {s: sst.sst_examples(trees_dir, s) for s in splits}
  for split, values in examples.items():
    if not values:
      raise ValueError(f"{split}.txt in {trees_dir!r} holds no tree.")
  tokenizer, model = load_model(model_name, device=device,
                                compute_dtype=compute_dtype)
  pad_id = _pad_id(tokenizer)
  entries: dict[str, list[dict[str, Any]]] = {}
  shape = None
  for split in splits:
    texts = [e.text for e in examples[split]]
    ids = tokenize(tokenizer, texts, append_eos=append_eos)
    n_shards = -(-len(texts) // shard_size)
    entries[split] = []
    start_time, done = time.time(), 0
    for k in range(n_shards):
      lo, hi = k * shard_size, min((k + 1) * shard_size, len(texts))
      entry = embedded_text.shard_complete(out_dir, split, k, hi - lo)
      if entry is None:
        embs = embed_texts(model, ids[lo:hi], pad_id=pad_id,
                           batch_size=batch_size, dtype=dtype)
        shape = embs[0].shape[1:]
        chunk = examples[split][lo:hi]
        entry = embedded_text.write_shard(
            out_dir, split, k, embs,
            {"sst5": [e.label for e in chunk],
             "sst2": [e.binary_label for e in chunk]},
            texts=texts[lo:hi], token_ids=ids[lo:hi], dtype=dtype)
        done += hi - lo
        rate = done / max(time.time() - start_time, 1e-9)
        log(f"{split}: shard {k + 1}/{n_shards} ({hi}/{len(texts)} texts, "
            f"{rate:.1f} texts/s, ~{(len(texts) - hi) / rate / 60:.0f} min "
            "left)")
      else:
        log(f"{split}: shard {k + 1}/{n_shards} already written, kept")
      entries[split].append(entry)
  if shape is None:  # every shard existed: read the shape back from one
    first = entries[splits[0]][0]["embeddings"]
    shape = np.load(os.path.join(out_dir, first), mmap_mode="r").shape[1:]
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  index = embedded_text.write_index(
      out_dir, model=model_name, n_layers=shape[0], d_emb=shape[1],
      dtype=dtype, labels=("sst5", "sst2"), splits=entries,
      producer={"command": "capsjax.data.sst_embed", "trees_dir": trees_dir,
                "append_eos": append_eos, "compute_dtype": compute_dtype,
                "transformers": transformers.__version__,
                "torch": torch.__version__})
  log(f"wrote {out_dir}/{embedded_text.INDEX_FILE}: "
      + ", ".join(f"{s} {v['num_records']} texts / {v['num_tokens']} tokens"
                  for s, v in index["splits"].items()))
  return index


def main(argv: Sequence[str] | None = None) -> None:
  """The command line (see the module docstring)."""
  parser = argparse.ArgumentParser(
      prog="python -m capsjax.data.sst_embed",
      description="Embed every SST phrase with a frozen transformer (all "
                  "layers) into shards for capsjax's SST experiments.")
  parser.add_argument("--model", required=True,
                      help="Hugging Face model name (e.g. gpt2-large) or a "
                           "local save_pretrained folder.")
  parser.add_argument("--trees_dir", required=True,
                      help="folder with train.txt, dev.txt, test.txt "
                           f"(trees/ of {sst.SST_URL}).")
  parser.add_argument("--out_dir", required=True, help="output folder.")
  parser.add_argument("--splits", default=",".join(sst.SPLITS),
                      help="comma-separated splits (default: all).")
  parser.add_argument("--shard_size", type=int, default=1000,
                      help="texts per shard.")
  parser.add_argument("--batch_size", type=int, default=32,
                      help="texts per forward pass.")
  parser.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                      help="storage dtype.")
  parser.add_argument("--device", default="cpu",
                      help="torch device, e.g. cpu or cuda.")
  parser.add_argument("--compute_dtype", default="float32",
                      choices=("float32", "bfloat16", "float16"),
                      help="the transformer's dtype.")
  parser.add_argument("--append_eos", default=True,
                      action=argparse.BooleanOptionalAction,
                      help="append the eos token to every text (Heinsen's "
                           "GPT-2 setup).")
  args = parser.parse_args(argv)
  splits = tuple(s for s in args.splits.split(",") if s)
  try:
    embed_sst(args.model, args.trees_dir, args.out_dir, splits=splits,
              shard_size=args.shard_size, batch_size=args.batch_size,
              dtype=args.dtype, device=args.device,
              compute_dtype=args.compute_dtype, append_eos=args.append_eos)
  except (OSError, ImportError, ValueError) as e:  # OSError: model not found
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
