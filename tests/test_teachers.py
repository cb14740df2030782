"""Tests for lealla_tf.embedders.teachers (teacher adapters) and lealla_tf.distill.store (shards)."""

import collections
import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import cli, corpus
from lealla_tf.distill import store
from lealla_tf.embedders import teachers

DIM = 8
SEQ = 8
VOCAB = 97


# ------------------------------------------------------------------ tiny teachers
def _hash_embed(sentences, dim=DIM):
    """Deterministic sentence -> vector (a stand-in encoder for the shard bookkeeping)."""
    out = []
    for s in sentences:
        seed = int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")
        out.append(np.random.default_rng(seed).normal(size=dim))
    return np.asarray(out, np.float32)


class CountingFn:
    """Counts how often each sentence is encoded; optionally fails after ``fail_after`` calls."""

    def __init__(self, fail_after=None):
        self.counts = collections.Counter()
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, sentences):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.counts.update(sentences)
        return _hash_embed(sentences)


def _counting_teacher(fail_after=None, name="hash"):
    fn = CountingFn(fail_after)
    return teachers.CallableTeacher(fn, name=name, dim=DIM), fn


class StringModel(tf.Module):
    """String-in model: mean of hashed word vectors (not unit norm)."""

    def __init__(self):
        super().__init__()
        self.table = tf.Variable(tf.random.stateless_normal([VOCAB, DIM], seed=[1, 2]))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, sentences):
        ids = tf.strings.to_hash_bucket_fast(tf.strings.split(sentences), VOCAB)
        return tf.reduce_mean(tf.gather(self.table, ids), axis=1) * 3.0


class SignatureOnlyModel(tf.Module):
    """String-in model reachable only through its serving_default signature."""

    def __init__(self):
        super().__init__()
        self.inner = StringModel()

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def embed(self, text):
        return {"embedding": self.inner(text)}


