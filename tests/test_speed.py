"""lealla_tf.evaluation.speed: fair timing (same batches both ways) and FLOP counts."""

import numpy as np
import pytest

from lealla_tf import embedders
from lealla_tf.evaluation import speed


def test_encoder_flops_is_the_hand_count():
    shape = {"hidden_size": 4, "num_layers": 3, "intermediate_size": 8}
    # Per layer and token: 2 (4 h^2 + 2 h f) = 2 (64 + 64) = 256; attention 4 n h = 16 n.
    expected = 3 * sum(n * 256 + 16 * n * n for n in (2, 5))
    assert speed.encoder_flops(shape, [2, 5]) == expected
    assert speed.encoder_flops(shape, []) == 0
    assert speed.encoder_flops(dict(shape, pooling="mean"), [2, 5]) == expected


def test_encoder_flops_of_cls_pooling_count_the_last_layer_for_cls_alone():
    shape = {"hidden_size": 4, "num_layers": 3, "intermediate_size": 8, "pooling": "cls"}
    # Two full layers; the last: keys and values of every token, 2 n (2 h^2) = 64 n,
    # queries, output and FFN for [CLS], 2 (2 h^2 + 2 h f) = 192, its attention 4 n h = 16 n.
    expected = sum(2 * (n * 256 + 16 * n * n) + 64 * n + 192 + 16 * n for n in (2, 5))
    assert speed.encoder_flops(shape, [2, 5]) == expected


class _Counting(embedders.Embedder):
    """Records the size of every model call."""

    def __init__(self, vocab):
        super().__init__("counting", length_model=vocab, batch_tokens=64)
        self.calls = []

    def encode_batch(self, batch):
        self.calls.append(len(batch))
        return np.ones((len(batch), 3), np.float32)


def test_both_paths_make_the_same_model_calls(hermetic_vocab):
    """`lealla embed`'s path and the direct calls time the same batches: the difference
    between them is the path's own cost, not other batching."""
    model = _Counting(hermetic_vocab)
    sentences = [("ledoge lecate " * (i % 9)) + "x" for i in range(120)]
    rates = speed.measure(model, sentences, repeats=2)
    assert rates["embed"] > 0 and rates["direct"] > 0
    # one warm-up + 2 timed passes each way: 5 passes of identical batches.
    per_pass = len(model.calls) // 5
    passes = [model.calls[i * per_pass:(i + 1) * per_pass] for i in range(5)]
    assert per_pass > 1 and sum(passes[0]) == 120
    assert all(p == passes[0] for p in passes)
    # The embedder's own cap holds on both paths.
    model.calls, model.batch_size = [], 7
    speed.measure(model, sentences, repeats=1)
    assert max(model.calls) == 7 and sum(model.calls) == 3 * 120
    with pytest.raises(ValueError, match="no sentences"):
        speed.measure(model, [])


def test_speed_row_counts_flops_on_real_tokens(hermetic_vocab):
    model = _Counting(hermetic_vocab)
    sentences = ["ledoge lecate", "x", "lebirde lefishe ledoge"]
    shape = {"hidden_size": 8, "num_layers": 2, "intermediate_size": 16, "seq_length": 4}
    row = speed.speed_row(model, sentences, shape, limit_gflops=100.0, teacher_rate=10.0)
    keys = embedders.sort_keys(model, sentences)
    lengths = [min(k + 2, 4) for k in keys]  # [CLS]/[SEP] added, capped at seq_length
    seconds = len(sentences) / row["direct"]
    assert row["gflops"] == pytest.approx(speed.encoder_flops(shape, lengths) / seconds / 1e9)
    assert row["limit_share"] == pytest.approx(row["gflops"] / 100.0)
    assert row["vs_teacher"] == pytest.approx(row["embed"] / 10.0)
    static = speed.speed_row(model, sentences, {"hidden_size": 8}, 100.0)
    assert static["gflops"] is None and static["vs_teacher"] is None


def test_matmul_rate_is_measured():
    assert speed.matmul_gflops(n=128, repeats=2) > 0.01


class _Logging(embedders.Embedder):
    """Appends its name to a shared log at every model call."""

    def __init__(self, name, vocab, log):
        super().__init__(name, length_model=vocab, batch_tokens=64)
        self.log = log

    def encode_batch(self, batch):
        self.log.append(self.name)
        return np.ones((len(batch), 3), np.float32)


def test_measure_all_interleaves_the_models(hermetic_vocab):
    """Every round times every model in turn (so that load from elsewhere falls on all of
    them alike), after a warm-up of each; the rates are per model."""
    log = []
    models = {n: _Logging(n, hermetic_vocab, log) for n in ("a", "b")}
    sentences = ["ledoge lecate"]  # one batch: one call per pass
    rates = speed.measure_all(models, sentences, repeats=2)
    # warm-up a, b; then per round: a (embed, direct), b (embed, direct)
    assert log == ["a", "b"] + ["a", "a", "b", "b"] * 2
    assert set(rates) == {"a", "b"} and all(r["embed"] > 0 and r["direct"] > 0
                                            for r in rates.values())
    with pytest.raises(ValueError, match="repeats"):
        speed.measure_all(models, sentences, repeats=0)
