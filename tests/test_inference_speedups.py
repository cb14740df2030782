"""Every inference speed-up gives the outputs of the reference path.

Reference: ``BertEncoderV2``'s own Keras layers (``implementation="keras"``) on inputs
packed to a fixed ``seq_length``. Speed-ups: the fused ``tf.nn`` forward pass
(``implementation="fast"``), XLA (``jit_compile=True``), padding to the batch's longest
sentence (``dynamic_length``), and all of them through a TFLite export.
"""

import contextlib
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from lealla_tf.models import encoders
from lealla_tf.text import sentencepiece
from support import harness

SENTENCES = ["A dog.", "Ein kleiner Hund läuft über die Straße.", "Собака.", "犬。", "",
             "x" * 3000, "Hello world"]


@pytest.fixture(scope="module")
def reference(tiny_config):
    encoder = harness.build_encoder(tiny_config.model, seed=1, implementation="keras")
    # LayerNorm scales and offsets away from 1 and 0, as trained ones are: the TFLite
    # forward pass folds them into the weights that read each LayerNorm.
    rng = np.random.default_rng(1)
    norms = [w for w in encoder.weights if w.name.endswith(("gamma:0", "beta:0"))]
    assert len(norms) == 2 * (2 * tiny_config.model.num_layers + 1), [w.name for w in norms]
    for weight in norms:
        base = 1.0 if weight.name.endswith("gamma:0") else 0.0
        weight.assign(base + 0.3 * rng.standard_normal(weight.shape).astype(np.float32))
    return encoder


@pytest.fixture(scope="module")
def pre(tiny_vocab, tiny_config):
    return sentencepiece.Preprocessor(tiny_vocab, seq_length=tiny_config.preprocess.seq_length)


def _copy(reference, cfg, **kwargs):
    enc = harness.build_encoder(cfg, **kwargs)
    enc.set_weights(reference.get_weights())
    return enc


def test_default_implementation_is_fast(tiny_config):
    assert tiny_config.model.implementation == "fast"
    enc = encoders.LeallaEncoder.from_model_config(tiny_config.model)
    assert enc.implementation == "fast"
    with pytest.raises(ValueError, match="implementation"):
        encoders.LeallaEncoder.from_model_config(tiny_config.model, implementation="slow")


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fast_forward_equals_bert_encoder_v2(reference, pre, tiny_config, jit_compile):
    fast = _copy(reference, tiny_config.model, implementation="fast", jit_compile=jit_compile)
    inputs = pre(tf.constant(SENTENCES))  # rows of very different lengths: padding masked
    want = reference(inputs, training=False)
    got = fast(inputs, training=False)
    for key in ("default", "pooled_output", "sequence_output"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5, rtol=1e-5)
    assert len(got["encoder_outputs"]) == len(want["encoder_outputs"])
    for a, b in zip(got["encoder_outputs"], want["encoder_outputs"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-5)
    # The fast path is really taken (not a fallback to the Keras layers): the ops of the
    # inference call, the functions it calls included.
    traced = tf.function(lambda x: fast(x, training=False)).get_concrete_function(
        {k: tf.TensorSpec([None, None], tf.int32) for k in encoders.INPUT_KEYS})
    graph = traced.graph.as_graph_def()
    op_types = {node.op for node in graph.node} | {
        node.op for function in graph.library.function for node in function.node_def}
    assert "Einsum" not in op_types and "MatMul" in op_types


def test_fast_encoder_keeps_weights_and_checkpoints(reference, pre, tiny_config, tmp_path):
    fast = harness.build_encoder(tiny_config.model)
    assert [w.name for w in fast.weights] == [w.name for w in reference.weights]
    assert fast.count_params() == reference.count_params()
    path = tf.train.Checkpoint(encoder=reference).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(encoder=fast).read(path).assert_consumed()
    inputs = pre(tf.constant(SENTENCES))
    np.testing.assert_allclose(fast(inputs)["default"].numpy(),
                               reference(inputs)["default"].numpy(), atol=1e-5)


def test_training_runs_through_keras_layers_with_dropout(reference, pre, tiny_config):
    fast = _copy(reference, tiny_config.model)
    inputs = pre(tf.constant(SENTENCES))
    tf_keras.utils.set_random_seed(3)
    a = fast(inputs, training=True)["default"].numpy()
    tf_keras.utils.set_random_seed(3)
    b = reference(inputs, training=True)["default"].numpy()
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, fast(inputs, training=False)["default"].numpy(), atol=1e-4)


