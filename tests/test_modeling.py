import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from lealla_tf import config
from lealla_tf.models import encoders
from lealla_tf.text import sentencepiece

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")

# Parameter counts of the released shapes (vocabulary 501,153).
EXPECTED = {
    "lealla_small": 68_990_464,   # 68.99M
    "lealla_base": 107_036_928,   # 107.03M
    "lealla_large": 147_450_880,  # 147.45M
    "labse": 470_937_600,         # 470.94M
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts_of_released_shapes(name):
    cfg = config.load(os.path.join(CONFIGS, f"{name}.yaml")).model
    assert encoders.count_params(cfg) == EXPECTED[name]
    assert encoders.bert_param_count(cfg) == EXPECTED[name]


def test_summary_cli_prints_the_count(capsys):
    from lealla_tf import cli
    assert cli.main(["model", "summary", "--config",
                     os.path.join(CONFIGS, "lealla_small.yaml")]) == 0
    out = capsys.readouterr().out
    assert "68,990,464" in out and "68.99M" in out and "layers 24, hidden 128" in out


def test_cli_reports_config_errors(capsys):
    from lealla_tf import cli
    rc = cli.main(["model", "summary", "--config", os.path.join(CONFIGS, "tiny.yaml"),
                   "--set", "model.widht=3"])
    assert rc == 2 and "model.widht" in capsys.readouterr().err


@pytest.fixture(scope="module")
def encoder(tiny_config):
    tf_keras.utils.set_random_seed(0)
    enc = encoders.LeallaEncoder.from_model_config(tiny_config.model)
    enc(enc.dummy_inputs())
    return enc


@pytest.fixture(scope="module")
def pre(tiny_vocab, tiny_config):
    return sentencepiece.Preprocessor(tiny_vocab, seq_length=tiny_config.preprocess.seq_length)


SENTENCES = ["A dog.", "Ein Hund.", "Собака.", "犬。", "", "x" * 3000]


def test_outputs_shapes_and_unit_norm(encoder, pre, tiny_config):
    inputs = pre(tf.constant(SENTENCES))
    out = encoder(inputs)
    h, n, seq = tiny_config.model.hidden_size, len(SENTENCES), tiny_config.preprocess.seq_length
    assert out["default"].shape == (n, h) and out["pooled_output"].shape == (n, h)
    assert out["sequence_output"].shape == (n, seq, h)
    assert len(out["encoder_outputs"]) == tiny_config.model.num_layers
    np.testing.assert_allclose(np.linalg.norm(out["default"].numpy(), axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        out["default"].numpy(),
        out["pooled_output"].numpy() / np.linalg.norm(out["pooled_output"].numpy(), axis=1,
                                                      keepdims=True), atol=1e-6)


def test_inference_is_deterministic_and_dropout_only_in_training(encoder, pre):
    inputs = pre(tf.constant(SENTENCES))
    a = encoder(inputs, training=False)["default"].numpy()
    b = encoder(inputs, training=False)["default"].numpy()
    np.testing.assert_array_equal(a, b)
    c = encoder(inputs, training=True)["default"].numpy()
    d = encoder(inputs, training=True)["default"].numpy()
    assert not np.allclose(a, c, atol=1e-4) and not np.allclose(c, d, atol=1e-4)


def test_padding_does_not_change_embeddings(encoder, tiny_vocab):
    short = sentencepiece.Preprocessor(tiny_vocab, seq_length=16)
    long = sentencepiece.Preprocessor(tiny_vocab, seq_length=32)
    texts = tf.constant(["Ein kleiner Hund.", "Hello"])
    np.testing.assert_allclose(encoder(short(texts))["default"].numpy(),
                               encoder(long(texts))["default"].numpy(), atol=1e-5)


def test_get_config_roundtrip_keeps_shape_and_weights(encoder, pre):
    clone = encoders.LeallaEncoder.from_config(encoder.get_config())
    clone(clone.dummy_inputs())
    assert [w.shape for w in clone.weights] == [w.shape for w in encoder.weights]
    clone.set_weights(encoder.get_weights())
    inputs = pre(tf.constant(SENTENCES))
    np.testing.assert_allclose(clone(inputs)["default"].numpy(),
                               encoder(inputs)["default"].numpy(), atol=1e-6)


def test_string_encoder_serialises_and_matches(encoder, pre):
    model = encoders.StringEncoder(pre, encoder)
    texts = tf.constant(SENTENCES)
    vectors = model(texts).numpy()
    np.testing.assert_allclose(vectors, encoder(pre(texts))["default"].numpy(), atol=1e-6)
    clone = tf_keras.layers.deserialize(tf_keras.layers.serialize(model))
    clone(texts)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(texts).numpy(), vectors, atol=1e-6)


def test_checkpoint_roundtrip(encoder, pre, tmp_path, tiny_config):
    path = tf.train.Checkpoint(encoder=encoder).write(str(tmp_path / "ckpt"))
    fresh = encoders.LeallaEncoder.from_model_config(tiny_config.model)
    tf.train.Checkpoint(encoder=fresh).read(path).expect_partial()
    inputs = pre(tf.constant(SENTENCES))
    np.testing.assert_allclose(fresh(inputs)["default"].numpy(),
                               encoder(inputs)["default"].numpy(), atol=1e-6)
