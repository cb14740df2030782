"""`lealla export --format sentence-transformers`: SentenceTransformer(path) loads the folder
offline with no custom code and reproduces the TF model (mean and cls pooling,
SentencePiece and WordPiece runs); the tokenizer gives the TF preprocessor's ids; the
``st:`` embedder and bare-path detection."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lealla_tf import cli, embedders, layout
from lealla_tf.embedders import interop, spec
from lealla_tf.export import PROBE_SENTENCES, cosine_rows, hf_tokenizer
from lealla_tf.export import to_sentence_transformers as st_export
from support import interop_runs, standins

MIN_COSINE = 0.99999
VALID = [s for s in PROBE_SENTENCES if interop.valid_utf8(s)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, hermetic_vocab, hermetic_files):
    root = tmp_path_factory.mktemp("st_runs")
    return {"mean": interop_runs.sentencepiece_run(str(root / "mean"), hermetic_vocab,
                                                   hermetic_files, "mean"),
            "cls": interop_runs.sentencepiece_run(str(root / "cls"), hermetic_vocab,
                                                  hermetic_files, "cls"),
            "wordpiece": interop_runs.wordpiece_run(str(root / "wordpiece"), hermetic_files)}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, runs):
    root = tmp_path_factory.mktemp("st_exports")
    out = {name: str(root / name) for name in runs}
    rc = cli.main(["export", "--model-dir", runs["mean"], "--output", out["mean"],
                   "--format", "sentence-transformers", "--title", "Tiny ST"])
    assert rc == 0
    for name in ("cls", "wordpiece"):
        st_export.export_run(runs[name], out[name], progress=False)
    return out


@pytest.fixture(scope="module")
def reference(runs):
    """The TF model's embeddings of the probe sentences (the run's checkpoint)."""
    return interop_runs.probe_reference(runs)


def test_the_folder_has_the_modules_and_records_its_checks(exports):
    folder = exports["mean"]
    modules = json.load(open(os.path.join(folder, layout.ST_MODULES_FILE)))
    kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
    assert kinds == ["Transformer", "Pooling", "Normalize"]
    pooling = json.load(open(os.path.join(folder, modules[1]["path"], "config.json")))
    assert pooling["pooling_mode"] == "mean"
    for name in ("config.json", "model.safetensors", "tokenizer.json",
                 "config_sentence_transformers.json", layout.CARD_FILE):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert json.load(open(os.path.join(folder, "config.json")))["model_type"] == "bert"
    info = interop_runs.read_info(folder)
    assert info["format"] == "sentence-transformers" and info["model"]["pooling"] == "mean"
    assert info["checks"]["model_min_cosine"] >= MIN_COSINE
    ids = info["checks"]["token_ids"]
    assert ids["probe"]["equal"] == ids["probe"]["sentences"] == len(PROBE_SENTENCES)
    assert ids["training_sample"]["sentences"] > 500
    assert ids["training_sample"]["equal"] == ids["training_sample"]["sentences"]
    assert "Tiny ST" in open(os.path.join(folder, layout.CARD_FILE), encoding="utf-8").read()

    cls_modules = json.load(open(os.path.join(exports["cls"], layout.ST_MODULES_FILE)))
    assert [m["type"].rsplit(".", 1)[-1] for m in cls_modules] == [
        "Transformer", "Pooling", "Dense", "Normalize"]
    dense = json.load(open(os.path.join(exports["cls"], cls_modules[2]["path"], "config.json")))
    assert dense["activation_function"].endswith("Tanh")


def test_sentence_transformer_loads_it_offline_and_matches_the_tf_model(exports, reference,
                                                                         tmp_path):
    # A fresh process, offline, as a user loads it: no lealla_tf, no custom code.
    texts = [interop.decode_text(s) for s in PROBE_SENTENCES]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = ("import json, sys, numpy as np\n"
              "from sentence_transformers import SentenceTransformer\n"
              "m = SentenceTransformer(sys.argv[1])\n"
              "t = json.load(open(sys.argv[2]))\n"
              "np.save(sys.argv[3], m.encode(t))\n"
              "print(m.max_seq_length)\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    out = tmp_path / "emb.npy"
    proc = subprocess.run([sys.executable, "-c", script, exports["cls"],
                           str(tmp_path / "texts.json"), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "32"  # the run's packed length
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == reference["cls"].shape
    assert cosine_rows(got, reference["cls"]).min() >= MIN_COSINE
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("name", ["mean", "cls"])
def test_st_embedder_matches_the_tf_model_on_the_probe_sentences(exports, reference, name):
    model = embedders.load(f"st:{exports[name]}")
    assert isinstance(model, interop.SentenceTransformersEmbedder)
    got = model.encode(list(PROBE_SENTENCES))  # invalid UTF-8 and a 100k-character string
    assert got.dtype == np.float32
    assert cosine_rows(got, reference[name]).min() >= MIN_COSINE
    # Bare path: a folder holding modules.json.
    assert spec.parse_spec(exports[name]).kind == "st"
    bare = embedders.load(exports[name], batch_size=4)
    assert cosine_rows(bare.encode(list(PROBE_SENTENCES)), got).min() >= MIN_COSINE


def test_mean_and_cls_exports_differ(exports):
    # The pooling is what the run says (the runs share weights' shapes, not values).
    a = embedders.load(f"st:{exports['mean']}").encode(["dog", "the red house"])
    b = embedders.load(f"st:{exports['cls']}").encode(["dog", "the red house"])
    assert cosine_rows(a, b).max() < 0.999


def test_the_tokenizer_gives_the_tf_ids(runs, exports):
    from sentence_transformers import SentenceTransformer

    from lealla_tf import runs as runs_lib
    for name in ("mean", "wordpiece"):
        _, pre, _ = runs_lib.restore_encoder(runs[name])
        tokenizer = SentenceTransformer(exports[name], device="cpu").tokenizer
        sentences = VALID + [b"Big DOG, small cat!", "Straße ΟΔΌΣ ﬁn ？".encode()]
        if name == "wordpiece":  # text spelling a special token stays text
            sentences += [b"[CLS] the dog [SEP]"]
        texts = [s.decode("utf-8") for s in sentences]
        theirs = tokenizer(texts, truncation=True, max_length=pre.seq_length)["input_ids"]
        assert [list(t) for t in theirs] == hf_tokenizer.tf_ids(pre, sentences), name


def test_wordpiece_export_reproduces_tf_texts_normalization(runs, exports, reference):
    info = interop_runs.read_info(exports["wordpiece"])
    assert info["model"]["vocab_type"] == "wordpiece" and info["model"]["pooling"] == "cls"
    assert info["checks"]["model_min_cosine"] >= MIN_COSINE
    ids = info["checks"]["token_ids"]
    assert ids["probe"]["equal"] == len(PROBE_SENTENCES)  # invalid UTF-8 included
    assert ids["training_sample"]["equal"] == ids["training_sample"]["sentences"] > 500
    assert "token_ids_note" not in info["checks"]
    got = embedders.load(exports["wordpiece"]).encode(list(PROBE_SENTENCES))
    assert cosine_rows(got, reference["wordpiece"]).min() >= MIN_COSINE


def test_a_tokenizer_difference_is_counted_and_quoted(runs):
    from lealla_tf import runs as runs_lib
    _, pre, _ = runs_lib.restore_encoder(runs["wordpiece"])
    tok = hf_tokenizer.build_tokenizer(pre)
    # TF Text makes a word of more than 100 UTF-8 bytes [UNK]; tokenizers counts characters.
    long_word = "ο" * 60  # 120 bytes
    sentences = [b"the dog", f"the {long_word} dog".encode(), "ΜΕΓΑΛΟΣ σκύλος ß".encode()]
    check = hf_tokenizer.compare_ids(pre, tok, sentences)
    assert (check["sentences"], check["equal"]) == (3, 2)
    (bad,) = check["mismatches"]
    assert bad["sentence"].startswith("the ο") and bad["position"] == 2
    unk = pre.special_ids["unknown_id"]
    assert bad["ours"][2] == unk and bad["tokenizers"][2] != unk
    assert "probe: 2/3" in hf_tokenizer.check_summary({"probe": check})
    assert hf_tokenizer.check_summary({"probe": hf_tokenizer.compare_ids(
        pre, tok, sentences[:1])}) is None


def test_export_refuses_an_existing_folder(exports, runs):
    with pytest.raises(FileExistsError):
        st_export.export_run(runs["mean"], exports["mean"], progress=False)
    rc = cli.main(["export", "--model-dir", runs["mean"], "--output", exports["mean"],
                   "--format", "sentence-transformers"])
    assert rc != 0


@pytest.fixture(scope="module")
def imported_labse(tmp_path_factory, hermetic_files):
    """`lealla import` of a LaBSE stand-in (cased WordPiece with LaBSE's reserved tokens:
    [CLS] is id 4) and its source SavedModels."""
    from lealla_tf.convert import importing
    root = tmp_path_factory.mktemp("labse")
    lines = standins.corpus_lines(hermetic_files, per_file=100)
    vocab = standins.make_vocab(lines, str(root / "vocab.txt"), lower_case=False)
    n = len(open(vocab, encoding="utf-8").read().splitlines())
    encoder = standins.save_encoder(standins.bert_encoder(n, seed=1), vocab, False,
                                    str(root / "encoder"))
    pre = standins.save_preprocessor(vocab, False, 32, str(root / "preprocessor"))
    run = importing.import_model(encoder, str(root / "run"), preprocessor=pre,
                                 seq_length=32).run_dir
    out = str(root / "st")
    assert cli.main(["export", "--model-dir", run, "--output", out,
                     "--format", "sentence-transformers"]) == 0
    return {"encoder": encoder, "preprocessor": pre, "st": out}


def test_an_imported_labse_exports_like_its_source(imported_labse):
    import tensorflow as tf
    source_pre = tf.saved_model.load(imported_labse["preprocessor"])
    source_enc = tf.saved_model.load(imported_labse["encoder"])
    want = tf.math.l2_normalize(source_enc(source_pre(tf.constant(VALID)), training=False)[
        "default"], -1).numpy()
    info = interop_runs.read_info(imported_labse["st"])
    assert info["tokenizer"]["cls_id"] == 4 and info["model"]["vocab_type"] == "wordpiece"
    assert info["checks"]["token_ids"]["probe"]["equal"] == len(PROBE_SENTENCES)
    got = embedders.load(imported_labse["st"]).encode(VALID)
    assert cosine_rows(got, want).min() >= MIN_COSINE


# ----------------------------------------------------------------------- static students
@pytest.fixture(scope="module")
def static_exports(tmp_path_factory, hermetic_vocab, hermetic_files):
    """Static students (with and without the projection), their sentence-transformers
    folders (one through the CLI) and the TF model's probe embeddings."""
    root = tmp_path_factory.mktemp("st_static")
    out = {}
    for projection in (False, True):
        name = "projection" if projection else "plain"
        run = interop_runs.static_run(str(root / f"run_{name}"), hermetic_vocab, hermetic_files,
                                      projection)
        folder = str(root / name)
        if projection:
            assert cli.main(["export", "--model-dir", run, "--output", folder,
                             "--format", "sentence-transformers", "--title", "Tiny static"]) == 0
        else:
            st_export.export_run(run, folder, progress=False)
        out[name] = {"run": run, "folder": folder,
                     "reference": embedders.load(f"run:{run}").encode(list(PROBE_SENTENCES))}
    return out


