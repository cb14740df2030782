"""A Hugging Face ``tokenizers`` tokenizer giving a run's token ids, and the check that it
does.

- SentencePiece (unigram ``spm.model``): a ``Unigram`` model with the pieces' scores, the
  model's own precompiled normalizer (e.g. ``nmt_nfkc``), SentencePiece's whitespace rules
  (strip, collapse runs of spaces, a ``▁`` before the text); user-defined symbols get a
  score that makes them one piece wherever they occur. Control pieces ([PAD] [CLS] [SEP]
  [MASK]) and [UNK] keep their ids but get a score no segmentation takes, so text spelling
  ``[CLS]`` is segmented as text, as SentencePiece does (except next to characters the
  vocabulary lacks: the unknown-character score is the lowest score minus 10).
- WordPiece (``vocab.txt``): BERT's pipeline as ``BertTokenizerFast`` builds it
  (``BertPreTokenizer``, ``WordPiece``), with normalizer steps that reproduce TF Text's
  (control and format characters, and lower-casing as NFKD + case folding + removal of
  non-spacing marks, where ``BertNormalizer`` lower-cases and strips accents after NFD).

Both pack ``[CLS] ids [SEP]`` and truncate to the run's packed length, like
:class:`lealla_tf.text.packing.PackingPreprocessor`. :func:`compare_ids` measures how often
the ids equal the TF preprocessor's. :func:`static_tokenizer` is the variant for a static
student's ``StaticEmbedding`` (the markers inserted by the normalizer, no post-processor).

See docs/export.md, "sentence-transformers and ONNX Runtime".
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from lealla_tf import fileio
from lealla_tf.embedders.interop import INVALID_UTF8_CHAR, decode_text

# Stand-ins for invalid UTF-8 bytes, in order of preference: a private-use character, then
# letters of historic scripts (for a vocabulary that holds the first).
INVALID_CANDIDATES = (INVALID_UTF8_CHAR, "\U00010C00", "\U0001E800", "\U00016A40",
                      "\U00011700")
# The score of pieces no segmentation may use (control pieces, [UNK]).
_NEVER = -1e9
# ... and of user-defined symbols, which SentencePiece always segments as one piece.
_ALWAYS = 1e6
# Mismatching sentences quoted in export_info.json.
_QUOTED = 10


def _unigram(model_bytes: bytes):
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    if proto.trainer_spec.model_type != 1:
        raise ValueError("only unigram SentencePiece models convert (this one is type "
                         f"{proto.trainer_spec.model_type})")
    if proto.trainer_spec.byte_fallback:
        raise ValueError("SentencePiece byte fallback has no tokenizers twin")
    normal, user = 1, 4  # SentencePiece piece types

    def score(piece) -> float:  # as SentencePiece's lattice scores them
        if piece.type == normal:
            return piece.score
        if piece.type == user:  # always one piece wherever it occurs, as SentencePiece
            return _ALWAYS
        return _NEVER

    vocab = [(p.piece, score(p)) for p in proto.pieces]
    tok = Tokenizer(Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    spec = proto.normalizer_spec
    steps = [normalizers.Precompiled(spec.precompiled_charsmap)] \
        if spec.precompiled_charsmap else []
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always" if spec.add_dummy_prefix else "never",
        split=proto.trainer_spec.split_by_whitespace)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always"
                                     if spec.add_dummy_prefix else "never")
    return tok


def _case_folds() -> Dict[str, str]:
    """Characters (after NFKD and lower-casing) that Unicode case folding maps elsewhere:
    final sigma to sigma, sharp s to ss, Cherokee small letters to capitals, ..."""
    import sys
    import unicodedata
    folds = {}
    for code in range(0x20, sys.maxunicode + 1):
        if 0xD800 <= code < 0xE000:
            continue
        low = unicodedata.normalize("NFKD", chr(code)).lower()
        if len(low) == 1 and low.casefold() != low:
            folds[low] = low.casefold()
    return folds


def _wordpiece(tokens: Sequence[str], do_lower_case: bool, max_chars: int):
    """BERT's WordPiece pipeline, with TF Text's ``FastBertNormalizer`` reproduced:
    control characters become spaces (format characters too; with lower-casing they are
    dropped), nothing else changes; lower-casing is NFKD, Unicode case folding (not plain
    lower-casing: final sigma becomes sigma) and the removal of non-spacing marks."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(tokens)}, unk_token="[UNK]",
                              max_input_chars_per_word=max_chars))
    if do_lower_case:
        steps = [normalizers.Replace(Regex(r"\p{Cf}"), ""),
                 normalizers.Replace(Regex(r"\p{Cc}"), " "),
                 normalizers.NFKD(), normalizers.Lowercase()]
        steps += [normalizers.Replace(k, v) for k, v in sorted(_case_folds().items())]
        steps += [normalizers.NFKD(), normalizers.Replace(Regex(r"\p{Mn}"), "")]
    else:
        steps = [normalizers.Replace(Regex(r"[\p{Cc}\p{Cf}]"), " ")]
    # Chinese characters become words of their own (FastBertTokenizer splits them too).
    steps.append(normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=True,
                                            strip_accents=False, lowercase=False))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def build_tokenizer(preprocessor):
    """The ``tokenizers.Tokenizer`` giving ``preprocessor``'s packed ids: ``[CLS] ids
    [SEP]``, truncated to its ``seq_length`` (padding off).

    Args:
      preprocessor: a SentencePiece ``Preprocessor`` or a ``WordpiecePreprocessor``.

    Raises:
      ValueError: a vocabulary the library cannot reproduce (not unigram, byte fallback).
    """
    from tokenizers import processors
    if getattr(preprocessor, "vocab_type", "sentencepiece") == "wordpiece":
        tok = _wordpiece(preprocessor.tokens, preprocessor.do_lower_case,
                         preprocessor.max_bytes_per_word)
    else:
        tok = _unigram(preprocessor.model_bytes)
    ids = preprocessor.special_ids
    cls_id, sep_id = ids["start_of_sequence_id"], ids["end_of_segment_id"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.enable_truncation(int(preprocessor.seq_length))
    return tok


def special_tokens(preprocessor) -> Dict[str, Any]:
    """The special tokens and ids (``tokenizer_config.json`` names and the pad id)."""
    ids = preprocessor.special_ids
    return {"pad_id": ids["padding_id"], "cls_id": ids["start_of_sequence_id"],
            "sep_id": ids["end_of_segment_id"], "unk_id": ids["unknown_id"]}


def transformers_tokenizer(tokenizer, preprocessor):
    """``tokenizer`` as a ``transformers.PreTrainedTokenizerFast`` (what
    sentence-transformers loads): the special tokens named, ``model_max_length`` the packed
    length, and ``split_special_tokens`` so that text spelling ``[CLS]`` stays text."""
    from transformers import PreTrainedTokenizerFast
    names = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]",
             "sep_token": "[SEP]"}
    if preprocessor.special_ids.get("mask_id", -1) >= 0:
        names["mask_token"] = "[MASK]"
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.__class__.from_str(tokenizer.to_str()),
        model_max_length=int(preprocessor.seq_length), split_special_tokens=True,
        do_lower_case=bool(getattr(preprocessor, "do_lower_case", False)), **names)
    fast.backend_tokenizer.no_truncation()
    return fast


