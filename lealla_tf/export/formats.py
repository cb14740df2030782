"""The exported formats: reusable TF Hub SavedModels and TFLite files.

Also the names, constants and cosine gates the export package shares.

See docs/export.md, "The folder".
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from lealla_tf import corpus
from lealla_tf.embedders.artifacts import tflite_interpreter  # noqa: F401  (re-exported)
from lealla_tf.layout import (  # noqa: F401
    CARD_FILE,
    ENCODER,
    ENCODER_OUTPUTS,
    INFO_FILE,
    INPUT_KEY,
    LEALLA,
    OUTPUT_KEY,
    PREPROCESSOR,
    SAVED_MODELS,
    SIGNATURE,
    TFLITE_VARIANTS,
    tflite_file_name,
)
from lealla_tf.models import encoders

# Each TFLite file must reach this cosine to the SavedModel on PROBE_SENTENCES.
TFLITE_MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}
# An export with int8 word-embedding rows must reach this cosine to the float model.
INT8_EMBEDDINGS_MIN_COSINE = 0.999
# The model-card template ships inside the package (lealla_tf/resources/model_card.md).
DEFAULT_CARD_TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "resources", "model_card.md")
_STRINGS = tf.TensorSpec([None], tf.string, name=INPUT_KEY)

# A multilingual set with the awkward inputs; every export checks its files on it.
_PROBE = (
    "The weather is nice today.", "Das Wetter ist heute schön.", "Сегодня хорошая погода.",
    "今天天气很好。", "الطقس جميل اليوم.", "आज मौसम अच्छा है।", "今日は天気がいいです。",
    "วันนี้อากาศดี", "오늘 날씨가 좋네요.", "Ο καιρός είναι ωραίος σήμερα.",
    "היום מזג האוויר נעים.", "dog", "Hund 🐕", "", " ", "\t \n ", "Wort " * 20000,
    b"\xff\xfe\xfd invalid", b"abc\x80def", b"\xe4\xb8",
)
PROBE_SENTENCES: Tuple[bytes, ...] = tuple(
    s.encode("utf-8") if isinstance(s, str) else s for s in _PROBE)


def parse_tflite_variants(value: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
    """``"fp32,fp16,int8"`` (or a list; ``"none"``/empty for none) -> checked tuple.

    Raises:
      ValueError: naming an unknown variant.
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [v.strip().lower() for v in items if v and v.strip()]
    if items == ["none"]:
        return ()
    bad = [v for v in items if v not in TFLITE_VARIANTS]
    if bad:
        raise ValueError(f"unknown TFLite variant(s) {bad}: choose from {list(TFLITE_VARIANTS)}")
    return tuple(dict.fromkeys(items))


# ----------------------------------------------------------------------------- SavedModels


def _reusable(model=None) -> tf.train.Checkpoint:
    """A trackable root carrying the reusable-SavedModel attributes of ``model``'s weights."""
    obj = tf.train.Checkpoint()
    obj.variables = list(model.variables) if model is not None else []
    obj.trainable_variables = list(model.trainable_variables) if model is not None else []
    # Keras keeps weight regularizers as zero-argument callables (not public API).
    callables = list(getattr(model, "_callable_losses", []) or []) if model is not None else []
    obj.regularization_losses = [tf.function(fn, input_signature=[]) for fn in callables]
    return obj


def build_lealla_module(preprocessor, encoder) -> Tuple[tf.train.Checkpoint, Dict[str, Any]]:
    """The end-to-end reusable SavedModel root and its signatures.

    Args:
      preprocessor: a :class:`lealla_tf.text.sentencepiece.Preprocessor` (or any layer
        strings -> token dict).
      encoder: a built :class:`lealla_tf.models.encoders.LeallaEncoder` (same call contract).

    Returns:
      ``(root, signatures)`` for ``tf.saved_model.save``.
    """
    model = encoders.StringEncoder(preprocessor, encoder)
    model(tf.constant([""]))
    obj = _reusable(model)
    # With int8 word embeddings the model serves only: the float table is neither read nor
    # saved (a 128k x 128 table: 16 MiB of int8 rows instead of 64 MiB of floats), so it
    # has no training call to fine-tune through.
    serving_only = bool(getattr(encoder, "int8_word_embeddings", False))
    if serving_only:
        table = encoder.word_embeddings
        obj.variables = [v for v in obj.variables if v is not table]
        obj.trainable_variables = [v for v in obj.trainable_variables if v is not table]

    @tf.function
    def call(sentences, training=False):
        return model(sentences, training=training)

    for training in (False,) if serving_only else (False, True):
        call.get_concrete_function(_STRINGS, training=training)
    obj.__call__ = call

    @tf.function(input_signature=[_STRINGS])
    def serve(sentences):
        return {OUTPUT_KEY: model(sentences, training=False)}

    return obj, {SIGNATURE: serve}


