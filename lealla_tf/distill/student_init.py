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


def uncovered_characters(model_bytes: bytes, sentences: Iterable[str]) -> collections.Counter:
    """The characters of ``sentences`` (after the model's normalisation) that the model can
    only read as its unknown piece, with their counts."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    chars: collections.Counter = collections.Counter()
    for sentence in sentences:
        chars.update(sp.normalize(sentence))
    chars.pop(WORD_BOUNDARY, None)
    return collections.Counter({c: n for c, n in chars.items()
                                if sp.unk_id() in sp.encode(c)})


def _words_with(sp, sentences: Iterable[str], chars: set) -> collections.Counter:
    words: collections.Counter = collections.Counter()
    for sentence in sentences:
        for word in sp.normalize(sentence).split(WORD_BOUNDARY):
            if word and not chars.isdisjoint(word):
                words[word] += 1
    return words


def extend_sentencepiece(model_bytes: bytes, sentences: Sequence[str], max_pieces: int
                         ) -> Tuple[bytes, Dict[str, int]]:
    """A unigram model that reads what ``model_bytes`` cannot: pieces learned on the words of
    ``sentences`` that hold characters the model lacks, appended after its own pieces.

    Every new piece holds at least one such character, so text the model could already
    segment keeps its segmentation exactly (and its pieces keep their ids); every such
    character of ``sentences`` becomes a piece, so none of them is unknown any more. The
    pieces are learned with SentencePiece's unigram trainer on those words (with their
    counts), and their scores are shifted so that their mean equals the mean score of the
    model's own pieces.

    Args:
      model_bytes: a serialized unigram SentencePiece model (e.g. the teacher's, pruned).
      sentences: the training text (both sides of the pairs).
      max_pieces: at most this many new pieces (the learned model's size; its characters
        always come in, even beyond it).

    Returns:
      ``(model, stats)``: the extended model and counts (``added_pieces``,
      ``uncovered_characters``, ``uncovered_words``).
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    sentences = list(sentences)
    chars = uncovered_characters(model_bytes, sentences)
    stats = {"uncovered_characters": len(chars), "uncovered_words": 0, "added_pieces": 0}
    if not chars or max_pieces <= 0:
        return model_bytes, stats
    words = _words_with(sp, sentences, set(chars))
    stats["uncovered_words"] = len(words)
    proto = model_proto(model_bytes)
    learned = _learn_pieces(words, max_pieces, len(chars))
    known = {p.piece for p in proto.pieces}
    new = [(piece, score) for piece, score in learned
           if piece not in known and not set(chars).isdisjoint(piece)]
    have = {piece for piece, _ in new}
    floor = min((score for _, score in new), default=0.0)
    new += [(c, floor) for c in sorted(chars, key=lambda c: -chars[c]) if c not in have]
    have.update(chars)
    neighbours = [c for c in _script_neighbours(chars)
                  if c not in have and c not in known and sp.normalize(c).lstrip(WORD_BOUNDARY) == c
                  and sp.unk_id() in sp.encode(c)]
    new += [(c, floor - 1.0) for c in neighbours]
    stats["neighbour_characters"] = len(neighbours)
    own = [p.score for p in proto.pieces if p.type == _NORMAL]
    shift = (float(np.mean(own)) - float(np.mean([sc for _, sc in new]))) if own else 0.0
    for piece, score in new:
        added = proto.pieces.add()
        added.piece, added.score, added.type = piece, score + shift, _NORMAL
    proto.trainer_spec.vocab_size = len(proto.pieces)
    stats["added_pieces"] = len(new)
    return proto.SerializeToString(), stats


# Scripts of thousands of characters (ideographs, syllables): their unseen characters are rare
# ones, and their blocks would add thousands of rows.
_LARGE_SCRIPTS = ("CJK", "HANGUL", "YI", "TANGUT")


def _script_neighbours(chars) -> List[str]:
    """The characters of the same script in the 128-code-point blocks of ``chars`` (an
    alphabet or abugida, not :data:`_LARGE_SCRIPTS`): a language with few training pairs
    still gets the letters its other sentences use."""
    import unicodedata
    out, seen = [], set()
    for c in chars:
        script = unicodedata.name(c, "").split(" ")[0]
        block = ord(c) & ~0x7F
        if not script or script in _LARGE_SCRIPTS or (script, block) in seen:
            continue
        seen.add((script, block))
        for code in range(block, block + 0x80):
            other = chr(code)
            if unicodedata.name(other, "").split(" ")[0] == script and other not in chars:
                out.append(other)
    return sorted(set(out))


def _learn_pieces(words: collections.Counter, max_pieces: int, n_chars: int
                  ) -> List[Tuple[str, float]]:
    """Unigram pieces (with scores) learned on ``words`` (word -> count)."""
    import tempfile

    import sentencepiece as spm
    with tempfile.TemporaryDirectory(prefix="lealla-extend-") as tmp:
        path = f"{tmp}/words.tsv"
        with open(path, "w", encoding="utf-8") as f:
            for word, n in words.most_common():
                f.write(f"{word.replace(chr(9), ' ')}\t{n}\n")
        size = max(max_pieces, n_chars + 4)
        spm.SentencePieceTrainer.train(
            input=path, input_format="tsv", model_prefix=f"{tmp}/ext", model_type="unigram",
            vocab_size=size, hard_vocab_limit=False, character_coverage=1.0,
            normalization_rule_name="identity", add_dummy_prefix=True,
            max_sentencepiece_length=16, seed_sentencepiece_size=max(10 * size, 100000),
            num_threads=2, minloglevel=2, bos_id=-1, eos_id=-1,
            unk_id=0, pad_id=-1)
        learned = model_proto(open(f"{tmp}/ext.model", "rb").read())
    return [(p.piece, p.score) for p in learned.pieces if p.type == _NORMAL]


def build_teacher_vocab(teacher, files: Sequence[str], output_dir: str, max_pieces: int = 0,
                        progress: bool = True, keep_unused: bool = False,
                        extend_pieces: int = 0) -> str:
    """Writes the teacher's vocabulary pruned to ``files`` as ``output_dir/spm.model``.

    Also writes ``vocab_info.json`` (sizes, the teacher, ``teacher_ids``: the teacher id of
    every piece). An existing model there is reused.

    Args:
      teacher: a teacher exposing ``sentencepiece_model()`` (see :func:`teacher_sentencepiece`).
      files: ``.tsv`` pair files (both sides) or text files.
      output_dir: the vocabulary folder.
      max_pieces, keep_unused: see :func:`prune_sentencepiece`.
      progress: progress bar and a summary line.
      extend_pieces: append up to this many pieces for the text of ``files`` that the
        teacher cannot segment (:func:`extend_sentencepiece`); their ids follow the
        teacher's pieces (``vocab_info.json``: ``added_from``).

    Returns:
      The path of ``spm.model``.
    """
    path = fileio.join(output_dir, sentencepiece.MODEL_FILE)
    info_path = fileio.join(output_dir, INFO_FILE)
    if fileio.exists(path) and fileio.exists(info_path):
        old = json.loads(fileio.read_text(info_path))
        wanted = {"teacher": teacher.name, "max_pieces": max_pieces, "keep_unused": keep_unused,
                  "extend_pieces": extend_pieces}
        defaults = {"keep_unused": False, "extend_pieces": 0}
        got = {k: old.get(k, defaults.get(k)) for k in wanted}
        if got != wanted:
            raise ValueError(f"{output_dir} holds a teacher vocabulary built with {got}, not "
                             f"{wanted}: use another folder or delete it")
        return path
    model = teacher_sentencepiece(teacher)
    pruned, teacher_ids, stats = prune_sentencepiece(model, _corpus_sentences(files),
                                                     max_pieces, progress=progress,
                                                     keep_unused=keep_unused)
    stats["added_from"] = len(teacher_ids)
    if extend_pieces:
        pruned, extension = extend_sentencepiece(pruned, list(_corpus_sentences(files)),
                                                 extend_pieces)
        teacher_ids = np.concatenate([teacher_ids,
                                      np.full(extension["added_pieces"], -1, np.int64)])
        stats.update(extension, vocab_size=len(teacher_ids))
    fileio.makedirs(output_dir)
    info = dict(stats, source="teacher", teacher=teacher.name, max_pieces=max_pieces,
                keep_unused=keep_unused, extend_pieces=extend_pieces,
                special_pieces=list(sentencepiece.SPECIAL_PIECES),
                inputs=[fileio.normpath(f) for f in files], teacher_ids=teacher_ids.tolist())
    fileio.atomic_write(info_path, json.dumps(info, indent=1, ensure_ascii=False))
    fileio.atomic_write(path, pruned)
    if progress:
        print(f"teacher vocabulary ({teacher.name}): {stats['vocab_size']:,} pieces kept of "
              f"{stats['teacher_pieces']:,} ({stats['used_pieces']:,} used by "
              f"{stats['sentences']:,} sentences, {stats['character_pieces']:,} characters)"
              + (f", {stats['added_pieces']:,} pieces added for {stats['uncovered_characters']:,}"
                 " characters it lacks" if extend_pieces else ""), flush=True)
    return path


def piece_texts(model_bytes: bytes) -> List[str]:
    """The text each piece stands for (``▁`` as a space; special pieces give ``""``)."""
    proto = model_proto(model_bytes)
    return [p.piece.replace(WORD_BOUNDARY, " ") if p.type in KEPT_TYPES else ""
            for p in proto.pieces]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]


