"""lealla_tf.fileio, and the stages that store through it, on TensorFlow's ``ram://``
file system (nothing may assume a local disk)."""

import os
import threading

import numpy as np
import pytest

from lealla_tf import fileio, runs
from lealla_tf.distill import store
from support import hermetic


def _hash_teacher(dim=16):
    return hermetic.byte_count_teacher(dim, name="hash")


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
    manifest = store.precompute(teacher, hermetic_files, out, shard_size=128,
                                             progress=False)
    assert set(manifest["files"]) == {os.path.abspath(p) for p in hermetic_files}
    assert store.verify(out) == []
    src, tgt, valid = store.load_precomputed(out, hermetic_files[0])
    assert src.shape == (300, 16) and valid.all()
    with open(hermetic_files[0], encoding="utf-8") as f:
        first = f.readline().rstrip("\n").split("\t")
    np.testing.assert_allclose(src[0], teacher.encode([first[0]])[0], atol=2e-3)
    np.testing.assert_allclose(tgt[0], teacher.encode([first[1]])[0], atol=2e-3)
    # Resuming does nothing new; a second writer is refused while the marker stands.
    again = store.precompute(teacher, hermetic_files, out, shard_size=128,
                                          progress=False)
    assert again["last_run"]["sentences_encoded"] == 0
    fileio.atomic_write(fileio.join(out, ".lock"), "another host pid 1\n")
    with pytest.raises(ValueError, match="another process"):
        store.precompute(teacher, hermetic_files, out, shard_size=128,
                                      progress=False)
    # A shard lost on the store is reported by verify.
    shard = next(p for p in fileio.walk_files(out) if p.endswith(".npz"))
    fileio.remove(shard)
    assert any("unreadable shard" in p or "missing" in p for p in store.verify(out))


def _tiny_run_config(files, steps, embeddings=""):
    from lealla_tf import config
    return config.load("tiny", [
        "data.train_files=[" + ",".join(files) + "]", f"data.teacher_embeddings={embeddings}",
        "vocab.vocab_size=200", "vocab.sentences_per_language=300", "model.vocab_size=200",
        f"train.steps={steps}", "train.global_batch_size=8", "train.warmup_steps=1",
        "train.checkpoint_every=2", "train.summary_every=2",
        "loss.feature_distill_weight=1.0" if embeddings else "loss.feature_distill_weight=0.0"])


def test_vocab_teacher_train_resume_on_ram(hermetic_files):
    """Teacher embeddings, vocabulary, checkpoints, logs and config of a run all live on
    ``ram://``; a second call resumes from the stored checkpoint; the encoder restores."""
    import tensorflow as tf

    from lealla_tf.training import dual_encoder
    emb = "ram://pipeline/teacher"
    store.precompute(_hash_teacher(), hermetic_files, emb, progress=False)
    run = "ram://pipeline/run"
    first = dual_encoder.train(_tiny_run_config(hermetic_files, 2, emb), run, progress=False)
    assert first.step == 2 and first.checkpoint.startswith(run)
    for name in ("config.yaml", "vocab/spm.model", "data_stats.json"):
        assert fileio.exists(fileio.join(run, name)), name
    assert fileio.glob(fileio.join(run, "logs", "train", "*"))
    resumed = dual_encoder.train(_tiny_run_config(hermetic_files, 4, emb), run, progress=False)
    assert resumed.step == 4 and resumed.checkpoint.endswith("-4")
    cfg, pre, encoder = runs.restore_encoder(run)
    vectors = encoder(pre(tf.constant(["dog", "Hund"])))["default"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
