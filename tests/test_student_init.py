"""Students from their teacher: the pruned teacher vocabulary, teacher-initialised token
embeddings, mean pooling and the static architecture, trained and exported for real."""

import json
import os

import numpy as np
import pytest
import sentencepiece as spm
import tensorflow as tf
import tensorflow_text as tf_text

from lealla_tf import config, corpus, export, runs
from lealla_tf.distill import student_init
from lealla_tf.evaluation import pairs
from lealla_tf.models import bert_internals, encoders
from lealla_tf.text import sentencepiece
from lealla_tf.training import dual_encoder
from support import harness

LANGS = ("deu", "fra", "rus", "cmn", "jpn")
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def muse():
    from lealla_tf.embedders import teachers
    return teachers.load_teacher("muse")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, data_dir):
    """150 training pairs and 100 held-out pairs per language (disjoint)."""
    from lealla_tf.recipes import demo
    root = tmp_path_factory.mktemp("corpus")
    source = corpus.find_files(["train/*-eng.tsv"], data_dir, list(LANGS))
    files = demo.slice_pairs(source, str(root / "train"), 150, dev_dir=str(root / "dev"),
                             dev_pairs_per_language=100)
    dev = sorted(str(root / "dev" / f) for f in os.listdir(root / "dev"))
    return files, dev


@pytest.fixture(scope="module")
def teacher_vocab(tmp_path_factory, muse, small_corpus):
    out = tmp_path_factory.mktemp("tvocab")
    return student_init.build_teacher_vocab(muse, small_corpus[0], str(out), progress=False)


def test_dev_split_is_disjoint_from_training(small_corpus):
    files, dev = small_corpus
    for f, d in zip(sorted(files), dev):
        train_pairs = {(s, t) for _, s, t in corpus.iter_tsv(f)}
        dev_pairs = {(s, t) for _, s, t in corpus.iter_tsv(d)}
        assert len(dev_pairs) >= 20 and not train_pairs & dev_pairs


def test_pruned_vocabulary_segments_like_the_teacher(muse, small_corpus, teacher_vocab):
    teacher_sp = spm.SentencePieceProcessor(model_proto=muse.sentencepiece_model())
    info = json.load(open(os.path.join(os.path.dirname(teacher_vocab), "vocab_info.json")))
    ids = np.asarray(info["teacher_ids"])
    proto = open(teacher_vocab, "rb").read()
    student_sp = spm.SentencePieceProcessor(model_proto=proto)
    assert [student_sp.id_to_piece(i) for i in range(5)] == list(sentencepiece.SPECIAL_PIECES)
    assert student_sp.get_piece_size() == len(ids) < teacher_sp.get_piece_size()
    assert all(teacher_sp.id_to_piece(int(t)) == student_sp.id_to_piece(i)
               for i, t in enumerate(ids) if t >= 0)
    sentences = [s for f in small_corpus[0] for _, a, b in corpus.iter_tsv(f) for s in (a, b)]
    # On the corpus the segmentation is the teacher's, id for id through teacher_ids.
    to_teacher = ids.copy()
    to_teacher[sentencepiece.UNK_ID] = teacher_sp.unk_id()  # characters the teacher lacks
    for s in sentences[::7]:
        assert [int(to_teacher[i]) for i in student_sp.encode(s)] == teacher_sp.encode(s), s
    # The TFLite-safe Fast tokenizer runs it and agrees with the regular one, also on
    # held-out text and bad input.
    probe = sentences[:50] + [r for f in small_corpus[1] for _, r, _ in corpus.iter_tsv(f)][:50]
    probe = [p.encode("utf-8") for p in probe] + [b"", b"  ", b"\xff\xfe bad"]
    fast = tf_text.FastSentencepieceTokenizer(proto).tokenize(probe)
    regular = tf_text.SentencepieceTokenizer(proto).tokenize(probe)
    assert fast.to_list() == regular.to_list()