class Preprocessor(tf.Module):
    """TF Hub text-API style preprocessor: strings -> BERT-style input dict."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, sentences):
        ids = tf.strings.to_hash_bucket_fast(tf.strings.split(sentences), VOCAB - 1) + 1
        ids = tf.cast(ids.to_tensor(shape=[None, SEQ]), tf.int32)
        return {"input_word_ids": ids, "input_mask": tf.cast(ids > 0, tf.int32),
                "input_type_ids": tf.zeros_like(ids)}


class Encoder(tf.Module):
    """TF Hub text-API style encoder: input dict -> default/pooled_output/sequence_output."""

    def __init__(self):
        super().__init__()
        self.emb = tf.Variable(tf.random.stateless_normal([VOCAB, 16], seed=[3, 4]))
        self.w = tf.Variable(tf.random.stateless_normal([16, DIM], seed=[5, 6]))

    @tf.function(input_signature=[{
        "input_word_ids": tf.TensorSpec([None, SEQ], tf.int32),
        "input_mask": tf.TensorSpec([None, SEQ], tf.int32),
        "input_type_ids": tf.TensorSpec([None, SEQ], tf.int32)}])
    def __call__(self, inputs):
        seq = tf.gather(self.emb, inputs["input_word_ids"])
        mask = tf.cast(inputs["input_mask"], tf.float32)[:, :, None]
        pooled = tf.tanh(tf.reduce_sum(seq * mask, 1) / tf.reduce_sum(mask, 1) @ self.w) * 5.0
        return {"default": pooled, "pooled_output": pooled, "sequence_output": seq}


SENTENCES = ["the dog sleeps", "a cat on the mat", "stock markets fell", "dog"]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("savedmodels")
    out = {}
    m = StringModel()
    out["string"] = str(root / "string")
    tf.saved_model.save(m, out["string"])
    out["string_ref"] = m(tf.constant(SENTENCES)).numpy()
    s = SignatureOnlyModel()
    out["signature"] = str(root / "signature")
    tf.saved_model.save(s, out["signature"], signatures={"serving_default": s.embed})
    out["signature_ref"] = s.embed(tf.constant(SENTENCES))["embedding"].numpy()
    p, e = Preprocessor(), Encoder()
    out["pre"], out["enc"] = str(root / "preprocess"), str(root / "encoder")
    tf.saved_model.save(p, out["pre"])
    tf.saved_model.save(e, out["enc"])
    out["pair_ref"] = e(p(tf.constant(SENTENCES)))["default"].numpy()
    return out


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------ adapters
def test_muse_real_multilingual():
    teacher = teachers.load_teacher("muse")
    pairs = [("The dog is sleeping.", "Der Hund schläft."),
             ("I would like a cup of coffee.", "Je voudrais une tasse de café."),
             ("Where is the train station?", "¿Dónde está la estación de tren?"),
             ("The weather is nice today.", "今日は天気がいいです。"),
             ("My brother is a doctor.", "Мой брат врач.")]
    src = teacher.encode([a for a, _ in pairs])
    tgt = teacher.encode([b for _, b in pairs])
    assert teacher.name == "muse" and teacher.dim == 512
    assert src.shape == tgt.shape == (5, 512) and src.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([src, tgt]), axis=1), 1, atol=1e-5)
    sim = src @ tgt.T
    # every translation is closer than every unrelated sentence, in both directions
    assert np.all(np.argmax(sim, axis=1) == np.arange(5))
    assert np.all(np.argmax(sim, axis=0) == np.arange(5))
    assert sim.diagonal().min() > 0.6 and (sim - np.diag(np.diag(sim))).max() < 0.4
    # thread count changes speed, not results
    two = teachers.MuseTeacher(threads=2).encode([a for a, _ in pairs])
    np.testing.assert_allclose(two, src, atol=1e-5)


def test_muse_retrieves_real_pairs(data_dir):
    root = data_dir
    pairs = [(s, t) for _, s, t in corpus.iter_tsv(os.path.join(root, "train", "deu-eng.tsv"))]
    pairs = pairs[::len(pairs) // 200][:200]
    teacher = teachers.load_teacher("muse")
    sim = teacher.encode([s for s, _ in pairs]) @ teacher.encode([t for _, t in pairs]).T
    assert np.mean(np.argmax(sim, axis=1) == np.arange(len(pairs))) > 0.9


def test_string_savedmodel(saved_models):
    path = saved_models["string"]
    ref = _unit(saved_models["string_ref"])
    assert not np.allclose(np.linalg.norm(saved_models["string_ref"], axis=1), 1)
    for spec in (f"savedmodel:{path}", path, f"hub:{path}"):
        teacher = teachers.load_teacher(spec)
        out = teacher.encode(SENTENCES)
        assert out.shape == (len(SENTENCES), DIM) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, atol=1e-6)
        assert teacher.dim == DIM
    assert teachers.load_teacher(path).name == f"savedmodel:{os.path.abspath(path)}"


def test_signature_only_savedmodel(saved_models):
    teacher = teachers.load_teacher(f"savedmodel:{saved_models['signature']}")
    np.testing.assert_allclose(teacher.encode(SENTENCES), _unit(saved_models["signature_ref"]),
                               atol=1e-6)


def test_preprocessor_encoder_pair(saved_models):
    spec = f"hub:{saved_models['pre']}|{saved_models['enc']}"
    teacher = teachers.load_teacher(spec)
    ref = saved_models["pair_ref"]
    assert not np.allclose(np.linalg.norm(ref, axis=1), 1)
    out = teacher.encode(SENTENCES)
    np.testing.assert_allclose(out, _unit(ref), atol=1e-6)
    assert teacher.dim == DIM and teacher.name == spec
    # one sentence at a time gives the same vectors (no batch leakage)
    np.testing.assert_allclose(np.concatenate([teacher.encode([s]) for s in SENTENCES]), out,
                               atol=1e-6)


def test_labse_constants():
    assert teachers.LABSE_SPEC == (
        "hub:https://tfhub.dev/google/universal-sentence-encoder-cmlm/multilingual-preprocess/2"
        "|https://tfhub.dev/google/LaBSE/2")


def test_callable_teacher():
    teacher = teachers.CallableTeacher(lambda s: _hash_embed(s) * 7, name="seven")
    out = teacher.encode(["a", "b"])
    assert teacher.dim == DIM and teacher.name == "seven"
    np.testing.assert_allclose(out, _unit(_hash_embed(["a", "b"])), atol=1e-6)
    with pytest.raises(ValueError, match="returned 1 rows"):
        teachers.CallableTeacher(lambda s: _hash_embed(s[:1])).encode(["a", "b"])
    with pytest.raises(TypeError, match="list of sentences"):
        teacher.encode("a")


def test_bad_specs(tmp_path):
    for spec in ("", "laser", "hub:a|b|c", "hub:|x"):
        with pytest.raises(ValueError):
            teachers.load_teacher(spec)
    with pytest.raises(FileNotFoundError, match="nope"):
        teachers.load_teacher(f"savedmodel:{tmp_path}/nope")
    with pytest.raises(FileNotFoundError, match="missing"):
        teachers.load_teacher(f"hub:{tmp_path}/missing|{tmp_path}")


# ------------------------------------------------------------------ precomputed shards
LINES = [
    b"Der Hund schl\xc3\xa4ft.\tThe dog sleeps.\n",
    b"Guten Morgen.\tGood morning.\n",
    b"\xff\xfe kaputt\tbroken\n",                      # invalid UTF-8
    b"Ein Feld allein\n",                              # wrong field count
    b"drei\tFelder\thier\n",                           # wrong field count
    b"Hallo.\tHello.\n",
    b"\tNo source side.\n",                            # empty side
    b"Guten Morgen!\tGood morning.\n",                 # repeated English side
    b"Der Hund schl\xc3\xa4ft.\tThe dog sleeps.\n",    # repeated pair
    b"Danke.\t   \n",                                  # whitespace-only side
    b"Wie geht's?\tHow are you?\n",
    b"Ja.\tYes.\n",
    b"Nein.\tNo.\n",
    b"\n",                                             # empty line: one field
    b"Hallo.\tHello.\n",
    b"Bis morgen.\tSee you tomorrow.",                 # last line without newline
]


def _write(path, lines):
    with open(path, "wb") as f:
        f.write(b"".join(lines))
    return str(path)


def _parsed(path):
    with open(path, "rb") as f:
        return [corpus.parse_tsv_line(raw)[0] for raw in f]


def test_shards_aligned_to_physical_lines(tmp_path):
    tsv = _write(tmp_path / "deu-eng.tsv", LINES)
    teacher, fn = _counting_teacher()
    out = str(tmp_path / "emb")
    manifest = store.precompute(teacher, [tsv], out, shard_size=5,
                                             batch_size=3, progress=False)
    src, tgt, valid = store.load_precomputed(out, tsv)
    parsed = _parsed(tsv)
    assert len(parsed) == len(LINES) == corpus.count_lines(tsv)
    assert src.shape == tgt.shape == (len(LINES), DIM) and src.dtype == np.float16
    assert valid.tolist() == [p is not None for p in parsed]
    direct = teachers.CallableTeacher(_hash_embed, dim=DIM)
    for i, pair in enumerate(parsed):
        if pair is None:
            assert not src[i].any() and not tgt[i].any()
        else:  # each row equals encoding that line's sentences on their own
            np.testing.assert_allclose(src[i], direct.encode([pair[0]])[0], atol=1e-3)
            np.testing.assert_allclose(tgt[i], direct.encode([pair[1]])[0], atol=1e-3)
    # every distinct sentence went through the teacher exactly once
    distinct = {s for p in parsed if p for s in p}
    assert set(fn.counts) == distinct and set(fn.counts.values()) == {1}
    entry = manifest["files"][os.path.abspath(tsv)]
    assert entry["complete"] and entry["num_lines"] == len(LINES) and entry["num_shards"] == 4
    assert entry["stats"] == {"ok": 10, "invalid_utf8": 1, "wrong_fields": 3, "empty_side": 2}
    assert manifest["dtype"] == "float16" and manifest["dim"] == DIM
    assert store.verify(out) == []
    # a second run finds everything done and encodes nothing
    teacher2, fn2 = _counting_teacher()
    store.precompute(teacher2, [tsv], out, shard_size=5, progress=False)
    assert fn2.calls == 0


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    lines = LINES + [f"Satz {i}.\tSentence {i}.\n".encode() for i in range(30)]
    tsv = _write(tmp_path / "deu-eng.tsv", lines)
    full = str(tmp_path / "full")
    store.precompute(_counting_teacher()[0], [tsv], full, shard_size=7,
                                  batch_size=4, progress=False)

    out = str(tmp_path / "resumed")
    crashing, fn1 = _counting_teacher(fail_after=6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.precompute(crashing, [tsv], out, shard_size=7, batch_size=4,
                                      progress=False)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    entry = manifest["files"][os.path.abspath(tsv)]
    done = entry["shards"]
    assert 0 < len(done) < entry["num_shards"] and not entry["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        store.load_precomputed(out, tsv)
    assert any("incomplete" in p for p in store.verify(out))

    teacher, fn2 = _counting_teacher()
    store.precompute(teacher, [tsv], out, shard_size=7, batch_size=4, progress=False)
    for a, b in zip(store.load_precomputed(out, tsv),
                    store.load_precomputed(full, tsv)):
        assert np.array_equal(a, b)
    # sentences of shards finished before the crash were not encoded again
    finished = {s for rec in done for p in _parsed(tsv)[rec["start"]:rec["end"]] if p
                for s in p}
    assert finished and not finished & set(fn2.counts)
    assert set(fn2.counts.values()) == {1}
    assert store.verify(out) == []


KILL_SCRIPT = """
import hashlib, os, signal, sys
import numpy as np
from lealla_tf.distill import store
from lealla_tf.embedders import teachers
calls = 0
def fn(sentences):
    global calls
    calls += 1
    if calls > int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
    out = []
    for s in sentences:
        seed = int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "little")
        out.append(np.random.default_rng(seed).normal(size=%d))
    return np.asarray(out, np.float32)
