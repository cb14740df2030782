"""`lealla import`: stand-ins of the released LaBSE (preprocessor + encoder) and LEALLA
(strings in) SavedModels are imported, reproduce their source to 1e-5, fine-tune, export
(SavedModels and TFLite with the WordPiece preprocessor inside) and evaluate; the real
download path (``hub.resolve`` of a URL) is served from 127.0.0.1; an unknown model is a
clear error naming its variables."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from lealla_tf import cli, config, export, layout, runs
from lealla_tf.convert import importing
from lealla_tf.text import wordpiece
from lealla_tf.training import dual_encoder
from support import harness, hermetic, standins

SEQ = 32
PROBE = [
    "The weather is nice today.", "Das Wetter ist heute schön.", "Сегодня хорошая погода.",
    "今天天气很好。", "الطقس جميل اليوم.", "आज मौसम अच्छा है।", "今日は天気がいいです。",
    "วันนี้อากาศดี", "오늘 날씨가 좋네요.", "Ο καιρός είναι ωραίος σήμερα.", "dog", "Hund 🐕",
    "", " ", "Wort " * 20000, b"\xff\xfe\xfd invalid", b"abc\x80def",
]


def _bytes(items):
    return [s if isinstance(s, bytes) else s.encode("utf-8") for s in items]


@pytest.fixture(scope="module")
def lines(train_files):
    return standins.corpus_lines(train_files, per_file=30)


@pytest.fixture(scope="module")
def released(tmp_path_factory, lines):
    """Stand-ins: LaBSE's two parts (cased vocabulary) and a LEALLA (lower-cased)."""
    root = tmp_path_factory.mktemp("released")
    out = {}
    for lower, kind in ((False, "labse"), (True, "lealla")):
        vocab = standins.make_vocab(lines, str(root / f"{kind}-vocab.txt"), lower_case=lower)
        n = len(open(vocab, encoding="utf-8").read().splitlines())
        if kind == "labse":
            enc = standins.bert_encoder(n, hidden=32, layers=2, heads=2, ffn=64, seed=1)
            out["labse_encoder"] = standins.save_encoder(enc, vocab, lower,
                                                         str(root / "labse_encoder"))
            out["labse_preprocessor"] = standins.save_preprocessor(
                vocab, lower, SEQ, str(root / "labse_preprocessor"))
        else:
            enc = standins.bert_encoder(n, hidden=24, layers=2, heads=4, ffn=48, seed=2)
            out["lealla"] = standins.save_string_model(enc, vocab, lower, SEQ,
                                                       str(root / "lealla"))
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory, released):
    root = tmp_path_factory.mktemp("imported")
    labse = importing.import_model(released["labse_encoder"], str(root / "labse"),
                                   preprocessor=released["labse_preprocessor"],
                                   seq_length=SEQ, probe=_bytes(PROBE))
    rc = cli.main(["import", "--source", released["lealla"], "--output",
                   str(root / "lealla"), "--seq-length", str(SEQ)])
    assert rc == 0
    return {"labse": labse.run_dir, "lealla": str(root / "lealla")}