def test_dynamic_length_pads_to_the_longest_sentence(tiny_vocab):
    pre = sentencepiece.Preprocessor(tiny_vocab, seq_length=32, dynamic_length=True)
    texts = tf.constant(["Hallo Welt", "Ein kleiner Hund läuft."])
    fixed = sentencepiece.Preprocessor(tiny_vocab, seq_length=32)(texts)
    got = pre(texts)
    longest = int(fixed["input_mask"].numpy().sum(axis=1).max())
    assert got["input_word_ids"].shape == (2, longest)
    for key in fixed:
        np.testing.assert_array_equal(got[key].numpy(), fixed[key].numpy()[:, :longest])
    # Rounded up to a multiple, capped at seq_length, never shorter than [CLS] [SEP].
    eight = pre(texts, length_multiple=8)["input_word_ids"]
    assert eight.shape[1] == min(32, -(-longest // 8) * 8)
    assert pre(tf.constant(["x" * 3000]), length_multiple=7)["input_word_ids"].shape == (1, 32)
    assert pre(tf.constant([""]))["input_word_ids"].shape == (1, 2)
    assert pre(tf.constant([], tf.string))["input_word_ids"].shape[0] == 0
    # The per-call override switches back to fixed length.
    assert pre(texts, dynamic_length=False)["input_word_ids"].shape == (2, 32)
    clone = sentencepiece.Preprocessor.from_config(pre.get_config())
    assert clone.dynamic_length and clone.length_multiple == 1


@pytest.mark.parametrize("length_multiple", [1, 8])
def test_dynamic_length_string_encoder_equals_fixed_padding(reference, pre, tiny_config,
                                                             length_multiple):
    fast = _copy(reference, tiny_config.model, jit_compile=length_multiple > 1)
    texts = tf.constant(SENTENCES)
    want = harness.embed(pre, reference, SENTENCES, dynamic_length=False)
    for batch in ([0, 1], [2, 3, 4], [5, 6], list(range(len(SENTENCES)))):
        model = encoders.StringEncoder(pre, fast, length_multiple=length_multiple)
        got = model(tf.gather(texts, batch)).numpy()
        np.testing.assert_allclose(got, want[batch], atol=1e-5)


def test_tflite_of_fast_dynamic_model_equals_reference(reference, pre, tiny_config, tmp_path):
    from lealla_tf import export
    fast = _copy(reference, tiny_config.model)
    obj, signatures = export.build_lealla_module(pre, fast)
    tf.saved_model.save(obj, str(tmp_path / "lealla"), signatures=signatures)
    content = export.convert_tflite(str(tmp_path / "lealla"), "fp32")
    encode = harness.tflite_encoder(model_content=content)
    texts = np.array(SENTENCES, dtype=object)
    want = harness.embed(pre, reference, SENTENCES, dynamic_length=False)
    for batch in ([0, 1], [5, 6], list(range(len(SENTENCES)))):
        got = encode(texts[batch])
        np.testing.assert_allclose(got, want[batch], atol=1e-5)


def test_tflite_forward_equals_reference_and_is_restored(reference, pre, tiny_config):
    fast = _copy(reference, tiny_config.model)
    inputs = pre(tf.constant(SENTENCES))
    want = reference(inputs, training=False)["default"].numpy()
    with fast.tflite_forward():
        assert fast.forward_target == "tflite"
        got = fast(inputs, training=False)["default"].numpy()
    assert fast.forward_target == "tensorflow"
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(fast(inputs, training=False)["default"].numpy(), want, atol=1e-5)


@pytest.mark.parametrize("output_range", [None, 1])
def test_few_token_form_equals_bert_encoder_v2(reference, pre, tiny_config, output_range):
    """The form TensorFlow runs on few tokens ("tensorflow-small": no oneDNN LayerNorm,
    transpose, batched product or softmax) is BertEncoderV2's function, padding masked,
    every layer's output included, with and without ``output_range``."""
    from lealla_tf.models import bert_internals
    inputs = pre(tf.constant(SENTENCES))
    want = (_bert_with_output_range(reference, inputs)(inputs) if output_range
            else reference.bert(inputs, training=False))
    fast = _copy(reference, tiny_config.model)
    got = tf.function(lambda x: bert_internals.fast_bert_forward(
        fast.bert, x, target="tensorflow-small", output_range=output_range))(inputs)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5, rtol=1e-5)
    assert len(got["encoder_outputs"]) == len(want["encoder_outputs"])
    for a, b in zip(got["encoder_outputs"], want["encoder_outputs"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-5)


def _traced_op_types(saved_model_dir: str, sentences) -> set:
    """Op types of the nodes that ran (TF step stats) in one call of a string-in
    SavedModel's serving signature."""
    from benchmarks import inference_profile
    traced = inference_profile.tf_op_profile(saved_model_dir, [sentences], repeats=1)
    return {op for _, op, _ in traced["op_types_us"]}


def test_tensorflow_switches_forms_by_the_number_of_tokens(reference, pre, tiny_config,
                                                           tmp_path):
    """The SavedModel runs one sentence without oneDNN's per-call kernels and a batch of
    more than SMALL_INPUT_TOKENS padded tokens with its fused ones; both give the
    reference's embeddings."""
    from tensorflow.python.util import _pywrap_util_port

    from lealla_tf import export
    from lealla_tf.models import bert_internals
    fast = _copy(reference, tiny_config.model)
    obj, signatures = export.build_lealla_module(pre, fast)
    tf.saved_model.save(obj, str(tmp_path / "lealla"), signatures=signatures)
    one, batch = ["Hello world"], SENTENCES * 4
    assert len(batch) * 32 > bert_internals.SMALL_INPUT_TOKENS  # (the long one: 32)
    few, many = (_traced_op_types(str(tmp_path / "lealla"), s) for s in (one, batch))
    onednn = {"_MklLayerNorm", "_MklTranspose", "_MklSoftmax", "_MklBatchMatMulV2",
              "_MklFusedBatchMatMulV2"}
    assert "BatchMatMulV3" in few and not few & onednn, few
    assert "BatchMatMulV3" not in many
    if _pywrap_util_port.IsMklEnabled():
        assert "_MklLayerNorm" in many and "_MklFusedBatchMatMulV2" in many, many
    loaded = tf.saved_model.load(str(tmp_path / "lealla")).signatures[export.SIGNATURE]
    for sentences in (one, batch):
        got = loaded(sentences=tf.constant(sentences))[export.OUTPUT_KEY].numpy()
        want = harness.embed(pre, reference, sentences, dynamic_length=False)
        np.testing.assert_allclose(got, want, atol=1e-5)


def _bert_with_output_range(reference, inputs):
    """Model Garden's own ``BertEncoderV2(output_range=1)`` with the weights of
    ``reference``'s."""
    from official.nlp.modeling import networks
    bert = networks.BertEncoderV2(**dict(reference.bert.get_config(), output_range=1))
    bert(inputs)
    bert.set_weights(reference.bert.get_weights())
    return bert


@pytest.mark.parametrize("target", ["tensorflow", "tflite", "keras"])
def test_output_range_equals_bert_encoder_v2_output_range(reference, pre, tiny_config,
                                                          target):
    """``output_range=1`` computes the last layer for [CLS] alone: what Model Garden's
    encoder built with ``output_range=1`` gives, every layer's output included, and the
    same embedding as the full call."""
    inputs = pre(tf.constant(SENTENCES))
    want = _bert_with_output_range(reference, inputs)(inputs)
    assert want["sequence_output"].shape[1] == 1
    full = reference(inputs, training=False)
    if target == "keras":
        model = reference
    else:
        model = _copy(reference, tiny_config.model)
    context = model.tflite_forward() if target == "tflite" else contextlib.nullcontext()
    with context:
        got = model(inputs, training=False, output_range=1)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5, rtol=1e-5)
    assert len(got["encoder_outputs"]) == len(want["encoder_outputs"])
    for a, b in zip(got["encoder_outputs"], want["encoder_outputs"]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got["default"].numpy(), full["default"].numpy(), atol=1e-5)


def _last_layer_ops(fn, spec, last: int):
    """Op types under ``layer_<last>/attention`` in the graph of ``fn`` and the functions
    it calls."""
    graph = tf.function(fn).get_concrete_function(spec).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return {n.op for n in nodes if f"layer_{last}/attention/" in n.name}


def test_string_encoder_runs_the_last_layer_for_cls_alone(reference, pre, tiny_config):
    """The end-to-end model (what ``lealla/``, the TFLite files and MediaPipe's file are
    saved from) asks a [CLS]-pooled encoder for ``output_range=1``, a mean-pooled one for
    every position; ``output_range`` is refused where it cannot hold."""
    last = tiny_config.model.num_layers - 1
    strings = tf.TensorSpec([None], tf.string)
    fast = _copy(reference, tiny_config.model)
    cls_ops = _last_layer_ops(lambda s: encoders.StringEncoder(pre, fast)(s, training=False),
                              strings, last)
    mean = harness.build_encoder(tiny_config.model, seed=1, pooling="mean")
    mean_ops = _last_layer_ops(lambda s: encoders.StringEncoder(pre, mean)(s, training=False),
                               strings, last)
    # The [CLS] rows are cut out before the last layer's query projection.
    assert "StridedSlice" in cls_ops and "StridedSlice" not in mean_ops, (cls_ops, mean_ops)
    inputs = pre(tf.constant(SENTENCES))
    with pytest.raises(ValueError, match="mean pooling needs every position"):
        mean(inputs, training=False, output_range=1)
    with pytest.raises(ValueError, match="output_range must be None or 1"):
        fast(inputs, training=False, output_range=2)
    np.testing.assert_allclose(
        encoders.StringEncoder(pre, mean)(tf.constant(SENTENCES), training=False).numpy(),
        mean(inputs, training=False)["default"].numpy(), atol=1e-6)


def _executed_ops(fetch, feed=None):
    sess = tf.compat.v1.get_default_session()
    meta = tf.compat.v1.RunMetadata()
    value = sess.run(fetch, feed, run_metadata=meta, options=tf.compat.v1.RunOptions(
        output_partition_graphs=True))
    return value, {n.op for g in meta.partition_graphs for n in g.node}


@pytest.mark.parametrize("offset", [0.0, 3.0])
def test_layer_norm_is_one_onednn_kernel_with_the_layers_epsilon(offset):
    """TensorFlow fuses the "tensorflow" LayerNorm into _MklLayerNorm, whose kernel uses
    epsilon 1e-3 whatever the graph says: on rows of standard deviation 0.002 (a demo
    student's embedding LayerNorm) that epsilon alone would halve the output. The result
    must be LayerNorm with the layer's own epsilon (1e-12) all the same."""
    from types import SimpleNamespace

    from tensorflow.python.util import _pywrap_util_port

    from lealla_tf.models import bert_internals
    rng = np.random.default_rng(0)
    x = (offset + 0.002 * rng.standard_normal((64, 128))).astype(np.float32)
    gamma = (1 + 0.1 * rng.standard_normal(128)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(128)).astype(np.float32)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-12) * gamma + beta
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph).as_default() as sess:
        norm = SimpleNamespace(epsilon=1e-12,
                               gamma=tf.compat.v1.Variable(gamma, use_resource=True),
                               beta=tf.compat.v1.Variable(beta, use_resource=True))
        feed = tf.compat.v1.placeholder(tf.float32, [None, 128])
        outputs = {t: bert_internals.layer_norm(feed, norm, t) for t in bert_internals.TARGETS}
        sess.run(tf.compat.v1.global_variables_initializer())
        for target, y in outputs.items():
            got, ops = _executed_ops(y, {feed: x})
            np.testing.assert_allclose(got, want, atol=2e-3 if offset else 2e-4)
            fused = "_MklLayerNorm" in ops
            assert fused == (target == "tensorflow" and _pywrap_util_port.IsMklEnabled()), ops