store.precompute(teachers.CallableTeacher(fn, name="hash", dim=%d),
                   [sys.argv[1]], sys.argv[2], shard_size=7, batch_size=4,
                              progress=False)
""" % (DIM, DIM)


def test_resume_after_sigkill(tmp_path):
    """A process killed with SIGKILL mid-run leaves complete shards only; rerun finishes."""
    import subprocess
    import sys
    lines = LINES + [f"Satz {i}.\tSentence {i}.\n".encode() for i in range(30)]
    tsv = _write(tmp_path / "deu-eng.tsv", lines)
    out = str(tmp_path / "killed")
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, tsv, out, "7"],
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    entry = json.load(open(os.path.join(out, "manifest.json")))["files"][os.path.abspath(tsv)]
    assert 0 < len(entry["shards"]) < entry["num_shards"]
    teacher, fn = _counting_teacher()
    store.precompute(teacher, [tsv], out, shard_size=7, batch_size=4, progress=False)
    full = str(tmp_path / "full")
    store.precompute(_counting_teacher()[0], [tsv], full, shard_size=7,
                                  batch_size=4, progress=False)
    for a, b in zip(store.load_precomputed(out, tsv),
                    store.load_precomputed(full, tsv)):
        assert np.array_equal(a, b)
    assert store.verify(out) == []


def test_one_writer_per_directory(tmp_path):
    tsv = _write(tmp_path / "deu-eng.tsv", LINES)
    out = str(tmp_path / "emb")
    os.makedirs(out)
    with store.exclusive(out):
        with pytest.raises(ValueError, match="another process"):
            store.precompute(_counting_teacher()[0], [tsv], out, progress=False)
    store.precompute(_counting_teacher()[0], [tsv], out, progress=False)


def test_resume_adopts_shard_written_before_manifest(tmp_path):
    """A kill between a shard's rename and the manifest update loses no work."""
    tsv = _write(tmp_path / "deu-eng.tsv", LINES)
    out = str(tmp_path / "emb")
    store.precompute(_counting_teacher()[0], [tsv], out, shard_size=5, progress=False)
    ref = store.load_precomputed(out, tsv)
    path = os.path.join(out, "manifest.json")
    manifest = json.load(open(path))
    entry = manifest["files"][os.path.abspath(tsv)]
    entry["shards"] = entry["shards"][:-1]
    entry["complete"] = False
    json.dump(manifest, open(path, "w"))
    shard_dir = os.path.join(out, entry["dir"])
    leftover = os.path.join(shard_dir, "000000010-000000015.npz.tmp-123")
    open(leftover, "wb").write(b"partial")
    teacher, fn = _counting_teacher()
    store.precompute(teacher, [tsv], out, shard_size=5, progress=False)
    assert fn.calls == 0 and not os.path.exists(leftover)
    for a, b in zip(store.load_precomputed(out, tsv), ref):
        assert np.array_equal(a, b)


