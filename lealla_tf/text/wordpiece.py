"""WordPiece vocabularies (LaBSE's, LEALLA's) and their strings -> BERT-style inputs.

:class:`WordpiecePreprocessor` is the WordPiece twin of
:class:`lealla_tf.text.sentencepiece.Preprocessor` (same call contract, packing and TF Hub
text API), built on TF Text's ``FastBertTokenizer``::

    import tensorflow as tf
    from lealla_tf.text import wordpiece
    pre = wordpiece.WordpiecePreprocessor("runs/labse/vocab/vocab.txt", seq_length=128)
    pre(tf.constant(["Hello world", "Hallo Welt"]))["input_word_ids"].shape  # [2, 128]

See docs/released_models.md, "WordPiece preprocessing". :func:`extend_vocab` appends
tokens to a vocabulary so that text it turns into ``[UNK]`` can be segmented (see
docs/training.md, "Extending a WordPiece vocabulary").
"""

from __future__ import annotations

import base64
import collections
from typing import Counter, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras

from lealla_tf import corpus, layout
from lealla_tf.text import packing, sentencepiece

VOCAB_FILE = layout.WORDPIECE_VOCAB_FILE
SUFFIX_INDICATOR = "##"
UNKNOWN_TOKEN = packing.SPECIAL_TOKENS["unknown_id"]
MAX_BYTES_PER_WORD = 100  # BERT's


def read_vocab_bytes(vocab: Union[str, bytes, Sequence[str]]) -> bytes:
    """The ``vocab.txt`` content from bytes, a list of tokens, a file or a folder holding one.

    Paths go through ``tf.io.gfile`` (local, ``gs://``, ``ram://``).

    Raises:
      FileNotFoundError: the file does not exist.
    """
    if isinstance(vocab, bytes):
        return vocab
    if isinstance(vocab, (list, tuple)):
        return ("\n".join(vocab) + "\n").encode("utf-8")
    path = str(vocab)
    if tf.io.gfile.isdir(path):
        path = path.rstrip("/") + "/" + VOCAB_FILE
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"WordPiece vocabulary not found: {path}")
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def vocab_tokens(vocab: Union[str, bytes, Sequence[str]]) -> List[str]:
    """The tokens of a WordPiece vocabulary, in id order.

    Raises:
      ValueError: the vocabulary is empty, not UTF-8, repeats a token, or lacks one of
        ``[PAD] [UNK] [CLS] [SEP]``.
    """
    data = read_vocab_bytes(vocab)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"the WordPiece vocabulary is not UTF-8 text: {e}") from e
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    tokens = [t[:-1] if t.endswith("\r") else t for t in tokens]
    if not tokens:
        raise ValueError("the WordPiece vocabulary is empty")
    seen = {}
    for i, t in enumerate(tokens):
        if t in seen:
            raise ValueError(f"the WordPiece vocabulary repeats {t!r} (lines {seen[t] + 1} "
                             f"and {i + 1})")
        seen[t] = i
    missing = [t for k, t in packing.SPECIAL_TOKENS.items() if k != "mask_id" and t not in seen]
    if missing:
        raise ValueError(f"the WordPiece vocabulary lacks the special token(s) {missing}")
    return tokens


def make_tokenizer(tokens: Sequence[str], do_lower_case: bool = False,
                   max_bytes_per_word: int = MAX_BYTES_PER_WORD) -> tf_text.FastBertTokenizer:
    """The tokenizer :class:`WordpiecePreprocessor` runs: TF Text's ``FastBertTokenizer``
    (strings -> int32 ids, one ``[UNK]`` for each word that cannot be segmented)."""
    return tf_text.FastBertTokenizer(
        vocab=list(tokens), suffix_indicator=SUFFIX_INDICATOR,
        max_bytes_per_word=int(max_bytes_per_word), token_out_type=tf.int32,
        unknown_token=UNKNOWN_TOKEN, lower_case_nfd_strip_accents=bool(do_lower_case))


