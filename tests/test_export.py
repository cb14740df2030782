"""Export: the SavedModels load everywhere users load TF Hub models, the TFLite files and
the preprocessor/encoder pair reproduce the end-to-end model, the model card's snippets
run, published archives load through the TF Hub cache, and ``lealla embed`` agrees across
sources.

The tiny model is trained for zero steps (random weights) and exported once per module via
``lealla export`` on a model dir laid out like a training run.
"""

import io
import json
import os
import re
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops)
import tf_keras

from lealla_tf import cli, config, embedders, export, fileio, layout
from lealla_tf.models import encoders
from lealla_tf.text import sentencepiece
from support import harness, hermetic

# Multilingual, with the bad inputs: empty, whitespace-only, 100,000 characters, invalid UTF-8.
SENTENCES = [
    "The weather is nice today.", "Das Wetter ist heute schön.", "Сегодня хорошая погода.",
    "今天天气很好。", "الطقس جميل اليوم.", "आज मौसम अच्छा है।", "今日は天気がいいです。",
    "วันนี้อากาศดี", "오늘 날씨가 좋네요.", "Ο καιρός είναι ωραίος σήμερα.", "dog", "Hund",
    "", " ", "\t  \t", "x" * 100000, "Satz " * 20000,
    b"\xff\xfe\xfd invalid", b"abc\x80def", b"\xe4\xb8",
]
TOLERANCE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}  # also export.TFLITE_MIN_COSINE


def _bytes(items):
    return [s if isinstance(s, bytes) else s.encode("utf-8") for s in items]


def _cos(a, b):
    return export.cosine_rows(a, b)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_vocab, tiny_config):
    """A model dir as ``lealla train`` writes it: config.yaml, vocab/spm.model, checkpoints/."""
    import dataclasses
    import shutil
    root = tmp_path_factory.mktemp("run")
    os.makedirs(root / "vocab")
    shutil.copyfile(tiny_vocab, root / layout.VOCAB_FILE)
    cfg = dataclasses.replace(tiny_config, vocab=dataclasses.replace(
        tiny_config.vocab, model_file=layout.VOCAB_FILE))
    config.save(cfg, str(root / layout.CONFIG_FILE))
    encoder = harness.build_encoder(cfg.model, seed=3)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(encoder=encoder),
                                         str(root / layout.CHECKPOINT_DIR), max_to_keep=1)
    manager.save(checkpoint_number=7)
    with open(root / "data_stats.json", "w") as f:
        json.dump({"pairs": 1234, "files": {"/d/train/deu-eng.tsv": {"ok": 600},
                                            "/d/train/rus-eng.tsv": {"ok": 634}}}, f)
    preprocessor = sentencepiece.Preprocessor(tiny_vocab, cfg.preprocess.seq_length)
    return str(root), preprocessor, encoder


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    root, preprocessor, encoder = run_dir
    out = str(tmp_path_factory.mktemp("export") / "tiny")
    metrics = tmp_path_factory.mktemp("metrics") / "tatoeba.json"
    metrics.write_text(json.dumps({"task": "tatoeba", "average": 12.5, "n_languages": 2,
                                   "unit": "accuracy (%)"}))
    rc = cli.main(["export", "--model-dir", root, "--output", out, "--tflite", "fp32,fp16,int8",
                   "--metrics", str(metrics)])
    assert rc == 0
    model = encoders.StringEncoder(preprocessor, encoder)
    return out, model


@pytest.fixture(scope="module")
def reference(exported):
    out, model = exported
    return model(tf.constant(_bytes(SENTENCES)), training=False).numpy()


# ----------------------------------------------------------------------------- layout


def test_layout_sizes_and_card(exported):
    out, _ = exported
    for name in export.SAVED_MODELS:
        assert os.path.isfile(os.path.join(out, name, "saved_model.pb"))
    assert os.path.isfile(os.path.join(out, export.LEALLA, "assets", "spm.model"))
    with open(os.path.join(out, export.INFO_FILE)) as f:
        info = json.load(f)
    for variant in export.TFLITE_VARIANTS:
        path = os.path.join(out, export.tflite_file_name(variant))
        assert info["files"][f"tflite-{variant}"]["bytes"] == os.path.getsize(path) > 0
    assert info["files"]["tflite-int8"]["bytes"] < info["files"]["tflite-fp32"]["bytes"]
    assert info["model"]["parameters"] > 0 and info["model"]["embedding_dim"] == 32
    card = open(os.path.join(out, export.CARD_FILE), encoding="utf-8").read()
    assert "$" not in card.replace("$TFHUB", "")  # every template field filled
    assert "tatoeba average (2 languages)" in card and "12.50" in card
    assert "1,234" in card and "deu, rus" in card  # training data from the run
    assert "lealla-int8.tflite" in card
    print("\n" + export.format_sizes(info, out))
    # No temporary folders left beside the export.
    assert not [n for n in os.listdir(os.path.dirname(out)) if ".tmp-" in n]


