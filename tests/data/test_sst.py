"""Tests of ``capsjax.data.sst``: PTB sentiment trees, phrases, SST-5/SST-2.

Pure Python: no torch, no transformers. Expected values are worked out by
hand from the small trees written here.
"""

from __future__ import annotations

import numpy as np
import pytest

from capsjax.data import sst
from capsjax.data.errors import DatasetUnavailableError

# Tree 1 has the duplicate "is good"; "fun" is neutral in tree 1 and
# positive (3) in tree 2; "bad" is 1 in tree 2 and 0 in tree 3 (a conflict
# in both tasks); "is" is neutral everywhere.
TRAIN = """\
(3 (2 fun) (3 (2 is) (4 good)))
(1 (3 fun) (1 bad))

(0 (0 bad) (3 (2 is) (4 good)))
"""
DEV = "(4 (2 fun) (4 good))\n(2 (2 is) (2 fun))\n(4 (2 fun) (4 good))\n"


@pytest.fixture()
def trees_dir(tmp_path):
  (tmp_path / "train.txt").write_text(TRAIN)
  (tmp_path / "dev.txt").write_text(DEV)
  (tmp_path / "test.txt").write_text("(0 (1 bad) (1 (2 is) (1 bad)))\n")
  return str(tmp_path)


def test_parse_tree_words_labels_and_structure():
  tree = sst.parse_tree("(3 (2 It) (4 (4 (2 's) (3 lovely)) (2 .)))")
  assert tree.label == 3 and tree.words == ("It", "'s", "lovely", ".")
  left, right = tree.children
  assert left == sst.SSTNode(2, ("It",), ())
  assert right.label == 4 and right.words == ("'s", "lovely", ".")
  assert [c.label for c in right.children] == [4, 2]
  # PTB escapes and punctuation are words like any other.
  assert sst.parse_tree("(2 (2 -LRB-) (2 :-RRB-))").words == ("-LRB-", ":-RRB-")


def test_phrases_come_in_pre_order():
  tree = sst.parse_tree("(3 (2 It) (4 (4 (2 's) (3 lovely)) (2 .)))")
  assert list(sst.iter_phrases(tree)) == [
      ("It 's lovely .", 3), ("It", 2), ("'s lovely .", 4), ("'s lovely", 4),
      ("'s", 2), ("lovely", 3), (".", 2)]


def test_deep_trees_parse_without_recursion():
  depth = 5000
  line = "(2 " * depth + "(1 w)" + ")" * depth
  tree = sst.parse_tree(line)
  assert tree.words == ("w",) and len(list(sst.iter_phrases(tree))) == depth + 1


@pytest.mark.parametrize("line,message", [
    ("(5 (2 a))", "label 0..4"),
    ("(2 (2 a) (2 b)", "unbalanced '\\('"),
    ("(2 (2 a)))", "after the end"),
    ("(2 a (2 b))", "both a word and subtrees|one word"),
    ("(2 a b)", "one word"),
    ("(2 (2 a)) (2 b)", "after the end"),
    ("(2)", "empty node"),
    ("word", "starts with"),
    ("", "starts with"),
])
def test_malformed_trees_are_named(line, message):
  with pytest.raises(ValueError, match=message):
    sst.parse_tree(line, where="t.txt:7")


def test_binary_labels():
  assert [sst.binary_label(k) for k in range(5)] == [0, 0, -1, 1, 1]
  with pytest.raises(ValueError, match="0..4"):
    sst.binary_label(5)


def test_training_set_is_unique_phrases_first_occurrence_wins(trees_dir):
  examples = sst.sst_examples(trees_dir, "train")
  assert examples == [
      # tree 1, pre-order
      sst.SSTExample("fun is good", 3, 1),
      sst.SSTExample("fun", 2, 1),       # SST-2: first non-neutral is tree 2's 3
      sst.SSTExample("is good", 3, 1),
      sst.SSTExample("is", 2, -1),       # neutral at every occurrence
      sst.SSTExample("good", 4, 1),
      # tree 2 ("fun" already seen)
      sst.SSTExample("fun bad", 1, 0),
      sst.SSTExample("bad", 1, 0),       # tree 3's 0 comes later
      # tree 3 ("is good", "is", "good" already seen)
      sst.SSTExample("bad is good", 0, 0),
  ]


def test_dev_and_test_are_root_sentences_with_duplicates_kept(trees_dir):
  dev = sst.sst_examples(trees_dir, "dev")
  assert dev == [sst.SSTExample("fun good", 4, 1), sst.SSTExample("is fun", 2, -1),
                 sst.SSTExample("fun good", 4, 1)]
  assert sst.sst_examples(trees_dir, "test") == [
      sst.SSTExample("bad is bad", 0, 0)]


def test_task_labels(trees_dir):
  dev = sst.sst_examples(trees_dir, "dev")
  ids, labels = sst.task_labels(dev, "sst5")
  assert ids.tolist() == [0, 1, 2] and labels.tolist() == [4, 2, 4]
  assert labels.dtype == np.int32
  ids, labels = sst.task_labels(dev, "sst2")
  assert ids.tolist() == [0, 2] and labels.tolist() == [1, 1]
  train = sst.sst_examples(trees_dir, "train")
  assert sst.task_labels(train, "sst2")[1].tolist() == [1, 1, 1, 1, 0, 0, 0]
  with pytest.raises(ValueError, match="task must be one of"):
    sst.task_labels(dev, "sst3")


def test_missing_files_name_the_download(tmp_path, trees_dir):
  with pytest.raises(DatasetUnavailableError, match="train.txt.*\n.*trainDevTestTrees_PTB.zip"):
    sst.sst_examples(str(tmp_path / "nowhere"), "train")
  with pytest.raises(DatasetUnavailableError, match="no trees directory"):
    sst.tree_file("", "dev")
  with pytest.raises(ValueError, match="split must be one of"):
    sst.sst_examples(trees_dir, "valid")


def test_malformed_file_names_file_and_line(tmp_path):
  (tmp_path / "train.txt").write_text("(2 (2 a))\n(2 (2 b)\n")
  with pytest.raises(ValueError, match="train.txt:2"):
    sst.sst_examples(str(tmp_path), "train")
