"""Packing tokens into BERT inputs: what the SentencePiece and WordPiece preprocessors share.

:data:`SPECIAL_TOKENS` / :func:`special_ids` (the ids of ``[PAD] [UNK] [CLS] [SEP] [MASK]``
under the TF Hub text API's keys), :func:`pack_dense` (dense ops only, so TFLite converts it)
and :class:`PackingPreprocessor`, the base layer of both preprocessors.

See docs/export.md, "Fast inference" (padding to the batch's longest sentence).
"""

from __future__ import annotations

import base64
from typing import Dict, Mapping, Optional, Sequence, Union

import tensorflow as tf
import tf_keras

# Special tokens of BERT-style vocabularies, by their TF Hub key.
SPECIAL_TOKENS = {"padding_id": "[PAD]", "unknown_id": "[UNK]",
                  "start_of_sequence_id": "[CLS]", "end_of_segment_id": "[SEP]",
                  "mask_id": "[MASK]"}


def special_ids(tokens: Sequence[str]) -> Dict[str, int]:
    """Ids of ``[PAD] [UNK] [CLS] [SEP] [MASK]`` in a vocabulary's ``tokens`` (in id order),
    keyed as :data:`SPECIAL_TOKENS` (-1 for a token the vocabulary lacks)."""
    index = {t: i for i, t in enumerate(tokens)}
    return {k: index.get(t, -1) for k, t in SPECIAL_TOKENS.items()}


def pack_dense(token_values: tf.Tensor, row_splits: tf.Tensor, seq_length: int,
               ids: Mapping[str, int], dynamic_length: bool = False,
               length_multiple: int = 1) -> Dict[str, tf.Tensor]:
    """Packs one segment per row as ``[CLS] tokens [SEP] [PAD]...`` with dense ops only.

    Equivalent to ``tensorflow_text.combine_segments`` + ``pad_model_inputs`` for a
    single segment, but built from gather/where/range so that it converts to TFLite
    builtins.

    Args:
      token_values: int tensor [total_tokens], the flat values of the ragged tokens.
      row_splits: int tensor [batch + 1].
      seq_length: output length (at least 2); rows are truncated to seq_length - 2
        tokens.
      ids: the vocabulary's :func:`special_ids` (``start_of_sequence_id``,
        ``end_of_segment_id`` and ``padding_id`` are used).
      dynamic_length: pad only to the batch's longest row (``[CLS]`` and ``[SEP]``
        included), rounded up to ``length_multiple`` and capped at ``seq_length``,
        instead of always to ``seq_length``. Embeddings do not change (padding is
        masked); short sentences cost far less.
      length_multiple: with ``dynamic_length``, round the length up to a multiple of
        this (few distinct shapes, e.g. for XLA's per-shape compilation).

    Returns:
      dict of int32 [batch, seq_length]: input_word_ids, input_mask, input_type_ids.
    """
    if seq_length < 2:
        raise ValueError(f"seq_length must be at least 2, got {seq_length}")
    cls_id, sep_id = ids["start_of_sequence_id"], ids["end_of_segment_id"]
    pad_id = ids["padding_id"]
    token_values = tf.cast(token_values, tf.int32)
    row_splits = tf.cast(row_splits, tf.int32)
    starts = row_splits[:-1]
    lengths = tf.minimum(row_splits[1:] - starts, seq_length - 2)  # [B]
    if dynamic_length:
        if length_multiple < 1:
            raise ValueError(f"length_multiple must be positive, got {length_multiple}")
        longest = tf.maximum(tf.reduce_max(tf.concat([lengths, [0]], 0)) + 2, 2)
        longest = (longest + length_multiple - 1) // length_multiple * length_multiple
        seq_length = tf.minimum(longest, seq_length)
    body = seq_length - 2
    cols = tf.range(body, dtype=tf.int32)  # [L-2]
    idx = starts[:, None] + cols[None, :]  # [B, L-2]
    in_row = cols[None, :] < lengths[:, None]
    # One extra element so that the gather is valid even with no tokens at all.
    padded_values = tf.concat([token_values, tf.constant([pad_id], tf.int32)], axis=0)
    safe_idx = tf.where(in_row, idx, tf.zeros_like(idx) + tf.shape(token_values)[0])
    tokens = tf.gather(padded_values, safe_idx)  # [B, L-2]
    batch = tf.shape(starts)[0]
    cls_col = tf.fill([batch, 1], cls_id)
    pad_col = tf.fill([batch, 1], pad_id)
    ids = tf.concat([cls_col, tokens, pad_col], axis=1)  # [B, L]
    positions = tf.range(seq_length, dtype=tf.int32)[None, :]
    sep_pos = lengths[:, None] + 1
    ids = tf.where(tf.equal(positions, sep_pos), tf.fill(tf.shape(ids), sep_id), ids)
    mask = tf.cast(positions <= sep_pos, tf.int32)
    ids = ids * mask + pad_id * (1 - mask)
    return {
        "input_word_ids": ids,
        "input_mask": mask,
        "input_type_ids": tf.zeros_like(ids),
    }


