"""The encoders: LEALLA (``BertEncoderV2`` + pooler + L2), the static one, and ``StringEncoder``.

:class:`LeallaEncoder` wraps Model Garden's ``BertEncoderV2``, so its variables carry Model
Garden's BERT names and released checkpoints load by name; :class:`StringEncoder` puts a
preprocessor in front of an encoder::

    import tensorflow as tf
    from lealla_tf import config
    from lealla_tf.models import encoders
    from lealla_tf.text import sentencepiece
    cfg = config.load("tiny")
    pre = sentencepiece.Preprocessor("runs/tiny/vocab/spm.model", seq_length=32)
    model = encoders.StringEncoder(pre, encoders.LeallaEncoder.from_model_config(cfg.model))
    model(tf.constant(["dog", "Hund"]))  # [2, hidden], unit rows

See docs/training.md, "Vocabulary and encoder", and docs/export.md, "Fast inference".
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras
from official.modeling import tf_utils
from official.nlp.modeling import networks

from lealla_tf.config import ModelConfig
from lealla_tf.models import bert_internals

INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
IMPLEMENTATIONS = ("fast", "keras")
POOLINGS = ("cls", "mean")
# ModelConfig fields that are not constructor arguments of the encoders.
_NOT_SHAPE = ("name", "architecture", "static_projection", "embedding_init",
              "position_init")


def dummy_inputs(batch_size: int = 1, seq_length: int = 8) -> Dict[str, tf.Tensor]:
    """Packed inputs of zeros (one [CLS]-like token per position), for building a model."""
    ids = tf.zeros([batch_size, seq_length], tf.int32)
    return {"input_word_ids": ids, "input_mask": tf.ones_like(ids),
            "input_type_ids": tf.zeros_like(ids)}


def mean_pool(sequence: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``sequence`` ``[B, S, H]`` over the positions where ``mask`` ``[B, S]`` is 1
    (float32 ``[B, H]``; an all-padding row gives zeros)."""
    mask = tf.expand_dims(tf.cast(mask, tf.float32), -1)  # (no new-axis slices: TFLite)
    total = tf.reduce_sum(tf.cast(sequence, tf.float32) * mask, axis=1)
    return total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)


def bert_param_count(cfg: ModelConfig) -> int:
    """Parameter count of a BERT encoder with pooler, from the shape alone.

    Embeddings (word + position + type + LayerNorm), per layer (QKV + output
    projection, two LayerNorms, FFN in and out) and the pooler.
    """
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers
    embeddings = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * h + 2 * h
    attention = 4 * (h * h + h)
    ffn = h * f + f + f * h + h
    layer = attention + ffn + 2 * (2 * h)
    pooler = h * h + h
    return embeddings + n * layer + pooler


