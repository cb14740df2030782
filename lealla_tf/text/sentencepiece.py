"""SentencePiece vocabularies and the strings -> BERT-style inputs preprocessor.

:func:`train_vocab` trains a unigram model without byte fallback (what TF Text's
``FastSentencepieceTokenizer`` reproduces and TFLite runs), sampling languages with
p ∝ n^α; :class:`Preprocessor` packs strings into int32 inputs with that tokenizer::

    import tensorflow as tf
    from lealla_tf.text import sentencepiece
    path = sentencepiece.train_vocab(["train/deu-eng.tsv"], "vocab/", vocab_size=8000)
    pre = sentencepiece.Preprocessor(path, seq_length=64)
    pre(tf.constant(["Hello world", "Hallo Welt"]))["input_word_ids"].shape  # [2, 64]

See docs/training.md, "Vocabulary and encoder", and docs/evaluation.md, "Models" (awkward
input).
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras

from lealla_tf import corpus, fileio, layout
from lealla_tf.text import packing

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 1, 2, 3, 4
SPECIAL_PIECES = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPECIAL_IDS = packing.special_ids(SPECIAL_PIECES)  # the reserved ids above, by TF Hub key
MODEL_FILE = layout.SPM_MODEL_FILE


# ----------------------------------------------------------------------------
# Vocabulary training.


def _language_of_side(path: str) -> List[str]:
    """Languages of the sentences a file yields (TSV: foreign then English)."""
    if path.endswith(".tsv"):
        return [corpus.language_of(path).split("_")[0], "eng"]
    return [corpus.language_of(path).split("_")[0]]


def _iter_by_language(files: Sequence[str], stats: corpus.Stats):
    for path in files:
        langs = _language_of_side(path)
        if path.endswith(".tsv"):
            for _, src, tgt in corpus.iter_tsv(path, stats):
                yield langs[0], src
                yield langs[1], tgt
        else:
            for sentence in corpus.iter_text(path, stats):
                yield langs[0], sentence


def sample_sizes(counts: Dict[str, int], budget: int, alpha: float) -> Dict[str, int]:
    """Per-language sample sizes with p ∝ n^α over a total budget, capped at n.

    Args:
      counts: sentences available per language.
      budget: total number of sentences to draw (across all languages).
      alpha: sampling exponent; 1 keeps corpus proportions, 0 samples languages equally.

    Returns:
      Mapping language -> number of sentences to draw. Budget a capped language
      cannot use is redistributed over the others.
    """
    sizes = {lang: 0 for lang in counts}
    remaining = dict(counts)
    left = budget
    while left > 0 and remaining:
        weights = {l: n ** alpha for l, n in remaining.items()}
        total = sum(weights.values())
        capped = {}
        for lang, w in weights.items():
            want = int(math.ceil(left * w / total))
            if want >= remaining[lang]:
                capped[lang] = remaining[lang]
        if not capped:
            for lang, w in weights.items():
                sizes[lang] += int(math.floor(left * w / total))
            break
        for lang, n in capped.items():
            sizes[lang] += n
            left -= n
            del remaining[lang]
    return sizes


def _sample_sentences(files: Sequence[str], counts: Dict[str, int], sizes: Dict[str, int],
                      seed: int, progress: bool) -> Tuple[List[str], Dict[str, List[str]]]:
    """Reservoir sampling per language (a second pass over ``files``), deterministic under
    ``seed``: ``sizes[lang]`` of the ``counts[lang]`` sentences of each language. Returns the
    shuffled sample and the per-language reservoirs."""
    from tqdm import tqdm
    rng = random.Random(seed)
    reservoirs: Dict[str, List[str]] = {lang: [] for lang in counts}
    seen: Dict[str, int] = {lang: 0 for lang in counts}
    for lang, sentence in tqdm(_iter_by_language(files, corpus.Stats()), total=sum(counts.values()),
                               desc="sampling", unit=" sent", disable=not progress,
                               mininterval=1.0):
        k = sizes[lang]
        seen[lang] += 1
        res = reservoirs[lang]
        if len(res) < k:
            res.append(sentence)
        else:
            j = rng.randrange(seen[lang])
            if j < k:
                res[j] = sentence
    sample = [s for lang in sorted(reservoirs) for s in reservoirs[lang]]
    rng.shuffle(sample)
    return sample, reservoirs


def train_vocab(files: Sequence[str], output_dir: str, vocab_size: int,
                sentences_per_language: int = 100000, sampling_alpha: float = 0.3,
                character_coverage: float = 0.9995, max_sentence_length: int = 4192,
                seed: int = 0, num_threads: Optional[int] = None,
                progress: bool = True) -> str:
    """Trains a unigram SentencePiece vocabulary over multilingual text.

    Args:
      files: ``.tsv`` parallel files (both sides are used, the second side counted as
        English) or plain text files (one sentence per line; language = file stem).
      output_dir: where ``spm.model``, ``spm.vocab`` and ``vocab_info.json`` go (any
        tf.io.gfile path).
      vocab_size: number of pieces including the 5 reserved ones. If the text is too
        small for this many pieces, SentencePiece stops earlier (the actual size is
        recorded in ``vocab_info.json`` and printed).
      sentences_per_language: average number of sentences per language in the
        training sample; the total budget is this times the number of languages.
      sampling_alpha: exponent of p ∝ n^α language sampling.
      character_coverage: SentencePiece character coverage.
      max_sentence_length: longer sentences (in bytes) are skipped by SentencePiece.
      seed: seed of the sampling.
      num_threads: SentencePiece trainer threads (default: all cores).
      progress: show progress bars.

    Returns:
      Path of the trained ``spm.model``.
    """
    from tqdm import tqdm

    if not fileio.is_local(output_dir):  # SentencePiece writes real files: stage them
        with tempfile.TemporaryDirectory(prefix="lealla-vocab-") as tmp:
            train_vocab(files, tmp, vocab_size, sentences_per_language, sampling_alpha,
                        character_coverage, max_sentence_length, seed, num_threads, progress)
            fileio.copytree(tmp, output_dir, overwrite=True)
        return fileio.join(output_dir, MODEL_FILE)
    if vocab_size <= len(SPECIAL_PIECES) + 1:
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_PIECES) + 1}, got {vocab_size}")
    files = list(files)
    if not files:
        raise ValueError("train_vocab needs at least one input file")
    for f in files:
        if not os.path.exists(f):
            raise FileNotFoundError(f"vocabulary input not found: {f}")

    stats = corpus.Stats()
    counts: Dict[str, int] = {}
    for lang, _ in tqdm(_iter_by_language(files, stats), desc="counting sentences",
                        unit=" sent", disable=not progress, mininterval=1.0):
        counts[lang] = counts.get(lang, 0) + 1
    if not counts:
        raise ValueError(f"no usable sentences in {len(files)} input file(s)")
    sizes = sample_sizes(counts, sentences_per_language * len(counts), sampling_alpha)

    sample, reservoirs = _sample_sentences(files, counts, sizes, seed, progress)

    os.makedirs(output_dir, exist_ok=True)
    # Trained in a hidden folder inside output_dir and renamed into place at the end: an
    # interrupted run leaves the earlier vocabulary as it was.
    staging = tempfile.mkdtemp(prefix=".vocab-staging-", dir=output_dir)
    try:
        return _train_into(staging, output_dir, files, sample, reservoirs, counts, stats,
                           vocab_size, sampling_alpha, character_coverage,
                           max_sentence_length, num_threads, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _train_into(staging: str, output_dir: str, files, sample, reservoirs, counts, stats,
                vocab_size: int, sampling_alpha: float, character_coverage: float,
                max_sentence_length: int, num_threads: int, progress: bool) -> str:
    """Trains the SentencePiece model in ``staging``, then moves ``spm.vocab``,
    ``vocab_info.json`` and, last, ``spm.model`` into ``output_dir``."""
    import sentencepiece as spm
    stem = os.path.splitext(MODEL_FILE)[0]
    prefix = os.path.join(staging, stem)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False) as tmp:
        for s in sample:
            tmp.write(s.replace("\n", " ") + "\n")
        sample_path = tmp.name
    if progress:
        print(f"training unigram SentencePiece ({vocab_size} pieces) on {len(sample)} sentences "
              f"in {len(counts)} languages ...", flush=True)
    try:
        spm.SentencePieceTrainer.train(
            input=sample_path, model_prefix=prefix, vocab_size=vocab_size,
            model_type="unigram", byte_fallback=False, character_coverage=character_coverage,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=-1, eos_id=-1,
            pad_piece=SPECIAL_PIECES[PAD_ID], unk_piece=SPECIAL_PIECES[UNK_ID],
            control_symbols=list(SPECIAL_PIECES[CLS_ID:]), hard_vocab_limit=False,
            max_sentence_length=max_sentence_length, input_sentence_size=0,
            shuffle_input_sentence=False, num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2)
    except RuntimeError as e:
        if "required_chars" in str(e):
            raise ValueError(
                f"vocab_size {vocab_size} is smaller than the number of distinct characters "
                f"SentencePiece must keep at character_coverage={character_coverage}: {e}. "
                "Increase vocab_size or lower character_coverage.") from e
        raise
    finally:
        os.unlink(sample_path)
    model_path = prefix + ".model"
    actual = spm.SentencePieceProcessor(model_file=model_path).get_piece_size()
    info = {
        "vocab_size_requested": vocab_size, "vocab_size": actual,
        "model_type": "unigram", "byte_fallback": False, "sampling_alpha": sampling_alpha,
        "sentences": len(sample), "sentences_per_language": {l: len(r) for l, r in reservoirs.items()},
        "available_per_language": counts, "malformed_lines_skipped": stats.malformed,
        "special_pieces": list(SPECIAL_PIECES), "inputs": [os.path.abspath(f) for f in files],
    }
    with open(os.path.join(staging, "vocab_info.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, ensure_ascii=False)
    for name in (stem + ".vocab", "vocab_info.json", MODEL_FILE):  # the model last
        os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    if progress:
        print(f"vocabulary: {actual} pieces ({'as requested' if actual == vocab_size else 'fewer than requested: corpus too small'})",
              flush=True)
    return os.path.join(output_dir, MODEL_FILE)


def read_model(sp_model: Union[str, bytes, os.PathLike]) -> bytes:
    """Returns the serialized SentencePiece model from bytes, a file, or a directory."""
    if isinstance(sp_model, bytes):
        return sp_model
    path = os.fspath(sp_model)
    if fileio.isdir(path):
        path = fileio.join(path, MODEL_FILE)
    if not fileio.exists(path):
        raise FileNotFoundError(f"SentencePiece model not found: {path}")
    return fileio.read_bytes(path)


@tf_keras.utils.register_keras_serializable(package="lealla")
class Preprocessor(packing.PackingPreprocessor):
    """Strings -> ``input_word_ids``, ``input_mask``, ``input_type_ids`` (int32).

    Args:
      sp_model: a SentencePiece unigram model: bytes, a ``.model`` file, or a
        directory holding ``spm.model``.
      seq_length, dynamic_length, length_multiple: see
        :class:`lealla_tf.text.packing.PackingPreprocessor`
        (``dynamic_length`` is off by default: the TF Hub preprocessor API packs to a
        fixed length).
    """

    def __init__(self, sp_model: Union[str, bytes], seq_length: int = 64,
                 dynamic_length: bool = False, length_multiple: int = 1, **kwargs):
        super().__init__(seq_length, dynamic_length, length_multiple, **kwargs)
        self._model_bytes = read_model(packing.config_bytes(sp_model))
        self.special_ids = dict(SPECIAL_IDS)
        self.tokenizer = tf_text.FastSentencepieceTokenizer(self._model_bytes)
        self.vocab_size = int(self.tokenizer.vocab_size())

    @property
    def model_bytes(self) -> bytes:
        return self._model_bytes

    def bert_pack_inputs(self, segments: Sequence[tf.RaggedTensor],
                         seq_length: Optional[int] = None) -> Dict[str, tf.Tensor]:
        """TF Hub API: packs 1 or more tokenized segments into model inputs.

        ``[CLS] a [SEP] b [SEP] ...`` with round-robin truncation to ``seq_length``;
        ``input_type_ids`` number the segments. Not used on TFLite paths (it relies on
        ragged ops); single-segment packing in :meth:`call` is its dense equivalent.
        """
        seq_length = int(seq_length or self.seq_length)
        segments = [tf.cast(s, tf.int32) for s in segments]
        segments = [s.merge_dims(1, -1) if s.ragged_rank > 1 else s for s in segments]
        trimmer = tf_text.RoundRobinTrimmer(max_seq_length=seq_length - len(segments) - 1)
        trimmed = trimmer.trim(segments)
        ids, type_ids = tf_text.combine_segments(
            trimmed, start_of_sequence_id=CLS_ID, end_of_segment_id=SEP_ID)
        word_ids, mask = tf_text.pad_model_inputs(ids, max_seq_length=seq_length,
                                                   pad_value=PAD_ID)
        type_ids, _ = tf_text.pad_model_inputs(type_ids, max_seq_length=seq_length, pad_value=0)
        return {"input_word_ids": tf.cast(word_ids, tf.int32),
                "input_mask": tf.cast(mask, tf.int32),
                "input_type_ids": tf.cast(type_ids, tf.int32)}

    def get_config(self):
        config = super().get_config()
        config["sp_model"] = "base64:" + base64.b64encode(self._model_bytes).decode("ascii")
        return config


def load_preprocessor(vocab: Union[str, bytes], seq_length: int = 64) -> Preprocessor:
    """A :class:`Preprocessor` from a model file, a vocabulary directory, or bytes."""
    return Preprocessor(vocab, seq_length=seq_length)
