"""int8 word-embedding rows (per-row scales): the quantiser's error bound, in-memory
parity with the float table, and exports whose SavedModel equals the in-memory int8 model
and whose TFLite files stay close to the float model while the table shrinks 4x."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

from lealla_tf import export
from lealla_tf.models import encoders
from lealla_tf.text import sentencepiece
from support import harness

SENTENCES = [b"The weather is nice today.", "Das Wetter ist heute schön.".encode(),
             "Сегодня хорошая погода.".encode(), "今天天气很好。".encode(), b"dog", b"",
             b"\xff\xfe invalid", ("Satz " * 300).encode()]
ROWS = 128_000  # a teacher-sized vocabulary (the tokenizer uses only its first pieces)


def test_quantize_rows_int8_error_bound_and_errors():
    rng = np.random.default_rng(0)
    table = rng.standard_normal([300, 48]).astype(np.float32) * rng.uniform(
        0.001, 3.0, [300, 1]).astype(np.float32)
    table[7] = 0.0
    values, scales = encoders.quantize_rows_int8(table)
    assert values.dtype == np.int8 and values.shape == table.shape
    assert scales.dtype == np.float32 and scales.shape == (300, 1)
    assert values.min() >= -127 and values.max() <= 127
    # Each row's largest entry maps to +-127; every entry is within half a step.
    assert np.all(np.abs(values).max(axis=1)[np.arange(300) != 7] == 127)
    err = np.abs(values * scales - table)
    assert np.all(err <= scales / 2 + 1e-7)
    assert not values[7].any() and scales[7, 0] == 1.0
    with pytest.raises(ValueError, match=r"\[rows, dim\]"):
        encoders.quantize_rows_int8(np.zeros([5], np.float32))
    bad = table.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        encoders.quantize_rows_int8(bad)


@pytest.fixture(scope="module")
def big_vocab(tiny_vocab, tiny_config):
    cfg = dataclasses.replace(tiny_config.model, vocab_size=ROWS)
    encoder = harness.build_encoder(cfg, seed=5)
    pre = sentencepiece.Preprocessor(tiny_vocab, tiny_config.preprocess.seq_length)
    return cfg, pre, encoder


def test_in_memory_int8_rows_close_to_float_and_reversible(big_vocab):
    cfg, pre, encoder = big_vocab
    weights = harness.snapshot(encoder.weights)
    ref = harness.embed(pre, encoder, SENTENCES)
    encoder.set_int8_word_embeddings(True)
    try:
        assert encoder.int8_word_embeddings
        got = harness.embed(pre, encoder, SENTENCES)
        # The variables (checkpoints, training) are untouched.
        assert len(encoder.get_weights()) == len(weights)
    finally:
        encoder.set_int8_word_embeddings(False)
    cos = export.cosine_rows(got, ref)
    assert cos.min() >= export.INT8_EMBEDDINGS_MIN_COSINE
    assert np.abs(got - ref).max() > 0  # the int8 rows were really read
    assert not encoder.int8_word_embeddings
    np.testing.assert_array_equal(harness.embed(pre, encoder, SENTENCES), ref)
    for a, b in zip(encoder.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    keras = encoders.LeallaEncoder.from_model_config(cfg, implementation="keras")
    with pytest.raises(ValueError, match="implementation='fast'"):
        keras.set_int8_word_embeddings(True)


def test_export_with_int8_rows(big_vocab, tmp_path):
    _, pre, encoder = big_vocab
    ref = harness.embed(pre, encoder, SENTENCES)
    plain = export.export_model(pre, encoder, str(tmp_path / "plain"), tflite="fp32",
                                progress=False)
    small = export.export_model(pre, encoder, str(tmp_path / "int8rows"), tflite="fp32,int8",
                                progress=False, int8_embeddings=True)
    assert not encoder.int8_word_embeddings  # the caller's encoder is left as it was
    np.testing.assert_array_equal(harness.embed(pre, encoder, SENTENCES), ref)
    assert small["model"]["int8_word_embeddings"] and not plain["model"]["int8_word_embeddings"]
    assert small["checks"]["int8_embeddings_min_cosine"] >= export.INT8_EMBEDDINGS_MIN_COSINE
    with open(tmp_path / "int8rows" / export.INFO_FILE) as f:
        assert json.load(f)["model"]["int8_word_embeddings"] is True

    # The end-to-end SavedModel is the in-memory int8 model.
    encoder.set_int8_word_embeddings(True)
    try:
        in_memory_int8 = harness.embed(pre, encoder, SENTENCES)
    finally:
        encoder.set_int8_word_embeddings(False)
    loaded = tf.saved_model.load(str(tmp_path / "int8rows" / export.LEALLA))
    saved = loaded.signatures[export.SIGNATURE](sentences=tf.constant(SENTENCES))[
        export.OUTPUT_KEY].numpy()
    np.testing.assert_allclose(saved, in_memory_int8, atol=1e-5)

    # The end-to-end SavedModel holds the int8 rows instead of the float table (it serves
    # only: no training call), and hub.KerasLayer runs it.
    table = ROWS * encoder.hidden_size
    saved_bytes = plain["files"][export.LEALLA]["bytes"] - small["files"][export.LEALLA]["bytes"]
    assert saved_bytes > 0.7 * 3 * table, (saved_bytes, table)
    assert len(loaded.__call__.concrete_functions) == 1
    import tensorflow_hub as hub
    layer = hub.KerasLayer(str(tmp_path / "int8rows" / export.LEALLA))
    np.testing.assert_allclose(layer(tf.constant(SENTENCES)).numpy(), in_memory_int8, atol=1e-5)

    # The fp32 TFLite file loses 3/4 of the table's bytes, and stays close to the float model.
    saved_bytes = plain["files"]["tflite-fp32"]["bytes"] - small["files"]["tflite-fp32"]["bytes"]
    assert saved_bytes > 0.7 * 3 * table, (saved_bytes, table)
    for variant, gate in (("fp32", export.INT8_EMBEDDINGS_MIN_COSINE),
                          ("int8", export.TFLITE_MIN_COSINE["int8"])):
        path = str(tmp_path / "int8rows" / export.tflite_file_name(variant))
        got = harness.tflite_encoder(model_path=path)(SENTENCES)
        assert export.cosine_rows(got, ref).min() >= gate, variant
    # The fine-tuning encoder SavedModel keeps the float table (same size as without).
    assert abs(small["files"][export.ENCODER]["bytes"]
               - plain["files"][export.ENCODER]["bytes"]) < 0.05 * table * 4


def test_static_encoder_refuses_int8_rows(tmp_path):
    static = encoders.StaticEncoder(vocab_size=64, hidden_size=8)
    static(static.dummy_inputs())
    assert not hasattr(static, "set_int8_word_embeddings")
    with pytest.raises(ValueError, match="LeallaEncoder.*StaticEncoder"):
        export.export_model(None, static, str(tmp_path / "out"), tflite="none",
                            progress=False, int8_embeddings=True)
    assert not (tmp_path / "out").exists()