def test_max_pieces_keeps_the_most_frequent(muse, small_corpus):
    sentences = [s for f in small_corpus[0] for _, a, b in corpus.iter_tsv(f) for s in (a, b)]
    full, full_ids, stats = student_init.prune_sentencepiece(muse.sentencepiece_model(),
                                                             sentences)
    small, small_ids, small_stats = student_init.prune_sentencepiece(
        muse.sentencepiece_model(), sentences, max_pieces=stats["character_pieces"] + 100)
    assert small_stats["kept_pieces"] == stats["character_pieces"] + 100
    assert set(small_ids[5:]) < set(full_ids[5:])
    sp = spm.SentencePieceProcessor(model_proto=small)
    assert sp.get_piece_size() == 5 + small_stats["kept_pieces"]


def test_keep_unused_keeps_the_teacher_vocabulary(muse, small_corpus, tmp_path):
    """keep_unused keeps every teacher piece (then the corpus segments exactly as the teacher
    does, unseen words included); with max_pieces the unused pieces come by teacher score."""
    model = muse.sentencepiece_model()
    teacher = spm.SentencePieceProcessor(model_proto=model)
    sentences = [s for _, a, b in corpus.iter_tsv(small_corpus[0][0]) for s in (a, b)][:200]
    full, ids, stats = student_init.prune_sentencepiece(model, sentences, keep_unused=True)
    pieces = student_init.model_proto(model).pieces
    normal = [i for i, p in enumerate(pieces) if p.type in student_init.KEPT_TYPES]
    assert sorted(ids[5:].tolist()) == sorted(normal)
    student = spm.SentencePieceProcessor(model_proto=full)
    unseen = "Die Bundesregierung veröffentlichte 2019 Quartalszahlen über Photovoltaik."
    assert student.encode(unseen, out_type=str) == teacher.encode(unseen, out_type=str)
    _, used_ids, used_stats = student_init.prune_sentencepiece(model, sentences)
    used_set = set(used_ids[5:].tolist())
    limit = used_stats["kept_pieces"] + 50
    _, some_ids, _ = student_init.prune_sentencepiece(model, sentences, max_pieces=limit,
                                                      keep_unused=True)
    by_score = sorted((i for i in normal if i not in used_set),
                      key=lambda i: (-teacher.get_score(i), i))
    assert set(some_ids[5:].tolist()) - used_set == set(by_score[:50])
    # A folder built with other settings is not silently reused.
    student_init.build_teacher_vocab(muse, small_corpus[0][:1], str(tmp_path / "v"),
                                     max_pieces=300, progress=False)
    with pytest.raises(ValueError, match="built with"):
        student_init.build_teacher_vocab(muse, small_corpus[0][:1], str(tmp_path / "v"),
                                         max_pieces=300, keep_unused=True, progress=False)


def test_pca_table_matches_numpy_pca():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 40)) @ rng.normal(size=(40, 40))
    vectors[:5] = 0  # special pieces
    table = student_init.pca_table(vectors, 8, stddev=0.02)
    assert np.all(table[:5] == 0)
    assert abs(table[5:].std() - 0.02) < 1e-6
    x = vectors[5:] - vectors[5:].mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    expected = x @ vt[:8].T
    expected *= 0.02 / expected.std()
    # Components are defined up to sign.
    signs = np.sign((table[5:] * expected).sum(0))
    np.testing.assert_allclose(table[5:] * signs, expected, atol=1e-6)


def _cfg(recipe, vocab, files, overrides=()):
    cfg = config.load(os.path.join(HERE, "..", "configs", recipe), [
        "train.steps=30", "train.global_batch_size=32", "train.steps_per_loop=10",
        "train.checkpoint_every=30", "train.warmup_steps=5", "loss.feature_distill_weight=0",
        "model.num_layers=1", "model.hidden_size=32", "model.num_attention_heads=2",
        "model.intermediate_size=64", *overrides])
    cfg.vocab.model_file = vocab
    cfg.model.vocab_size = sentencepiece.Preprocessor(vocab, 2).vocab_size
    cfg.data.train_files, cfg.data.data_dir = list(files), ""
    return cfg


