"""Pre-training inputs and models: masking statistics, TLM packing, learning on real text,
progressive stacking."""

import math
import os

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import config
from lealla_tf.text import sentencepiece
from lealla_tf.training import pretraining


def hermetic_cfg(vocab, files, *extra):
    import sentencepiece as spm
    n = spm.SentencePieceProcessor(model_file=vocab).get_piece_size()
    return config.load("tiny", [f"model.vocab_size={n}", f"vocab.model_file={vocab}",
                                f"data.train_files=[{','.join(files)}]",
                                "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0",
                                "train.warmup_steps=1", *extra])


SPECIAL = sentencepiece.SPECIAL_IDS


def _features(hermetic_vocab, hermetic_files, pcfg, rows, g=0, seq_length=32):
    pre = sentencepiece.Preprocessor(hermetic_vocab, seq_length=seq_length)
    fn = pretraining.make_features_fn(pre, pcfg, seq_length, seed=7, vocab_size=pre.vocab_size)
    is_tlm = tf.constant([r[0] for r in rows])
    a = tf.constant([r[1] for r in rows])
    b = tf.constant([r[2] for r in rows])
    return {k: v.numpy() for k, v in fn(tf.constant(g, tf.int64), is_tlm, a, b).items()}, pre


def _pairs(files, n):
    out = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                out.append(tuple(line.rstrip("\n").split("\t")))
    return out[:n]