def tf_ids(preprocessor, sentences: Sequence[bytes], batch: int = 512) -> List[List[int]]:
    """The ids our TF preprocessor packs for each sentence ([CLS] ... [SEP], no padding)."""
    out: List[List[int]] = []
    for start in range(0, len(sentences), batch):
        part = list(sentences[start:start + batch])
        packed = preprocessor(tf.constant(part, tf.string), dynamic_length=True)
        ids = packed["input_word_ids"].numpy()
        lengths = packed["input_mask"].numpy().sum(axis=1)
        out.extend(row[:n].tolist() for row, n in zip(ids, lengths))
    return out


def invalid_char(tokenizer, preprocessor) -> str:
    """The first of :data:`INVALID_CANDIDATES` that ``tokenizer`` turns into ``[UNK]``, alone
    and inside a word (what the TF preprocessor makes of invalid UTF-8).

    Raises:
      ValueError: the vocabulary holds every candidate.
    """
    unk_id = preprocessor.special_ids["unknown_id"]
    for char in INVALID_CANDIDATES:
        if all(unk_id in tokenizer.encode(text).ids for text in (char, f"x{char}x")):
            return char
    raise ValueError("the vocabulary holds every stand-in for invalid UTF-8 bytes "
                     f"{[hex(ord(c)) for c in INVALID_CANDIDATES]}")