def teacher_piece_vectors(teacher, model_bytes: bytes, cache_dir: Optional[str] = None,
                          batch_size: int = 512, progress: bool = True,
                          limit: Optional[int] = None) -> np.ndarray:
    """The teacher's embedding of every piece's text, float32 ``[vocab, teacher_dim]``.

    Special pieces, and pieces from id ``limit`` on (added ones the teacher cannot read),
    get zero rows. Cached in ``cache_dir`` (keyed by teacher and vocabulary).
    """
    from tqdm.auto import tqdm

    digest = hashlib.sha256(model_bytes).hexdigest()[:16]
    cache = (fileio.join(cache_dir, f"piece_vectors.{_slug(teacher.name)}.{digest}.npy")
             if cache_dir else None)
    if cache and fileio.exists(cache):
        return np.load(io.BytesIO(fileio.read_bytes(cache)))
    texts = piece_texts(model_bytes)
    rows = [i for i, t in enumerate(texts[:limit]) if t.strip()]
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
    info_path = fileio.join(fileio.dirname(vocab_path), INFO_FILE)
    info = json.loads(fileio.read_text(info_path)) if fileio.exists(info_path) else {}
    added_from = int(info["added_from"]) if info.get("added_pieces") else None
    if kind == "teacher":
        vectors = teacher_piece_vectors(teacher, model_bytes,
                                        cache_dir or fileio.dirname(vocab_path),
                                        progress=progress, limit=added_from)
    elif kind == "teacher_table":
        vectors = teacher_table_rows(teacher, fileio.dirname(vocab_path))
    else:
        raise ValueError(f"unknown embedding init {kind!r}: expected teacher or teacher_table")
    table = pca_table(vectors, dim, stddev)
    if added_from is not None:
        table[added_from:] = character_rows(piece_texts(model_bytes), table, added_from, stddev)
    return table