def test_masking_statistics_match_the_config(hermetic_vocab, hermetic_files):
    pcfg = config.PretrainConfig()  # LaBSE: 20%, at most 80, 80/10/10
    pairs = _pairs(hermetic_files, 1200)
    rows = [(i % 2 == 0, s, t if i % 2 == 0 else "") for i, (s, t) in enumerate(pairs)]
    feats, pre = _features(hermetic_vocab, hermetic_files, pcfg, rows)
    unmasked, _ = _features(hermetic_vocab, hermetic_files,
                            config.PretrainConfig(mask_token_rate=0.0, random_token_rate=0.0),
                            rows)
    ids, mask = unmasked["input_word_ids"], unmasked["input_mask"]
    special = np.isin(ids, [sentencepiece.CLS_ID, sentencepiece.SEP_ID, sentencepiece.PAD_ID])
    selectable = ((~special) & (mask == 1)).sum(1)
    weights = feats["masked_lm_weights"]
    count = weights.sum(1).astype(int)
    # Exactly ceil(20% of the maskable pieces) per row (rows are far below 80 pieces).
    np.testing.assert_array_equal(count, np.ceil(0.2 * selectable).astype(int))
    positions = feats["masked_lm_positions"]
    kinds = {"mask": 0, "random": 0, "keep": 0}
    for r in range(len(rows)):
        pos = positions[r, :count[r]]
        assert len(set(pos)) == len(pos)
        assert not special[r, pos].any() and (mask[r, pos] == 1).all()  # never [CLS]/[SEP]/pad
        np.testing.assert_array_equal(feats["masked_lm_ids"][r, :count[r]], ids[r, pos])
        now = feats["input_word_ids"][r, pos]
        kinds["mask"] += int((now == sentencepiece.MASK_ID).sum())
        kinds["keep"] += int((now == ids[r, pos]).sum())
        kinds["random"] += int(((now != sentencepiece.MASK_ID) & (now != ids[r, pos])).sum())
        others = np.setdiff1d(np.arange(ids.shape[1]), pos)
        np.testing.assert_array_equal(feats["input_word_ids"][r, others], ids[r, others])
    total = sum(kinds.values())
    assert total == count.sum() > 5000
    # 80/10/10 (a random piece may equal the original: 1/300 of the 10%).
    assert abs(kinds["mask"] / total - 0.8) < 0.02, kinds
    assert abs(kinds["random"] / total - 0.1) < 0.015, kinds
    assert abs(kinds["keep"] / total - 0.1) < 0.015, kinds
    # Every maskable position is chosen about equally often (first vs second half of rows).
    first = sum((positions[r, :count[r]] <= selectable[r] // 2).sum() for r in range(len(rows)))
    assert 0.35 < first / total < 0.65
    # The same batch index masks the same way; another one differently.
    again, _ = _features(hermetic_vocab, hermetic_files, pcfg, rows)
    np.testing.assert_array_equal(again["input_word_ids"], feats["input_word_ids"])
    other, _ = _features(hermetic_vocab, hermetic_files, pcfg, rows, g=1)
    assert (other["masked_lm_positions"] != positions).any()


def test_at_most_max_predictions_per_sequence(hermetic_vocab, hermetic_files):
    pcfg = config.PretrainConfig(mask_rate=0.5, max_predictions=3)
    rows = [(True, s, t) for s, t in _pairs(hermetic_files, 50)]
    feats, _ = _features(hermetic_vocab, hermetic_files, pcfg, rows)
    assert feats["masked_lm_positions"].shape == (50, 3)
    assert (feats["masked_lm_weights"].sum(1) == 3).all()


def test_tlm_packs_both_segments_with_type_ids():
    a = tf.ragged.constant([[10, 11, 12], [20, 21], [30] * 20], tf.int64)
    b = tf.ragged.constant([[40, 41], [50], [60] * 20], tf.int64)
    is_tlm = tf.constant([True, False, True])
    ids, types = pretraining.pack_pretraining_inputs(a, b, is_tlm, 10, cls_id=2, sep_id=3)
    assert ids.to_list()[0] == [2, 10, 11, 12, 3, 40, 41, 3]
    assert types.to_list()[0] == [0, 0, 0, 0, 0, 1, 1, 1]
    assert ids.to_list()[1] == [2, 20, 21, 3] and types.to_list()[1] == [0, 0, 0, 0]
    # Too long: trimmed round-robin to 10 with both sides kept.
    assert ids.to_list()[2] == [2, 30, 30, 30, 30, 3, 60, 60, 60, 3]
    assert types.to_list()[2] == [0] * 6 + [1] * 4
    # Padded features: BERT positions 0..n-1 (the mask is a prefix), types as packed.
    feats = pretraining.mask_and_pad(ids, types, tf.constant([0, 0], tf.int64),
                                     config.PretrainConfig(), 100, 12, SPECIAL)
    np.testing.assert_array_equal(feats["input_mask"].numpy()[0], [1] * 8 + [0] * 4)
    np.testing.assert_array_equal(feats["input_type_ids"].numpy()[0],
                                  [0] * 5 + [1] * 3 + [0] * 4)


def test_rows_mix_tlm_and_mlm_and_text_files_are_mlm(tmp_path, hermetic_vocab, hermetic_files):
    text = tmp_path / "xho.txt"
    text.write_text("".join(f"ilizwi {i} lokuqala\n" for i in range(100)), encoding="utf-8")
    cfg = hermetic_cfg(hermetic_vocab, hermetic_files, f"pretrain.text_files=[{text}]",
                       "pretrain.tlm_fraction=0.3", "train.global_batch_size=64")
    pc = pretraining.load_corpus(cfg)
    assert pc.monolingual == [False] * 4 + [True]
    from lealla_tf.data import pipeline
    sampler = pipeline.GlobalBatchSampler(pc.train, 64, alpha=0.3, seed=0)
    batches = pretraining.text_batches(pc, sampler, 0.3, seed=0)
    tlm = n = text_rows = 0
    for _ in range(20):
        g, is_tlm, a, b = next(batches)
        for t, x, y in zip(is_tlm, a, b):
            n += 1
            tlm += int(t)
            assert (y != b"") == t
            if x.startswith(b"ilizwi"):
                text_rows += 1
                assert not t
    assert abs(tlm / (n - text_rows) - 0.3) < 0.06
    assert text_rows > 0


def test_pretraining_lowers_held_out_mlm_loss_on_real_text(tmp_path, tiny_vocab, data_dir):
    import sentencepiece as spm
    n = spm.SentencePieceProcessor(model_file=tiny_vocab).get_piece_size()
    cfg = config.load("pretrain_tiny", [
        f"model.vocab_size={n}", f"vocab.model_file={tiny_vocab}",
        "data.languages=[deu, rus, ell]", "data.max_pairs_per_language=300",
        "pretrain.stages=[]", "pretrain.stage_steps=[]", "train.steps=60",
        "train.global_batch_size=16", "preprocess.seq_length=32",
        "train.steps_per_loop=20", "train.checkpoint_every=60", "pretrain.eval_every=60",
        "pretrain.eval_pairs_per_language=20"])
    curve = {}
    trainer = pretraining.Pretrainer(cfg, str(tmp_path / "pt"), progress=False)
    before = trainer.evaluate()
    trainer.run(lambda step, m: curve.update({step: m.get("eval/loss")}))
    after = trainer.evaluate()
    assert math.isclose(curve[60], after["loss"], rel_tol=1e-5)
    assert before["loss"] > math.log(n) - 1.0  # about uniform at the start
    assert after["loss"] < before["loss"] - 1.0, (before, after)
    assert after["accuracy"] > before["accuracy"]
    assert after["tlm_loss"] > 0 and after["mlm_loss"] > 0


def _restore_stage(cfg, layers, checkpoint):
    import dataclasses

    from lealla_tf.models import encoders
    model_cfg = dataclasses.replace(cfg.model, num_layers=layers)
    encoder = encoders.build_encoder(model_cfg)
    encoder(encoder.dummy_inputs())
    pre = pretraining.build_pretrainer(encoder, model_cfg)
    pre(dict(encoder.dummy_inputs(), masked_lm_positions=tf.zeros([1, 1], tf.int32)))
    tf.train.Checkpoint(encoder=encoder, mlm=pre.masked_lm).restore(checkpoint).expect_partial()
    return encoder, pre


def check_stacked_stage(tmp_path, hermetic_vocab, hermetic_files, optimizer):
    """Runs stage 0 of a [1, 2]-layer plan, then checks the stacked stage before its first
    step (shared with tests/test_pretraining_jobs.py, which checks ``carry``)."""
    cfg = hermetic_cfg(hermetic_vocab, hermetic_files, "model.num_layers=2",
                       "pretrain.stages=[1, 2]", "pretrain.stage_steps=[3, 2]", "train.steps=5",
                       "train.steps_per_loop=3", "train.checkpoint_every=3",
                       f"pretrain.stage_optimizer={optimizer}", "train.global_batch_size=8")
    model_dir = str(tmp_path / "pt")

    class Stop(Exception):
        pass

    def stop(step, metrics):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        pretraining.Pretrainer(cfg, model_dir, progress=False).run(stop)
    small_ckpt = tf.train.latest_checkpoint(os.path.join(model_dir, "stages", "layers-1"))
    assert small_ckpt.endswith("ckpt-3")
    # A new job on that directory holds the stacked model before its first step.
    job = pretraining.Pretrainer(cfg, model_dir, progress=False)
    assert job.stage.layers == 2 and job.step == 3
    small, small_pre = _restore_stage(cfg, 1, small_ckpt)
    layers = job.encoder.bert.transformer_layers
    for upper, lower, source in zip(layers[1].weights, layers[0].weights,
                                    small.bert.transformer_layers[0].weights):
        np.testing.assert_array_equal(upper.numpy(), lower.numpy())  # exactly
        np.testing.assert_array_equal(lower.numpy(), source.numpy())
    np.testing.assert_array_equal(job.encoder.word_embeddings.numpy(),
                                  small.word_embeddings.numpy())
    for a, b in zip(job.pretrainer.masked_lm.weights, small_pre.masked_lm.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(job.encoder.bert.pooler_layer.weights, small.bert.pooler_layer.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    if optimizer == "carry":
        opt = job.optimizer
        assert int(opt.iterations.numpy()) == 3
        for v in layers[1].trainable_weights:
            assert np.abs(opt.get_slot(v, "m").numpy()).max() > 0
        for upper, lower in zip(layers[1].trainable_weights, layers[0].trainable_weights):
            np.testing.assert_array_equal(opt.get_slot(upper, "v").numpy(),
                                          opt.get_slot(lower, "v").numpy())
    else:
        assert int(job.optimizer.iterations.numpy()) == 0
    # What holds for the loss: the stacked model's lower half is the small model, so the
    # MLM head on its layer-1 output gives the small model's logits (to float rounding).
    # The full stacked model applies the block twice: with post-LayerNorm layers that is
    # another function, and its loss is not the small model's.
    batch = job.eval_batches[0] if job.eval_batches else next(iter(
        pretraining.make_dataset(job.corpus, job.sampler, job.features_fn, 0.5, 0)))
    inputs = pretraining.model_inputs(batch)
    small_out = small_pre(inputs, training=False)
    big_out = job.pretrainer(inputs, training=False)
    lower_logits = job.pretrainer.masked_lm(big_out["encoder_outputs"][0],
                                            masked_positions=inputs["masked_lm_positions"])
    np.testing.assert_allclose(lower_logits.numpy(), small_out["mlm_logits"].numpy(),
                               rtol=0, atol=1e-5)

    def loss(logits):
        return pretraining.mlm_sums(logits, batch)["ce"].numpy() / batch[
            "masked_lm_weights"].numpy().sum()
    assert abs(loss(lower_logits) - loss(small_out["mlm_logits"])) < 1e-5
    # (Near initialisation both losses are close to log(vocabulary) anyway: the logits show
    # the difference.)
    assert np.abs(big_out["mlm_logits"].numpy() - small_out["mlm_logits"].numpy()).max() > 1e-3


def test_stacked_stage_starts_from_the_trained_layers(tmp_path, hermetic_vocab, hermetic_files):
    check_stacked_stage(tmp_path, hermetic_vocab, hermetic_files, "reset")


def test_stage_config_errors():
    with pytest.raises(config.ConfigError, match="must end with model.num_layers"):
        config.load("tiny", ["pretrain.stages=[1]", "pretrain.stage_steps=[20]"])
    with pytest.raises(config.ConfigError, match="set train.steps=30"):
        config.load("tiny", ["pretrain.stages=[1, 2]", "pretrain.stage_steps=[10, 20]"])
    with pytest.raises(config.ConfigError, match="increasing"):
        config.load("tiny", ["pretrain.stages=[2, 2]", "pretrain.stage_steps=[10, 10]"])
    with pytest.raises(config.ConfigError, match="mask_token_rate"):
        config.load("tiny", ["pretrain.mask_token_rate=0.95"])


def test_pretraining_recipes():
    labse = config.load("pretrain_labse_tpu")
    m, p = labse.model, labse.pretrain
    assert (m.num_layers, m.hidden_size, m.vocab_size) == (12, 768, 501153)
    assert (p.mask_rate, p.max_predictions, p.stages) == (0.2, 80, [3, 6, 12])
    assert labse.train.global_batch_size == 8192 and labse.vocab.type == "wordpiece"
    small = config.load("pretrain_lealla_small_tpu")
    assert (small.model.num_layers, small.model.hidden_size) == (24, 128)
    assert small.pretrain.stages == [6, 12, 24]
    for name in ("pretrain_tiny", "pretrain_lealla_small_cpu"):
        cfg = config.load(name)
        layers = cfg.model.num_layers
        assert cfg.pretrain.stages == [layers // 4, layers // 2, layers]
        assert cfg.pretrain.eval_pairs_per_language > 0
    # The CPU student is the demo's student, so `lealla train --config demo --init-from` fits.
    demo = config.load("demo")
    student = config.load("pretrain_lealla_small_cpu")
    for key in ("hidden_size", "num_layers", "intermediate_size", "pooling", "embedding_init"):
        assert getattr(student.model, key) == getattr(demo.model, key), key
    assert student.vocab == demo.vocab and student.data.languages == demo.data.languages
