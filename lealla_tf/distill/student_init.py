"""Starting a student from its teacher: the teacher's vocabulary and token embeddings.

:func:`build_teacher_vocab` (``vocab.source: teacher``) writes the teacher's SentencePiece
model with ``[PAD] [UNK] [CLS] [SEP] [MASK]`` at ids 0-4; :func:`initial_table`
(``model.embedding_init``) gives the student's first word-embedding table::

    from lealla_tf.distill import student_init
    from lealla_tf.embedders import teachers
    teacher = teachers.load_teacher("muse")
    path = student_init.build_teacher_vocab(teacher, ["train/deu-eng.tsv"], "vocab/")
    table = student_init.initial_table("teacher", teacher, path, dim=128, stddev=0.02)

See docs/training.md, "Students that learn in minutes on a CPU".
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from lealla_tf import corpus, fileio
from lealla_tf.text import sentencepiece

INFO_FILE = "vocab_info.json"
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4
KEPT_TYPES = (_NORMAL, _USER_DEFINED)  # piece types a pruned vocabulary keeps
WORD_BOUNDARY = "\u2581"


def model_proto(model_bytes: bytes):
    """The ``ModelProto`` of a serialized SentencePiece model."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(model_bytes)
    return proto


def teacher_sentencepiece(teacher) -> bytes:
    """The serialized SentencePiece model a teacher tokenizes with.

    Raises:
      ValueError: the teacher exposes none (e.g. a WordPiece model such as LaBSE, or a
        Python callable).
    """
    fn = getattr(teacher, "sentencepiece_model", None)
    model = fn() if callable(fn) else None
    if not model:
        raise ValueError(
            f"teacher {getattr(teacher, 'name', teacher)!r} exposes no SentencePiece model, so "
            "vocab.source: teacher cannot use its vocabulary; use vocab.source: train, or a "
            "teacher with a SentencePiece vocabulary (muse, or a SavedModel with a "
            "SentencePiece .model asset)")
    proto = model_proto(model)
    if proto.trainer_spec.model_type != 1:
        raise ValueError(f"teacher {teacher.name!r}: its SentencePiece model is not unigram "
                         "(TF Text's FastSentencepieceTokenizer reproduces unigram models only)")
    return model


def _corpus_sentences(files: Sequence[str]) -> Iterable[str]:
    for path in files:
        if path.endswith(".tsv"):
            for _, src, tgt in corpus.iter_tsv(path):
                yield src
                yield tgt
        else:
            yield from corpus.iter_text(path)


def prune_sentencepiece(model_bytes: bytes, sentences: Iterable[str], max_pieces: int = 0,
                        progress: bool = False, keep_unused: bool = False
                        ) -> Tuple[bytes, np.ndarray, Dict[str, int]]:
    """The teacher's unigram model restricted to the pieces ``sentences`` use.

    Args:
      model_bytes: the teacher's serialized SentencePiece (unigram) model.
      sentences: the corpus whose pieces are kept.
      max_pieces: keep at most this many teacher pieces (the corpus's characters first,
        then the most frequent pieces, then, with ``keep_unused``, the unused pieces the
        teacher scores highest); 0 keeps every used piece.
      progress: show a progress bar while tokenizing.
      keep_unused: also keep the pieces the corpus does not use (all of the teacher's
        vocabulary when ``max_pieces`` is 0): words the training pairs never contain keep
        their own pieces (and teacher-initialised rows) instead of falling back to
        characters, which matters on other domains (news, names, numbers).

    Returns:
      ``(model, teacher_ids, stats)``: the new serialized model (ids 0-4 are
      ``sentencepiece.SPECIAL_PIECES``, then the kept pieces in the teacher's order),
      ``teacher_ids[i]`` = the teacher id of new piece ``i`` (-1 for the specials), and
      counts of what was kept.
    """
    import sentencepiece as spm
    from tqdm.auto import tqdm

    proto = model_proto(model_bytes)
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    counts: collections.Counter = collections.Counter()
    chars: set = set()
    n_sentences = 0
    for sentence in tqdm(sentences, desc="teacher pieces", unit=" sent", disable=not progress,
                         mininterval=1.0):
        counts.update(sp.encode(sentence))
        chars.update(sp.normalize(sentence))
        n_sentences += 1
    piece_id = {p.piece: i for i, p in enumerate(proto.pieces)}
    keepable = lambda i: i is not None and proto.pieces[i].type in KEPT_TYPES
    char_ids = {piece_id.get(c) for c in chars} | {piece_id.get(WORD_BOUNDARY + c) for c in chars}
    char_ids = sorted(i for i in char_ids if keepable(i))
    used = sorted((i for i in counts if keepable(i)), key=lambda i: (-counts[i], i))
    kept = list(dict.fromkeys(char_ids + used))
    if keep_unused:
        unused = sorted((i for i in range(len(proto.pieces)) if keepable(i) and i not in counts),
                        key=lambda i: (-proto.pieces[i].score, i))
        kept = list(dict.fromkeys(kept + unused))
    if max_pieces:
        if max_pieces < len(char_ids):
            kept = sorted(char_ids, key=lambda i: (-counts.get(i, 0), i))[:max_pieces]
        else:
            kept = kept[:max_pieces]
    kept = sorted(kept)

    old = list(proto.pieces)
    del proto.pieces[:]
    for n, piece in enumerate(sentencepiece.SPECIAL_PIECES):
        new = proto.pieces.add()
        new.piece, new.score = piece, 0.0
        new.type = _UNKNOWN if n == sentencepiece.UNK_ID else _CONTROL
    for i in kept:
        new = proto.pieces.add()
        new.CopyFrom(old[i])
    spec = proto.trainer_spec
    spec.unk_id, spec.pad_id, spec.bos_id, spec.eos_id = (sentencepiece.UNK_ID,
                                                          sentencepiece.PAD_ID, -1, -1)
    spec.unk_piece = sentencepiece.SPECIAL_PIECES[sentencepiece.UNK_ID]
    spec.pad_piece = sentencepiece.SPECIAL_PIECES[sentencepiece.PAD_ID]
    spec.byte_fallback = False
    spec.vocab_size = len(proto.pieces)
    teacher_ids = np.array([-1] * len(sentencepiece.SPECIAL_PIECES) + kept, np.int64)
    stats = {"sentences": n_sentences, "teacher_pieces": len(old),
             "used_pieces": len(used), "character_pieces": len(char_ids),
             "kept_pieces": len(kept), "vocab_size": len(proto.pieces),
             "unknown_tokens_in_corpus": int(counts.get(sp.unk_id(), 0))}
    return proto.SerializeToString(), teacher_ids, stats


