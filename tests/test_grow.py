"""Growing a trained encoder deeper (``train.grow_layers``): the grown encoder computes the
source's function before its first step (both implementations, both poolings, new blocks on
top or at the bottom), its new blocks learn, and a training run starts from it."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from lealla_tf import cli, config, runs
from lealla_tf.models import bert_internals, encoders
from lealla_tf.training import dual_encoder, initialization

SHAPE = dict(vocab_size=97, hidden_size=32, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64, dropout_rate=0.0, attention_dropout_rate=0.0)


def _encoder(layers, pooling, seed, implementation="fast"):
    tf_keras.utils.set_random_seed(seed)
    enc = encoders.LeallaEncoder(num_layers=layers, pooling=pooling,
                                 implementation=implementation, **SHAPE)
    enc(enc.dummy_inputs())
    return enc


def _trained_like(enc, seed):
    """Moves every LayerNorm scale/shift and bias away from its initial value, as training
    does: an identity block that only works for scale 1 / shift 0 would fail here."""
    rng = np.random.default_rng(seed)
    for w in enc.weights:
        name = w.name
        if "gamma" in name:
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
        elif "beta" in name or "bias" in name:
            w.assign(rng.normal(0, 0.2, w.shape).astype(np.float32))


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, SHAPE["vocab_size"], (6, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[3:, 7:] = 0
    types = np.zeros_like(ids)
    types[:, 5:] = 1
    return {"input_word_ids": tf.constant(ids * mask), "input_mask": tf.constant(mask),
            "input_type_ids": tf.constant(types * mask)}


@pytest.mark.parametrize("position", ["top", "bottom"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_grown_encoder_computes_the_source_function(position, pooling):
    source = _encoder(2, pooling, 1)
    _trained_like(source, 1)
    x = _inputs()
    want = source(x)
    for implementation in ("fast", "keras"):
        target = _encoder(5, pooling, 2, implementation)
        bert_internals.grow_encoder(target, source, position)
        got = target(x)
        np.testing.assert_allclose(got["default"], want["default"], atol=2e-5,
                                   err_msg=implementation)
        np.testing.assert_allclose(got["sequence_output"], want["sequence_output"],
                                   atol=1e-4, err_msg=implementation)
        train_out = target(x, training=True)  # the training path (BertEncoderV2's layers)
        np.testing.assert_allclose(train_out["default"], want["default"], atol=2e-5)
    # The source's layers sit where asked; the new blocks keep random Q/K/V.
    layers = target.bert.transformer_layers
    first = 3 if position == "bottom" else 0
    block = bert_internals.block_variables
    np.testing.assert_array_equal(
        block(layers[first])["intermediate/kernel"].numpy(),
        block(source.bert.transformer_layers[0])["intermediate/kernel"].numpy())
    new = block(layers[2 if position == "top" else 0])
    assert np.abs(new["query/kernel"].numpy()).max() > 0
    assert np.abs(new["output/kernel"].numpy()).max() == 0


def test_the_new_blocks_learn():
    source = _encoder(1, "mean", 3)
    _trained_like(source, 3)
    target = _encoder(3, "mean", 4)
    bert_internals.grow_encoder(target, source, "top")
    x, other = _inputs(0), _inputs(1)
    with tf.GradientTape() as tape:
        a = target(x, training=True)["default"]
        b = target(other, training=True)["default"]
        loss = -tf.reduce_sum(a * b)
    grads = dict(zip([v.name for v in target.trainable_variables],
                     tape.gradient(loss, target.trainable_variables)))
    new = bert_internals.block_variables(target.bert.transformer_layers[2])
    kernel = grads[new["output/kernel"].name]
    assert kernel is not None and float(tf.reduce_max(tf.abs(kernel))) > 0


def test_grow_refuses_what_it_cannot_do():
    source = _encoder(3, "cls", 5)
    with pytest.raises(ValueError, match="cannot grow a 3-layer encoder into 2"):
        bert_internals.grow_encoder(_encoder(2, "cls", 6), source)
    wide = encoders.LeallaEncoder(num_layers=4, pooling="cls", **dict(SHAPE, hidden_size=48))
    wide(wide.dummy_inputs())
    with pytest.raises(ValueError, match="cannot start from"):
        bert_internals.grow_encoder(wide, source)
    with pytest.raises(ValueError, match="top or bottom"):
        bert_internals.grow_encoder(_encoder(4, "cls", 6), source, "middle")
    with pytest.raises(config.ConfigError, match="set train.init_from"):
        initialization.apply_init_from(config.load("tiny", ["train.grow_layers=4"]))
    with pytest.raises(config.ConfigError, match="grow_position"):
        config.load("tiny", ["train.grow_position=middle"])


def _args(vocab, files, *extra):
    import sentencepiece as spm
    n = spm.SentencePieceProcessor(model_file=vocab).get_piece_size()
    return [f"model.vocab_size={n}", f"vocab.model_file={vocab}",
            f"data.train_files=[{','.join(files)}]", "train.warmup_steps=1",
            "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0",
            "model.pooling=mean", "train.global_batch_size=8", *extra]


def test_train_grows_the_init_from_run(tmp_path, hermetic_vocab, hermetic_files):
    base = _args(hermetic_vocab, hermetic_files)
    src_dir = str(tmp_path / "src")
    assert cli.main(["train", "--config", "tiny", "--model-dir", src_dir, "--no-progress",
                     *sum((["--set", o] for o in base + ["train.steps=3",
                                                        "train.steps_per_loop=3"]), [])]) == 0
    _, _, source = runs.restore_encoder(src_dir)
    cfg = config.load("tiny", base + ["train.steps=3", "train.steps_per_loop=3",
                                      "train.grow_layers=5", "train.grow_position=bottom"])
    cfg.train.init_from = src_dir
    grown = dual_encoder.Trainer(cfg, str(tmp_path / "grown"), progress=False)
    assert grown.cfg.model.num_layers == 5 and len(grown.encoder.bert.transformer_layers) == 5
    x = _inputs()
    x = {k: tf.minimum(v, 40) if k == "input_word_ids" else v for k, v in x.items()}
    np.testing.assert_allclose(grown.encoder(x)["default"], source(x)["default"], atol=2e-5)
    result = grown.run()
    assert result.step == 3 and np.isfinite(result.metrics["loss"])
    moved = bert_internals.block_variables(
        grown.encoder.bert.transformer_layers[0])["output/kernel"].numpy()
    assert np.abs(moved).max() > 0
    # The run directory describes the grown shape: it restores (and exports) as 5 layers.
    _, _, restored = runs.restore_encoder(str(tmp_path / "grown"))
    assert len(restored.bert.transformer_layers) == 5
    np.testing.assert_allclose(restored(x)["default"], grown.encoder(x)["default"], atol=1e-5)
    # Growing to fewer layers than the source has is refused with the depths named.
    cfg = config.load("tiny", base + ["train.steps=1", "train.grow_layers=1"])
    cfg.train.init_from = src_dir
    with pytest.raises(config.ConfigError, match=r"below the depth .* \(2 layers\)"):
        dual_encoder.Trainer(cfg, str(tmp_path / "shallow"), progress=False)


def test_transformer_grows_from_a_static_run(tmp_path, hermetic_vocab, hermetic_files):
    """A static run grows into a Transformer whose blocks are identities: before its first
    step it returns the mean of LayerNorm(row) over the tokens (the static student returns
    the mean of the rows), then it trains."""
    base = _args(hermetic_vocab, hermetic_files)
    static_dir = str(tmp_path / "static")
    static = base + ["model.architecture=static", "model.static_projection=true",
                     "train.steps=3", "train.steps_per_loop=3"]
    assert cli.main(["train", "--config", "tiny", "--model-dir", static_dir, "--no-progress",
                     *sum((["--set", o] for o in static), [])]) == 0
    _, _, source = runs.restore_encoder(static_dir)
    cfg = config.load("tiny", base + ["train.steps=3", "train.steps_per_loop=3",
                                      "train.grow_layers=3"])
    cfg.train.init_from = static_dir
    grown = dual_encoder.Trainer(cfg, str(tmp_path / "grown"), progress=False)
    assert grown.cfg.model.architecture == "transformer" and grown.cfg.model.num_layers == 3
    x = _inputs()
    x = {k: tf.minimum(v, 40) if k == "input_word_ids" else v for k, v in x.items()}
    # By hand: rows (times the static projection), LayerNorm per token, masked mean.
    rows = source.word_embeddings.numpy() @ source.projection.kernel.numpy()
    tokens = rows[x["input_word_ids"].numpy()]
    normed = (tokens - tokens.mean(-1, keepdims=True)) / np.sqrt(
        tokens.var(-1, keepdims=True) + 1e-12)
    mask = x["input_mask"].numpy()[..., None]
    mean = (normed * mask).sum(1) / mask.sum(1)
    want = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(grown.encoder(x)["default"].numpy(), want, atol=2e-4)
    result = grown.run()
    assert result.step == 3 and np.isfinite(result.metrics["loss"])
    # What cannot grow from a static model is refused, naming the setting.
    for extra, match in ((["model.hidden_size=48"], "must be equal"),
                         (["model.pooling=cls"], "model.pooling: mean"),
                         (["model.architecture=static"], "model.architecture: transformer")):
        bad = config.load("tiny", base + ["train.grow_layers=3", *extra])
        bad.train.init_from = static_dir
        with pytest.raises(config.ConfigError, match=match):
            initialization.apply_init_from(bad)