def character_rows(texts: Sequence[str], table: np.ndarray, start: int,
                   stddev: float) -> np.ndarray:
    """Rows for the pieces ``texts[start:]`` (added to a teacher's vocabulary): the mean of
    the rows of their characters, scaled to the norm of an ``N(0, stddev)`` row.

    A character's row is its own piece's row in ``table`` when the piece is one of the first
    ``start`` (teacher-made), else a normal row seeded by its code point (at that norm), so
    pieces that share characters start close to each other and a one-character piece
    starts at its character's row.
    """
    dim = table.shape[1]
    ids = {t: i for i, t in enumerate(texts[:start]) if t}
    norm = stddev * np.sqrt(dim)

    def char_row(c: str) -> np.ndarray:
        i = ids.get(c, ids.get(" " + c))
        if i is not None and np.any(table[i]):
            return table[i]
        row = np.random.default_rng(ord(c)).normal(0.0, stddev, dim)
        return row * (norm / max(float(np.linalg.norm(row)), 1e-12))

    out = np.zeros((len(texts) - start, dim), np.float32)
    for n, text in enumerate(texts[start:]):
        chars = [c for c in text if not c.isspace()]
        if not chars:
            continue
        row = np.mean([char_row(c) for c in chars], axis=0)
        out[n] = row * (norm / max(float(np.linalg.norm(row)), 1e-12))
    return out
