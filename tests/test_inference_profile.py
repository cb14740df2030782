"""benchmarks/inference_profile.py on a tiny 2-layer export: the TF step-stats stages cover
the forward pass (every layer scope, the tokenizer op), the TFLite stages by difference add
up, shares sum to 100%, and the node classification follows the name scopes."""

import os

import numpy as np
import pytest

from benchmarks import inference_profile as prof
from lealla_tf import embedders, export
from lealla_tf.text import sentencepiece
from support import harness, hermetic


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, hermetic_vocab, hermetic_config):
    encoder = harness.build_encoder(hermetic_config.model, seed=5)
    assert encoder.get_config()["num_layers"] == 2
    pre = sentencepiece.Preprocessor(hermetic_vocab, hermetic_config.preprocess.seq_length)
    out = str(tmp_path_factory.mktemp("profile") / "tiny")
    export.export_model(pre, encoder, out, tflite=("fp32",), progress=False)
    return out


@pytest.fixture(scope="module")
def batches(tiny_export):
    words = hermetic.WORDS
    sentences = [" ".join(words[(7 * i) % len(words):][:1 + i % 12]) for i in range(40)]
    return prof.sentence_batches(sentences, prof.export_vocab(tiny_export), 8, 64)


@pytest.fixture(scope="module")
def result(tiny_export, batches):
    return prof.profile(tiny_export, batches, threads=1, repeats=1, variants=("fp32",))


def test_batches_follow_the_embedders(batches):
    assert sum(len(b) for b in batches) == 40
    assert max(len(b) for b in batches) <= 8
    # Longest first, as embedders.batch_order cuts them.
    assert len(batches[0][0]) >= len(batches[-1][-1])


def test_batch_order_with_either_signature(monkeypatch):
    calls = []

    def old(keys, batch_size):
        calls.append("old")
        return [np.arange(len(keys))]

    def new(keys, batch_size, batch_tokens=None):
        calls.append(batch_tokens)
        return [np.arange(len(keys))]
    monkeypatch.setattr(embedders, "batch_order", old)
    assert not prof.takes_batch_tokens()
    prof.batch_order([3, 1], 4, 4096)
    monkeypatch.setattr(embedders, "batch_order", new)
    assert prof.takes_batch_tokens()
    prof.batch_order([3, 1], 4, 4096)
    assert calls == ["old", 4096]


def test_classify_node():
    base = "StatefulPartitionedCall/string_encoder/tiny/StatefulPartitionedCall/"
    c = prof.classify_node
    assert c(base + "layer_1/ffn/activation_1/Gelu/mul_3", "_MklNativeFusedMatMul") == "ffn_mm"
    assert c(base + "layer_0/ffn/add", "AddV2") == "ffn_other"
    assert c(base + "layer_0/attention/BiasAdd", "_MklNativeFusedMatMul") == "attn_proj"
    assert c(base + "layer_0/attention/MatMul_1", "_MklBatchMatMulV2") == "attn_core"
    assert c(base + "layer_0/attention/add_1", "AddV2", residual=True) == "attn_residual"
    assert c(base + "layer_0/attention/add", "AddV2") == "attn_core"
    assert c(base + "layer_12/attention_norm/moments/mean", "Mean") == "norms"
    assert c(base + "embeddings/batchnorm/mul_1", "Mul") == "norms"
    assert c(base + "embeddings/moments/SquaredDifference", "SquaredDifference") == "norms"
    assert c(base + "embeddings/layer_norm/add_1", "_MklLayerNorm") == "norms"
    assert c(base + "embeddings/layer_norm/mul_2", "Mul") == "norms"
    assert c(base + "embeddings/Gather", "ResourceGather") == "embeddings"
    assert c(base + "layer_0/attention/concat", "ConcatV2", input_dependent=False) == "weights"
    assert c("S/string_encoder/preprocessor/TFText>FastSentencepieceTokenize",
             "TFText>FastSentencepieceTokenize") == "tokenize"
    assert c("S/string_encoder/preprocessor_7/SelectV2", "SelectV2") == "pack"
    assert c(base + "pooler/dense/Tanh", "Tanh") == "pooling"
    assert c(base + "normalize/l2_normalize", "Mul") == "normalize"
    assert c("StatefulPartitionedCall", "IdentityN") == "unclassified"