def config_bytes(value: Union[str, bytes, Sequence[str]]):
    """Undoes the ``base64:`` encoding ``get_config`` gives vocabulary bytes; else as is."""
    if isinstance(value, str) and value.startswith("base64:"):
        return base64.b64decode(value[len("base64:"):])
    return value


class PackingPreprocessor(tf_keras.layers.Layer):
    """What the SentencePiece and WordPiece preprocessors share: the packed length and
    its options, ``tokenize`` and the dense (TFLite-safe) single-segment packing of
    :meth:`call`. Subclasses set ``self.tokenizer`` and ``self.special_ids`` (the
    vocabulary's :func:`special_ids`).

    Args:
      seq_length: length of the packed inputs ([CLS] + up to seq_length-2 pieces + [SEP]).
      dynamic_length: pad each batch only to its longest sentence (at most
        ``seq_length``) instead of to ``seq_length`` (see :func:`pack_dense`); calls
        may override it.
      length_multiple: with ``dynamic_length``, round lengths up to a multiple of this.
    """

    def __init__(self, seq_length: int = 64, dynamic_length: bool = False,
                 length_multiple: int = 1, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if seq_length < 2:
            raise ValueError(f"seq_length must be at least 2, got {seq_length}")
        if length_multiple < 1:
            raise ValueError(f"length_multiple must be positive, got {length_multiple}")
        self.seq_length = int(seq_length)
        self.dynamic_length = bool(dynamic_length)
        self.length_multiple = int(length_multiple)

    def tokenize(self, strings: tf.Tensor) -> tf.RaggedTensor:
        """Strings [batch] -> int32 RaggedTensor [batch, (tokens)] (no special tokens)."""
        strings = tf.convert_to_tensor(strings, dtype=tf.string)
        return tf.cast(self.tokenizer.tokenize(strings), tf.int32)

    def call(self, strings: tf.Tensor, dynamic_length: Optional[bool] = None,
             length_multiple: Optional[int] = None) -> Dict[str, tf.Tensor]:
        """Strings [batch] -> packed inputs with dense ops only (TFLite-safe);
        ``dynamic_length``/``length_multiple`` override the layer's settings for this call."""
        strings = tf.reshape(tf.convert_to_tensor(strings, dtype=tf.string), [-1])
        tokens = self.tokenizer.tokenize(strings)
        dynamic = self.dynamic_length if dynamic_length is None else bool(dynamic_length)
        return pack_dense(tokens.flat_values, tokens.row_splits, self.seq_length,
                          self.special_ids, dynamic_length=dynamic,
                          length_multiple=int(length_multiple or self.length_multiple))

    def get_config(self):
        config = super().get_config()
        config.update({"seq_length": self.seq_length, "dynamic_length": self.dynamic_length,
                       "length_multiple": self.length_multiple})
        return config
