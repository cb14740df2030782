"""Embedding runner: order, batching by length, the on-disk cache, the callable adapter."""

import os
import shutil

import numpy as np
import pytest

from lealla_tf.evaluation import runner


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LEALLA_CACHE_DIR", str(tmp_path / "cache"))


class Recorder:
    """Embeds a sentence as [len, first char code, 1]; records every batch it sees."""

    def __init__(self, name="rec"):
        self.name = name
        self.batches = []

    def encode(self, sentences):
        self.batches.append(list(sentences))
        return np.array([[len(s), ord(s[0]) if s else 0, 1.0] for s in sentences], np.float32)


def _write(path, lines):
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    return str(path)


def test_rows_come_back_in_input_order_and_batches_are_length_sorted():
    sents = ["a" * n for n in (3, 9, 1, 7, 5, 2, 8)]
    rec = Recorder()
    out = runner.embed_sentences(rec, sents, batch_size=3, progress=False)
    np.testing.assert_array_equal(out[:, 0], [len(s) for s in sents])
    assert out.dtype == np.float32 and out.shape == (7, 3)
    lengths = [[len(s) for s in b] for b in rec.batches]
    assert lengths == [[9, 8, 7], [5, 3, 2], [1]]


def test_read_lines_keeps_empty_lines_and_alignment(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"one\n\nthree\r\nfour")
    assert runner.read_lines(str(p)) == ["one", "", "three", "four"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        runner.read_lines(str(tmp_path / "missing.txt"))


def test_cache_same_model_never_embeds_the_same_file_twice(tmp_path):
    f = _write(tmp_path / "s.txt", ["hello", "world", "!"])
    rec = Recorder()
    a = runner.embed_file(rec, f, progress=False)
    calls = len(rec.batches)
    b = runner.embed_file(rec, f, progress=False)
    assert len(rec.batches) == calls  # served from the cache
    np.testing.assert_array_equal(a, b)
    # The cache lives under $LEALLA_CACHE_DIR/embeddings.
    assert runner.cached_path(rec, f).startswith(str(tmp_path / "cache" / "embeddings"))
    assert os.path.exists(runner.cached_path(rec, f))
    # A copy elsewhere has the same content: still a hit.
    copy = tmp_path / "sub" / "copy.txt"
    copy.parent.mkdir()
    shutil.copy(f, copy)
    runner.embed_file(rec, str(copy), progress=False)
    assert len(rec.batches) == calls


def test_cache_misses_for_another_model_or_changed_content(tmp_path):
    f = _write(tmp_path / "s.txt", ["hello", "world"])
    rec = Recorder("m1")
    runner.embed_file(rec, f, progress=False)
    n = len(rec.batches)
    other = Recorder("m2")
    runner.embed_file(other, f, progress=False)
    assert len(other.batches) == 1
    _write(tmp_path / "s.txt", ["hello", "world", "again"])
    out = runner.embed_file(rec, f, progress=False)
    assert len(rec.batches) == n + 1 and out.shape == (3, 3)
    # use_cache=False always embeds.
    runner.embed_file(rec, f, progress=False, use_cache=False)
    assert len(rec.batches) == n + 2


def test_embed_file_mmap_and_explicit_cache_dir(tmp_path):
    f = _write(tmp_path / "s.txt", ["x", "yy"])
    rec = Recorder()
    m = runner.embed_file(rec, f, cache=str(tmp_path / "elsewhere"), mmap=True, progress=False)
    assert isinstance(m, np.memmap)
    assert os.listdir(tmp_path / "elsewhere")
    np.testing.assert_array_equal(np.asarray(m)[:, 0], [1, 2])


def test_embed_texts_cache():
    rec = Recorder()
    a = runner.embed_texts(rec, ["b", "aa"], progress=False)
    b = runner.embed_texts(rec, ["b", "aa"], progress=False)
    assert len(rec.batches) == 1
    np.testing.assert_array_equal(a, b)
    runner.embed_texts(rec, ["aa", "b"], progress=False)  # other order, other key
    assert len(rec.batches) == 2


def test_callable_embedder_and_bad_outputs():
    emb = runner.CallableEmbedder(lambda s: [[1.0, 2.0]] * len(s), name="const")
    out = runner.embed_sentences(emb, ["a", "b", "c"], batch_size=2, progress=False)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    bad = runner.CallableEmbedder(lambda s: np.zeros((len(s) + 1, 2)), name="bad")
    with pytest.raises(ValueError, match="bad"):
        runner.embed_sentences(bad, ["a"], progress=False)
    with pytest.raises(ValueError):
        runner.CallableEmbedder(lambda s: s, name="")
    with pytest.raises(ValueError):
        runner.embed_sentences(emb, ["a"], batch_size=0)


def test_load_callable_spec(tmp_path, monkeypatch):
    (tmp_path / "my_encoders.py").write_text(
        "import numpy as np\n"
        "def enc(sentences):\n"
        "    return np.ones((len(sentences), 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    emb = runner.load_callable("py:my_encoders:enc")
    assert emb.name == "py:my_encoders:enc"
    assert emb.encode(["a", "b"]).shape == (2, 4)
    with pytest.raises(ValueError, match="no attribute"):
        runner.load_callable("py:my_encoders:nope")
    with pytest.raises(ValueError, match="must look like"):
        runner.load_callable("py:my_encoders")


def test_cache_misses_when_a_model_on_disk_changes(tmp_path):
    f = _write(tmp_path / "s.txt", ["hello", "world"])
    model_dir = tmp_path / "export"
    model_dir.mkdir()
    (model_dir / "saved_model.pb").write_bytes(b"v1")
    rec = Recorder(name=str(model_dir))
    runner.embed_file(rec, f, progress=False)
    runner.embed_file(rec, f, progress=False)
    assert len(rec.batches) == 1
    (model_dir / "saved_model.pb").write_bytes(b"version 2")  # re-exported to the same path
    runner.embed_file(rec, f, progress=False)
    assert len(rec.batches) == 2
    rec.fingerprint = "weights-sha-123"  # an explicit fingerprint wins
    runner.embed_file(rec, f, progress=False)
    runner.embed_file(rec, f, progress=False)
    assert len(rec.batches) == 3