def test_labse_two_part_import_reproduces_the_source(released, imported):
    info = json.load(open(os.path.join(imported["labse"], importing.INFO_FILE)))
    assert info["layout"] == "encoder" and info["do_lower_case"] is False
    parity = info["parity"]
    assert parity["max_abs_diff"] <= 1e-5 and parity["max_abs_diff_source_ids"] <= 1e-5
    assert parity["token_id_mismatches"] == 0 and parity["sentences"] == len(PROBE)
    cfg = config.load(os.path.join(imported["labse"], layout.CONFIG_FILE))
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_attention_heads,
            cfg.model.intermediate_size, cfg.model.max_position_embeddings) == (32, 2, 2, 64, 64)
    assert cfg.vocab.type == "wordpiece" and cfg.vocab.model_file == "vocab/vocab.txt"
    # Independently of the importer's own check: the run dir embeds like the source pair.
    source_pre = tf.saved_model.load(released["labse_preprocessor"])
    source_enc = tf.saved_model.load(released["labse_encoder"])
    texts = tf.constant(_bytes(PROBE))
    want = tf.math.l2_normalize(source_enc(source_pre(texts), training=False)["default"], -1)
    got = export.load_embedder(imported["labse"]).encode(_bytes(PROBE))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_lealla_string_import_reproduces_the_source(released, imported):
    info = json.load(open(os.path.join(imported["lealla"], importing.INFO_FILE)))
    assert info["layout"] == "string" and info["do_lower_case"] is True
    assert info["parity"]["max_abs_diff"] <= 1e-5
    assert info["model"]["num_attention_heads"] == 4 and info["model"]["hidden_size"] == 24
    source = tf.saved_model.load(released["lealla"])
    want = source(tf.constant(_bytes(PROBE))).numpy()
    got = export.load_embedder(imported["lealla"]).encode(_bytes(PROBE))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_unrecognised_source_lists_the_variables(tmp_path, released):
    # A model whose weights are not a BERT encoder's.
    model = tf_keras.Sequential([tf_keras.layers.Dense(4, name="mystery")])
    model.build([None, 3])
    root = tf.train.Checkpoint()
    root.variables = model.variables
    root.__call__ = tf.function(lambda s: tf.zeros([tf.shape(s)[0], 4]),
                                input_signature=[tf.TensorSpec([None], tf.string)])
    assets = os.path.join(released["lealla"], "assets")
    root.vocab_file = tf.saved_model.Asset(os.path.join(assets, os.listdir(assets)[0]))
    root.do_lower_case = tf.Variable(True)
    tf.saved_model.save(root, str(tmp_path / "mystery"))
    with pytest.raises(importing.UnrecognisedModel, match=r"could not place.*mystery/kernel"):
        importing.import_model(str(tmp_path / "mystery"), str(tmp_path / "out"))
    # A BERT encoder with one extra variable: the error names it and nothing is written.
    enc = tf.saved_model.load(released["labse_encoder"])
    extra = tf.train.Checkpoint()
    extra.variables = list(enc.variables) + [tf.Variable(tf.zeros([3]), name="adapter/w")]
    extra.__call__ = enc.__call__
    extra.vocab_file, extra.do_lower_case = enc.vocab_file, enc.do_lower_case
    tf.saved_model.save(extra, str(tmp_path / "extra"))
    with pytest.raises(importing.UnrecognisedModel, match=r"1 source variable.*adapter/w"):
        importing.import_model(str(tmp_path / "extra"), str(tmp_path / "out"), seq_length=SEQ)
    assert not os.path.exists(tmp_path / "out")
    assert cli.main(["import", "--source", str(tmp_path / "nowhere"), "--output",
                     str(tmp_path / "out")]) == 2


def test_fine_tune_export_and_eval_the_imported_model(tmp_path, imported, data_dir):
    run = str(tmp_path / "ft")
    rc = cli.main(["train", "--config", os.path.join(os.path.dirname(__file__), "..",
                                                       "configs", "train_tiny.yaml"),
                   "--init-from", imported["labse"], "--model-dir", run, "--no-progress",
                   "--set", "data.languages=[deu, rus]", "--set",
                   "data.max_pairs_per_language=64", "--set", "train.steps=2", "--set",
                   "train.steps_per_loop=1", "--set", "train.global_batch_size=8", "--set",
                   "train.warmup_steps=0", "--set", "train.learning_rate=0.001"])
    assert rc == 0
    cfg, pre, encoder = runs.restore_encoder(run)
    assert isinstance(pre, wordpiece.WordpiecePreprocessor) and cfg.model.hidden_size == 32
    assert cfg.train.init_from == imported["labse"] and pre.seq_length == 32
    # It started from the imported weights and moved away from them.
    _, _, start = runs.restore_encoder(imported["labse"])
    table0, table1 = start.word_embeddings.numpy(), encoder.word_embeddings.numpy()
    assert 0 < np.abs(table1 - table0).max() < 0.05

    out = str(tmp_path / "export")
    assert cli.main(["export", "--model-dir", run, "--output", out, "--tflite", "fp32,int8"]) == 0
    info = json.load(open(os.path.join(out, export.INFO_FILE)))
    assert info["files"]["tflite-fp32"]["min_cosine"] > 0.9999
    assert info["files"]["tflite-int8"]["min_cosine"] > 0.99
    texts = _bytes(PROBE)
    got = harness.export_embeddings(out, texts, tflite=("fp32",))
    saved = got["lealla"]
    np.testing.assert_allclose(got["fp32"], saved, atol=2e-5)
    ckpt = export.load_embedder(run).encode(texts)
    np.testing.assert_allclose(saved, ckpt, atol=1e-5)
    # The exported encoder has the release's layout: it imports back, to the same vectors.
    back = importing.import_model(os.path.join(out, "encoder"), str(tmp_path / "back"),
                                  preprocessor=os.path.join(out, "preprocessor"),
                                  seq_length=32, probe=texts)
    assert back.layout == "encoder" and back.parity["token_id_mismatches"] == 0
    np.testing.assert_allclose(export.load_embedder(back.run_dir).encode(texts), ckpt,
                               atol=1e-5)
    # Evaluation runs on the imported run directory itself.
    result = str(tmp_path / "tatoeba.json")
    assert cli.main(["eval", "tatoeba", "--model", imported["lealla"], "--languages", "deu",
                     "--data-dir", data_dir, "--no-cache", "--output", result]) == 0
    assert "deu" in json.dumps(json.load(open(result)))