def test_changed_file_detected(tmp_path):
    tsv = _write(tmp_path / "deu-eng.tsv", LINES)
    out = str(tmp_path / "emb")
    store.precompute(_counting_teacher()[0], [tsv], out, shard_size=5, progress=False)
    # same size, other content: only the hashes can tell
    _write(tsv, [LINES[0].replace(b"Hund", b"Katz")] + LINES[1:])
    assert os.path.getsize(tsv) == len(b"".join(LINES))
    with pytest.raises(ValueError, match="changed"):
        store.precompute(_counting_teacher()[0], [tsv], out, shard_size=5,
                                      progress=False)
    with pytest.raises(ValueError, match="changed"):
        store.load_precomputed(out, tsv)
    assert any("lines changed" in p for p in store.verify(out))
    teacher, fn = _counting_teacher()
    store.precompute(teacher, [tsv], out, shard_size=5, overwrite=True, progress=False)
    src, _, _ = store.load_precomputed(out, tsv)
    np.testing.assert_allclose(src[0], _unit(_hash_embed(["Der Katz schläft."]))[0], atol=1e-3)
    assert store.verify(out) == []


def test_other_teacher_or_shard_size_refused(tmp_path):
    tsv = _write(tmp_path / "deu-eng.tsv", LINES)
    out = str(tmp_path / "emb")
    store.precompute(_counting_teacher()[0], [tsv], out, shard_size=5, progress=False)
    with pytest.raises(ValueError, match="other teacher"):
        store.precompute(_counting_teacher(name="other")[0], [tsv], out,
                                      shard_size=5, progress=False)
    with pytest.raises(ValueError, match="shard_size"):
        store.precompute(_counting_teacher()[0], [tsv], out, shard_size=6,
                                      progress=False)
    store.precompute(_counting_teacher(name="other")[0], [tsv], out, shard_size=6,
                                  overwrite=True, progress=False)
    assert json.load(open(os.path.join(out, "manifest.json")))["teacher"] == "other"
    assert store.verify(out) == []


