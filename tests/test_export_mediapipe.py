"""``lealla export --format mediapipe`` checked with MediaPipe's real TextEmbedder.

MediaPipe runs in its own venv (LEALLA_MEDIAPIPE_PYTHON, ``make mediapipe-venv``); without
it these tests fail with the error that says how to make it.
"""

import io
import json
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from test_run_export import _tiny_run

from lealla_tf import cli, embedders, layout, runs
from lealla_tf.embedders import mediapipe as mp_embedder
from lealla_tf.embedders.interop import valid_utf8
from lealla_tf.export import PROBE_SENTENCES, mediapipe_metadata, to_mediapipe
from lealla_tf.export.formats import cosine_rows
from lealla_tf.models import encoders

pytestmark = pytest.mark.mediapipe


@pytest.fixture(scope="session")
def mp_run(tmp_path_factory, hermetic_vocab, hermetic_config, hermetic_files):
    """A tiny SentencePiece run, its `lealla export --format mediapipe` folder, and the
    TF model's embeddings and ids of the probe sentences."""
    import dataclasses
    mp_embedder.mediapipe_python()  # without it: the error saying how to make it
    root = tmp_path_factory.mktemp("mediapipe")
    run_dir, out = str(root / "run"), str(root / "export")
    cfg = dataclasses.replace(hermetic_config, data=dataclasses.replace(
        hermetic_config.data, train_files=list(hermetic_files)))
    _tiny_run(run_dir, hermetic_vocab, cfg)
    assert cli.main(["export", "--model-dir", run_dir, "--output", out,
                     "--format", "mediapipe"]) == 0
    _, pre, enc = runs.restore_encoder(run_dir)
    sentences = list(PROBE_SENTENCES)
    expected = encoders.StringEncoder(pre, enc)(tf.constant(sentences)).numpy()
    ids_file = str(root / "ids.tflite")
    with open(ids_file, "wb") as f:
        f.write(to_mediapipe.build_file(enc, pre, ids_only=True))
    return {"run": run_dir, "out": out, "pre": pre, "sentences": sentences,
            "expected": expected, "ids_file": ids_file,
            "info": json.load(open(os.path.join(out, layout.INFO_FILE)))}


def _refused_by_length(sentence: bytes, pre) -> bool:
    pieces = pre.tokenize(tf.constant([sentence])).flat_values.shape[0]
    return pieces > to_mediapipe.INPUT_LENGTH - 2


def test_export_folder_and_info(mp_run):
    info = mp_run["info"]
    assert info["format"] == "mediapipe"
    for variant in ("fp32", "int8"):
        name = layout.mediapipe_file_name(variant)
        assert info["files"][variant]["path"] == name
        assert os.path.getsize(os.path.join(mp_run["out"], name)) == \
            info["files"][variant]["bytes"]
    checks = info["checks"]
    assert checks["litert_fp32_min_cosine"] >= 0.9999
    assert checks["mediapipe"]["fp32_min_cosine"] >= 0.99999
    assert checks["mediapipe"]["int8_min_cosine"] >= 0.99
    sample = checks["mediapipe"]["training_sample"]  # lines of the run's training files
    assert sample["sentences"] > 500 and sample["ids_equal"] == sample["sentences"]
    card = open(os.path.join(mp_run["out"], layout.CARD_FILE), encoding="utf-8").read()
    for needle in ("TextEmbedder.createFromOptions", "@mediapipe/tasks-text",
                   "create_from_options", "mediapipe:"):
        assert needle in card
    # The spec grammar finds the folder by its export_info.json.
    assert embedders.parse_spec(mp_run["out"]).kind == "mediapipe"