def tokenizer_stages(tokens: Sequence[str], do_lower_case: bool = False,
                     max_bytes_per_word: int = MAX_BYTES_PER_WORD
                     ) -> Tuple[tf_text.FastBertNormalizer, tf_text.FastWordpieceTokenizer]:
    """:func:`make_tokenizer`'s two stages, as ``FastBertTokenizer`` chains them: the
    normalizer (lower-casing or not, control characters to spaces), then WordPiece with
    its own split into words. Their offsets point into the normalized text, so the words
    that become ``[UNK]`` can be read back (:func:`unknown_words`)."""
    normalizer = tf_text.FastBertNormalizer(lower_case_nfd_strip_accents=bool(do_lower_case))
    wordpieces = tf_text.FastWordpieceTokenizer(
        vocab=list(tokens), suffix_indicator=SUFFIX_INDICATOR,
        max_bytes_per_word=int(max_bytes_per_word), token_out_type=tf.int32,
        unknown_token=UNKNOWN_TOKEN, no_pretokenization=False)
    return normalizer, wordpieces


@tf_keras.utils.register_keras_serializable(package="lealla")
class WordpiecePreprocessor(packing.PackingPreprocessor):
    """Strings -> ``input_word_ids``, ``input_mask``, ``input_type_ids`` (int32), WordPiece.

    Args:
      vocab: a WordPiece vocabulary: ``vocab.txt`` bytes, a list of tokens, a file, or a
        folder holding ``vocab.txt``.
      seq_length: length of the packed inputs ([CLS] + up to seq_length-2 pieces + [SEP]).
      do_lower_case: lower-case, NFD-normalise and strip accents first (BERT's
        ``do_lower_case``; the released model's flag).
      dynamic_length: pad each batch only to its longest sentence (see
        :func:`lealla_tf.text.packing.pack_dense`); calls may override it.
      length_multiple: with ``dynamic_length``, round lengths up to a multiple of this.
      max_bytes_per_word: longer words become ``[UNK]`` (BERT's 100).
    """

    asset_name = VOCAB_FILE
    vocab_type = "wordpiece"

    def __init__(self, vocab: Union[str, bytes, Sequence[str]], seq_length: int = 64,
                 do_lower_case: bool = False, dynamic_length: bool = False,
                 length_multiple: int = 1, max_bytes_per_word: int = MAX_BYTES_PER_WORD,
                 **kwargs):
        super().__init__(seq_length, dynamic_length, length_multiple, **kwargs)
        self._vocab_bytes = read_vocab_bytes(packing.config_bytes(vocab))
        self.tokens = vocab_tokens(self._vocab_bytes)
        self.do_lower_case = bool(do_lower_case)
        self.max_bytes_per_word = int(max_bytes_per_word)
        self.special_ids = packing.special_ids(self.tokens)
        self.vocab_size = len(self.tokens)
        self.tokenizer = make_tokenizer(self.tokens, self.do_lower_case,
                                        self.max_bytes_per_word)

    @property
    def model_bytes(self) -> bytes:
        """The ``vocab.txt`` content (what exports carry as their ``vocab_file`` asset)."""
        return self._vocab_bytes

    def bert_pack_inputs(self, segments: Sequence[tf.RaggedTensor],
                         seq_length: Optional[int] = None) -> Dict[str, tf.Tensor]:
        """TF Hub API: packs 1 or more tokenized segments into model inputs.

        ``[CLS] a [SEP] b [SEP] ...`` with round-robin truncation, as Model Garden's
        ``BertPackInputs`` does; ``input_type_ids`` number the segments.

        Args:
          segments: int RaggedTensors ``[batch, (tokens)]`` (or ``[batch, (words),
            (tokens)]``).
          seq_length: output length (default: the layer's).
        """
        from official.nlp.modeling import layers as nlp_layers
        ids = self.special_ids
        out = nlp_layers.BertPackInputs.bert_pack_inputs(
            [tf.cast(s, tf.int32) for s in segments], seq_length=int(seq_length or
                                                                     self.seq_length),
            start_of_sequence_id=ids["start_of_sequence_id"],
            end_of_segment_id=ids["end_of_segment_id"], padding_id=ids["padding_id"])
        return {k: tf.cast(v, tf.int32) for k, v in out.items()}

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocab": "base64:" + base64.b64encode(self._vocab_bytes).decode("ascii"),
            "do_lower_case": self.do_lower_case, "max_bytes_per_word": self.max_bytes_per_word,
        })
        return config


