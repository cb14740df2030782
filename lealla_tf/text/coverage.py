"""How much of a text a vocabulary covers: tokens and unknown tokens per language.

A student reads text through its vocabulary; a piece the vocabulary cannot produce becomes
the unknown token, and what the sentence said there is lost. This module counts, for lists
of sentences per language, the tokens a vocabulary produces and how many of them are
unknown, for both kinds of vocabulary the project uses:

- a SentencePiece model (``spm.model``), read with the ``sentencepiece`` package (no
  TensorFlow): an unknown is a piece with the model's ``unk_id``;
- a BERT-style WordPiece ``vocab.txt`` (LaBSE's, LEALLA's), tokenized by the tokenizer
  :class:`lealla_tf.text.wordpiece.WordpiecePreprocessor` runs (TF Text's
  ``FastBertTokenizer``; TensorFlow is imported for it, when a WordPiece vocabulary is
  counted): an unknown is ``[UNK]``, and BERT's WordPiece turns a whole word into one
  ``[UNK]`` when any part of it cannot be matched (or when it is longer than
  ``max_bytes_per_word``). A Python copy of BERT's tokenizer would not do: TF Text splits
  words at format characters (zero-width space, soft hyphen) that BERT drops, and its
  lower-casing folds compatibility characters (full-width ``！`` -> ``!``).

``[CLS]``/``[SEP]`` are not counted; rates are in percent::

    from lealla_tf.text import coverage
    res = coverage.unknown_rates("runs/x/vocab/spm.model",
                                 {"deu": ["Hallo Welt"], "kat": ["გამარჯობა"]},
                                 train_languages=["deu"])
    res["languages"]["kat"]  # {"sentences": 1, "tokens": ..., "unknown": ..., "rate": ...}
    print(coverage.format_table(res))

:func:`lealla_tf.evaluation.vocab_coverage.tatoeba_unknown_rates` runs it over the Tatoeba
test sets (``lealla eval vocab-coverage``); see docs/evaluation.md, "Vocabulary coverage".
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from lealla_tf import corpus, fileio

VOCAB_TYPES = ("sentencepiece", "wordpiece")
DEFAULT_MAX_RATE = 1.0  # percent: the most unknown pieces a language with pairs should have
MAX_BYTES_PER_WORD = 100  # BERT's, and WordpiecePreprocessor's default
BATCH_SIZE = 1024

Vocab = Union[str, bytes, os.PathLike, Sequence[str]]
Counts = Dict[str, Union[int, float]]


def guess_vocab_type(path: Union[str, os.PathLike]) -> str:
    """``sentencepiece`` for a ``.model`` file, ``wordpiece`` for a ``.txt`` file, or for a
    folder holding ``spm.model`` or ``vocab.txt``.

    Raises:
      ValueError: the name says neither.
    """
    name = os.fspath(path).rstrip("/")
    if name.endswith(".model"):
        return "sentencepiece"
    if name.endswith(".txt"):
        return "wordpiece"
    if fileio.isdir(name):
        for vocab_type, file in (("sentencepiece", "spm.model"), ("wordpiece", "vocab.txt")):
            if fileio.exists(fileio.join(name, file)):
                return vocab_type
    raise ValueError(f"cannot tell the vocabulary type of {name}: a .model file is "
                     "SentencePiece, a .txt file WordPiece (give the type explicitly)")


def _rate(unknown: int, tokens: int) -> float:
    return 100.0 * unknown / tokens if tokens else 0.0


def _counts(sentences: int, tokens: int, unknown: int) -> Counts:
    return {"sentences": sentences, "tokens": tokens, "unknown": unknown,
            "rate": _rate(unknown, tokens)}


# ----------------------------------------------------------------------------
# SentencePiece (no TensorFlow).


def load_sentencepiece(model: Union[str, bytes, os.PathLike]):
    """A ``sentencepiece.SentencePieceProcessor`` for a model file, a folder holding
    ``spm.model``, or the model's bytes.

    Raises:
      FileNotFoundError: no such file. ValueError: not a SentencePiece model.
    """
    import sentencepiece as spm
    if isinstance(model, bytes):
        data = model
    else:
        path = os.fspath(model)
        data = fileio.read_bytes(fileio.join(path, "spm.model") if fileio.isdir(path)
                                 else path)
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(data)
    except (RuntimeError, OSError) as e:
        raise ValueError(f"not a SentencePiece model: {e}") from e
    return processor


def count_sentencepiece(processor, sentences: Iterable[str],
                        batch_size: int = BATCH_SIZE) -> Counts:
    """``{"sentences", "tokens", "unknown", "rate"}`` of ``sentences`` under a
    SentencePiece model (a ``SentencePieceProcessor``, see :func:`load_sentencepiece`):
    ``tokens`` counts the pieces ``encode`` gives, ``unknown`` those with the model's
    ``unk_id``."""
    unk = processor.unk_id()
    n = tokens = unknown = 0
    for batch in corpus.batched(sentences, batch_size):
        n += len(batch)
        for ids in processor.encode(batch):
            tokens += len(ids)
            unknown += ids.count(unk)
    return _counts(n, tokens, unknown)


# ----------------------------------------------------------------------------
# WordPiece (the project's tokenizer: TF Text).


def count_wordpiece(tokenizer, unknown_id: int, sentences: Iterable[str],
                    batch_size: int = BATCH_SIZE) -> Counts:
    """``{"sentences", "tokens", "unknown", "rate"}`` of ``sentences`` under a WordPiece
    tokenizer (``tokenize(strings) -> ragged ids``, e.g.
    :func:`lealla_tf.text.wordpiece.make_tokenizer`): ``unknown`` counts the
    ``unknown_id`` (``[UNK]``) pieces, one per word that cannot be segmented."""
    import numpy as np
    import tensorflow as tf
    n = tokens = unknown = 0
    for batch in corpus.batched(sentences, batch_size):
        n += len(batch)
        ids = tokenizer.tokenize(tf.constant(batch, tf.string))
        flat = np.asarray(getattr(ids, "flat_values", ids)).reshape(-1)
        tokens += int(flat.size)
        unknown += int(np.count_nonzero(flat == unknown_id))
    return _counts(n, tokens, unknown)


def make_counter(vocab: Vocab, vocab_type: Optional[str] = None, do_lower_case: bool = False,
                 max_bytes_per_word: int = MAX_BYTES_PER_WORD
                 ) -> Callable[[Iterable[str]], Counts]:
    """A function ``sentences -> {"sentences", "tokens", "unknown", "rate"}`` for a
    vocabulary of either type.

    Args:
      vocab: an ``spm.model`` or a ``vocab.txt`` (a file, a folder holding one, its bytes;
        a list of tokens is a WordPiece vocabulary).
      vocab_type: ``sentencepiece`` | ``wordpiece``; None guesses from the file name
        (:func:`guess_vocab_type`).
      do_lower_case: WordPiece only: BERT's lower-casing and accent stripping (the
        model's flag; LaBSE's is False).
      max_bytes_per_word: WordPiece only: longer words are ``[UNK]``.

    Raises:
      ValueError: an unknown or unguessable ``vocab_type``, or a bad vocabulary.
    """
    vocab_type = resolve_vocab_type(vocab, vocab_type)
    if vocab_type == "sentencepiece":
        processor = load_sentencepiece(vocab)
        return lambda sentences: count_sentencepiece(processor, sentences)
    from lealla_tf.text import wordpiece
    tokens = wordpiece.vocab_tokens(vocab)
    tokenizer = wordpiece.make_tokenizer(tokens, do_lower_case, max_bytes_per_word)
    unk = tokens.index(wordpiece.UNKNOWN_TOKEN)
    return lambda sentences: count_wordpiece(tokenizer, unk, sentences)


def resolve_vocab_type(vocab: Vocab, vocab_type: Optional[str]) -> str:
    """``vocab_type`` checked, or guessed from ``vocab`` when None.

    Raises:
      ValueError: not one of :data:`VOCAB_TYPES`, or not guessable (bytes).
    """
    if vocab_type is None:
        if isinstance(vocab, (list, tuple)):
            return "wordpiece"
        if isinstance(vocab, bytes):
            raise ValueError("give the vocabulary type of a vocabulary passed as bytes")
        return guess_vocab_type(vocab)
    if vocab_type not in VOCAB_TYPES:
        raise ValueError(f"the vocabulary type must be one of {', '.join(VOCAB_TYPES)}, "
                         f"got {vocab_type!r}")
    return vocab_type


# ----------------------------------------------------------------------------
# Per language.


def summarize(languages: Mapping[str, Mapping], max_rate: float = DEFAULT_MAX_RATE) -> dict:
    """The overall figures of per-language counts: totals and the overall rate, and among
    the languages marked ``has_pairs`` the worst rate and those above ``max_rate``."""
    tokens = sum(r["tokens"] for r in languages.values())
    unknown = sum(r["unknown"] for r in languages.values())
    with_pairs = {l: r for l, r in languages.items() if r.get("has_pairs")}
    worst = max(with_pairs, key=lambda l: (with_pairs[l]["rate"], l), default=None)
    return {
        "languages": len(languages),
        "sentences": sum(r["sentences"] for r in languages.values()),
        "tokens": tokens, "unknown": unknown, "rate": _rate(unknown, tokens),
        "languages_with_pairs": len(with_pairs),
        "worst_with_pairs": ({"language": worst, "rate": with_pairs[worst]["rate"]}
                             if worst is not None else None),
        "max_rate": max_rate,
        "above_max_rate_with_pairs": sorted(
            (l for l, r in with_pairs.items() if r["rate"] > max_rate),
            key=lambda l: (-with_pairs[l]["rate"], l)),
    }


def unknown_rates(vocab: Vocab, sentences: Mapping[str, Iterable[str]],
                  vocab_type: Optional[str] = None, do_lower_case: bool = False,
                  train_languages: Optional[Union[Iterable[str], Mapping[str, int]]] = None,
                  max_rate: float = DEFAULT_MAX_RATE,
                  max_bytes_per_word: int = MAX_BYTES_PER_WORD) -> dict:
    """Tokens and unknown tokens of a vocabulary, per language.

    Args:
      vocab, vocab_type, do_lower_case, max_bytes_per_word: see :func:`make_counter`.
      sentences: language -> its sentences.
      train_languages: the languages that have training pairs: codes, or code -> number
        of pairs (0: none). Each language is marked ``has_pairs`` (and ``pairs``, the
        number, when a mapping is given). None: not known (every ``has_pairs`` is False
        and the table says so).
      max_rate: the rate (percent) no language with pairs should exceed; the summary
        lists those that do.

    Returns:
      ``{"vocab", "vocab_type", "do_lower_case", "train_languages_known",
      "languages": {lang: {"sentences", "tokens", "unknown", "rate", "has_pairs",
      "pairs"}}, "summary": {...}}`` (rates in percent; summary: :func:`summarize`).
    """
    vocab_type = resolve_vocab_type(vocab, vocab_type)
    count = make_counter(vocab, vocab_type, do_lower_case, max_bytes_per_word)
    pairs: Optional[Dict[str, int]] = None
    if train_languages is not None:
        pairs = (dict(train_languages) if isinstance(train_languages, Mapping)
                 else {l: 1 for l in train_languages})
    with_numbers = isinstance(train_languages, Mapping)
    langs = {}
    for lang, lines in sentences.items():
        row: dict = dict(count(lines))
        n = (pairs or {}).get(lang, 0)
        row["has_pairs"] = n > 0
        row["pairs"] = int(n) if with_numbers else None
        langs[lang] = row
    return {"vocab": os.fspath(vocab) if isinstance(vocab, (str, os.PathLike)) else None,
            "vocab_type": vocab_type,
            "do_lower_case": bool(do_lower_case) if vocab_type == "wordpiece" else None,
            "train_languages_known": pairs is not None, "languages": langs,
            "summary": summarize(langs, max_rate)}


def sorted_languages(result: dict) -> List[Tuple[str, dict]]:
    """The rows of a result, highest rate first (then by code)."""
    return sorted(result["languages"].items(), key=lambda kv: (-kv[1]["rate"], kv[0]))


def format_table(result: dict, limit: Optional[int] = None) -> str:
    """A markdown table of :func:`unknown_rates`' result, highest rate first, with a
    column saying whether the language has training pairs, then the overall rate and the
    worst rate among the languages with pairs.

    Args:
      result: what :func:`unknown_rates` returned.
      limit: show only the first ``limit`` rows (the lines below still count them all).
    """
    rows = sorted_languages(result)
    known = result.get("train_languages_known", True)
    lines = ["| language | sentences | tokens | unknown | unknown % | training pairs |",
             "|---|---:|---:|---:|---:|---|"]
    for lang, r in rows[:limit] if limit else rows:
        if not known:
            pairs = "?"
        elif not r["has_pairs"]:
            pairs = "no"
        else:
            pairs = f"yes ({r['pairs']})" if r.get("pairs") is not None else "yes"
        lines.append(f"| {lang} | {r['sentences']} | {r['tokens']} | {r['unknown']} | "
                     f"{r['rate']:.2f} | {pairs} |")
    if limit and len(rows) > limit:
        lines.append(f"| ({len(rows) - limit} more) | | | | | |")
    s = result["summary"]
    lines += ["", f"Overall: {s['unknown']} unknown of {s['tokens']} tokens "
                  f"({s['rate']:.2f}%) in {s['languages']} languages."]
    if not known:
        lines.append("Training pairs: not known (no training languages given).")
    elif s["worst_with_pairs"] is None:
        lines.append("No language has training pairs.")
    else:
        w, over = s["worst_with_pairs"], s["above_max_rate_with_pairs"]
        lines.append(f"Worst rate among the {s['languages_with_pairs']} languages with "
                     f"training pairs: {w['rate']:.2f}% ({w['language']}); "
                     + (f"{len(over)} above {s['max_rate']:g}%: {', '.join(over)}." if over
                        else f"none above {s['max_rate']:g}%."))
    return "\n".join(lines)
