"""lealla_tf.fileio, and the stages that store through it, on TensorFlow's ``ram://``
file system (nothing may assume a local disk)."""

import os
import threading

import numpy as np
import pytest

from lealla_tf import fileio, teacher_embeddings, teachers


def _hash_teacher(dim=16):
    """A deterministic stand-in teacher: a fixed random projection of character counts."""
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(256, dim))

    def fn(sentences):
        counts = np.zeros((len(sentences), 256))
        for i, s in enumerate(sentences):
            for b in s.encode("utf-8"):
                counts[i, b] += 1
        return counts @ proj
    return teachers.CallableTeacher(fn, name="hash", dim=dim)


@pytest.mark.parametrize("root", ["ram://fileio_basics", "LOCAL"])
def test_basics_on_local_and_ram(root, tmp_path):
    root = str(tmp_path) if root == "LOCAL" else root
    path = fileio.join(root, "a", "b.txt")
    fileio.atomic_write(path, "héllo\n")
    assert fileio.read_text(path) == "héllo\n" and fileio.exists(path)
    assert fileio.listdir(fileio.join(root, "a")) == ["b.txt"]  # no temporary left behind
    fileio.atomic_write(path, b"new")
    assert fileio.read_bytes(path) == b"new"
    fileio.copytree(fileio.join(root, "a"), fileio.join(root, "c"))
    assert fileio.read_bytes(fileio.join(root, "c", "b.txt")) == b"new"
    assert fileio.glob(fileio.join(root, "*", "b.txt")) == [
        fileio.join(root, "a", "b.txt"), fileio.join(root, "c", "b.txt")]
    assert fileio.tree_bytes(root) == 6
    with pytest.raises(FileNotFoundError):
        fileio.read_bytes(fileio.join(root, "missing"))
    with fileio.local_copy(fileio.join(root, "c")) as local:
        with open(os.path.join(local, "b.txt"), "rb") as f:
            assert f.read() == b"new"
    with fileio.staged_dir(fileio.join(root, "staged")) as local:
        with open(os.path.join(local, "x.bin"), "wb") as f:
            f.write(b"xyz")
    assert fileio.read_bytes(fileio.join(root, "staged", "x.bin")) == b"xyz"
    fileio.rmtree(fileio.join(root, "c"))
    assert not fileio.exists(fileio.join(root, "c"))


def test_join_and_dirname_keep_the_scheme():
    assert fileio.join("gs://b/runs", "x", "y.json") == "gs://b/runs/x/y.json"
    assert fileio.dirname("gs://b/runs/x/") == "gs://b/runs"
    assert fileio.normpath("ram://a/b/../c") == "ram://a/c"
    assert fileio.join("ram://a", "gs://other") == "gs://other"
    assert fileio.is_local("/tmp/x") and not fileio.is_local("gs://b/x")


@pytest.mark.parametrize("root", ["ram://locks", "LOCAL"])
def test_single_writer_is_checked(root, tmp_path):
    root = str(tmp_path) if root == "LOCAL" else root
    lock = fileio.join(root, ".lock")
    with fileio.writer_lock(lock):
        errors = []

        def second():  # a second writer (another thread: fcntl locks are per open file)
            try:
                with fileio.writer_lock(lock):
                    pass
            except fileio.LockedError as e:
                errors.append(e)
        t = threading.Thread(target=second)
        t.start()
        t.join()
        assert len(errors) == 1
    with fileio.writer_lock(lock):  # released when the block ends
        pass


def test_teacher_embeddings_on_ram(hermetic_files):
    out = "ram://teacher_embeddings/hash"
    teacher = _hash_teacher()
    manifest = teacher_embeddings.precompute(teacher, hermetic_files, out, shard_size=128,
                                             progress=False)
    assert set(manifest["files"]) == {os.path.abspath(p) for p in hermetic_files}
    assert teacher_embeddings.verify(out) == []
    src, tgt, valid = teacher_embeddings.load_precomputed(out, hermetic_files[0])
    assert src.shape == (300, 16) and valid.all()
    with open(hermetic_files[0], encoding="utf-8") as f:
        first = f.readline().rstrip("\n").split("\t")
    np.testing.assert_allclose(src[0], teacher.encode([first[0]])[0], atol=2e-3)
    np.testing.assert_allclose(tgt[0], teacher.encode([first[1]])[0], atol=2e-3)
    # Resuming does nothing new; a second writer is refused while the marker stands.
    again = teacher_embeddings.precompute(teacher, hermetic_files, out, shard_size=128,
                                          progress=False)
    assert again["last_run"]["sentences_encoded"] == 0
    fileio.atomic_write(fileio.join(out, ".lock"), "another host pid 1\n")
    with pytest.raises(ValueError, match="another process"):
        teacher_embeddings.precompute(teacher, hermetic_files, out, shard_size=128,
                                      progress=False)
    # A shard lost on the store is reported by verify.
    shard = next(p for p in fileio.walk_files(out) if p.endswith(".npz"))
    fileio.remove(shard)
    assert any("unreadable shard" in p or "missing" in p for p in teacher_embeddings.verify(out))