def quantize_rows_int8(table) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantisation of an embedding table with one scale per row.

    Args:
      table: float ``[rows, dim]`` (array or variable).

    Returns:
      ``(values, scales)``: int8 ``[rows, dim]`` in [-127, 127] and float32 ``[rows, 1]``
      with ``values * scales`` ~ ``table`` (error at most half a step, ``scale / 2``, per
      entry; an all-zero row gets scale 1 and stays zero).
    """
    table = np.asarray(table, np.float32)
    if table.ndim != 2:
        raise ValueError(f"an embedding table is [rows, dim], got shape {table.shape}")
    if not np.all(np.isfinite(table)):
        raise ValueError("the embedding table holds NaN or infinite values")
    absmax = np.abs(table).max(axis=1, keepdims=True)
    scales = np.where(absmax > 0, absmax / 127.0, 1.0).astype(np.float32)
    values = np.clip(np.round(table / scales), -127, 127).astype(np.int8)
    return values, scales


@tf_keras.utils.register_keras_serializable(package="lealla")
class LeallaEncoder(tf_keras.Model):
    """Token inputs -> sentence embeddings (and the usual BERT outputs).

    Args:
      vocab_size, hidden_size, num_layers, num_attention_heads, intermediate_size,
      max_position_embeddings, type_vocab_size, hidden_act, dropout_rate,
      attention_dropout_rate, initializer_range: the shape, as in :class:`ModelConfig`.
      implementation: ``"fast"`` (default) runs inference (``training`` false) through
        :func:`lealla_tf.models.bert_internals.fast_bert_forward`; ``"keras"`` through
        ``BertEncoderV2``'s own layers.
        Both use the same weights and give the same outputs (to float rounding);
        training always runs through ``BertEncoderV2``, dropout included.
      jit_compile: compile the inference forward pass with XLA (one compilation per
        input shape; pair it with length buckets, see ``Preprocessor``).
      initializer: overrides the truncated-normal initializer (not serialised; e.g.
        zeros to count weights quickly).

    Call with a dict of int32 ``[batch, seq_length]`` tensors ``input_word_ids``,
    ``input_mask``, ``input_type_ids``. Returns a dict:

    - ``default``: L2-normalised pooled embedding, float32 ``[batch, hidden]``;
    - ``pooled_output``: the pooler's output before normalisation;
    - ``sequence_output``: ``[batch, seq_length, hidden]``;
    - ``encoder_outputs``: list of every layer's sequence output.

    Dropout is active only with ``training=True``.
    """

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int,
                 num_attention_heads: int, intermediate_size: int,
                 max_position_embeddings: int = 512, type_vocab_size: int = 2,
                 hidden_act: str = "gelu", dropout_rate: float = 0.1,
                 attention_dropout_rate: float = 0.1, initializer_range: float = 0.02,
                 implementation: str = "fast", jit_compile: bool = False,
                 pooling: str = "cls",
                 initializer: Optional[tf_keras.initializers.Initializer] = None, **kwargs):
        kwargs.pop("name_", None)
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self._shape_config = dict(
            vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
            num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
            hidden_act=hidden_act, dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, initializer_range=initializer_range,
            implementation=implementation, jit_compile=bool(jit_compile), pooling=pooling)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, "
                             f"got {implementation!r}")
        self.implementation = implementation
        object.__setattr__(self, "_int8_rows", None)  # (not a Keras-tracked attribute)
        self._forward_target = "tensorflow"
        object.__setattr__(self, "_fast_forward", self._make_fast_forward())
        self.bert = networks.BertEncoderV2(
            vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
            num_attention_heads=num_attention_heads, max_sequence_length=max_position_embeddings,
            type_vocab_size=type_vocab_size, inner_dim=intermediate_size,
            inner_activation=tf_utils.get_activation(hidden_act),
            output_dropout=dropout_rate, attention_dropout=attention_dropout_rate,
            initializer=initializer or tf_keras.initializers.TruncatedNormal(
                stddev=initializer_range),
            name="bert")
        if pooling == "mean":  # the pooler's weights stay (checkpoints, counts) but do not train
            self.bert.pooler_layer.trainable = False
        self.hidden_size = hidden_size

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs) -> "LeallaEncoder":
        """Builds an encoder of the shape in ``cfg`` (``name`` becomes the Keras name);
        ``kwargs`` override config fields (e.g. ``implementation``)."""
        cfg.validate()
        shape = {k: v for k, v in vars(cfg).items() if k not in _NOT_SHAPE}
        shape.update(kwargs)
        shape.setdefault("name", cfg.name)
        return cls(**shape)

    @property
    def embedding_dim(self) -> int:
        return self.hidden_size

    @property
    def word_embeddings(self) -> tf.Variable:
        """The ``[vocab_size, hidden_size]`` word-embedding table."""
        return self.bert.get_embedding_table()

    @property
    def int8_word_embeddings(self) -> bool:
        """Whether inference reads an int8 copy of the word embeddings."""
        return self._int8_rows is not None

    def set_int8_word_embeddings(self, enabled: bool) -> None:
        """Makes inference (``implementation="fast"``, ``training=False``) read an int8
        copy of the word-embedding table with one scale per row
        (:func:`quantize_rows_int8`), taken from the table now, or go back to the float
        table. Graphs traced from here on (exports, TFLite conversions) hold the int8
        rows as constants instead of the float table: a 128k x 128 table is 16 MiB
        (+ 0.5 MiB of scales) instead of 64. Training, the Keras implementation and the
        checkpointed variables keep the float table.

        Raises:
          ValueError: enabling it on an encoder with ``implementation="keras"``.
        """
        if enabled and self.implementation != "fast":
            raise ValueError("int8 word embeddings need implementation='fast' (the fused "
                             "inference forward pass reads them)")
        rows = None
        if enabled:
            values, scales = quantize_rows_int8(self.word_embeddings.numpy())
            rows = (tf.constant(values), tf.constant(scales))
        object.__setattr__(self, "_int8_rows", rows)
        object.__setattr__(self, "_fast_forward", self._make_fast_forward())

    @property
    def forward_target(self) -> str:
        """What the inference forward pass is written for (``bert_internals.TARGETS``)."""
        return self._forward_target

    @contextlib.contextmanager
    def tflite_forward(self):
        """Within it, inference (``implementation="fast"``, ``training=False``) runs the
        forward pass written for TFLite converters (``fast_bert_forward(target="tflite")``:
        the same function, in the ops LiteRT runs fastest); graphs traced there (models
        saved for conversion, concrete functions) keep it."""
        previous = self._forward_target
        self._forward_target = "tflite"
        object.__setattr__(self, "_fast_forward", self._make_fast_forward())
        try:
            yield self
        finally:
            self._forward_target = previous
            object.__setattr__(self, "_fast_forward", self._make_fast_forward())

    def _make_fast_forward(self):
        """The inference forward passes, by ``output_range``: 0 for the full sequence, 1
        for the [CLS] position's last layer alone."""
        int8_rows, target = self._int8_rows, self._forward_target

        def forward(output_range):
            return tf.function(
                lambda inputs: bert_internals.fast_bert_forward(
                    self.bert, inputs, int8_rows, target, output_range or None),
                jit_compile=bool(self._shape_config["jit_compile"]), autograph=False)

        return {0: forward(0), 1: forward(1)}

    def dummy_inputs(self, batch_size: int = 1, seq_length: int = 8) -> Dict[str, tf.Tensor]:
        return dummy_inputs(batch_size, seq_length)

    def build_from_config(self, config):
        # Keras would build from float placeholders; token ids must be integers.
        self(self.dummy_inputs())

    def call(self, inputs: Dict[str, tf.Tensor], training=None,
             output_range: Optional[int] = None) -> Dict[str, Any]:
        """The outputs listed in the class docstring.

        ``output_range``: ``None`` or 1. With 1 (``[CLS]`` pooling only), ``sequence_output``
        and the last of ``encoder_outputs`` hold the first position alone (``[batch, 1,
        hidden]``; Model Garden's ``BertEncoderV2(output_range=1)``), and the fast
        inference pass computes the last layer for that position only: the same
        ``default`` and ``pooled_output`` for a layer's less work (what
        :class:`StringEncoder` asks for).
        """
        if output_range is not None:
            if output_range != 1:
                raise ValueError(f"output_range must be None or 1, got {output_range!r}")
            if self.pooling != "cls":
                raise ValueError(f"output_range=1 keeps the [CLS] position only; "
                                 f"{self.pooling} pooling needs every position")
        inputs = {k: inputs[k] for k in INPUT_KEYS}
        inference = training is None or training is False
        if (self.implementation == "fast" and inference and self.bert.built
                and self.bert.compute_dtype == "float32"):
            outputs = self._fast_forward[output_range or 0](inputs)
        else:
            outputs = self.bert(inputs, training=training)
            if output_range is not None:  # the same values, cut as the fast pass cuts them
                last = outputs["encoder_outputs"][-1][:, :output_range]
                outputs = dict(outputs, sequence_output=last,
                               encoder_outputs=outputs["encoder_outputs"][:-1] + [last])
        with tf.name_scope("pooling"):
            if self.pooling == "mean":
                pooled = mean_pool(outputs["sequence_output"], inputs["input_mask"])
            else:
                pooled = tf.cast(outputs["pooled_output"], tf.float32)
        with tf.name_scope("normalize"):
            default = tf.math.l2_normalize(pooled, axis=-1)
        return {
            "default": default,
            "pooled_output": pooled,
            "sequence_output": outputs["sequence_output"],
            "encoder_outputs": outputs["encoder_outputs"],
        }

    def get_config(self) -> Dict[str, Any]:
        return dict(self._shape_config, name=self.name)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


