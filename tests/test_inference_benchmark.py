"""Pieces of benchmarks/inference_speed.py: runtime -> file names, cosine gates, the
vocabulary-row override, and the full-integer encoder against the in-memory encoder."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401
from tensorflow.lite.tools import flatbuffer_utils

from benchmarks import inference_speed
from lealla_tf import export
from lealla_tf.models import encoders
from lealla_tf.text import sentencepiece
from support import harness


@pytest.fixture(scope="module")
def bench():
    return inference_speed


def test_tflite_files_and_gates(bench):
    assert bench.tflite_file("tflite-int8") == "lealla-int8.tflite"
    assert bench.tflite_file("tflite-int8-ruy") == "lealla-int8.tflite"
    assert bench.tflite_file("tflite-fp16-emb8") == "lealla-fp16-emb8.tflite"
    assert bench.tflite_file("tflite-int8-full") == "lealla-int8-full.tflite"
    # Every measured runtime but the Keras reference has a gate.
    assert set(bench.RUNTIMES) - set(bench.COSINE_GATES) == {"tf-keras"}
    assert bench.gate_text("tflite-int8", 0.995) == "ok >= 0.99"
    assert bench.gate_text("tflite-fp32", 0.9990) == "FAIL < 0.9999"
    assert bench.gate_text("tf-keras", 1.0) == "-" and bench.gate_text("tf", None) == "-"


def test_vocab_rows_override(bench, monkeypatch):
    monkeypatch.delenv(bench.VOCAB_ROWS_ENV, raising=False)
    assert bench.model_cfg("lealla_small").vocab_size == 501153
    monkeypatch.setenv(bench.VOCAB_ROWS_ENV, "128000")
    cfg = bench.model_cfg("lealla_small")
    assert cfg.vocab_size == 128000 and cfg.hidden_size == 128


def test_full_integer_encoder_close_to_float(bench, tiny_vocab, tiny_config):
    encoder = harness.build_encoder(tiny_config.model, seed=11)
    pre = sentencepiece.Preprocessor(tiny_vocab, 64)
    content = bench.full_integer_encoder(encoder, pre)
    runner = export.tflite_interpreter(model_content=content).get_signature_runner()
    packed = sentencepiece.Preprocessor(tiny_vocab, 64, dynamic_length=True)(tf.constant(
        ["The weather is nice today.", "Das Wetter ist heute schön.", "今天天气很好。", "dog"]))
    x = {k: packed[k].numpy().astype(np.int32) for k in encoders.INPUT_KEYS}
    got = runner(**x)[export.OUTPUT_KEY]
    ref = encoder({k: tf.constant(v) for k, v in x.items()}, training=False)["default"].numpy()
    assert export.cosine_rows(got, ref).min() >= bench.COSINE_GATES["tflite-int8-full"]
    # int8 activations too: the matrix products read int8 inputs, not float ones.
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    fc = [(graph, op) for graph in model.subgraphs for op in graph.operators
          if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "FULLY_CONNECTED"]
    assert fc and all(flatbuffer_utils.type_to_name(graph.tensors[op.inputs[0]].type) == "INT8"
                      for graph, op in fc)