def test_refuses_to_overwrite(exported, run_dir, capsys):
    out, _ = exported
    before = os.path.getmtime(os.path.join(out, export.INFO_FILE))
    assert cli.main(["export", "--model-dir", run_dir[0], "--output", out]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(out, export.INFO_FILE)) == before
    # The export stage's entry script goes through the same command.
    import importlib.util
    script = os.path.join(os.path.dirname(__file__), "..", "export", "run_export.py")
    spec = importlib.util.spec_from_file_location("run_export", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--model-dir", run_dir[0], "--output", out, "--publish", out]) == 2
    assert os.path.getmtime(os.path.join(out, export.INFO_FILE)) == before


def test_failed_export_leaves_nothing(run_dir, tmp_path, monkeypatch):
    _, preprocessor, encoder = run_dir
    target = tmp_path / "out"

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(export.formats, "build_encoder_module", broken)
    with pytest.raises(RuntimeError, match="boom"):
        export.export_model(preprocessor, encoder, str(target), tflite="none", progress=False)
    assert os.listdir(tmp_path) == []


def test_commit_dir_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    new = tmp_path / "new"
    new.mkdir()
    (new / "new.txt").write_text("new")
    with pytest.raises(FileExistsError):
        fileio.commit_dir(str(new), str(target), overwrite=False)
    fileio.commit_dir(str(new), str(target), overwrite=True)
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_parse_tflite_variants():
    assert export.parse_tflite_variants("fp32, int8") == ("fp32", "int8")
    assert export.parse_tflite_variants("none") == ()
    with pytest.raises(ValueError, match="int4"):
        export.parse_tflite_variants("int4")


# ----------------------------------------------------------------------------- SavedModels


def test_saved_model_equals_in_memory(exported, reference):
    out, _ = exported
    loaded = tf.saved_model.load(os.path.join(out, export.LEALLA))
    x = tf.constant(_bytes(SENTENCES))
    np.testing.assert_allclose(loaded(x).numpy(), reference, atol=1e-6)
    np.testing.assert_allclose(loaded(x, training=False).numpy(), reference, atol=1e-6)
    sig = loaded.signatures["serving_default"](sentences=x)["default"].numpy()
    np.testing.assert_allclose(sig, reference, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(sig, axis=1), 1.0, atol=1e-5)
    # Reusable SavedModel attributes.
    n_vars = len(exported[1].variables)
    assert len(loaded.variables) == n_vars == len(loaded.trainable_variables)
    assert list(loaded.regularization_losses) == []


def test_hub_keras_layer_fit_and_dropout(exported, reference):
    import tensorflow_hub as hub
    out, _ = exported
    layer = hub.KerasLayer(os.path.join(out, export.LEALLA), trainable=True)
    x = tf.constant(_bytes(SENTENCES))
    np.testing.assert_allclose(layer(x).numpy(), reference, atol=1e-6)
    np.testing.assert_allclose(layer(x, training=False).numpy(), reference, atol=1e-6)
    a, b = layer(x, training=True).numpy(), layer(x, training=True).numpy()
    assert np.abs(a - b).max() > 1e-3, "dropout should be active with training=True"
    assert np.abs(a - reference).max() > 1e-3
    frozen = hub.KerasLayer(os.path.join(out, export.LEALLA))  # trainable=False: never dropout
    np.testing.assert_allclose(frozen(x, training=True).numpy(), reference, atol=1e-6)

    text = tf_keras.Input(shape=(), dtype=tf.string)
    model = tf_keras.Model(text, tf_keras.layers.Dense(1)(layer(text)))
    model.compile(optimizer=tf_keras.optimizers.SGD(0.5), loss="mse")
    assert len(layer.trainable_weights) == len(exported[1].trainable_variables)
    before = [w.numpy().copy() for w in layer.trainable_weights]
    model.fit(tf.constant(["dog", "Hund", "cat", "Katze"]), np.array([1.0, -1.0, 1.0, -1.0]),
              epochs=1, batch_size=4, verbose=0)
    changed = sum(not np.array_equal(b0, w.numpy())
                  for b0, w in zip(before, layer.trainable_weights))
    assert changed >= len(before) // 2, f"only {changed}/{len(before)} weights changed"
    # After training, inference still agrees with a fresh call on the same layer.
    np.testing.assert_allclose(layer(x).numpy(), layer(x, training=False).numpy())
    assert np.abs(layer(x).numpy() - reference).max() > 1e-4


def test_keras3_tfsmlayer(exported, reference):
    import keras
    out, _ = exported
    layer = keras.layers.TFSMLayer(os.path.join(out, export.LEALLA),
                                   call_endpoint="serving_default")
    got = layer(tf.constant(_bytes(SENTENCES)))
    got = got["default"] if isinstance(got, dict) else got
    np.testing.assert_allclose(np.asarray(got), reference, atol=1e-6)


def test_preprocessor_encoder_pair_reproduces_end_to_end(exported, reference, run_dir):
    import tensorflow_hub as hub
    out, _ = exported
    x = tf.constant(_bytes(SENTENCES))
    pre = hub.load(os.path.join(out, export.PREPROCESSOR))
    enc = hub.load(os.path.join(out, export.ENCODER))
    # One-shot preprocessing.
    outputs = enc(pre(x))
    np.testing.assert_allclose(outputs["default"].numpy(), reference, atol=1e-6)
    assert set(outputs) >= {"default", "pooled_output", "sequence_output", "encoder_outputs"}
    assert outputs["sequence_output"].shape[:2] == (len(SENTENCES), 32)
    # Two-step API through hub.KerasLayer (as for TPU input pipelines).
    tokenize = hub.KerasLayer(pre.tokenize)
    for arguments in ({}, {"seq_length": 32}, {"seq_length": tf.constant(32)}):
        pack = hub.KerasLayer(pre.bert_pack_inputs, arguments=arguments)
        packed = pack([tokenize(x)])
        np.testing.assert_allclose(hub.KerasLayer(enc)(packed)["default"].numpy(), reference,
                                   atol=1e-6)
    # Two segments and another seq_length agree with the library's own packing.
    preprocessor = run_dir[1]
    a, b = x[:5], x[5:10]
    got = pre.bert_pack_inputs([pre.tokenize(a), pre.tokenize(b)], seq_length=tf.constant(20))
    want = preprocessor.bert_pack_inputs([preprocessor.tokenize(a), preprocessor.tokenize(b)],
                                         seq_length=20)
    for key in want:
        np.testing.assert_array_equal(got[key].numpy(), want[key].numpy())
    special = {k: int(v) for k, v in pre.tokenize.get_special_tokens_dict().items()}
    assert special["start_of_sequence_id"] == sentencepiece.CLS_ID
    assert special["vocab_size"] == preprocessor.vocab_size
    # Fine-tuning the encoder through hub.KerasLayer(trainable=True): dropout with training.
    layer = hub.KerasLayer(os.path.join(out, export.ENCODER), trainable=True)
    inputs = pre(x)
    t1 = layer(inputs, training=True)["default"].numpy()
    t2 = layer(inputs, training=True)["default"].numpy()
    assert np.abs(t1 - t2).max() > 1e-3
    np.testing.assert_allclose(layer(inputs)["default"].numpy(), reference, atol=1e-6)


# ----------------------------------------------------------------------------- TFLite


@pytest.mark.parametrize("variant", export.TFLITE_VARIANTS)
def test_tflite_matches_saved_model(exported, reference, variant):
    out, _ = exported
    path = os.path.join(out, export.tflite_file_name(variant))
    encode = harness.tflite_encoder(model_path=path)
    got = encode(_bytes(SENTENCES))
    cos = _cos(got, reference)
    print(f"\n{variant}: {os.path.getsize(path):,} bytes, min cosine {cos.min():.6f}")
    assert cos.min() >= TOLERANCE[variant]
    # One sentence at a time gives the same vectors as the batch.
    single = encode([b"Hund"])
    assert _cos(single, got[SENTENCES.index("Hund")][None])[0] > 0.99999


# ----------------------------------------------------------------------------- model card


def test_model_card_snippets_run(exported, capsys):
    out, _ = exported
    card = open(os.path.join(out, export.CARD_FILE), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 3  # hub.KerasLayer, preprocessor/encoder pair, TFLite
    for code in blocks:
        exec(compile(code, "model-card", "exec"), {"__name__": "model_card"})
    printed = capsys.readouterr().out
    assert "(5, 32)" in printed and "(2, 32)" in printed and "(1, 32)" in printed


# ----------------------------------------------------------------------------- publish


def _serve(directory):
    return hermetic.serve_directory(directory)
def test_publish_and_load_through_hub_cache(exported, reference, tmp_path, monkeypatch):
    import tensorflow_hub as hub
    out, _ = exported
    pub = tmp_path / "publish"
    assert cli.main(["publish", "--export", out, "--output", str(pub),
                     "--base-url", "http://127.0.0.1:1/models"]) == 0
    for name in export.SAVED_MODELS:
        archive = pub / name / f"{name}.tar.gz"
        with tarfile.open(archive) as tar:
            names = tar.getnames()
        assert "saved_model.pb" in names and "variables/variables.index" in names
        card = (pub / name / "README.md").read_text(encoding="utf-8")
        assert f"http://127.0.0.1:1/models/{name}/{name}.tar.gz" in card
    assert (pub / "tflite" / "lealla-int8.tflite").exists()
    readme = (pub / "README.md").read_text(encoding="utf-8")
    assert "kaggle models instances create" in readme and "sha256" in readme
    # Packing is deterministic.
    again = tmp_path / "again.tar.gz"
    export.make_hub_archive(os.path.join(out, export.LEALLA), str(again))
    assert again.read_bytes() == (pub / "lealla" / "lealla.tar.gz").read_bytes()

    cache = tmp_path / "hub_cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    x = tf.constant(_bytes(SENTENCES))
    with _serve(str(pub)) as base:
        layer = hub.KerasLayer(f"{base}/lealla/lealla.tar.gz")
        np.testing.assert_allclose(layer(x).numpy(), reference, atol=1e-6)
        pre = hub.load(f"{base}/preprocessor/preprocessor.tar.gz")
        enc = hub.KerasLayer(f"{base}/encoder/encoder.tar.gz")
        np.testing.assert_allclose(enc(pre(x))["default"].numpy(), reference, atol=1e-6)
        url_embedder = export.load_embedder(f"{base}/lealla/lealla.tar.gz")
        assert url_embedder.name == f"hub:{base}/lealla/lealla.tar.gz"
        np.testing.assert_allclose(url_embedder.encode(SENTENCES), reference, atol=1e-6)
    cached = [d for d in os.listdir(cache) if os.path.isdir(cache / d)]
    assert len(cached) == 3  # downloaded and extracted into the TF Hub cache
    assert all(os.path.isfile(cache / d / "saved_model.pb") for d in cached)


# ----------------------------------------------------------------------------- embed


def test_embed_cli_export_tflite_and_run_agree(exported, run_dir, reference, tmp_path, capsys):
    out, _ = exported
    lines = _bytes(SENTENCES[:-3]) + [b"\xff\xfe\xfd invalid", b"abc\x80def"]
    src = tmp_path / "in.txt"
    src.write_bytes(b"\n".join(lines) + b"\n")
    vectors = {}
    sources = {"export": out, "run": run_dir[0]}
    sources.update({v: os.path.join(out, export.tflite_file_name(v))
                    for v in export.TFLITE_VARIANTS})
    for key, source in sources.items():
        target = tmp_path / f"{key}.npy"
        assert cli.main(["embed", "--model", source, "--input", str(src), "--output",
                         str(target), "--batch-size", "4"]) == 0
        vectors[key] = np.load(target)
        assert vectors[key].shape == (len(lines), 32)
    direct = exported[1](tf.constant(lines), training=False).numpy()
    np.testing.assert_allclose(vectors["export"], direct, atol=1e-6)
    np.testing.assert_allclose(vectors["run"], direct, atol=1e-6)
    for variant in export.TFLITE_VARIANTS:
        assert _cos(vectors[variant], vectors["export"]).min() >= TOLERANCE[variant]
    # TSV on stdout.
    capsys.readouterr()
    assert cli.main(["embed", "--model", out, "--input", str(src)]) == 0
    tsv = np.loadtxt(io.StringIO(capsys.readouterr().out), delimiter="\t", ndmin=2)
    np.testing.assert_allclose(tsv, vectors["export"], atol=1e-5)


def test_embed_cli_stdin_and_errors(exported, tmp_path, monkeypatch, capsys):
    out, model = exported
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"dog\r\n\nHund\n")))
    target = tmp_path / "stdin.npy"
    assert cli.main(["embed", "--model", out, "--output", str(target)]) == 0
    want = model(tf.constant(["dog", "", "Hund"]), training=False).numpy()
    np.testing.assert_allclose(np.load(target), want, atol=1e-6)
    capsys.readouterr()
    assert cli.main(["embed", "--model", str(tmp_path / "missing"), "--output",
                     str(target)]) == 2
    assert "model source not found" in capsys.readouterr().err