def _op_counts(content: bytes):
    import collections

    from tensorflow.lite.tools import flatbuffer_utils
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    return collections.Counter(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
                               for graph in model.subgraphs for op in graph.operators)


def test_export_converts_tflite_from_the_tflite_forward(reference, pre, tiny_config, tmp_path):
    from lealla_tf import export
    fast = _copy(reference, tiny_config.model)
    export.export_model(pre, fast, str(tmp_path / "export"), tflite="fp32", progress=False)
    with open(tmp_path / "export" / "lealla-fp32.tflite", "rb") as f:
        shipped = _op_counts(f.read())
    # Converting the TensorFlow-target SavedModel gives the longer LayerNorm.
    from_tensorflow = _op_counts(export.convert_tflite(str(tmp_path / "export" / "lealla")))
    with fast.tflite_forward():
        obj, signatures = export.build_lealla_module(pre, fast)
        tf.saved_model.save(obj, str(tmp_path / "lite"), signatures=signatures)
    assert shipped == _op_counts(export.convert_tflite(str(tmp_path / "lite")))
    assert sum(shipped.values()) < sum(from_tensorflow.values())
    # XNNPACK does not delegate UNPACK: in the TFLite form every op of a layer is its.
    assert "UNPACK" in from_tensorflow and "UNPACK" not in shipped
    assert sorted(os.listdir(tmp_path / "export")) == sorted(
        ["README.md", "encoder", "export_info.json", "lealla", "lealla-fp32.tflite",
         "preprocessor"])