def test_tensorflow_stages_cover_the_forward_pass(result):
    r = result["tf"]
    stages = r["stages_ms"]
    assert sum(prof.shares(stages).values()) == pytest.approx(100.0)
    assert r["total_ms"] == pytest.approx(sum(stages.values()))
    assert r["wall_ms"] > 0 and r["ops_ms"] > 0 and r["session_ms"] > 0
    assert r["layers"] == [0, 1]  # every layer_<i> scope of the 2-layer model
    for stage in ("tokenize", "pack", "embeddings", "attn_proj", "attn_core", "norms",
                  "ffn_mm", "normalize"):
        assert stages[stage] > 0, stage
    assert r["unclassified_share"] < 0.05
    assert r["matmul_split_ms"]["matmul"] > 0 and r["matmul_split_ms"]["batch_matmul"] > 0
    cells = r["op_types_ms"]  # (stage, op type, ms), largest first, summing to the op time
    assert cells[0][2] >= cells[-1][2]
    assert sum(ms for _, _, ms in cells) == pytest.approx(r["ops_ms"])


def test_tflite_stages_add_up(result):
    assert result["rebuilt_min_cosine"] > 0.9999
    r = result["tflite-fp32"]
    stages = r["stages_ms"]
    assert set(stages) == {k for k, _, _ in prof.TFLITE_STAGES}
    assert sum(prof.shares(stages).values()) == pytest.approx(100.0)
    assert sum(stages.values()) == pytest.approx(r["total_ms"])
    assert r["invoke_ms"] > 0 and r["encoder_ms"] > 0 and r["matmul_ms"] > 0
    assert stages["tokenize"] > 0
    assert "tflite-int8" not in result  # not asked for


def test_flops_and_tables(result, batches, capsys):
    n = result["sentences"]
    assert n == 40 and result["batches"] == len(batches)
    fl = result["flops"]
    assert 0 < fl["useful"] <= fl["executed"]
    prof.print_tf(result["tf"], n)
    prof.print_tflite("fp32", result["tflite-fp32"], n)
    prof.print_flops({"tf": dict(result["tf"], matmul_ms=1.0),
                       "tflite-fp32": result["tflite-fp32"]}, fl, n, 100.0)
    out = capsys.readouterr().out
    for label in ("tokenize (TF Text op)", "outside the graph (wall - ops)", "op type",
                  "layers: matrix products", "tflite-fp32", "100.0%"):
        assert label in out


def test_flops_formula():
    shape = {"hidden_size": 4, "intermediate_size": 8, "num_layers": 3}
    packed = [{"input_word_ids": np.zeros((2, 5), np.int32),
               "input_mask": np.array([[1] * 5, [1] * 3 + [0] * 2], np.int32)}]
    per_token = lambda s: 3 * (2 * (4 * 16 + 2 * 32) + 4 * s * 4)  # noqa: E731
    fl = prof.flops(shape, packed)
    assert fl["executed"] == 10 * per_token(5)
    assert fl["useful"] == 5 * per_token(5) + 3 * per_token(3)


def test_stage_table_rows():
    rows = prof.stage_rows({"tokenize": 1.0, "outside": 3.0}, prof.TF_STAGES, 2000)
    assert rows[0] == ["tokenize (TF Text op)", "0.5", "25.0%"]
    assert rows[-1] == ["total", "2.0", "100.0%"]
    assert os.path.basename(prof.DEFAULT_EXPORT) == "export"


def test_round_robin_keeps_the_best_pass():
    class Fake:
        def __init__(self, passes):
            self.passes = iter(passes)

        def run(self, feeds):
            return next(self.passes)
    jobs = {"e2e-fp32": (Fake([(1, np.array([0.5])), (5, np.array([4.0])),
                               (6, np.array([1.0]))]), None),
            "matmul-fp32": (Fake([(0, np.zeros(2)), (3, np.array([2.0, 1.0])),
                                  (3, np.array([1.0, 2.0]))]), None)}
    t = prof.time_round_robin(jobs, repeats=2)
    assert t["e2e-fp32"] == (5, 4.0)  # the timed pass with the shortest loop (no warm-up)
    assert t["matmul-fp32"] == (3, 2.0)  # each shape's fastest invoke
