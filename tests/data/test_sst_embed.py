"""Tests of ``capsjax.data.sst_embed`` with a tiny randomly initialised GPT-2.

Offline: the model (2 layers, 16 wide) and a word-level tokenizer are built
here and saved with ``save_pretrained``; the hub is never contacted. The
reference for every stored vector is the same model run on that text alone,
without batching or padding.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")

from capsjax.data import embedded_text, sst, sst_embed

EOS = "<|endoftext|>"
# Labels chosen so dedup, conflicts and neutral phrases all occur; "fun"
# occurs first as neutral (2), later as positive (3).
TREES = {
    "train": ["(3 (2 fun) (3 (2 is) (4 good)))",
              "(1 (3 fun) (1 bad))",
              "(4 (4 good) (3 (2 is) (4 good)))"],
    "dev": ["(4 (2 fun) (4 good))", "(2 (2 is) (2 fun))"],
    "test": ["(0 (1 bad) (1 (2 is) (1 bad)))"],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A saved tiny GPT-2 + word-level tokenizer, and the tree files."""
  root = tmp_path_factory.mktemp("sst_embed")
  trees = root / "trees"
  trees.mkdir()
  for split, lines in TREES.items():
    (trees / f"{split}.txt").write_text("\n".join(lines) + "\n")
  vocab = {EOS: 0, "[UNK]": 1, "fun": 2, "is": 3, "good": 4, "bad": 5}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token=EOS, unk_token="[UNK]")
  model_dir = root / "model"
  fast.save_pretrained(model_dir)
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=len(vocab), n_positions=32,
                                   n_embd=16, n_layer=2, n_head=2,
                                   bos_token_id=0, eos_token_id=0)
  transformers.GPT2Model(config).save_pretrained(model_dir)
  return root, str(trees), str(model_dir)


@pytest.fixture(scope="module")
def loaded(tiny):
  return sst_embed.load_model(tiny[2])


def _reference(loaded, text):
  """``[T, L, D]`` hidden states of ``text`` + eos, run alone."""
  tokenizer, model = loaded
  ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
  with torch.no_grad():
    out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
  return ids, torch.stack(out.hidden_states, 2)[0].numpy()


def test_embed_sst_stores_every_layer_of_every_phrase(tiny, loaded):
  root, trees, model_dir = tiny
  out = str(root / "emb32")
  # shard_size 2 and batch_size 3: shards and batches cut across lengths.
  index = sst_embed.embed_sst(model_dir, trees, out, shard_size=2,
                              batch_size=3, dtype="float32", log=lambda _: None)
  assert index["n_layers"] == 3 and index["d_emb"] == 16  # 2 blocks + input
  with open(os.path.join(out, "index.json")) as f:
    assert json.load(f) == index
  train = sst.sst_examples(trees, "train")
  assert index["splits"]["train"]["num_records"] == len(train) == 8
  assert len(index["splits"]["train"]["shards"]) == 4
  assert index["max_tokens"] == 4  # "fun is good" + eos

  src = embedded_text.EmbeddedTextSource(out, "train", label_set="sst5")
  assert len(src) == 8 and src.max_tokens == 4
  for i, example in enumerate(train):
    ids, ref = _reference(loaded, example.text)
    embs, mask, label = src[i]
    n = len(ids)
    np.testing.assert_allclose(embs[:n], ref, rtol=1e-5, atol=1e-5)
    assert not embs[n:].any() and mask.tolist() == [1.0] * n + [0.0] * (4 - n)
    assert label == example.label
  with np.load(os.path.join(out, "train-00000.npz")) as rec:
    assert rec["texts"].tolist() == ["fun is good", "fun"]
    assert rec["token_ids"].tolist() == [2, 3, 4, 0, 2, 0]  # eos appended
  # SST-2: "fun" is first neutral, then positive (label 3 in tree 2).
  src2 = embedded_text.EmbeddedTextSource(out, "dev", label_set="sst2")
  assert len(src2) == 1 and src2[0][2] == 1  # the neutral root is dropped


def test_float16_storage_and_resume(tiny, loaded):
  root, trees, model_dir = tiny
  out = str(root / "emb16")
  kw = {"splits": ("dev", "test"), "shard_size": 1, "batch_size": 2,
        "log": lambda _: None}
  sst_embed.embed_sst(model_dir, trees, out, **kw)
  path = os.path.join(out, "dev-00001.npy")
  stamp = os.stat(path).st_mtime_ns
  os.remove(os.path.join(out, "test-00000.npz"))  # as if killed mid-shard
  messages = []
  index = sst_embed.embed_sst(model_dir, trees, out, **{**kw, "log": messages.append})
  assert os.stat(path).st_mtime_ns == stamp  # finished shards are kept
  assert sum("already written" in m for m in messages) == 2
  assert index["dtype"] == "float16" and index["splits"]["test"]["num_records"] == 1
  src = embedded_text.EmbeddedTextSource(out, "test", label_set="sst5")
  embs, _, label = src[0]
  ids, ref = _reference(loaded, "bad is bad")
  assert embs.dtype == np.float16 and label == 0
  np.testing.assert_allclose(embs[:len(ids)].astype(np.float32), ref,
                             rtol=2e-3, atol=2e-3)


def test_command_line_reports_missing_trees(tiny, tmp_path):
  _, _, model_dir = tiny
  with pytest.raises(SystemExit, match="train.txt"):
    sst_embed.main([f"--model={model_dir}", f"--trees_dir={tmp_path}",
                    f"--out_dir={tmp_path / 'out'}"])