def test_a_static_student_exports_as_a_static_embedding_folder(static_exports):
    for name, kinds in (("plain", ["StaticEmbedding", "Normalize"]),
                        ("projection", ["StaticEmbedding", "Dense", "Normalize"])):
        folder = static_exports[name]["folder"]
        modules = json.load(open(os.path.join(folder, layout.ST_MODULES_FILE)))
        assert [m["type"].rsplit(".", 1)[-1] for m in modules] == kinds, name
        for file in ("model.safetensors", "tokenizer.json", layout.CARD_FILE):
            assert os.path.isfile(os.path.join(folder, modules[0]["path"], file)), file
        info = interop_runs.read_info(folder)
        assert info["model"]["architecture"] == "static"
        assert info["model"]["projection"] == (name == "projection")
        checks = info["checks"]
        assert checks["model_min_cosine"] >= MIN_COSINE and checks["min_cosine"] >= MIN_COSINE
        ids = checks["token_ids"]
        # Every probe sentence but the empty string; the training sample entirely.
        assert ids["probe"]["equal"] == len(PROBE_SENTENCES) - 1
        assert [m["sentence"] for m in ids["probe"]["mismatches"]] == [""]
        assert ids["training_sample"]["equal"] == ids["training_sample"]["sentences"] > 500
        (empty,) = checks["differing"]
        assert empty["sentence"] == "" and empty["norm"] == 0.0 and "zero vector" in empty["why"]
        assert info["tokenizer"]["static_markers"] == {"cls": "U+F0001", "sep": "U+F0002"}
    dense = [m for m in json.load(open(os.path.join(static_exports["projection"]["folder"],
                                                    layout.ST_MODULES_FILE)))
             if m["type"].endswith("Dense")][0]
    config = json.load(open(os.path.join(static_exports["projection"]["folder"], dense["path"],
                                         "config.json")))
    assert config["bias"] is False and config["activation_function"].endswith("Identity")
    card = open(os.path.join(static_exports["projection"]["folder"], layout.CARD_FILE),
                encoding="utf-8").read()
    assert "Tiny static" in card and "zero vector" in card


