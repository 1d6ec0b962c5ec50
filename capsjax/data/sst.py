"""The Stanford Sentiment Treebank from its original PTB-format tree files.

SST (Socher et al., 2013) ships as ``trainDevTestTrees_PTB.zip``
(https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip), which holds
``trees/train.txt``, ``trees/dev.txt`` and ``trees/test.txt``: one sentence
per line as a labelled binary parse tree,
``(3 (2 It) (4 (4 (2 's) ...) (2 .)))``, every node labelled with a
sentiment class 0 (very negative) .. 4 (very positive). Words are already
PTB-tokenised (``'s``, ``n't``, ``-LRB-``) and are kept exactly as written.

What the splits hold follows Heinsen (2019, Sec. 5.2) and his notebook
(``SST_training.ipynb``: torchtext's ``SST`` with ``subtrees=True`` and a
duplicate filter on the training trees, root sentences for dev and test):

* ``train``: every **unique phrase** (subtree) of the training trees, the
  sentences themselves included. Phrases are visited tree by tree in file
  order, each tree in pre-order (a node before its children, left to right,
  as ``nltk.Tree.subtrees`` does), and a phrase is identified by its words
  joined with single spaces. The first occurrence wins: a phrase that occurs
  several times with different labels keeps the label of its first occurrence
  (Heinsen's filter keeps the first sample of each distinct text). For the
  binary task, neutral samples are dropped *before* duplicates are, so the
  binary label is that of the phrase's first non-neutral occurrence, and a
  phrase that is neutral at every occurrence is not a binary sample.
* ``dev`` / ``test``: the root sentences, in file order, not deduplicated.

Each example carries both labels, so one embedding run serves both tasks:
``label`` (SST-5, 0..4) and ``binary_label`` (SST-2: 0 for labels 0 and 1,
1 for labels 3 and 4, :data:`EXCLUDED` = -1 for neutral). SST-2/R keeps the
examples whose binary label is not -1 and SST-5/R keeps every example. The
paper (Sec. 5) counts the root sentences of train / dev / test: 8,544 /
1,101 / 2,210 for SST-5/R and 6,920 / 872 / 1,821 for SST-2/R (the training
sets here are the phrases, many more).

Pure Python and NumPy; nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from capsjax.data.errors import DatasetUnavailableError

__all__ = [
    "EXCLUDED",
    "SPLITS",
    "SST_URL",
    "TASKS",
    "SSTExample",
    "SSTNode",
    "binary_label",
    "iter_phrases",
    "parse_tree",
    "read_trees",
    "sst_examples",
    "task_labels",
    "tree_file",
]

SST_URL = "https://nlp.stanford.edu/sentiment/trainDevTestTrees_PTB.zip"
SPLITS = ("train", "dev", "test")
TASKS = ("sst5", "sst2")
NEUTRAL = 2
EXCLUDED = -1  # the binary label of a neutral example
N_FINE_CLASSES = 5

_TOKEN = re.compile(r"\(|\)|[^\s()]+")


class SSTNode(NamedTuple):
  """One node of a sentiment tree.

  Attributes:
    label: the node's sentiment class, 0..4.
    words: the words the node spans, left to right.
    children: the child nodes (empty for a leaf, whose ``words`` is one word).
  """
  label: int
  words: tuple[str, ...]
  children: tuple[SSTNode, ...]


class SSTExample(NamedTuple):
  """One phrase or sentence with its labels.

  Attributes:
    text: the words joined with single spaces.
    label: SST-5 class, 0 (very negative) .. 4 (very positive).
    binary_label: SST-2 class, 0 (negative) or 1 (positive), or
      :data:`EXCLUDED` (-1) when the example is neutral for the binary task.
  """
  text: str
  label: int
  binary_label: int


def binary_label(label: int) -> int:
  """SST-2 class of an SST-5 class: 0, 1 -> 0; 3, 4 -> 1; 2 -> -1 (excluded)."""
  if label not in range(N_FINE_CLASSES):
    raise ValueError(f"label must be an SST class in 0..4, got {label!r}.")
  if label == NEUTRAL:
    return EXCLUDED
  return int(label > NEUTRAL)


def _label(token: str, where: str) -> int:
  if token not in ("0", "1", "2", "3", "4"):
    raise ValueError(f"{where}: expected a sentiment label 0..4 after '(', "
                     f"got {token!r}.")
  return int(token)


def parse_tree(line: str, *, where: str = "tree") -> SSTNode:
  """Parses one PTB-format sentiment tree, ``(label child ...)``.

  A leaf is ``(label word)``; an inner node ``(label subtree subtree ...)``.

  Args:
    line: the tree, e.g. ``"(3 (2 Good) (3 fun))"``.
    where: how to name the tree in error messages (e.g. ``"train.txt:12"``).

  Returns:
    The root :class:`SSTNode`.

  Raises:
    ValueError: if ``line`` is not exactly one well-formed tree with labels
      in 0..4.
  """
  tokens = _TOKEN.findall(line)
  if not tokens or tokens[0] != "(":
    raise ValueError(f"{where}: a tree starts with '(', got {line[:40]!r}.")
  # Iterative parse (deep trees would exceed Python's recursion limit):
  # each open node is [label, words, children, leaf_word].
  stack: list[list] = []
  root = None
  i = 0
  while i < len(tokens):
    tok = tokens[i]
    if root is not None:
      raise ValueError(f"{where}: text after the end of the tree: {tok!r}.")
    if tok == "(":
      if i + 1 >= len(tokens):
        raise ValueError(f"{where}: the tree ends after '('.")
      stack.append([_label(tokens[i + 1], where), [], [], None])
      i += 2
    elif tok == ")":  # the stack is not empty: root is still None
      label, words, children, leaf = stack.pop()
      if leaf is not None:
        node = SSTNode(label, (leaf,), ())
      elif children:
        node = SSTNode(label, tuple(words), tuple(children))
      else:
        raise ValueError(f"{where}: empty node '({label})'.")
      if stack:
        parent = stack[-1]
        if parent[3] is not None:
          raise ValueError(f"{where}: a node has both a word and subtrees.")
        parent[1].extend(node.words)
        parent[2].append(node)
      else:
        root = node
      i += 1
    else:  # a word
      if not stack:
        raise ValueError(f"{where}: word {tok!r} outside the tree.")
      top = stack[-1]
      if top[3] is not None or top[2]:
        raise ValueError(f"{where}: a leaf holds one word and no subtrees, "
                         f"got another item {tok!r}.")
      top[3] = tok
      i += 1
  if stack or root is None:
    raise ValueError(f"{where}: unbalanced '(' (the tree is not closed).")
  return root


def iter_phrases(tree: SSTNode) -> Iterator[tuple[str, int]]:
  """Every node of ``tree`` as ``(text, label)``, in pre-order.

  The root comes first, then each child's phrases, left to right (the order
  of ``nltk.Tree.subtrees``, which decides which duplicate is "first").
  """
  stack = [tree]
  while stack:
    node = stack.pop()
    yield " ".join(node.words), node.label
    stack.extend(reversed(node.children))


def tree_file(trees_dir: str, split: str) -> str:
  """The path of ``split``'s tree file, checked to exist.

  Args:
    trees_dir: the folder holding ``train.txt``, ``dev.txt``, ``test.txt``
      (``trees/`` of the unzipped ``trainDevTestTrees_PTB.zip``).
    split: ``"train"``, ``"dev"`` or ``"test"``.

  Raises:
    ValueError: for an unknown split.
    DatasetUnavailableError: naming the file and where to get it.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  path = os.path.join(trees_dir or "", f"{split}.txt")
  if not trees_dir or not os.path.isfile(path):
    where = repr(trees_dir) if trees_dir else "(no trees directory given)"
    raise DatasetUnavailableError(
        f"dataset 'sst' is needed but cannot be read:\n"
        f"  expected under {where}: {split}.txt (missing)\n"
        f"  Download {SST_URL}, unzip it and pass its trees/ folder.")
  return path