def build_teacher_vocab(teacher, files: Sequence[str], output_dir: str, max_pieces: int = 0,
                        progress: bool = True, keep_unused: bool = False) -> str:
    """Writes the teacher's vocabulary pruned to ``files`` as ``output_dir/spm.model``.

    Also writes ``vocab_info.json`` (sizes, the teacher, ``teacher_ids``: the teacher id of
    every piece). An existing model there is reused.

    Args:
      teacher: a teacher exposing ``sentencepiece_model()`` (see :func:`teacher_sentencepiece`).
      files: ``.tsv`` pair files (both sides) or text files.
      output_dir: the vocabulary folder.
      max_pieces, keep_unused: see :func:`prune_sentencepiece`.
      progress: progress bar and a summary line.

    Returns:
      The path of ``spm.model``.
    """
    path = fileio.join(output_dir, sentencepiece.MODEL_FILE)
    info_path = fileio.join(output_dir, INFO_FILE)
    if fileio.exists(path) and fileio.exists(info_path):
        old = json.loads(fileio.read_text(info_path))
        wanted = {"teacher": teacher.name, "max_pieces": max_pieces, "keep_unused": keep_unused}
        got = {k: old.get(k, False if k == "keep_unused" else None) for k in wanted}
        if got != wanted:
            raise ValueError(f"{output_dir} holds a teacher vocabulary built with {got}, not "
                             f"{wanted}: use another folder or delete it")
        return path
    model = teacher_sentencepiece(teacher)
    pruned, teacher_ids, stats = prune_sentencepiece(model, _corpus_sentences(files),
                                                     max_pieces, progress=progress,
                                                     keep_unused=keep_unused)
    fileio.makedirs(output_dir)
    info = dict(stats, source="teacher", teacher=teacher.name, max_pieces=max_pieces,
                keep_unused=keep_unused,
                special_pieces=list(sentencepiece.SPECIAL_PIECES),
                inputs=[fileio.normpath(f) for f in files], teacher_ids=teacher_ids.tolist())
    fileio.atomic_write(info_path, json.dumps(info, indent=1, ensure_ascii=False))
    fileio.atomic_write(path, pruned)
    if progress:
        print(f"teacher vocabulary ({teacher.name}): {stats['vocab_size']:,} pieces kept of "
              f"{stats['teacher_pieces']:,} ({stats['used_pieces']:,} used by "
              f"{stats['sentences']:,} sentences, {stats['character_pieces']:,} characters)",
              flush=True)
    return path


def piece_texts(model_bytes: bytes) -> List[str]:
    """The text each piece stands for (``▁`` as a space; special pieces give ``""``)."""
    proto = model_proto(model_bytes)
    return [p.piece.replace(WORD_BOUNDARY, " ") if p.type in KEPT_TYPES else ""
            for p in proto.pieces]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]