def test_static_folder_loads_offline_and_matches_the_tf_model(static_exports, tmp_path):
    # A fresh process, offline, no lealla_tf: the StaticEmbedding's own tokenizer.json.
    texts = [interop.decode_text(s) for s in VALID]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = ("import json, sys, numpy as np\n"
              "from sentence_transformers import SentenceTransformer\n"
              "m = SentenceTransformer(sys.argv[1])\n"
              "np.save(sys.argv[3], m.encode(json.load(open(sys.argv[2]))))\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("PYTHONPATH", None)
    entry = static_exports["projection"]
    proc = subprocess.run([sys.executable, "-c", script, entry["folder"],
                           str(tmp_path / "texts.json"), str(tmp_path / "emb.npy")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "emb.npy")
    want = entry["reference"][[PROBE_SENTENCES.index(s) for s in VALID]]
    cos = cosine_rows(got, want)
    empty = VALID.index(b"")
    assert np.delete(cos, empty).min() >= MIN_COSINE  # the long string: same truncation
    assert np.linalg.norm(got[empty]) == 0.0  # the measured difference: no ids, zero vector


@pytest.mark.parametrize("name", ["plain", "projection"])
def test_st_embedder_runs_a_static_folder(static_exports, name):
    entry = static_exports[name]
    model = embedders.load(f"st:{entry['folder']}")
    got = model.encode(list(PROBE_SENTENCES))  # invalid UTF-8 included
    cos = cosine_rows(got, entry["reference"])
    empty = PROBE_SENTENCES.index(b"")
    assert np.delete(cos, empty).min() >= MIN_COSINE and cos[empty] == 0.0
    # Pieces without the markers, capped like the packed input (seq_length - 2).
    texts = [b"", b" ", b"dog", b"the red house", b"Wort " * 20000]
    pieces = embedders.load(f"run:{entry['run']}").lengths(texts)
    assert model.lengths(texts) == [min(n, 30) for n in pieces] and pieces[-1] > 30


def test_static_tokenizer_gives_the_tf_ids_as_a_bag(static_exports):
    from sentence_transformers import SentenceTransformer

    from lealla_tf import runs as runs_lib
    _, pre, _ = runs_lib.restore_encoder(static_exports["plain"]["run"])
    tokenizer = SentenceTransformer(static_exports["plain"]["folder"], device="cpu").tokenizer
    sentences = [s for s in VALID if s] + [b"Big DOG, small cat!", b"  two   spaces  ",
                                           b"[CLS] spelled [SEP]", "\u200b".encode(),
                                           " \u0301ab".encode()]
    theirs = [e.ids for e in tokenizer.encode_batch([s.decode("utf-8") for s in sentences],
                                                    add_special_tokens=False)]
    want = [hf_tokenizer.as_bag(a) for a in hf_tokenizer.tf_ids(pre, sentences)]
    assert theirs == want
    assert len(theirs[sentences.index(b"Wort " * 20000)]) == pre.seq_length


def test_onnx_still_refuses_a_static_student(static_exports, tmp_path):
    from lealla_tf.export import to_onnx
    with pytest.raises(ValueError, match="static student.*--format sentence-transformers"):
        to_onnx.export_run(static_exports["plain"]["run"], str(tmp_path / "onnx"),
                           progress=False)
    assert cli.main(["export", "--model-dir", static_exports["plain"]["run"], "--output",
                     str(tmp_path / "onnx"), "--format", "onnx"]) != 0
    assert not os.path.exists(tmp_path / "onnx")