def build_encoder_module(encoder) -> Tuple[tf.train.Checkpoint, Dict[str, Any]]:
    """The encoder of the TF Hub text API (token dict -> default, pooled/sequence outputs)."""
    specs = {k: tf.TensorSpec([None, None], tf.int32, name=k) for k in encoders.INPUT_KEYS}
    obj = _reusable(encoder)

    @tf.function
    def call(inputs, training=False):
        out = encoder(inputs, training=training)
        result = {k: out[k] for k in ENCODER_OUTPUTS}
        result["encoder_outputs"] = list(out["encoder_outputs"])
        return result

    for training in (False, True):
        call.get_concrete_function(specs, training=training)
    obj.__call__ = call

    @tf.function(input_signature=[specs[k] for k in encoders.INPUT_KEYS])
    def serve(input_word_ids, input_mask, input_type_ids):
        out = encoder({"input_word_ids": input_word_ids, "input_mask": input_mask,
                       "input_type_ids": input_type_ids}, training=False)
        return {k: out[k] for k in ENCODER_OUTPUTS}

    return obj, {SIGNATURE: serve}


def build_preprocessor_module(preprocessor) -> Tuple[tf.train.Checkpoint, Dict[str, Any]]:
    """The preprocessor of the TF Hub text API.

    ``__call__(sentences)`` packs one segment to ``seq_length``; ``tokenize(sentences)``
    gives int32 RaggedTensors ``[batch, (pieces)]``; ``bert_pack_inputs(segments,
    seq_length=...)`` packs 1 or 2 segments like Model Garden's ``BertPackInputs``, with
    the default length or any other given as an int32 tensor (``tf.constant(128)``);
    ``tokenize.get_special_tokens_dict()`` gives the special ids.
    """
    from official.nlp.modeling import layers as nlp_layers

    obj = _reusable(None)
    default_seq_length = int(preprocessor.seq_length)

    @tf.function(input_signature=[_STRINGS])
    def call(sentences):
        return dict(preprocessor(sentences))

    obj.__call__ = call

    obj.tokenize = tf.train.Checkpoint()
    # int64 row splits, like TF Text's tokenizers (and what bert_pack_inputs is traced for).
    obj.tokenize.__call__ = tf.function(
        lambda sentences: preprocessor.tokenize(sentences).with_row_splits_dtype(tf.int64),
        input_signature=[_STRINGS])
    ids = dict(preprocessor.special_ids)
    special = {"vocab_size": int(preprocessor.vocab_size),
               "start_of_sequence_id": ids["start_of_sequence_id"],
               "end_of_segment_id": ids["end_of_segment_id"],
               "padding_id": ids["padding_id"], "mask_id": ids["mask_id"]}
    obj.tokenize.get_special_tokens_dict = tf.train.Checkpoint()
    obj.tokenize.get_special_tokens_dict.__call__ = tf.function(
        lambda: {k: tf.constant(v, tf.int32) for k, v in special.items()}, input_signature=[])

    @tf.function(autograph=False)
    def pack(inputs, seq_length=default_seq_length):
        out = nlp_layers.BertPackInputs.bert_pack_inputs(
            inputs, seq_length=seq_length, start_of_sequence_id=ids["start_of_sequence_id"],
            end_of_segment_id=ids["end_of_segment_id"], padding_id=ids["padding_id"])
        return {k: tf.cast(v, tf.int32) for k, v in out.items()}

    obj.bert_pack_inputs = tf.train.Checkpoint()
    obj.bert_pack_inputs.__call__ = pack
    # Restored functions match traced argument types exactly: trace the default length
    # (a Python int) and any length given as an int32 tensor, for 1 and 2 segments.
    for num_segments in (1, 2):
        segments = [tf.RaggedTensorSpec([None, None], tf.int32) for _ in range(num_segments)]
        pack.get_concrete_function(segments)
        pack.get_concrete_function(segments, seq_length=tf.TensorSpec([], tf.int32))
    return obj, {SIGNATURE: call}


def save_saved_model(obj, signatures, path: str, sp_model_file: Optional[str] = None,
                     do_lower_case: Optional[bool] = None) -> None:
    """``tf.saved_model.save`` with the vocabulary attached as an asset.

    A SentencePiece model becomes ``sp_model_file``; a WordPiece ``vocab.txt`` becomes
    ``vocab_file`` with a ``do_lower_case`` variable beside it, as in the released
    LaBSE/LEALLA SavedModels (so ``lealla import`` reads our exports back).
    """
    if sp_model_file and os.path.basename(sp_model_file) == "vocab.txt":
        obj.vocab_file = tf.saved_model.Asset(sp_model_file)
        obj.do_lower_case = tf.Variable(bool(do_lower_case), trainable=False,
                                        name="do_lower_case")
    elif sp_model_file:
        obj.sp_model_file = tf.saved_model.Asset(sp_model_file)
    tf.saved_model.save(obj, path, signatures=signatures)


# ----------------------------------------------------------------------------- TFLite


def convert_tflite(saved_model_dir: str, variant: str = "fp32") -> bytes:
    """Converts the ``serving_default`` of an end-to-end SavedModel to a TFLite flatbuffer.

    Args:
      saved_model_dir: an exported ``lealla`` folder.
      variant: ``fp32``; ``fp16`` (float16 weights); ``int8`` (dynamic-range: int8
        weights, float activations).
    """
    (variant,) = parse_tflite_variants([variant])
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir,
                                                         signature_keys=[SIGNATURE])
    # TF Text's FastSentencepieceTokenizer ops are custom ops (no Flex delegate needed).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = True
    if variant in ("fp16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two ``[N, D]`` arrays."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(den, 1e-30)


sha256_file = corpus.sha256_file