def _serve(directory):
    return hermetic.serve_directory(directory)
def test_import_downloads_a_published_model_through_the_hub_cache(tmp_path, released,
                                                                   monkeypatch):
    # TF Hub's compressed format: GET <handle>?tf-hub-format=compressed gives a .tar.gz with
    # the SavedModel at its root (a static server ignores the query string).
    site = tmp_path / "site" / "models" / "lealla-standin"
    os.makedirs(site.parent)
    export.make_hub_archive(released["lealla"], str(site))
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    with _serve(str(tmp_path / "site")) as base:
        handle = f"{base}/models/lealla-standin"
        result = importing.import_model(handle, str(tmp_path / "run"), seq_length=SEQ,
                                        probe=_bytes(PROBE))
    assert result.layout == "string" and result.parity["max_abs_diff"] <= 1e-5
    assert os.listdir(cache)  # downloaded into the TF Hub cache
    assert json.load(open(os.path.join(result.run_dir, importing.INFO_FILE)))["source"] == handle


def test_prune_to_a_language_subset_keeps_its_embeddings(tmp_path, imported, train_files):
    deu_rus = [f for f in train_files if os.path.basename(f)[:3] in ("deu", "rus")]
    files = [str(tmp_path / "deu-rus.tsv")]
    with open(files[0], "w", encoding="utf-8") as out:
        for path in deu_rus:
            out.writelines(open(path, encoding="utf-8").readlines()[:200])
    small = str(tmp_path / "small")
    assert cli.main(["prune", "--model-dir", imported["labse"], "--input", *files,
                     "--output", small]) == 0
    info = json.load(open(os.path.join(small, "prune_info.json")))
    assert info["vocab_after"] < info["vocab_before"] / 2
    assert info["parameters"] < info["parameters_before"]
    cfg, pre, _ = runs.restore_encoder(small)
    assert cfg.model.vocab_size == pre.vocab_size == info["vocab_after"]
    # The corpus segments (and so embeds) exactly as with the full vocabulary.
    texts = [s for line in open(files[0], encoding="utf-8").read().splitlines()[:60]
             for s in line.split("\t")]
    full_pre = runs.restore_encoder(imported["labse"])[1]
    full_tokens = [[full_pre.tokens[i] for i in row]
                   for row in full_pre.tokenize(tf.constant(texts)).to_list()]
    small_tokens = [[pre.tokens[i] for i in row]
                    for row in pre.tokenize(tf.constant(texts)).to_list()]
    assert small_tokens == full_tokens
    np.testing.assert_allclose(export.load_embedder(small).encode(texts),
                               export.load_embedder(imported["labse"]).encode(texts), atol=1e-5)
    # Words outside the corpus still split into characters instead of becoming [UNK].
    unk = pre.special_ids["unknown_id"]
    assert unk not in pre.tokenize(tf.constant(["Sonnenblumenfeld"])).to_list()[0]
    assert cli.main(["prune", "--model-dir", imported["labse"], "--input", *files,
                     "--output", str(tmp_path / "x"), "--max-tokens", "3"]) == 2