def test_embedder_batches_by_length_and_keeps_order(exported, reference):
    out, _ = exported
    embedder = export.load_embedder(out)
    assert embedder.name.startswith("savedmodel:")
    got = embedder.encode(SENTENCES, batch_size=3)
    np.testing.assert_allclose(got, reference, atol=1e-6)
    assert embedder.encode([]).shape == (0, 32)
    tfl = export.load_embedder(os.path.join(out, "lealla-fp32.tflite"), batch_size=8)
    assert _cos(tfl.encode(SENTENCES), reference).min() >= TOLERANCE["fp32"]


def test_embedders_order_batches_by_token_count(exported, reference):
    """Exports carry their vocabulary, so the embedders batch sentences of equal token
    count (the least padding) instead of equal UTF-8 length, and still return every
    embedding in input order."""
    import sentencepiece as spm
    out, _ = exported
    sp = spm.SentencePieceProcessor(
        model_file=os.path.join(out, export.LEALLA, "assets", sentencepiece.MODEL_FILE))
    data = _bytes(SENTENCES)
    tokens = [len(sp.encode(s.decode("utf-8", errors="replace"))) for s in data]
    assert tokens != [len(s) for s in data]
    for embedder in (export.load_embedder(out),
                     export.load_embedder(os.path.join(out, "lealla-fp32.tflite"))):
        assert embedder.lengths(data) == tokens
        seen = []
        encode_batch = embedder.encode_batch
        embedder.encode_batch = lambda b, f=encode_batch: (seen.append(b), f(b))[1]
        got = embedder.encode(SENTENCES, batch_size=4)
        assert _cos(got, reference).min() >= TOLERANCE["fp32"]
        # Batches come longest first, each holding the next-longest sentences by tokens.
        batch_tokens = [sorted(tokens[data.index(x)] for x in b) for b in seen]
        flat = [t for b in batch_tokens for t in reversed(b)]
        assert flat == sorted(tokens, reverse=True)
    # Without a vocabulary (e.g. a TF Hub model that ships none): UTF-8 length.
    bare = embedders.Embedder("bare")
    assert bare.lengths(data) == [len(s) for s in data]