def teacher_piece_vectors(teacher, model_bytes: bytes, cache_dir: Optional[str] = None,
                          batch_size: int = 512, progress: bool = True) -> np.ndarray:
    """The teacher's embedding of every piece's text, float32 ``[vocab, teacher_dim]``.

    Special pieces get zero rows. Cached in ``cache_dir`` (keyed by teacher and vocabulary).
    """
    from tqdm.auto import tqdm

    digest = hashlib.sha256(model_bytes).hexdigest()[:16]
    cache = (fileio.join(cache_dir, f"piece_vectors.{_slug(teacher.name)}.{digest}.npy")
             if cache_dir else None)
    if cache and fileio.exists(cache):
        return np.load(io.BytesIO(fileio.read_bytes(cache)))
    texts = piece_texts(model_bytes)
    rows = [i for i, t in enumerate(texts) if t.strip()]
    out = np.zeros((len(texts), teacher.dim), np.float32)
    for start in tqdm(range(0, len(rows), batch_size), desc="embedding vocabulary pieces",
                      unit=" batch", disable=not progress, mininterval=1.0):
        chunk = rows[start:start + batch_size]
        out[chunk] = teacher.encode([texts[i] for i in chunk])
    if cache:
        fileio.makedirs(cache_dir)
        buffer = io.BytesIO()
        np.save(buffer, out)
        fileio.atomic_write(cache, buffer.getvalue())
    return out


def teacher_table_rows(teacher, vocab_dir: str) -> np.ndarray:
    """The teacher's own token-embedding rows for the pieces of a teacher vocabulary.

    Args:
      teacher: a teacher with ``token_embeddings(ids) -> [len(ids), D]``.
      vocab_dir: a folder written by :func:`build_teacher_vocab` (its ``teacher_ids``).

    Raises:
      ValueError: the teacher has no token table, or the vocabulary is not the teacher's.
    """
    fn = getattr(teacher, "token_embeddings", None)
    if not callable(fn):
        raise ValueError(f"teacher {teacher.name!r} exposes no token-embedding table: use "
                         "model.embedding_init: teacher (embeds the pieces) instead")
    info_path = fileio.join(vocab_dir, INFO_FILE)
    info = json.loads(fileio.read_text(info_path)) if fileio.exists(info_path) else {}
    if info.get("source") != "teacher" or info.get("teacher") != teacher.name:
        raise ValueError(f"model.embedding_init: teacher_table needs the teacher's own "
                         f"vocabulary (vocab.source: teacher with teacher {teacher.name!r}); "
                         f"{vocab_dir} holds another")
    ids = np.asarray(info["teacher_ids"], np.int64)
    known = ids >= 0
    rows = np.asarray(fn(ids[known]), np.float32)
    out = np.zeros((len(ids), rows.shape[1]), np.float32)
    out[known] = rows
    return out


def pca_table(vectors: np.ndarray, dim: int, stddev: float) -> np.ndarray:
    """Rows reduced to ``dim`` by PCA, entries rescaled to standard deviation ``stddev``.

    All-zero rows (special pieces) stay zero. The components are those of the centred
    non-zero rows (``numpy.linalg.svd``); with fewer source dimensions than ``dim``
    the remaining columns are zero.
    """
    vectors = np.asarray(vectors, np.float64)
    live = np.any(vectors != 0, axis=1)
    if not live.any():
        raise ValueError("no non-zero piece vectors to reduce")
    x = vectors[live] - vectors[live].mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    k = min(dim, vt.shape[0])
    reduced = x @ vt[:k].T
    reduced *= stddev / max(reduced.std(), 1e-12)
    out = np.zeros((vectors.shape[0], dim), np.float32)
    out[live, :k] = reduced
    return out


def initial_table(kind: str, teacher, vocab_path: str, dim: int, stddev: float,
                  cache_dir: Optional[str] = None, progress: bool = True) -> np.ndarray:
    """The student's initial word-embedding table for ``model.embedding_init``.

    Args:
      kind: ``teacher`` or ``teacher_table``.
      teacher: the teacher.
      vocab_path: the student's ``spm.model`` (for ``teacher_table``: written by
        :func:`build_teacher_vocab`, with its ``vocab_info.json`` beside it).
      dim: the student's hidden size.
      stddev: the initializer's standard deviation (``model.initializer_range``).
      cache_dir: where piece vectors are cached (default: the vocabulary's folder).
      progress: progress bars.
    """
    model_bytes = sentencepiece.read_model(vocab_path)
    if kind == "teacher":
        vectors = teacher_piece_vectors(teacher, model_bytes,
                                        cache_dir or fileio.dirname(vocab_path),
                                        progress=progress)
    elif kind == "teacher_table":
        vectors = teacher_table_rows(teacher, fileio.dirname(vocab_path))
    else:
        raise ValueError(f"unknown embedding init {kind!r}: expected teacher or teacher_table")
    return pca_table(vectors, dim, stddev)