def make_preprocessor(vocab_type: str, vocab: Union[str, bytes], seq_length: int,
                      do_lower_case: bool = False):
    """The preprocessor of a vocabulary of either type.

    Args:
      vocab_type: ``sentencepiece`` (a unigram ``spm.model``) or ``wordpiece``
        (a ``vocab.txt``).
      vocab: the vocabulary file (or folder, or its bytes).
      seq_length: packed length.
      do_lower_case: WordPiece only: BERT's lower-casing and accent stripping.

    Raises:
      ValueError: an unknown ``vocab_type``.
    """
    if vocab_type == "wordpiece":
        return WordpiecePreprocessor(vocab, seq_length=seq_length, do_lower_case=do_lower_case)
    if vocab_type == "sentencepiece":
        return sentencepiece.Preprocessor(vocab, seq_length=seq_length)
    raise ValueError(f"vocab.type must be one of {layout.VOCAB_TYPES}, got {vocab_type!r}")


def read_vocab(vocab_type: str, path: str) -> bytes:
    """The vocabulary's bytes (a ``spm.model`` or a ``vocab.txt``)."""
    if vocab_type == "wordpiece":
        return read_vocab_bytes(path)
    return sentencepiece.read_model(path)


# ----------------------------------------------------------------------------
# Extending a vocabulary.


def unknown_words(vocab: Union[str, bytes, Sequence[str]], sentences: Iterable[str],
                  do_lower_case: bool = False, max_bytes_per_word: int = MAX_BYTES_PER_WORD,
                  batch_size: int = 1024) -> Counter[str]:
    """The words of ``sentences`` that the vocabulary turns into ``[UNK]``, with their
    counts, spelled as WordPiece sees them (normalized, lower-cased with
    ``do_lower_case``).

    Raises:
      ValueError: a bad vocabulary (see :func:`vocab_tokens`).
    """
    import numpy as np
    tokens = vocab_tokens(vocab)
    unk = tokens.index(UNKNOWN_TOKEN)
    normalizer, wordpieces = tokenizer_stages(tokens, do_lower_case, max_bytes_per_word)
    counts: Counter[str] = collections.Counter()
    for batch in corpus.batched(sentences, batch_size):
        text = normalizer.normalize(tf.constant(batch, tf.string))
        ids, starts, ends = wordpieces.tokenize_with_offsets(text)
        flat = ids.flat_values.numpy()
        where = np.flatnonzero(flat == unk)
        if not where.size:
            continue
        rows = ids.value_rowids().numpy()[where]
        starts, ends = starts.flat_values.numpy()[where], ends.flat_values.numpy()[where]
        text = text.numpy()
        for row, start, end in zip(rows, starts, ends):
            counts[text[row][start:end].decode("utf-8", "replace")] += 1
    return counts


def _bare(token: str) -> str:
    return token[len(SUFFIX_INDICATOR):] if token.startswith(SUFFIX_INDICATOR) else token


def _learned_pieces(words: Dict[str, int], novel: set, known: set, budget: int,
                    min_count: int) -> List[str]:
    """Up to ``budget`` word pieces of ``words`` that TF Text's BERT vocabulary learner
    finds at least ``min_count`` times, most frequent first, keeping only pieces longer
    than one character that hold a character of ``novel`` and are not in ``known``."""
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner
    params = learner.Params(
        upper_thresh=None, lower_thresh=min_count, num_iterations=4, max_input_tokens=-1,
        max_token_length=50, max_unique_chars=0, vocab_size=0, slack_ratio=0.0,
        include_joiner_token=True, joiner=SUFFIX_INDICATOR, reserved_tokens=[])
    # (characters first, then the pieces by count: what generate_final_vocabulary gives)
    learned = learner.learn_with_thresh(sorted(words.items()), max(1, int(min_count)), params)
    out = []
    for token in learned:
        bare = _bare(token)
        if len(bare) > 1 and token not in known and any(ch in novel for ch in bare):
            out.append(token)
            known.add(token)
            if len(out) == budget:
                break
    return out