def test_metadata_reads_back_with_mediapipe_schema(mp_run):
    """The bundle's model carries metadata MediaPipe's own schema module reads, with the
    SentencePiece model packed in; the bundle's sentencepiece.model gives our ids."""
    content = open(os.path.join(mp_run["out"], layout.mediapipe_file_name("fp32")), "rb").read()
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert sorted(archive.namelist()) == sorted([to_mediapipe.BUNDLE_MODEL,
                                                     to_mediapipe.BUNDLE_SENTENCEPIECE])
        spm_bytes = archive.read(to_mediapipe.BUNDLE_SENTENCEPIECE)
    model = to_mediapipe.tflite_of(content)
    assert mediapipe_metadata.associated_files(model) == {"spm.model": spm_bytes}
    buffer = mediapipe_metadata.read_metadata_buffer(model)
    script = (
        "import json, sys\n"
        "from mediapipe.tasks.metadata import metadata_schema_py_generated as m\n"
        "buf = open(sys.argv[1], 'rb').read()\n"
        "assert m.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)\n"
        "md = m.ModelMetadataT.InitFromObj(m.ModelMetadata.GetRootAs(buf, 0))\n"
        "sg = md.subgraphMetadata[0]\n"
        "t = sg.inputTensorMetadata[0]\n"
        "u = t.processUnits[0]\n"
        "print(json.dumps({'min': md.minParserVersion.decode(), 'input': t.name.decode(),\n"
        "  'unit': u.optionsType, 'file': u.options.sentencePieceModel[0].name.decode(),\n"
        "  'output': sg.outputTensorMetadata[0].name.decode(),\n"
        "  'feature': sg.outputTensorMetadata[0].content.contentPropertiesType}))\n")
    path = os.path.join(os.path.dirname(mp_run["ids_file"]), "metadata.bin")
    with open(path, "wb") as f:
        f.write(buffer)
    import subprocess
    proc = subprocess.run([mp_embedder.mediapipe_python(), "-c", script, path],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got == {"min": "1.1.0", "input": "ids",
                   "unit": mediapipe_metadata.UNIT_SENTENCEPIECE_TOKENIZER,
                   "file": "spm.model", "output": "embedding",
                   "feature": mediapipe_metadata.CONTENT_FEATURE}


def test_mediapipe_ids_equal_ours(mp_run):
    """MediaPipe's own tokenization (read through an ids probe model) gives our ids on every
    valid-UTF-8 probe sentence it takes; it refuses only texts longer than its input."""
    pre, sentences = mp_run["pre"], mp_run["sentences"]
    worker = mp_embedder.MediaPipeWorker(mp_run["ids_file"])
    ours = to_mediapipe.our_ids(pre, sentences)
    checked = 0
    try:
        for i, s in enumerate(sentences):
            if _refused_by_length(s, pre):
                with pytest.raises(mp_embedder.MediaPipeError, match="too long"):
                    worker.embed([s])
                continue
            got = worker.embed([s])[0].astype(np.int64)
            if not valid_utf8(s):
                continue  # MediaPipe receives U+FFFD for the invalid bytes
            np.testing.assert_array_equal(got, ours[i], err_msg=repr(s[:60]))
            checked += 1
    finally:
        worker.close()
    assert checked >= 15


def test_embedder_matches_the_tf_model(mp_run):
    """``mediapipe:DIR`` (fp32) and ``mediapipe:FILE`` (int8) through the spec grammar."""
    pre, sentences = mp_run["pre"], mp_run["sentences"]
    # Where MediaPipe's ids are ours (test_mediapipe_ids_equal_ours): valid UTF-8 texts it
    # takes.
    keep = [i for i, s in enumerate(sentences) if valid_utf8(s) and
            not _refused_by_length(s, pre)]
    texts = [sentences[i] for i in keep]
    want = mp_run["expected"][keep]
    fp32 = embedders.load("mediapipe:" + mp_run["out"], batch_size=4)
    int8 = embedders.load("mediapipe:" + os.path.join(mp_run["out"],
                                                      layout.mediapipe_file_name("int8")))
    try:
        assert fp32.name.startswith("mediapipe:") and fp32.dim == want.shape[1]
        got = fp32.encode(texts)
        assert cosine_rows(got, want).min() >= 0.99999
        assert cosine_rows(int8.encode(texts), want).min() >= 0.99
        long_text = [s for s in sentences if _refused_by_length(s, pre)]
        with pytest.raises(mp_embedder.MediaPipeError, match="too long"):
            fp32.encode(long_text)
        assert fp32.encode(["dog"]).shape == (1, want.shape[1])  # the worker goes on
    finally:
        fp32.close()


def test_no_int8_and_card_facts(mp_run, tmp_path):
    out = str(tmp_path / "fp32-only")
    assert cli.main(["export", "--model-dir", mp_run["run"], "--output", out, "--format",
                     "mediapipe", "--no-int8", "--title", "Tiny MP",
                     "--description", "A tiny test encoder."]) == 0
    assert sorted(os.listdir(out)) == sorted([layout.CARD_FILE, layout.INFO_FILE,
                                              layout.mediapipe_file_name("fp32")])
    info = json.load(open(os.path.join(out, layout.INFO_FILE)))
    assert list(info["files"]) == ["fp32"] and "int8_min_cosine" not in info["checks"]["mediapipe"]
    card = open(os.path.join(out, layout.CARD_FILE), encoding="utf-8").read()
    assert card.startswith("# Tiny MP for MediaPipe Tasks") and "A tiny test encoder." in card
    assert "embedder-fp32.task" in card and "embedder-int8" not in card


def test_missing_mediapipe_python_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv(mp_embedder.PYTHON_ENV, str(tmp_path / "nowhere" / "python"))
    with pytest.raises(FileNotFoundError, match="make mediapipe-venv"):
        mp_embedder.mediapipe_python()
    with pytest.raises(FileNotFoundError, match="make mediapipe-venv"):
        to_mediapipe.export_run(str(tmp_path / "run"), str(tmp_path / "out"), progress=False)


# --------------------------------------------------------------------------- WordPiece
RESERVED = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _cased_wordpiece(files):
    """A cased WordPiece vocabulary of the hermetic corpus (as LaBSE's is cased): its 150
    most frequent words, every character alone and as a ``##`` suffix, punctuation."""
    import collections
    words, chars = collections.Counter(), set()
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                for w in line.replace(".", " ").split():
                    words[w] += 1
                    chars.update(w)
    tokens = RESERVED + list(".,!?-'") + sorted(chars) + [f"##{c}" for c in sorted(chars)]
    return tokens + [w for w, _ in words.most_common(150) if w not in tokens]


@pytest.fixture(scope="session")
def wp_run(tmp_path_factory, hermetic_files):
    """A tiny cased WordPiece run (an imported LaBSE's layout) and its MediaPipe export."""
    import dataclasses

    import tf_keras

    from lealla_tf import config
    root = tmp_path_factory.mktemp("mediapipe_wordpiece")
    run_dir, out = str(root / "run"), str(root / "export")
    tokens = _cased_wordpiece(hermetic_files)
    cfg = config.load("tiny", [f"model.vocab_size={len(tokens)}", "model.pooling=cls",
                               "vocab.type=wordpiece", "vocab.do_lower_case=false",
                               "vocab.model_file=vocab/vocab.txt"])
    cfg = dataclasses.replace(cfg, vocab=dataclasses.replace(
        cfg.vocab, model_file=runs.vocab_file(cfg)), data=dataclasses.replace(
        cfg.data, train_files=list(hermetic_files)))
    tf_keras.utils.set_random_seed(7)
    encoder = encoders.LeallaEncoder.from_model_config(cfg.model)
    encoder(encoder.dummy_inputs())
    runs.write_run(run_dir, cfg, ("\n".join(tokens) + "\n").encode("utf-8"), encoder,
                   "data_stats.json", {"pairs": 1200})
    info = to_mediapipe.export_run(run_dir, out, progress=False)
    _, pre, enc = runs.restore_encoder(run_dir)
    return {"run": run_dir, "out": out, "info": info, "pre": pre, "enc": enc}


def test_wordpiece_bert_layout(wp_run):
    """A WordPiece run: a plain .tflite with MediaPipe's BERT inputs and tokenizer.
    MediaPipe lower-cases ASCII letters first, so with a cased vocabulary its ids differ
    exactly on the texts with ASCII capitals: measured and recorded, and the embeddings
    match the TF model wherever the ids agree."""
    out, pre = wp_run["out"], wp_run["pre"]
    content = open(os.path.join(out, layout.mediapipe_file_name("fp32", bundle=False)),
                   "rb").read()
    assert to_mediapipe.tflite_of(content) == content  # no bundle
    assert mediapipe_metadata.associated_files(content) == {"vocab.txt": pre.model_bytes}
    checks = wp_run["info"]["checks"]["mediapipe"]
    sentences = list(PROBE_SENTENCES)
    capitals = [s for s in sentences if any(65 <= c <= 90 for c in s)]
    assert 0 < len(checks["ids_differ"]) <= len(capitals)
    assert checks["ids_differ_without_ascii_capitals"] == 0
    assert checks["ids_equal"] + len(checks["ids_differ"]) + len(checks["refused"]) == \
        len(sentences)
    assert checks["fp32_min_cosine"] >= 0.99999 and checks["int8_min_cosine"] >= 0.99
    sample = checks["training_sample"]
    assert sample["sentences"] > 500 and sample["refused"] == 0
    assert sample["ids_equal"] + sample["ids_differ"] == sample["sentences"]
    assert sample["ids_differ_without_ascii_capitals"] == 0
    card = open(os.path.join(out, layout.CARD_FILE), encoding="utf-8").read()
    assert "lower-cases ASCII letters" in card

    # Independently of the export's own check: ids through an ids probe, then embeddings.
    probe = os.path.join(os.path.dirname(out), "ids.tflite")
    with open(probe, "wb") as f:
        f.write(to_mediapipe.build_file(wp_run["enc"], pre, ids_only=True))
    worker = mp_embedder.MediaPipeWorker(probe)
    try:
        got_ids = worker.embed(sentences).astype(np.int64)
    finally:
        worker.close()
    ours = to_mediapipe.our_ids(pre, sentences)
    same = [i for i, s in enumerate(sentences) if np.array_equal(got_ids[i], ours[i])]
    for i, s in enumerate(sentences):
        if valid_utf8(s) and s not in capitals:
            assert i in same, repr(s[:60])
        if s in capitals and i not in same:  # what MediaPipe tokenized: the lower-cased text
            lower = bytes(c + 32 if 65 <= c <= 90 else c for c in s)
            np.testing.assert_array_equal(got_ids[i], to_mediapipe.our_ids(pre, [lower])[0])
    want = encoders.StringEncoder(pre, wp_run["enc"])(
        tf.constant([sentences[i] for i in same])).numpy()
    model = embedders.load("mediapipe:" + out)
    try:
        got = model.encode([sentences[i] for i in same])
    finally:
        model.close()
    assert cosine_rows(got, want).min() >= 0.99999


def test_spec_grammar_finds_mediapipe_exports(mp_run):
    """A bare export folder (its export_info.json's format) or ``.task`` bundle is the
    ``mediapipe`` kind; a folder's model is its fp32 bundle."""
    out = mp_run["out"]
    bundle = os.path.join(out, layout.mediapipe_file_name("int8"))
    assert bundle.endswith(".task")
    assert embedders.parse_spec(out) == ("mediapipe", out)
    assert embedders.parse_spec(bundle) == ("mediapipe", bundle)
    assert mp_embedder.model_file(out) == os.path.join(out, layout.mediapipe_file_name("fp32"))
    with pytest.raises(FileNotFoundError, match="MediaPipe model not found"):
        mp_embedder.model_file(os.path.join(out, "missing.task"))
