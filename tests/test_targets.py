"""Distillation targets by language (``teacher.languages``).

A pair whose foreign language the teacher covers learns the teacher's rows of both sides; a
pair of another language learns the teacher's row of its English side on both sides. The
rule holds for precomputed shards (full or compact, and shards embedded with
``languages=``, which hold English rows only) and for an online teacher.

Tolerances (float32): the hand-computed loss rtol 1e-5; online against precomputed as in
test_online_teacher.py (loss rtol 1e-5, gradients atol 1e-5); rows of two stores of the
same teacher: atol 1e-6 (a row's float32 normalisation depends a little on the teacher's
batch); one store read with [all] and without the argument: exactly equal.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import cli, config, embedders
from lealla_tf.data import pipeline
from lealla_tf.distill import online_teacher
from lealla_tf.distill import store as teacher_store
from lealla_tf.embedders import teachers
from lealla_tf.training import dual_encoder
from lealla_tf.training import losses as losses_lib
from support import harness

DIM, BUCKETS = 16, 4096
COVERED, OTHER = "deu", "fra"  # the teacher covers deu, not fra


def _hash_teacher() -> online_teacher.OnlineTeacher:
    """A frozen TensorFlow teacher: each sentence's row of a fixed table (by string hash),
    so a sentence gets the same row in any batch, on any replica."""
    table = tf.constant(np.random.default_rng(3).normal(size=(BUCKETS, DIM)), tf.float32)
    return online_teacher.OnlineTeacher(
        "hash", None, lambda s: tf.gather(table, tf.strings.to_hash_bucket_fast(s, BUCKETS)),
        [])


class _Counting:
    """The NumPy side of :func:`_hash_teacher` (a ``CallableTeacher``), recording what it
    is asked to embed."""

    def __init__(self):
        self.online = _hash_teacher()
        self.seen = []
        self.teacher = teachers.CallableTeacher(self._encode, name="hash", dim=DIM)

    def _encode(self, sentences):
        self.seen.extend(sentences)
        return self.online(sentences).numpy()

    def vectors(self, sentences):
        return self.online(list(sentences)).numpy()


@pytest.fixture(scope="module")
def files(hermetic_files):
    by_lang = {os.path.basename(f)[:3]: f for f in hermetic_files}
    return [by_lang[COVERED], by_lang[OTHER]]


@pytest.fixture(scope="module")
def stores(tmp_path_factory, files):
    """float32 shards of every side, and shards embedded for ``languages=[deu]``."""
    root = tmp_path_factory.mktemp("targets")
    full, restricted = _Counting(), _Counting()
    out = {"full": str(root / "full"), "deu": str(root / "deu")}
    teacher_store.precompute(full.teacher, files, out["full"], shard_size=128,
                             dtype="float32", progress=False)
    teacher_store.precompute(restricted.teacher, files, out["deu"], shard_size=128,
                             dtype="float32", progress=False, languages=[COVERED])
    out["seen_full"], out["seen_deu"] = full.seen, restricted.seen
    return out


def _pairs(path):
    return [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")]


def _numpy_loss(c, src, tgt, t_src, t_tgt, kernel):
    """DualEncoderLoss in NumPy (one replica, bidirectional, logit distillation mse)."""
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def ce(logits):
        logits = logits - logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_p))

    src, tgt, t_src, t_tgt = unit(src), unit(tgt), unit(t_src), unit(t_tgt)
    eye = np.eye(len(src))
    ams = (ce(c.scale * (src @ tgt.T - c.margin * eye))
           + ce(c.scale * (tgt @ src.T - c.margin * eye)))
    feature = (np.mean((src @ kernel - t_src) ** 2) + np.mean((tgt @ kernel - t_tgt) ** 2))
    logit = (np.mean((src @ tgt.T - t_src @ t_tgt.T) ** 2)
             + np.mean((tgt @ src.T - t_tgt @ t_src.T) ** 2))
    return (c.ams_weight * ams + c.feature_distill_weight * feature
            + c.logit_distill_weight * logit)


@pytest.mark.parametrize("store_kind", ["full", "deu"])
def test_loss_by_hand_for_covered_and_other_pairs(files, stores, store_kind):
    corpus = pipeline.load_corpus(files, teacher_loader=teacher_store.loader(stores[store_kind]),
                                  teacher_languages=[COVERED])
    deu, fra = corpus.languages
    assert deu.covered is None and fra.covered.dtype == bool and not fra.covered.any()
    sampler = pipeline.GlobalBatchSampler(corpus, 24, seed=1)
    src, tgt, t_src, t_tgt, covered = next(sampler.text_batches(covered=True))
    src = [s.decode() for s in src]
    tgt = [t.decode() for t in tgt]
    deu_sources = set(deu.src)
    assert list(covered) == [s in deu_sources for s in src] and 0 < covered.sum() < 24

    # The targets: the teacher's rows of both sides (deu), of the English side twice (fra).
    teacher = _Counting()
    expect_src = teacher.vectors([s if c else t for s, t, c in zip(src, tgt, covered)])
    np.testing.assert_allclose(t_src, expect_src, rtol=0, atol=1e-6)
    np.testing.assert_allclose(t_tgt, teacher.vectors(tgt), rtol=0, atol=1e-6)

    loss_cfg = config.LossConfig(scale=20.0, feature_distill_weight=0.5,
                                 logit_distill_weight=2.0)
    layer = losses_lib.DualEncoderLoss(loss_cfg, teacher_dim=DIM, student_dim=8)
    rng = np.random.default_rng(0)
    student_src, student_tgt = (rng.normal(size=(24, 8)).astype(np.float32) for _ in "st")
    got = layer(tf.constant(student_src), tf.constant(student_tgt), tf.constant(t_src),
                tf.constant(t_tgt))
    kernel = layer.feature_projection.kernel.numpy()
    want = _numpy_loss(loss_cfg, student_src, student_tgt, expect_src, teacher.vectors(tgt),
                       kernel)
    np.testing.assert_allclose(float(got["loss"]), want, rtol=1e-5)
    # Today's rule (every language covered) gives another number on this batch.
    today = _numpy_loss(loss_cfg, student_src, student_tgt, teacher.vectors(src),
                        teacher.vectors(tgt), kernel)
    assert abs(today - want) > 1e-3


def test_embed_with_languages_embeds_only_english_of_other_languages(files, stores):
    deu, fra = (_pairs(f) for f in files)
    seen = set(stores["seen_deu"])
    assert {s for s, _ in deu} <= seen and {t for _, t in deu} <= seen
    assert {t for _, t in fra} <= seen and not seen & {s for s, _ in fra}
    assert len(stores["seen_deu"]) == len(seen)  # each sentence once
    assert len(stores["seen_full"]) > len(stores["seen_deu"]) + 250

    with open(os.path.join(stores["deu"], teacher_store.MANIFEST), encoding="utf-8") as f:
        entries = {os.path.basename(p)[:3]: e for p, e in json.load(f)["files"].items()}
    assert entries[OTHER]["sides"] == teacher_store.ENGLISH_SIDE
    assert "sides" not in entries[COVERED]
    assert not teacher_store.verify(stores["deu"])
    # The reader gives the English rows for both sides of the other language, and the same
    # rows as the full store wherever those are the targets.
    src, tgt, _ = teacher_store.load_precomputed(stores["deu"], files[1])
    np.testing.assert_array_equal(src, tgt)
    for path in files:
        a = pipeline.load_corpus([path], teacher_loader=teacher_store.loader(stores["deu"]),
                                 teacher_languages=[COVERED]).languages[0]
        b = pipeline.load_corpus([path], teacher_loader=teacher_store.loader(stores["full"]),
                                 teacher_languages=[COVERED]).languages[0]
        np.testing.assert_allclose(a.teacher_src, b.teacher_src, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.teacher_tgt, b.teacher_tgt, rtol=0, atol=1e-6)
    # A training config that says the teacher covers fra cannot use those English-only rows.
    with pytest.raises(ValueError, match="hold only its English sides"):
        pipeline.load_corpus([files[1]], teacher_loader=teacher_store.loader(
            stores["deu"], ["all"]), teacher_languages=["all"])
    pipeline.load_corpus([files[1]], teacher_loader=teacher_store.loader(
        stores["deu"], [COVERED]), teacher_languages=[COVERED])  # as embedded: fine


def test_all_reproduces_todays_rows(files, stores):
    today = pipeline.load_corpus(files, teacher_loader=teacher_store.loader(stores["full"]))
    for languages in (["all"], [COVERED, OTHER]):
        again = pipeline.load_corpus(files, teacher_loader=teacher_store.loader(stores["full"]),
                                     teacher_languages=languages)
        assert again.all_covered
        for a, b in zip(today.languages, again.languages):
            np.testing.assert_array_equal(a.teacher_src, b.teacher_src)
            np.testing.assert_array_equal(a.teacher_tgt, b.teacher_tgt)
    restricted = pipeline.load_corpus(files, teacher_loader=teacher_store.loader(stores["full"]),
                                      teacher_languages=[COVERED])
    assert not restricted.all_covered
    assert not np.array_equal(restricted.languages[1].teacher_src,
                              today.languages[1].teacher_src)


def _config(vocab_cfg, vocab, files, mode, store, languages):
    return config.load("tiny", [
        f"vocab.model_file={vocab}", f"model.vocab_size={vocab_cfg.model.vocab_size}",
        f"data.train_files=[{','.join(files)}]", f"data.teacher_embeddings={store}",
        "teacher.spec=py:support.hermetic:byte_count_teacher", f"teacher.mode={mode}",
        f"teacher.languages=[{','.join(languages)}]",
        "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0",
        "train.global_batch_size=16", "train.steps=2", "train.steps_per_loop=1",
        "train.warmup_steps=1", "loss.feature_distill_weight=0.5",
        "loss.logit_distill_weight=2.0"])


def test_precomputed_and_online_agree_one_device_and_mirrored(
        tmp_path, hermetic_config, hermetic_vocab, files, stores, two_cpu_strategy):
    one = tf.distribute.OneDeviceStrategy("/cpu:0")

    def make(name, mode, store, languages, strategy):
        cfg = _config(hermetic_config, hermetic_vocab, files, mode, store, languages)
        teacher = _hash_teacher() if mode == "online" else None
        return dual_encoder.Trainer(cfg, str(tmp_path / name), progress=False,
                                    strategy=strategy, teacher=teacher)

    ref = make("deu_store", "precomputed", stores["deu"], [COVERED], one)
    start, start_loss = harness.snapshot(ref.encoder.weights), ref.loss_layer.get_weights()
    loss_ref, grads_ref = harness.first_step(ref)
    assert max(np.abs(g).max() for g in grads_ref) > 1e-3
    others = {
        "full store, one device": make("full", "precomputed", stores["full"], [COVERED], one),
        "full store, 2 replicas": make("full2", "precomputed", stores["full"], [COVERED],
                                       two_cpu_strategy),
        "online, one device": make("online", "online", "", [COVERED], one),
        "online, 2 replicas": make("online2", "online", "", [COVERED], two_cpu_strategy),
    }
    for what, trainer in others.items():
        trainer.encoder.set_weights(start)
        trainer.loss_layer.set_weights(start_loss)
        loss, grads = harness.first_step(trainer)
        np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, err_msg=what)
        for a, b in zip(grads, grads_ref):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=what)
    # [all] on the full store is today's run; its loss differs from the rule's.
    today = make("all", "precomputed", stores["full"], ["all"], one)
    today.encoder.set_weights(start)
    today.loss_layer.set_weights(start_loss)
    assert today.corpus.all_covered and abs(harness.first_step(today)[0] - loss_ref) > 1e-4


def test_compact_shards_follow_the_rule(tmp_path, files):
    teacher = _Counting()
    out = str(tmp_path / "int8")
    teacher_store.precompute(teacher.teacher, files, out, dim=8, dtype="int8",
                             pca_sample=400, progress=False, languages=[COVERED])
    corpus = pipeline.load_corpus(files, teacher_loader=teacher_store.loader(out),
                                  teacher_languages=[COVERED])
    fra = corpus.languages[1]
    np.testing.assert_array_equal(fra.teacher_src, fra.teacher_tgt)
    # The English rows, projected by the PCA, within int8 rounding (max|x| / 254 per row).
    components = teacher_store.load_projection(out)["components"]
    want = teacher.vectors(fra.tgt) @ components.T
    np.testing.assert_allclose(fra.teacher_src, want, rtol=0, atol=1 / 254 + 1e-6)
    assert not set(teacher.seen) & set(fra.src)  # nor for the PCA's sample


def test_config_and_cli(tmp_path, files, capsys, monkeypatch):
    cfg = config.load("tiny")
    assert cfg.teacher.languages == ["all"]
    cfg = config.load("tiny", ["teacher.languages=[deu,cmn_Hans]"])
    cfg.validate()
    assert cfg.teacher.languages == ["deu", "cmn_Hans"]
    assert config.teacher_covers(["cmn"], "/x/cmn_Hans-eng.tsv")
    assert not config.teacher_covers(["cmn_Hans"], "/x/cmn_Hant-eng.tsv")
    for bad in ("[all,deu]", "[]", "[train/deu]"):
        with pytest.raises(config.ConfigError, match="teacher.languages"):
            config.load("tiny", [f"teacher.languages={bad}"]).validate()
    demo = config.load("demo")  # every language of train/, muse's 14 as its own
    assert demo.data.languages == [] and len(demo.teacher.languages) == 14

    # A plain Python function as the teacher: its size comes from its first output.
    out = str(tmp_path / "py")
    assert cli.main(["teacher", "embed", "--teacher", "py:support.hermetic:byte_counts",
                     "--input", *files, "--output", out]) == 0
    src, tgt, valid = teacher_store.load_precomputed(out, files[0])
    assert src.shape[1] == 16 and valid.all()

    counting = _Counting()
    monkeypatch.setattr(embedders, "load", lambda spec, threads=None: counting.teacher)
    out = str(tmp_path / "cli")
    assert cli.main(["teacher", "embed", "--teacher", "hash", "--input", *files, "--output",
                     out, "--teacher-languages", COVERED]) == 0
    assert not set(counting.seen) & {s for s, _ in _pairs(files[1])}
    src, tgt, _ = teacher_store.load_precomputed(out, files[1])
    np.testing.assert_array_equal(src, tgt)
    src, tgt, _ = teacher_store.load_precomputed(out, files[0])
    assert not np.array_equal(src, tgt)
    assert cli.main(["teacher", "embed", "--teacher", "hash", "--input", *files, "--output",
                     str(tmp_path / "bad"),
                     "--teacher-languages", "all", "deu"]) == 2
    assert "--teacher-languages: [all] stands alone" in capsys.readouterr().err


def test_teacher_language_weight_shifts_sampling(files, stores):
    """data.teacher_language_weight: p_l ∝ w_l n_l^alpha, w = the weight for the teacher's
    languages; the batches follow those probabilities."""
    corpus = pipeline.load_corpus(files, teacher_loader=teacher_store.loader(stores["deu"]),
                                  teacher_languages=[COVERED])
    assert pipeline.teacher_weights(corpus, 1.0) is None
    weights = pipeline.teacher_weights(corpus, 4.0)
    assert weights == [4.0, 1.0]  # deu, fra
    sizes = np.array([len(lang) for lang in corpus.languages], np.float64)
    for w, alpha in ((None, 0.3), (weights, 0.3), (weights, 0.0)):
        sampler = pipeline.GlobalBatchSampler(corpus, 16, alpha=alpha, seed=2, weights=w)
        want = sizes ** alpha * (np.asarray(w) if w else 1.0)
        np.testing.assert_allclose(sampler.probs, want / want.sum())
        deu_sources = set(corpus.languages[0].src)
        drawn = [s.decode() in deu_sources for _, (src, *_rest) in
                 zip(range(60), sampler.text_batches()) for s in src]
        assert abs(np.mean(drawn) - sampler.probs[0]) < 0.05
    with pytest.raises(ValueError, match="positive weight"):
        pipeline.GlobalBatchSampler(corpus, 16, weights=[1.0, 0.0])
    with pytest.raises(config.ConfigError, match="teacher_language_weight"):
        config.DataConfig(teacher_language_weight=0).validate()