def test_teacher_initialised_static_student(tmp_path, muse, small_corpus, teacher_vocab):
    files, dev = small_corpus
    cfg = _cfg("demo_static.yaml", teacher_vocab, files)
    trainer = dual_encoder.Trainer(cfg, str(tmp_path / "static"), progress=False, teacher=muse)
    # The table is what PCA of the teacher's piece vectors gives.
    vectors = student_init.teacher_piece_vectors(
        muse, open(teacher_vocab, "rb").read(), os.path.dirname(teacher_vocab), progress=False)
    np.testing.assert_allclose(trainer.encoder.word_embeddings.numpy(),
                               student_init.pca_table(vectors, 32, 0.02), atol=1e-7)
    pre = sentencepiece.Preprocessor(teacher_vocab, 32)
    model = encoders.StringEncoder(pre, trainer.encoder)
    before = pairs.evaluate_pair_files(lambda s: model(tf.constant(s)).numpy(), dev,
                                       use_cache=False)["average"]["mean"]
    # Well above chance (1 in ~100) before any training step.
    assert before > 15, before
    random_cfg = _cfg("demo_static.yaml", teacher_vocab, files, ["model.embedding_init=random"])
    rand = dual_encoder.Trainer(random_cfg, str(tmp_path / "rand"), progress=False).encoder
    rmodel = encoders.StringEncoder(pre, rand)
    chance = pairs.evaluate_pair_files(lambda s: rmodel(tf.constant(s)).numpy(), dev,
                                       use_cache=False)["average"]["mean"]
    assert before > chance + 10, (before, chance)


def test_teacher_table_init_uses_muse_rows(tmp_path, muse, small_corpus, teacher_vocab):
    files, _ = small_corpus
    cfg = _cfg("demo_static.yaml", teacher_vocab, files, ["model.embedding_init=teacher_table"])
    trainer = dual_encoder.Trainer(cfg, str(tmp_path / "tt"), progress=False, teacher=muse)
    info = json.load(open(os.path.join(os.path.dirname(teacher_vocab), "vocab_info.json")))
    ids = np.asarray(info["teacher_ids"])
    rows = np.zeros((len(ids), 512), np.float32)
    rows[ids >= 0] = muse.token_embeddings(ids[ids >= 0])
    np.testing.assert_allclose(trainer.encoder.word_embeddings.numpy(),
                               student_init.pca_table(rows, 32, 0.02), atol=1e-7)


def test_zero_position_init(tmp_path, muse, small_corpus, teacher_vocab):
    """position_init: zero starts the Transformer as a function of the teacher-made rows
    only (word order and lengths never trained on add nothing); training then moves them."""
    files, _ = small_corpus
    cfg = _cfg("demo.yaml", teacher_vocab, files, ["model.position_init=zero"])
    trainer = dual_encoder.Trainer(cfg, str(tmp_path / "zero"), progress=False, teacher=muse)
    bert = trainer.encoder.bert
    tables = bert_internals.embedding_variables(bert)
    positions = tables["position_embeddings"]
    assert not np.any(positions.numpy())
    assert not np.any(tables["type_embeddings"].numpy())
    pre = sentencepiece.Preprocessor(teacher_vocab, 32)
    model = encoders.StringEncoder(pre, trainer.encoder)
    a, b = model(tf.constant(["Der Hund schläft heute", "heute schläft Der Hund"])).numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)
    trainer.run()
    trained = positions.numpy()
    assert np.any(trained[:32]) and not np.any(trained[32:])  # only trained lengths move
    random_cfg = _cfg("demo.yaml", teacher_vocab, files, ["model.position_init=random"])
    other = dual_encoder.Trainer(random_cfg, str(tmp_path / "rand"), progress=False, teacher=muse)
    other_tables = bert_internals.embedding_variables(other.encoder.bert)
    assert np.std(other_tables["position_embeddings"].numpy()) > 0.01
    with pytest.raises(config.ConfigError, match="position_init"):
        config.load(None, ["model.position_init=sinusoid"])