def hf_ids(tokenizer, sentences: Sequence[bytes], invalid: str = INVALID_UTF8_CHAR,
           add_special_tokens: bool = True) -> List[List[int]]:
    """The ids ``tokenizer`` gives each sentence (decoded by
    :func:`lealla_tf.embedders.interop.decode_text` with ``invalid``)."""
    return [e.ids for e in tokenizer.encode_batch([decode_text(s, invalid) for s in sentences],
                                                  add_special_tokens=add_special_tokens)]


def compare_ids(preprocessor, tokenizer, sentences: Sequence[bytes],
                invalid: str = INVALID_UTF8_CHAR, static: bool = False) -> Dict[str, Any]:
    """How many sentences get the same ids from ``tokenizer`` as from ``preprocessor``.

    Args:
      static: ``tokenizer`` is a :func:`static_tokenizer` (called without special tokens;
        compared with the TF ids in :func:`as_bag` order).

    Returns:
      ``{"sentences", "equal", "agreement", "mismatches"}``; ``mismatches`` quotes up to
      ten sentences (their first 80 characters) with the first differing position.
    """
    ours = tf_ids(preprocessor, sentences)
    theirs = hf_ids(tokenizer, sentences, invalid, add_special_tokens=not static)
    if static:
        ours = [as_bag(a) for a in ours]
    bad = []
    for s, a, b in zip(sentences, ours, theirs):
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            bad.append({"sentence": decode_text(s, invalid)[:80], "position": at,
                        "ours": a[max(at - 2, 0):at + 4], "tokenizers": b[max(at - 2, 0):at + 4]})
    n = len(sentences)
    return {"sentences": n, "equal": n - len(bad),
            "agreement": (n - len(bad)) / n if n else 1.0, "mismatches": bad[:_QUOTED]}