@tf_keras.utils.register_keras_serializable(package="lealla")
class StaticEncoder(tf_keras.Model):
    """A static (bag-of-tokens) sentence encoder: the mean of the tokens' embedding rows.

    The fastest model a user can ship and the baseline every Transformer student is
    measured against. Same call contract as :class:`LeallaEncoder` (token dict in; dict with
    ``default``, ``pooled_output``, ``sequence_output``, ``encoder_outputs`` out), so it
    trains with the same losses and exports through the same SavedModel/TFLite paths.

    Args:
      vocab_size, hidden_size: the embedding table's shape.
      projection: apply a bias-free linear map ``[hidden, hidden]`` to the mean.
      initializer_range: stddev of the truncated-normal initializer.
      initializer: overrides the initializer (not serialised).

    Example::

        enc = encoders.StaticEncoder(vocab_size=8000, hidden_size=128)
        enc(enc.dummy_inputs())["default"].shape  # [1, 128]
    """

    def __init__(self, vocab_size: int, hidden_size: int, projection: bool = False,
                 initializer_range: float = 0.02,
                 initializer: Optional[tf_keras.initializers.Initializer] = None, **kwargs):
        super().__init__(**kwargs)
        self._shape_config = dict(vocab_size=vocab_size, hidden_size=hidden_size,
                                  projection=bool(projection),
                                  initializer_range=initializer_range)
        self.hidden_size = hidden_size
        init = initializer or tf_keras.initializers.TruncatedNormal(stddev=initializer_range)
        self.embedding = tf_keras.layers.Embedding(vocab_size, hidden_size,
                                                   embeddings_initializer=init,
                                                   name="word_embeddings")
        self.projection = tf_keras.layers.Dense(
            hidden_size, use_bias=False, kernel_initializer=tf_keras.initializers.Identity(),
            name="projection") if projection else None

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs) -> "StaticEncoder":
        cfg.validate()
        args = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                    projection=cfg.static_projection, initializer_range=cfg.initializer_range,
                    name=cfg.name)
        args.update({k: v for k, v in kwargs.items() if k in ("initializer", "name")})
        return cls(**args)

    @property
    def embedding_dim(self) -> int:
        return self.hidden_size

    @property
    def word_embeddings(self) -> tf.Variable:
        return self.embedding.embeddings

    def dummy_inputs(self, batch_size: int = 1, seq_length: int = 8) -> Dict[str, tf.Tensor]:
        return dummy_inputs(batch_size, seq_length)

    def build_from_config(self, config):
        self(self.dummy_inputs())

    def call(self, inputs: Dict[str, tf.Tensor], training=None) -> Dict[str, Any]:
        sequence = self.embedding(inputs["input_word_ids"])
        pooled = mean_pool(sequence, inputs["input_mask"])
        if self.projection is not None:
            pooled = tf.cast(self.projection(pooled), tf.float32)
        return {"default": tf.math.l2_normalize(pooled, axis=-1), "pooled_output": pooled,
                "sequence_output": sequence, "encoder_outputs": [sequence]}

    def get_config(self) -> Dict[str, Any]:
        return dict(self._shape_config, name=self.name)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def build_encoder(cfg: ModelConfig, **kwargs):
    """The encoder ``cfg.architecture`` names (:class:`LeallaEncoder` or
    :class:`StaticEncoder`), of the shape in ``cfg``; ``kwargs`` as in ``from_model_config``."""
    cfg.validate()
    if cfg.architecture == "static":
        return StaticEncoder.from_model_config(cfg, **kwargs)
    return LeallaEncoder.from_model_config(cfg, **kwargs)