def test_tflite_embedder_static_batch(exported, reference, tmp_path):
    """A TFLite model with a fixed batch dimension gets its batches cut and padded to it;
    the exports themselves take any batch as it is."""
    out, _ = exported
    assert export.load_embedder(os.path.join(out, "lealla-fp32.tflite")).static_batch is None
    loaded = tf.saved_model.load(os.path.join(out, export.LEALLA))
    serve = loaded.signatures[export.SIGNATURE]
    fn = tf.function(lambda s: serve(sentences=s),
                     input_signature=[tf.TensorSpec([3], tf.string, name="sentences")])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()],
                                                           loaded)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    conv.allow_custom_ops = True
    path = tmp_path / "static3.tflite"
    path.write_bytes(conv.convert())
    embedder = export.TFLiteEmbedder(str(path), batch_size=5)
    assert embedder.static_batch == 3
    got = embedder.encode(SENTENCES[:13])  # batches of 5 -> calls of 3 + 2 (padded)
    assert got.shape == (13, reference.shape[1])
    assert _cos(got, reference[:13]).min() >= TOLERANCE["fp32"]


def test_load_embedder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="TF Hub handle"):
        export.load_embedder(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a .tflite"):
        export.load_embedder(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="export folder"):
        export.load_embedder(str(tmp_path))