def sample_sentences(train_files: Sequence[str], limit: int = 2000) -> List[bytes]:
    """Up to ``limit`` sentences from the first lines of a run's training files (both sides
    of ``.tsv`` pairs), spread over the files that still exist; empty when none does."""
    files = [f for f in train_files if fileio.exists(f) and not fileio.isdir(f)]
    if not files:
        return []
    per_file = max(1, math.ceil(limit / len(files)))
    out: List[bytes] = []
    for path in files:
        with fileio.open(path, "rb") as f:
            for line in itertools.islice(f, math.ceil(per_file / 2) + 1):
                fields = line.rstrip(b"\r\n").split(b"\t") if path.endswith(".tsv") \
                    else [line.rstrip(b"\r\n")]
                out.extend(x for x in fields[:2] if x)
    step = max(1, len(out) // limit)
    return out[::step][:limit]


def check_summary(checks: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """A warning naming every check set whose ids are not all equal (None: all equal)."""
    parts = [f"{name}: {c['equal']}/{c['sentences']}" for name, c in checks.items()
             if c["sentences"] and c["equal"] < c["sentences"]]
    if not parts:
        return None
    return ("the Hugging Face tokenizer's ids differ from the TF preprocessor's on some "
            "sentences (" + ", ".join(parts) + "; see export_info.json, checks.token_ids)")



# Stand-ins for [CLS] and [SEP] in a static tokenizer (see :func:`static_tokenizer`), in order
# of preference: supplementary private-use characters.
MARKER_CANDIDATES = tuple(chr(c) for c in range(0xF0001, 0xF0041))


def static_tokenizer(preprocessor, invalid: str = INVALID_UTF8_CHAR):
    """The tokenizer of a static student's sentence-transformers ``StaticEmbedding``: the
    ids of :func:`build_tokenizer` as a bag (``[CLS] [SEP] pieces``), with no special tokens
    added by the caller.

    ``StaticEmbedding`` tokenizes with ``add_special_tokens=False`` (no post-processor) and
    takes the mean of the rows of the ids. So the normalizer inserts the markers itself: two
    private-use characters that neither the vocabulary nor the invalid-UTF-8 stand-in use;
    the vocabulary's ``[CLS]``/``[SEP]`` entries are renamed to them (unigram: with score 0,
    so that each is always one piece), and the model segments them as those ids (text
    spelling ``[CLS]`` stays text; text holding the two characters gets those ids). They
    are not added tokens: a ``normalized`` added token is itself run through the normalizer,
    which then prepends the markers to it. Both go in front (a mean does not depend on the
    order), so the tokenizer's truncation to the packed length keeps ``[CLS]``, ``[SEP]``
    and the first ``seq_length - 2`` pieces, as the TF preprocessor packs them.
    The markers are prepended first, so text that normalises to nothing (whitespace-only,
    format characters) gets both. SentencePiece: the text's leading whitespace is removed
    after them at the end, as its ``Strip`` did, and the dummy prefix ``▁`` comes from a space
    after them. WordPiece: each followed by a space (words of their own). The empty string
    stays empty (the normalizer does not run on it): no ids, a zero embedding.

    Returns:
      ``(tokenizer, (cls_marker, sep_marker))``.

    Raises:
      ValueError: the vocabulary holds every candidate marker.
    """
    from tokenizers import Tokenizer
    base = json.loads(build_tokenizer(preprocessor).to_str())
    ids = special_tokens(preprocessor)
    model = base["model"]
    if model["type"] == "Unigram":
        names = [p for p, _ in model["vocab"]]
    else:
        names = sorted(model["vocab"], key=model["vocab"].get)
    used = {ch for name in names for ch in name} | {invalid}
    free = [c for c in MARKER_CANDIDATES if c not in used]
    if len(free) < 2:
        raise ValueError("the vocabulary holds every stand-in for [CLS]/[SEP] "
                         f"{[hex(ord(c)) for c in MARKER_CANDIDATES]}")
    markers = (free[0], free[1])
    for marker, key in zip(markers, ("cls_id", "sep_id")):
        if model["type"] == "Unigram":
            model["vocab"][ids[key]] = [marker, 0.0]
        else:
            model["vocab"] = {(marker if i == ids[key] else t): i
                              for t, i in model["vocab"].items()}
    prefix = "".join(markers)
    # SentencePiece's dummy prefix ("▁" before the text) goes after the markers.
    space = ""
    pre_tok = base.get("pre_tokenizer") or {}
    if pre_tok.get("type") == "Metaspace" and pre_tok.get("prepend_scheme") == "always":
        pre_tok["prepend_scheme"] = "never"
        space = " "
    steps = base["normalizer"] or {"type": "Sequence", "normalizers": []}
    if steps["type"] != "Sequence":
        steps = {"type": "Sequence", "normalizers": [steps]}
    seq = steps["normalizers"]
    strip = next((i for i, s in enumerate(seq) if s["type"] == "Strip"), None)
    # First: text that normalises to nothing (whitespace, format characters) keeps them.
    if model["type"] != "Unigram":  # WordPiece: each marker a word of its own
        seq.insert(0, {"type": "Prepend", "prepend": f"{markers[0]} {markers[1]} "})
    elif strip is None:
        seq.append({"type": "Prepend", "prepend": prefix + space})
    else:  # the space keeps the text's first character apart from the markers; the
        # text's own leading whitespace is stripped at the end, as Strip did
        seq.insert(0, {"type": "Prepend", "prepend": prefix + " "})
        seq.append({"type": "Replace", "pattern": {"Regex": f"^{prefix}\\s*(?=\\S)"},
                    "content": prefix + space})
    base["normalizer"] = steps
    base["post_processor"] = None
    base["added_tokens"] = []
    tok = Tokenizer.from_str(json.dumps(base))
    for text in ("x", " "):
        got = tok.encode(text, add_special_tokens=False).ids[:2]
        if got != [ids["cls_id"], ids["sep_id"]]:
            raise ValueError(f"the static tokenizer begins {text!r} with {got}, not the "
                             f"[CLS]/[SEP] ids {[ids['cls_id'], ids['sep_id']]}")
    tok.no_padding()
    tok.enable_truncation(int(preprocessor.seq_length))
    return tok, markers


def as_bag(ids: Sequence[int]) -> List[int]:
    """TF packed ids ``[CLS] pieces [SEP]`` in the static tokenizer's order: ``[CLS] [SEP]
    pieces``."""
    ids = list(ids)
    return ids[:1] + ids[-1:] + ids[1:-1] if len(ids) >= 2 else ids
