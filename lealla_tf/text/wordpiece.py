"""WordPiece vocabularies (LaBSE's, LEALLA's) and their strings -> BERT-style inputs.

:class:`WordpiecePreprocessor` is the WordPiece twin of
:class:`lealla_tf.text.sentencepiece.Preprocessor` (same call contract, packing and TF Hub
text API), built on TF Text's ``FastBertTokenizer``::

    import tensorflow as tf
    from lealla_tf.text import wordpiece
    pre = wordpiece.WordpiecePreprocessor("runs/labse/vocab/vocab.txt", seq_length=128)
    pre(tf.constant(["Hello world", "Hallo Welt"]))["input_word_ids"].shape  # [2, 128]

See docs/released_models.md, "WordPiece preprocessing".
"""

from __future__ import annotations

import base64
from typing import Dict, List, Optional, Sequence, Union

import tensorflow as tf
import tensorflow_text as tf_text
import tf_keras

from lealla_tf import layout
from lealla_tf.text import packing, sentencepiece

VOCAB_FILE = layout.WORDPIECE_VOCAB_FILE
SUFFIX_INDICATOR = "##"


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
                 length_multiple: int = 1, max_bytes_per_word: int = 100, **kwargs):
        super().__init__(seq_length, dynamic_length, length_multiple, **kwargs)
        self._vocab_bytes = read_vocab_bytes(packing.config_bytes(vocab))
        self.tokens = vocab_tokens(self._vocab_bytes)
        self.do_lower_case = bool(do_lower_case)
        self.max_bytes_per_word = int(max_bytes_per_word)
        self.special_ids = packing.special_ids(self.tokens)
        self.vocab_size = len(self.tokens)
        self.tokenizer = tf_text.FastBertTokenizer(
            vocab=self.tokens, suffix_indicator=SUFFIX_INDICATOR,
            max_bytes_per_word=self.max_bytes_per_word, token_out_type=tf.int32,
            unknown_token=packing.SPECIAL_TOKENS["unknown_id"],
            lower_case_nfd_strip_accents=self.do_lower_case)

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