def test_dedup_across_files_and_moved_corpus(tmp_path):
    a = _write(tmp_path / "deu-eng.tsv", LINES)
    b = _write(tmp_path / "fra-eng.tsv", [b"Bonjour.\tGood morning.\n", b"Oui.\tYes.\n",
                                          b"Non.\tNo.\n", b"Merci.\tThank you.\n"])
    out = str(tmp_path / "emb")
    teacher, fn = _counting_teacher()
    store.precompute(teacher, [b], out, shard_size=3, progress=False)
    store.precompute(teacher, [a, b], out, shard_size=3, progress=False)
    assert set(fn.counts.values()) == {1}  # "Good morning." etc. encoded once over both runs
    assert fn.counts["Good morning."] == 1 and fn.counts["Yes."] == 1
    src, tgt, valid = store.load_precomputed(out, b)
    np.testing.assert_allclose(tgt[0], _unit(_hash_embed(["Good morning."]))[0], atol=1e-3)
    # the same content under another path is found by its hash
    moved = _write(tmp_path / "copy.tsv", open(b, "rb").readlines())
    for x, y in zip(store.load_precomputed(out, moved), (src, tgt, valid)):
        assert np.array_equal(x, y)


def test_teachers_and_store_do_not_import_each_other():
    """The store (teacher_embeddings) builds on teachers; teachers knows nothing of it."""
    import subprocess
    import sys
    code = ("import sys; from lealla_tf.embedders import teachers; "
            "assert 'lealla_tf.distill.store' not in sys.modules; "
            "from lealla_tf.distill import store as t; t.precompute; t.verify")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not hasattr(teachers, "precompute")


def test_cli_teacher_embed(tmp_path, saved_models, capsys):
    _write(tmp_path / "deu-eng.tsv", LINES)
    _write(tmp_path / "fra-eng.tsv", [b"Bonjour.\tGood morning.\n", b"Oui.\tYes.\n"])
    out = str(tmp_path / "emb")
    args = ["teacher", "embed", "--teacher", f"savedmodel:{saved_models['string']}",
            "--input", "*-eng.tsv", "--data-dir", str(tmp_path), "--output", out,
            "--shard-size", "4", "--batch-size", "2"]
    assert cli.main(args) == 0
    assert "2 files" in capsys.readouterr().out
    assert cli.main(["teacher", "verify", "--output", out]) == 0
    src, tgt, valid = store.load_precomputed(out, str(tmp_path / "fra-eng.tsv"))
    ref = teachers.load_teacher(saved_models["string"]).encode(["Bonjour.", "Oui."])
    np.testing.assert_allclose(src.astype(np.float32), ref, atol=1e-3)
    _write(tmp_path / "fra-eng.tsv", [b"Salut.\tHi.\n"])
    assert cli.main(args) == 2
    assert "changed" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0
    assert cli.main(["teacher", "embed", "--teacher", "nonsense", "--input", "*.tsv",
                     "--data-dir", str(tmp_path), "--output", out]) == 2
