"""The LEALLA encoder: a BERT-style Transformer whose pooled [CLS] vector is L2-normalised.

Built on ``official.nlp.modeling.networks.BertEncoderV2`` (tf-models-official), so the
shapes and weights line up with Model Garden BERT checkpoints: word, position and
type embeddings, ``num_layers`` post-norm Transformer blocks, and a pooler
(``[CLS]`` -> dense(H, H) -> tanh). LEALLA (Mao & Nakagawa, EACL 2023) uses 24 thin
layers (hidden 128/192/256); LaBSE (Feng et al., ACL 2022) 12 layers of width 768.

Example::

    from lealla_tf import config, modeling, preprocessing
    cfg = config.load("configs/tiny.yaml")
    encoder = modeling.LeallaEncoder.from_model_config(cfg.model)
    pre = preprocessing.Preprocessor("vocab/spm.model", seq_length=32)
    model = modeling.StringEncoder(pre, encoder)
    vectors = model(tf.constant(["dog", "Hund"]))  # [2, hidden], unit norm
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import tensorflow as tf
import tf_keras
from official.modeling import tf_utils
from official.nlp.modeling import networks

from lealla_tf.config import ModelConfig

INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")


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


@tf_keras.utils.register_keras_serializable(package="lealla")
class LeallaEncoder(tf_keras.Model):
    """Token inputs -> sentence embeddings (and the usual BERT outputs).

    Args:
      vocab_size, hidden_size, num_layers, num_attention_heads, intermediate_size,
      max_position_embeddings, type_vocab_size, hidden_act, dropout_rate,
      attention_dropout_rate, initializer_range: the shape, as in :class:`ModelConfig`.
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
                 initializer: Optional[tf_keras.initializers.Initializer] = None, **kwargs):
        kwargs.pop("name_", None)
        super().__init__(**kwargs)
        self._shape_config = dict(
            vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
            num_attention_heads=num_attention_heads, intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings, type_vocab_size=type_vocab_size,
            hidden_act=hidden_act, dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate, initializer_range=initializer_range)
        self.bert = networks.BertEncoderV2(
            vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
            num_attention_heads=num_attention_heads, max_sequence_length=max_position_embeddings,
            type_vocab_size=type_vocab_size, inner_dim=intermediate_size,
            inner_activation=tf_utils.get_activation(hidden_act),
            output_dropout=dropout_rate, attention_dropout=attention_dropout_rate,
            initializer=initializer or tf_keras.initializers.TruncatedNormal(
                stddev=initializer_range),
            name="bert")
        self.hidden_size = hidden_size

    @classmethod
    def from_model_config(cls, cfg: ModelConfig, **kwargs) -> "LeallaEncoder":
        """Builds an encoder of the shape in ``cfg`` (``name`` becomes the Keras name)."""
        cfg.validate()
        shape = {k: v for k, v in vars(cfg).items() if k != "name"}
        kwargs.setdefault("name", cfg.name)
        return cls(**shape, **kwargs)

    @property
    def embedding_dim(self) -> int:
        return self.hidden_size

    def dummy_inputs(self, batch_size: int = 1, seq_length: int = 8) -> Dict[str, tf.Tensor]:
        ids = tf.zeros([batch_size, seq_length], tf.int32)
        return {"input_word_ids": ids, "input_mask": tf.ones_like(ids),
                "input_type_ids": tf.zeros_like(ids)}

    def build_from_config(self, config):
        # Keras would build from float placeholders; token ids must be integers.
        self(self.dummy_inputs())

    def call(self, inputs: Dict[str, tf.Tensor], training=None) -> Dict[str, Any]:
        inputs = {k: inputs[k] for k in INPUT_KEYS}
        outputs = self.bert(inputs, training=training)
        pooled = tf.cast(outputs["pooled_output"], tf.float32)
        return {
            "default": tf.math.l2_normalize(pooled, axis=-1),
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
class StringEncoder(tf_keras.Model):
    """Strings -> L2-normalised embeddings: a :class:`Preprocessor` then an encoder.

    Args:
      preprocessor: a ``lealla_tf.preprocessing.Preprocessor``.
      encoder: a :class:`LeallaEncoder` (or any model with the same call contract).
    """

    def __init__(self, preprocessor, encoder, **kwargs):
        super().__init__(**kwargs)
        self.preprocessor = preprocessor
        self.encoder = encoder

    def build_from_config(self, config):
        self(tf.constant([""]))

    def call(self, strings: tf.Tensor, training=None) -> tf.Tensor:
        inputs = self.preprocessor(strings)
        return self.encoder(inputs, training=training)["default"]

    def get_config(self) -> Dict[str, Any]:
        return {
            "preprocessor": tf_keras.layers.serialize(self.preprocessor),
            "encoder": tf_keras.layers.serialize(self.encoder),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        pre = tf_keras.layers.deserialize(config.pop("preprocessor"), custom_objects)
        enc = tf_keras.layers.deserialize(config.pop("encoder"), custom_objects)
        return cls(pre, enc, **config)


def count_params(cfg: ModelConfig) -> int:
    """Exact number of weights of :class:`LeallaEncoder` with shape ``cfg`` (built)."""
    encoder = LeallaEncoder.from_model_config(cfg, initializer=tf_keras.initializers.Zeros())
    encoder(encoder.dummy_inputs())
    return int(sum(int(tf.size(w)) for w in encoder.weights))


def summary_text(cfg: ModelConfig) -> str:
    """Human-readable shape and exact parameter count (what ``lealla model summary`` prints)."""
    n = count_params(cfg)
    h = cfg.hidden_size
    embedding = (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * h + 2 * h
    lines = [
        f"model: {cfg.name}",
        f"  layers {cfg.num_layers}, hidden {h}, heads {cfg.num_attention_heads}, "
        f"FFN {cfg.intermediate_size}, vocab {cfg.vocab_size:,}, positions "
        f"{cfg.max_position_embeddings}, activation {cfg.hidden_act}",
        f"  parameters: {n:,} ({n / 1e6:.2f}M)",
        f"    embeddings {embedding:,}  transformer+pooler {n - embedding:,}",
        f"  embedding dim: {h}",
    ]
    return "\n".join(lines)