def sentence_embedding(encoder, inputs: Dict[str, tf.Tensor], training=None) -> tf.Tensor:
    """``encoder(inputs, training=training)["default"]``, computing only what it needs: a
    [CLS]-pooled :class:`LeallaEncoder` runs its last layer for the [CLS] position alone
    (``output_range=1``), any other encoder its full call."""
    if isinstance(encoder, LeallaEncoder) and encoder.pooling == "cls":
        return encoder(inputs, training=training, output_range=1)["default"]
    return encoder(inputs, training=training)["default"]


@tf_keras.utils.register_keras_serializable(package="lealla")
class StringEncoder(tf_keras.Model):
    """Strings -> L2-normalised embeddings: a :class:`Preprocessor` then an encoder.

    Args:
      preprocessor: a ``lealla_tf.text.sentencepiece.Preprocessor``.
      encoder: a :class:`LeallaEncoder` (or any model with the same call contract).
      dynamic_length: pad each batch only to its longest sentence (the embeddings are
        the same as with fixed-length padding, short sentences cost far less); needs a
        preprocessor whose call takes ``dynamic_length``. False packs to the
        preprocessor's own setting.
      length_multiple: round dynamic lengths up to a multiple of this (fewer distinct
        shapes, e.g. for an encoder compiled with XLA).
    """

    def __init__(self, preprocessor, encoder, dynamic_length: bool = True,
                 length_multiple: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.dynamic_length = bool(dynamic_length)
        self.length_multiple = int(length_multiple)

    def build_from_config(self, config):
        self(tf.constant([""]))

    def call(self, strings: tf.Tensor, training=None) -> tf.Tensor:
        if self.dynamic_length:
            inputs = self.preprocessor(strings, dynamic_length=True,
                                       length_multiple=self.length_multiple)
        else:
            inputs = self.preprocessor(strings)
        return sentence_embedding(self.encoder, inputs, training)

    def get_config(self) -> Dict[str, Any]:
        return {
            "preprocessor": tf_keras.layers.serialize(self.preprocessor),
            "encoder": tf_keras.layers.serialize(self.encoder),
            "dynamic_length": self.dynamic_length,
            "length_multiple": self.length_multiple,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        pre = tf_keras.layers.deserialize(config.pop("preprocessor"), custom_objects)
        enc = tf_keras.layers.deserialize(config.pop("encoder"), custom_objects)
        return cls(pre, enc, **config)


def count_params(cfg: ModelConfig) -> int:
    """Exact number of weights of the encoder with shape ``cfg`` (built)."""
    encoder = build_encoder(cfg, initializer=tf_keras.initializers.Zeros())
    encoder(encoder.dummy_inputs())
    return int(sum(int(tf.size(w)) for w in encoder.weights))


def summary_text(cfg: ModelConfig) -> str:
    """Human-readable shape and exact parameter count (what ``lealla model summary`` prints)."""
    n = count_params(cfg)
    h = cfg.hidden_size
    if cfg.architecture == "static":
        return "\n".join([
            f"model: {cfg.name} (static: mean of token embeddings"
            f"{', linear map' if cfg.static_projection else ''})",
            f"  vocab {cfg.vocab_size:,}, hidden {h}",
            f"  parameters: {n:,} ({n / 1e6:.2f}M)",
            f"  embedding dim: {h}"])
    embedding = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * h + 2 * h
    lines = [
        f"model: {cfg.name}",
        f"  layers {cfg.num_layers}, hidden {h}, heads {cfg.num_attention_heads}, "
        f"FFN {cfg.intermediate_size}, vocab {cfg.vocab_size:,}, positions "
        f"{cfg.max_position_embeddings}, activation {cfg.hidden_act}, pooling {cfg.pooling}",
        f"  parameters: {n:,} ({n / 1e6:.2f}M)",
        f"    embeddings {embedding:,}  transformer+pooler {n - embedding:,}",
        f"  embedding dim: {h}",
    ]
    return "\n".join(lines)
