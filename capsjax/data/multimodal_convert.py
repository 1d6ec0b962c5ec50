r"""Converters from the public AVLnet / Everything-At-Once feature releases.

Write the :mod:`capsjax.data.multimodal` on-disk format from the files those
projects released (the features Duarte et al. and Swetha et al. train and
evaluate on). Command line: ``python -m capsjax.data.multimodal convert ...``
and ``... convert_howto100m ...`` (``--help`` lists the options).

``convert`` (:func:`convert_pickle`): the per-clip evaluation pickles
(YouCook2, MSR-VTT). Assumptions about the public releases, read from the
field names their loaders use (AVLnet ``youcook_dataloader.py`` /
``msrvtt_dataloader.py``, EAO ``dataset/youcook_dataset.py``,
``msrvtt_dataset.py``, ``dataset/utils.py``):

* The file is a pickle of a list of per-clip dicts.
* ``"id"``: the clip id.
* Video: ``"2d"`` and ``"3d"`` (AVLnet's YouCook2 / MSR-VTT files: pooled
  ``[2048]``; EAO's MSR-VTT: per-time ``[T, 2048]``) or ``"2d_full"`` /
  ``"3d_full"`` (EAO's YouCook2: ``[T, 2048]``); the ``*_full`` keys are
  used when present. Clips lacking them are skipped (EAO: 11 YouCook2 clips)
  and counted in ``num_queries``. The 2D sequence (1 fps) is resampled to
  the 3D one's length (1.5 fps) by nearest neighbour (source index
  ``floor(j * T2 / T3)``, PyTorch's ``interpolate(mode="nearest")`` that EAO
  uses), and each video token is ``[2D, 3D]``, **unnormalised** (``parts =
  [d_2d, d_3d]``; the transforms normalise per part, as both loaders do).
* Audio: ``"audio"``, a log-mel spectrogram ``[n_mels, frames]`` (40 mel
  bins, 100 frames/s; sometimes a torch tensor, read via ``.numpy()``),
  stored time-major ``[frames, n_mels]`` and cut to ``--max_audio_frames``
  (EAO: 768). **These are not DAVEnet features**: the papers' audio input
  is DAVEnet's output on these spectrograms, a network capsjax does not have,
  so a model fed from converted files sees the mel frames (``audio`` dim 40).
  ``--audio_layout=tokens`` stores an ``"audio"`` entry that is already
  ``[T, d]`` features (e.g. DAVEnet outputs you extracted) as it is.
* Text: ``"eval_caption"`` if present (EAO's MSR-VTT test file) else
  ``"caption"``: a string, or a list of strings (MSR-VTT train: one record
  per caption, id ``"<id>#<k>"``). Words are ``re.findall(r"[\w']+",
  caption)`` (both loaders), case kept, words missing from the word vectors
  dropped, at most ``--max_words`` kept (EAO 20, AVLnet 30), each embedded
  with the word2vec vectors given by ``--word_vectors`` (the GoogleNews
  300-d binary both use, or a ``.txt``/``.vec`` text file; only the
  captions' words are loaded). A caption with no known word gives an empty
  text sequence (mask all False).
* ``--label_key``: a per-clip integer class to store as labels (e.g. for
  HMDB / UCF-101 clustering); none by default.

``convert_howto100m`` (:func:`convert_howto100m`): HowTo100M training data,
released per video, which the training loaders cut into clips at random.
Assumptions (EAO ``dataset/howto_dataset.py``, ``data_loader/
feature_dataloader.py``):

* A CSV with a ``path`` column (``"None/"`` prefixes removed); the video id is
  its last component.
* 2D features ``<dir_2d>/<path>/<id>_2d.npz`` (or ``<dir_2d>/<path>_2d.npz``),
  3D ``<dir_3d>/<path>/<id>_3d.npz`` (or ``<id>.npz``), both under the key
  ``"features"`` ``[T, 2048]`` at 1 and 1.5 features/s; the log-mel
  spectrogram ``<dir_audio>/<path>/<id>_spec.npz`` under ``"arr_0"`` ``[40,
  frames]`` (16 kHz, hop 160, window 400). Videos with a missing file are
  skipped.
* The ASR captions: a pickle of ``{video id: {"start": [s], "end": [s],
  "text": [str]}}``.
* Clips are fixed here, not re-drawn every epoch: each caption segment (or
  ``clips_per_video`` of them, drawn with a seeded generator) becomes a clip,
  widened to at least ``min_time`` seconds (8) by adding the neighbouring
  segment that lengthens it least, as the EAO loader does (words kept in time
  order; EAO appends an earlier segment's words at the end). Video
  features are cut at ``[int(start * fps), int(end * fps) + 1)`` and audio at
  librosa's ``time_to_frames`` (``floor((t * 16000 - 200) / 160)``, at least
  0), as EAO does. So a training epoch sees the same clips every time,
  unlike the authors' loaders: a stated difference.

Examples::

  python -m capsjax.data.multimodal convert \
      --input=youcook_val.pkl --output=/data/features/youcook2/val \
      --word_vectors=GoogleNews-vectors-negative300.bin --max_words=20 \
      --max_video_tokens=48 --max_audio_frames=768 --num_queries=3350

  python -m capsjax.data.multimodal convert_howto100m \
      --csv=HowTo100M_1166_videopaths.txt --captions=caption.pickle \
      --features_2d=feats/ --audio=audio_feats/ \
      --word_vectors=GoogleNews-vectors-negative300.bin \
      --output=/data/features/howto100m/train --clips_per_video=1 --dtype=float16
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from capsjax import _shapes
from capsjax.data.multimodal import (
    FeatureClipSource,
    FeatureClipWriter,
    ModalitySpec,
)

__all__ = [
    "convert_howto100m",
    "convert_pickle",
    "load_word_vectors",
    "main",
    "tokenize",
]

_DTYPES = ("float32", "float16")


def tokenize(sentence: str) -> list[str]:
  r"""Words of a caption: ``re.findall(r"[\w']+", sentence)`` (as AVLnet/EAO)."""
  return re.findall(r"[\w']+", str(sentence))


def load_word_vectors(path: str, vocabulary: Iterable[str] | None = None
                      ) -> dict[str, np.ndarray]:
  """Reads word2vec vectors, keeping only ``vocabulary`` (all when None).

  Formats: the word2vec binary format (``.bin``: a header line ``"<count>
  <dim>"``, then per word its UTF-8 bytes, a space and ``dim`` little-endian
  float32), or the text format (``.txt`` / ``.vec``: an optional header
  line, then ``word v_1 ... v_dim`` per line).

  Returns:
    ``{word: float32 [dim]}``.
  """
  wanted = None if vocabulary is None else set(vocabulary)
  vectors: dict[str, np.ndarray] = {}
  if path.endswith(".bin"):
    with open(path, "rb") as f:
      count, dim = (int(v) for v in f.readline().split())
      for _ in range(count):
        word = bytearray()
        while True:
          ch = f.read(1)
          if ch == b" " or not ch:
            break
          if ch != b"\n":           # some files end each vector with "\n"
            word.extend(ch)
        vec = np.frombuffer(f.read(4 * dim), dtype="<f4")
        if len(vec) != dim:
          raise ValueError(f"{path} ends before its {count} vectors.")
        text = word.decode("utf-8", errors="replace")
        if wanted is None or text in wanted:
          vectors[text] = vec.astype(np.float32)
    return vectors
  with open(path, encoding="utf-8") as f:
    dim = None
    for k, line in enumerate(f):
      fields = line.rstrip().split(" ")
      if k == 0 and len(fields) == 2 and all(v.isdigit() for v in fields):
        continue                   # "<count> <dim>" header
      if dim is None:
        dim = len(fields) - 1
      if len(fields) - 1 != dim:
        raise ValueError(f"{path}:{k + 1}: expected {dim} values, got "
                         f"{len(fields) - 1}.")
      if wanted is None or fields[0] in wanted:
        vectors[fields[0]] = np.asarray(fields[1:], np.float32)
  return vectors


def _as_array(x: Any) -> np.ndarray:
  if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
    x = x.numpy()              # torch tensors in some AVLnet pickles
  return np.asarray(x, np.float32)


def _as_sequence(x: Any) -> np.ndarray:
  x = _as_array(x)
  return x[None] if x.ndim == 1 else x


def _align_video(feat_2d: np.ndarray, feat_3d: np.ndarray) -> np.ndarray:
  """``[T3, d2 + d3]``: 2D resampled to the 3D length (nearest), then both."""
  t2, t3 = len(feat_2d), len(feat_3d)
  if t2 == 0 or t3 == 0:
    return np.zeros((0, feat_2d.shape[-1] + feat_3d.shape[-1]), np.float32)
  src = np.floor(np.arange(t3) * (t2 / t3)).astype(int)
  return np.concatenate([feat_2d[src], feat_3d], axis=1)


def convert_pickle(input_path: str, output_dir: str, *,
                   word_vectors: Mapping[str, np.ndarray] | str,
                   max_words: int = 20, max_video_tokens: int | None = None,
                   max_audio_frames: int = 768, audio_layout: str = "mel",
                   label_key: str | None = None, num_queries: int | None = None,
                   dtype: str = "float32") -> FeatureClipSource:
  """Converts an AVLnet / EAO per-clip feature pickle (module docstring).

  Args:
    input_path: the ``.pkl`` file (a list of per-clip dicts).
    output_dir: the split directory to write.
    word_vectors: ``{word: [300]}`` or a path for :func:`load_word_vectors`.
    max_words: words kept per caption.
    max_video_tokens: video tokens kept (default: the longest clip's).
    max_audio_frames: audio frames kept.
    audio_layout: ``"mel"`` (``[n_mels, frames]``, transposed) or
      ``"tokens"`` (already ``[T, d]``).
    label_key: per-clip integer label to store, if any.
    num_queries: complete evaluation size (default: the clips in the file,
      captions expanded, so skipped clips count as misses).
    dtype: storage dtype.

  Returns:
    The written split, opened.
  """
  if audio_layout not in ("mel", "tokens"):
    raise ValueError(f"audio_layout must be 'mel' or 'tokens', got "
                     f"{audio_layout!r}.")
  _shapes.check_positive_int("max_words", max_words)
  _shapes.check_positive_int("max_audio_frames", max_audio_frames)
  with open(input_path, "rb") as f:
    data = pickle.load(f)
  if not isinstance(data, (list, tuple)) or not all(
      isinstance(d, Mapping) for d in data):
    raise ValueError(f"{input_path} must hold a list of per-clip dicts.")

  def captions_of(d):
    c = d["eval_caption"] if "eval_caption" in d else d["caption"]
    return [c] if isinstance(c, str) else list(c)

  def video_keys(d):
    for keys in (("2d_full", "3d_full"), ("2d", "3d")):
      if all(k in d for k in keys):
        return keys
    return None

  kept, total = [], 0   # (clip dict, caption, id suffix)
  for d in data:
    caps = captions_of(d)
    total += len(caps)
    if video_keys(d) is None or "audio" not in d:
      continue
    for k, c in enumerate(caps):
      kept.append((d, c, "" if len(caps) == 1 else f"#{k}"))
  if not kept:
    raise ValueError(f"{input_path} has no clip with video ('2d'/'3d' or "
                     "'2d_full'/'3d_full') and 'audio' features.")
  if isinstance(word_vectors, str):
    vocab = {w for _, c, _ in kept for w in tokenize(c)}
    word_vectors = load_word_vectors(word_vectors, vocab)
  if not word_vectors:
    raise ValueError("word_vectors holds none of the captions' words.")
  we_dim = len(next(iter(word_vectors.values())))

  def features(d, caption):
    k2, k3 = video_keys(d)
    video = _align_video(_as_sequence(d[k2]), _as_sequence(d[k3]))
    audio = _as_array(d["audio"])
    audio = audio.T if audio_layout == "mel" else audio
    words = [w for w in tokenize(caption) if w in word_vectors][:max_words]
    text = (np.stack([word_vectors[w] for w in words]) if words
            else np.zeros((0, we_dim), np.float32))
    return {"video": video, "audio": audio, "text": text}

  first = features(kept[0][0], kept[0][1])
  k2, k3 = video_keys(kept[0][0])
  parts = [_as_sequence(kept[0][0][k2]).shape[-1],
           _as_sequence(kept[0][0][k3]).shape[-1]]
  longest_video = max(len(_as_sequence(d[video_keys(d)[1]])) for d, _, _ in kept)
  specs = {
      "video": ModalitySpec(first["video"].shape[1],
                            max_video_tokens or max(1, longest_video),
                            dtype=dtype, parts=parts),
      "audio": ModalitySpec(first["audio"].shape[1], max_audio_frames,
                            dtype=dtype),
      "text": ModalitySpec(we_dim, max_words, dtype=dtype),
  }
  source = (f"converted from {os.path.basename(input_path)} by "
            f"capsjax.data.multimodal (video keys {k2}/{k3}, audio "
            f"{audio_layout}, {len(data)} clips in the file, "
            f"{len(kept)} records written)")
  with FeatureClipWriter(output_dir, specs, len(kept),
                         has_labels=label_key is not None,
                         num_queries=num_queries or total,
                         source=source) as writer:
    for d, caption, suffix in kept:
      label = None if label_key is None else int(d[label_key])
      writer.add(f"{d.get('id', '')}{suffix}", features(d, caption), label)
  return FeatureClipSource(output_dir)


def _howto_segments(caption: Mapping[str, Sequence[Any]], index: int,
                    min_time: float) -> tuple[float, float, list[str]]:
  """Segment ``index`` widened to ``min_time`` s: ``(start, end, words)``."""
  starts = [float(t) for t in caption["start"]]
  ends = [float(t) for t in caption["end"]]
  first = last = index
  while ends[last] - starts[first] < min_time:
    grow_back = (ends[last] - starts[first - 1]) if first > 0 else np.inf
    grow_on = (ends[last + 1] - starts[first]) if last + 1 < len(ends) else np.inf
    if grow_back == grow_on == np.inf:
      break                          # one segment only
    if grow_back <= grow_on:
      first -= 1
    else:
      last += 1
  words = [w for k in range(first, last + 1)
           for w in tokenize(caption["text"][k])]
  return starts[first], ends[last], words


def _first_existing(*paths: str) -> str | None:
  return next((p for p in paths if os.path.exists(p)), None)


def convert_howto100m(csv_path: str, captions_path: str, output_dir: str, *,
                      features_2d: str, audio: str,
                      word_vectors: Mapping[str, np.ndarray] | str,
                      features_3d: str | None = None,
                      clips_per_video: int | None = 1, seed: int = 0,
                      min_time: float = 8.0, max_words: int = 20,
                      max_video_tokens: int | None = None,
                      max_audio_frames: int = 768, fps_2d: float = 1.0,
                      fps_3d: float = 1.5, dtype: str = "float16",
                      ) -> FeatureClipSource:
  """Converts HowTo100M per-video features into fixed clips (module docstring).

  Args:
    csv_path: the video list (a ``path`` column).
    captions_path: pickle of ``{video id: {"start", "end", "text"}}``.
    output_dir: the split directory to write.
    features_2d: root of the ``*_2d.npz`` files.
    audio: root of the ``*_spec.npz`` files.
    word_vectors: ``{word: [300]}`` or a path for :func:`load_word_vectors`.
    features_3d: root of the 3D files (default ``features_2d``).
    clips_per_video: caption segments kept per video, drawn with
      ``default_rng((seed, video row))``; ``None`` keeps all.
    seed: seeds that draw.
    min_time: minimum clip length in seconds (EAO 8).
    max_words: words kept per clip (EAO 20).
    max_video_tokens: video tokens kept (default ``int(1.5 * min_time)``, 12,
      as EAO).
    max_audio_frames: spectrogram frames kept (EAO 768).
    fps_2d, fps_3d: feature rates (1 and 1.5 per second).
    dtype: storage dtype (float16 halves the size).

  Returns:
    The written split, opened.
  """
  if clips_per_video is not None:
    _shapes.check_positive_int("clips_per_video", clips_per_video)
  _shapes.check_positive_int("max_words", max_words)
  _shapes.check_positive_int("max_audio_frames", max_audio_frames)
  max_video_tokens = max_video_tokens or int(1.5 * min_time)
  features_3d = features_3d or features_2d
  with open(captions_path, "rb") as f:
    captions = pickle.load(f)
  with open(csv_path, newline="") as f:
    paths = [row["path"].replace("None/", "") for row in csv.DictReader(f)]

  plan = []   # (video id, files, caption segment indices)
  for row, path in enumerate(paths):
    vid = path.rstrip("/").split("/")[-1]
    files = (
        _first_existing(os.path.join(features_2d, path, f"{vid}_2d.npz"),
                        os.path.join(features_2d, f"{path}_2d.npz")),
        _first_existing(os.path.join(features_3d, path, f"{vid}_3d.npz"),
                        os.path.join(features_3d, path, f"{vid}.npz")),
        _first_existing(os.path.join(audio, path, f"{vid}_spec.npz")))
    caption = captions.get(vid)
    if None in files or not caption or not len(caption["start"]):
      continue
    n = len(caption["start"])
    chosen = list(range(n))
    if clips_per_video is not None and clips_per_video < n:
      chosen = sorted(np.random.default_rng((seed, row)).choice(
          n, clips_per_video, replace=False).tolist())
    plan.append((vid, files, chosen))
  if not plan:
    raise ValueError(f"no video of {csv_path} has all of its 2D, 3D and audio "
                     "files and captions under the given directories.")
  if isinstance(word_vectors, str):
    vocab = {w for vid, _, _ in plan for text in captions[vid]["text"]
             for w in tokenize(text)}
    word_vectors = load_word_vectors(word_vectors, vocab)
  if not word_vectors:
    raise ValueError("word_vectors holds none of the captions' words.")
  we_dim = len(next(iter(word_vectors.values())))
  first = plan[0][1]
  d2 = np.load(first[0])["features"].shape[-1]
  d3 = np.load(first[1])["features"].shape[-1]
  n_mels = np.load(first[2])["arr_0"].shape[0]
  specs = {"video": ModalitySpec(d2 + d3, max_video_tokens, dtype=dtype,
                                 parts=[d2, d3]),
           "audio": ModalitySpec(n_mels, max_audio_frames, dtype=dtype),
           "text": ModalitySpec(we_dim, max_words, dtype=dtype)}
  num_clips = sum(len(chosen) for _, _, chosen in plan)
  source = (f"converted from HowTo100M ({os.path.basename(csv_path)}: "
            f"{len(paths)} videos, {len(plan)} with features) by "
            f"capsjax.data.multimodal_convert, clips_per_video="
            f"{clips_per_video}, seed={seed}, min_time={min_time}")
  with FeatureClipWriter(output_dir, specs, num_clips, source=source) as writer:
    for vid, (f2, f3, fa), chosen in plan:
      feat_2d = np.load(f2)["features"]
      feat_3d = np.load(f3)["features"]
      mel = np.load(fa)["arr_0"]
      for index in chosen:
        start, end, words = _howto_segments(captions[vid], index, min_time)
        video = _align_video(
            _as_sequence(feat_2d[int(start * fps_2d):int(end * fps_2d) + 1]),
            _as_sequence(feat_3d[int(start * fps_3d):int(end * fps_3d) + 1]))
        # librosa.time_to_frames(t, sr=16000, hop_length=160, n_fft=400).
        a, b = (max(0, int(np.floor((t * 16000 - 200) / 160)))
                for t in (start, end))
        words = [w for w in words if w in word_vectors][:max_words]
        text = (np.stack([word_vectors[w] for w in words]) if words
                else np.zeros((0, we_dim), np.float32))
        writer.add(f"{vid}@{start:g}-{end:g}",
                   {"video": video, "audio": _as_array(mel[:, a:b]).T,
                    "text": text})
  return FeatureClipSource(output_dir)


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m capsjax.data.multimodal {convert, convert_howto100m, info}``."""
  parser = argparse.ArgumentParser(
      prog="python -m capsjax.data.multimodal",
      description="Convert / inspect pre-extracted multimodal clip features.")
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="convert an AVLnet / EAO pickle")
  conv.add_argument("--input", required=True, help="per-clip feature .pkl")
  conv.add_argument("--output", required=True, help="split directory to write")
  conv.add_argument("--word_vectors", required=True,
                    help="word2vec .bin or text .txt/.vec (GoogleNews 300-d)")
  conv.add_argument("--max_words", type=int, default=20)
  conv.add_argument("--max_video_tokens", type=int, default=None)
  conv.add_argument("--max_audio_frames", type=int, default=768)
  conv.add_argument("--audio_layout", choices=("mel", "tokens"), default="mel")
  conv.add_argument("--label_key", default=None)
  conv.add_argument("--num_queries", type=int, default=None)
  conv.add_argument("--dtype", choices=_DTYPES, default="float32")
  how = sub.add_parser("convert_howto100m",
                       help="convert HowTo100M per-video features to clips")
  how.add_argument("--csv", required=True, help="video list (path column)")
  how.add_argument("--captions", required=True, help="caption pickle")
  how.add_argument("--features_2d", required=True)
  how.add_argument("--features_3d", default=None)
  how.add_argument("--audio", required=True, help="root of *_spec.npz")
  how.add_argument("--word_vectors", required=True)
  how.add_argument("--output", required=True)
  how.add_argument("--clips_per_video", type=int, default=1,
                   help="caption segments per video; 0 keeps all")
  how.add_argument("--seed", type=int, default=0)
  how.add_argument("--min_time", type=float, default=8.0)
  how.add_argument("--max_words", type=int, default=20)
  how.add_argument("--max_video_tokens", type=int, default=None)
  how.add_argument("--max_audio_frames", type=int, default=768)
  how.add_argument("--dtype", choices=_DTYPES, default="float16")
  info = sub.add_parser("info", help="print a split's meta data")
  info.add_argument("directory")
  args = parser.parse_args(argv)
  if args.command == "info":
    src = FeatureClipSource(args.directory)
    print(src)
    print(json.dumps({k: v for k, v in src.meta.items() if k != "ids"},
                     indent=1))
    return 0
  if args.command == "convert_howto100m":
    src = convert_howto100m(
        args.csv, args.captions, args.output, features_2d=args.features_2d,
        features_3d=args.features_3d, audio=args.audio,
        word_vectors=args.word_vectors,
        clips_per_video=args.clips_per_video or None, seed=args.seed,
        min_time=args.min_time, max_words=args.max_words,
        max_video_tokens=args.max_video_tokens,
        max_audio_frames=args.max_audio_frames, dtype=args.dtype)
    print(f"wrote {src}")
    return 0
  src = convert_pickle(
      args.input, args.output, word_vectors=args.word_vectors,
      max_words=args.max_words, max_video_tokens=args.max_video_tokens,
      max_audio_frames=args.max_audio_frames, audio_layout=args.audio_layout,
      label_key=args.label_key, num_queries=args.num_queries, dtype=args.dtype)
  print(f"wrote {src}")
  return 0