@pytest.mark.parametrize("recipe,overrides", [
    ("demo_static.yaml", []),
    ("demo.yaml", ["model.embedding_init=teacher"]),  # transformer, mean pooling
])
def test_train_export_tflite_parity(tmp_path, muse, small_corpus, teacher_vocab, recipe,
                                    overrides):
    """Static and mean-pooled students train, resume-free export, and the SavedModel, the
    TFLite file and the in-memory model agree."""
    files, dev = small_corpus
    cfg = _cfg(recipe, teacher_vocab, files, overrides)
    run = str(tmp_path / "run")
    dual_encoder.train(cfg, run, progress=False, teacher=muse)
    _, pre, encoder = runs.restore_encoder(run)
    # Trained at 32 tokens; exports and evaluation take preprocess.inference_seq_length.
    assert cfg.preprocess.seq_length == 32 and pre.seq_length == 128
    if cfg.model.architecture == "transformer":
        assert encoder.pooling == "mean"
        assert not any("pooler" in v.name for v in encoder.trainable_variables)
    out = str(tmp_path / "export")
    export.export_run(run, out, tflite=("fp32", "int8"), progress=False)
    sentences = [s for _, s, _ in corpus.iter_tsv(dev[0])][:20] + ["", "dog", " ".join(
        ["Hund"] * 40 + ["Katze"] * 40)]  # the last one is longer than 32 pieces
    memory = harness.embed(pre, encoder, sentences, dynamic_length=False)
    got = harness.export_embeddings(out, sentences, tflite=("fp32", "int8"))
    np.testing.assert_allclose(got["lealla"], memory, atol=1e-5)
    assert export.cosine_rows(got["fp32"], memory).min() > 0.9999
    assert export.cosine_rows(got["int8"], memory).min() > 0.98


def test_mean_pooling_fast_equals_keras(tiny_config):
    import dataclasses
    cfg = dataclasses.replace(tiny_config.model, pooling="mean")
    fast = encoders.LeallaEncoder.from_model_config(cfg)
    inputs = fast.dummy_inputs(3, 9)
    inputs["input_mask"] = tf.constant([[1] * 9, [1] * 4 + [0] * 5, [1] * 2 + [0] * 7])
    inputs["input_word_ids"] = tf.constant(np.arange(27).reshape(3, 9) % 50, tf.int32)
    out = fast(inputs)
    keras = encoders.LeallaEncoder.from_model_config(cfg, implementation="keras")
    keras(inputs)
    keras.set_weights(fast.get_weights())
    np.testing.assert_allclose(keras(inputs)["default"], out["default"], atol=1e-5)
    seq = out["sequence_output"].numpy()
    expected = seq[1, :4].mean(0)
    np.testing.assert_allclose(out["pooled_output"][1], expected, atol=1e-5)


def test_config_errors():
    with pytest.raises(config.ConfigError, match="model.pooling"):
        config.load(None, ["model.pooling=max"])
    with pytest.raises(config.ConfigError, match="static pools by mean"):
        config.load(None, ["model.architecture=static", "model.pooling=cls"])
    with pytest.raises(config.ConfigError, match="vocab.source"):
        config.load(None, ["vocab.source=hub"])


def test_teacher_without_sentencepiece_is_a_clear_error():
    from lealla_tf.embedders import teachers
    t = teachers.CallableTeacher(lambda s: np.ones((len(s), 4)), name="fn")
    with pytest.raises(ValueError, match="exposes no SentencePiece model"):
        student_init.teacher_sentencepiece(t)