def test_fine_tune_with_distillation_from_the_imported_run(tmp_path, imported, data_dir):
    from lealla_tf import corpus
    from lealla_tf.data import pipeline
    cfg = config.load(os.path.join(os.path.dirname(__file__), "..", "configs", "train_tiny.yaml"),
                      ["data.languages=[deu]", "data.max_pairs_per_language=64",
                       "train.steps=2", "train.steps_per_loop=1", "train.global_batch_size=8",
                       "train.warmup_steps=0", "loss.feature_distill_weight=1.0",
                       "loss.logit_distill_weight=1.0", f"train.init_from={imported['lealla']}"])
    files = corpus.find_files(cfg.data.train_files, data_dir, cfg.data.languages)

    def teacher(path):  # stand-in teacher embeddings, 16-d
        n = corpus.count_lines(path)
        rows = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float16)
        return rows, rows[::-1].copy(), np.ones(n, bool)

    trainer = dual_encoder.Trainer(cfg, str(tmp_path / "kd"), progress=False,
                               corpus=pipeline.load_corpus(files, 64, teacher_loader=teacher))
    assert trainer.cfg.model.hidden_size == 24 and trainer.cfg.vocab.type == "wordpiece"
    start = trainer.encoder.word_embeddings.numpy().copy()
    _, _, source = runs.restore_encoder(imported["lealla"])
    np.testing.assert_array_equal(start, source.word_embeddings.numpy())
    result = trainer.run()
    assert result.metrics["feature_distill"] > 0 and result.metrics["logit_distill"] > 0
    assert np.abs(trainer.encoder.word_embeddings.numpy() - start).max() > 0


def test_student_on_the_imported_vocabulary_starts_from_its_table(tmp_path, imported,
                                                                  data_dir):
    from lealla_tf import corpus
    from lealla_tf.data import pipeline
    from lealla_tf.distill import student_init
    vocab = os.path.join(imported["labse"], "vocab", "vocab.txt")
    n = len(open(vocab, encoding="utf-8").read().splitlines())
    cfg = config.load(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"),
                      ["vocab.type=wordpiece", f"vocab.model_file={vocab}",
                       f"model.vocab_size={n}", "model.hidden_size=16",
                       "model.num_attention_heads=2", "data.languages=[deu]",
                       f"train.embedding_table_from={imported['labse']}"])
    files = corpus.find_files(cfg.data.train_files, data_dir, cfg.data.languages)
    trainer = dual_encoder.Trainer(cfg, str(tmp_path / "student"), progress=False,
                               corpus=pipeline.load_corpus(files, 16))
    _, _, teacher = runs.restore_encoder(imported["labse"])
    want = student_init.pca_table(teacher.word_embeddings.numpy(), 16,
                                  cfg.model.initializer_range)
    np.testing.assert_allclose(trainer.encoder.word_embeddings.numpy(), want, atol=1e-6)
    assert open(os.path.join(tmp_path, "student", "vocab", "vocab.txt"), "rb").read() == \
        open(vocab, "rb").read()
    assert isinstance(trainer.make_preprocessor(8), wordpiece.WordpiecePreprocessor)
    # The run's do_lower_case goes with its vocabulary.
    wrong = config.load(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"),
                        ["vocab.type=wordpiece", f"vocab.model_file={vocab}",
                         "vocab.do_lower_case=true", f"model.vocab_size={n}"])
    with pytest.raises(config.ConfigError, match="vocab.do_lower_case=false"):
        dual_encoder.Trainer(wrong, str(tmp_path / "wrong"), progress=False,
                         corpus=pipeline.load_corpus(files, 16))


def test_sentencepiece_student_tokens_match_wordpiece_rows(imported, tiny_vocab):
    import sentencepiece as spm

    from lealla_tf.text import sentencepiece
    from lealla_tf.training import initialization
    tokens = initialization.student_tokens("sentencepiece", sentencepiece.read_model(tiny_vocab))
    sp = spm.SentencePieceProcessor(model_file=tiny_vocab)
    assert len(tokens) == sp.get_piece_size()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    for i in range(5, len(tokens)):
        piece = sp.id_to_piece(i)
        want = piece[1:] if piece.startswith("\u2581") else "##" + piece
        assert tokens[i] == want, (i, piece)
    table, found = initialization.table_from_run(imported["labse"], tokens, 8, 0.02)
    assert table.shape == (len(tokens), 8) and 100 < found.sum() < len(tokens)
    assert not table[~found].any() and found[2] and found[3]  # [CLS], [SEP] are shared