def read_trees(path: str) -> list[SSTNode]:
  """All trees of a PTB-format file, one per non-empty line, in file order.

  Raises:
    ValueError: naming the file and line of a malformed tree.
  """
  trees = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        trees.append(parse_tree(line, where=f"{path}:{number}"))
  return trees


def sst_examples(trees_dir: str, split: str) -> list[SSTExample]:
  """The examples of one split (see the module docstring for the rules).

  Args:
    trees_dir: folder with ``train.txt``, ``dev.txt`` and ``test.txt``.
    split: ``"train"`` (unique phrases of the training trees), ``"dev"`` or
      ``"test"`` (root sentences).

  Returns:
    The examples, in order of first occurrence.

  Raises:
    DatasetUnavailableError: if the split's file is missing.
  """
  trees = read_trees(tree_file(trees_dir, split))
  if split != "train":
    return [SSTExample(" ".join(t.words), t.label, binary_label(t.label))
            for t in trees]
  fine: dict[str, int] = {}      # first label of each phrase (dict keeps order)
  binary: dict[str, int] = {}    # first non-neutral binary label
  for tree in trees:
    for text, label in iter_phrases(tree):
      fine.setdefault(text, label)
      if label != NEUTRAL:
        binary.setdefault(text, binary_label(label))
  return [SSTExample(text, label, binary.get(text, EXCLUDED))
          for text, label in fine.items()]


def task_labels(examples: Sequence[SSTExample],
                task: str) -> tuple[np.ndarray, np.ndarray]:
  """The examples of ``task`` and their labels.

  Args:
    examples: from :func:`sst_examples`.
    task: ``"sst5"`` (every example, labels 0..4) or ``"sst2"`` (non-neutral
      examples, labels 0/1).

  Returns:
    ``(indices [K] int64, labels [K] int32)``: positions in ``examples`` and
    the task's labels.
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}.")
  field = 1 if task == "sst5" else 2
  labels = np.array([e[field] for e in examples], np.int32)
  keep = np.flatnonzero(labels != EXCLUDED)
  return keep, labels[keep]