def extend_vocab(vocab: Union[str, bytes, Sequence[str]], sentences: Iterable[str],
                 max_new: int = 1000, output: Optional[str] = None,
                 do_lower_case: bool = False, learn_pieces: bool = True, min_count: int = 2,
                 max_bytes_per_word: int = MAX_BYTES_PER_WORD) -> List[str]:
    """The vocabulary's tokens, unchanged and in order (every id keeps its embedding
    row), followed by new tokens that let WordPiece segment the words of ``sentences`` it
    turned into ``[UNK]``.

    New tokens, in this order:

    1. every character of those words that the vocabulary lacks as a word start (``c``)
       or inside a word (``##c``), most frequent first. With both forms of each of its
       characters in the vocabulary, every word can be segmented, so after this no word
       of ``sentences`` is ``[UNK]`` except words longer than ``max_bytes_per_word``
       bytes (which BERT always makes ``[UNK]``);
    2. with ``learn_pieces``, frequent word pieces of those words (TF Text's BERT
       vocabulary learner, pieces seen at least ``min_count`` times), so that new script
       is not only read one character at a time. Only pieces holding a character that
       no token of the vocabulary contains are added: text the vocabulary already
       segmented has none of those, so its tokenization stays exactly as it was.

    Args:
      vocab: a ``vocab.txt`` (file, folder holding one, bytes, or a list of tokens).
      sentences: the text the vocabulary should cover (e.g. both sides of the training
        pairs); read once.
      max_new: at most this many new tokens in all (characters first).
      output: where to write the extended ``vocab.txt``, atomically: a file path, or an
        existing folder (or a path ending in ``/``) that gets ``vocab.txt``; None writes
        nothing.
      do_lower_case: the model's BERT lower-casing flag (the text is normalized as the
        preprocessor normalizes it).
      learn_pieces: also add learned multi-character pieces (step 2).
      min_count: step 2: the fewest occurrences of a piece.
      max_bytes_per_word: the preprocessor's; longer words stay ``[UNK]``.

    Returns:
      The extended token list (the original tokens first).

    Raises:
      ValueError: a bad vocabulary, ``max_new`` < 0, or fewer than the characters that
        are needed (the message says how many).
    """
    if max_new < 0:
        raise ValueError(f"max_new must be >= 0, got {max_new}")
    tokens = vocab_tokens(vocab)
    known = set(tokens)
    words = unknown_words(tokens, sentences, do_lower_case, max_bytes_per_word)
    char_counts: Counter[str] = collections.Counter()
    for word, n in words.items():
        for ch in word:
            char_counts[ch] += n
    new: List[str] = []
    for ch, _ in sorted(char_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if ch in "\n\r":  # white space to the tokenizer: never inside a word
            continue
        for token in (ch, SUFFIX_INDICATOR + ch):
            if token not in known:
                new.append(token)
                known.add(token)
    if len(new) > max_new:
        raise ValueError(f"the text needs {len(new)} new character tokens to be segmented "
                         f"(each missing character as c and ##c); max_new is {max_new}")
    if learn_pieces and len(new) < max_new:
        vocab_chars = {ch for t in tokens for ch in _bare(t)}
        novel = {ch for ch in char_counts if ch not in vocab_chars}
        fixable = {w: n for w, n in words.items()
                   if len(w.encode("utf-8")) <= max_bytes_per_word
                   and any(ch in novel for ch in w)}
        if fixable:
            new += _learned_pieces(fixable, novel, known, max_new - len(new), min_count)
    extended = tokens + new
    if output:
        from lealla_tf import fileio
        path = fileio.join(output, VOCAB_FILE) if (
            output.endswith("/") or fileio.isdir(output)) else output
        fileio.atomic_write(path, "\n".join(extended) + "\n")
    return extended
