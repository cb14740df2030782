"""Compact teacher shards: PCA-reduced and/or float16/int8 rows (lealla teacher embed --dim
--dtype), read back transparently by training.

Stated round-trip errors, against the teacher's float32 rows ``x`` (unit norm) and the
stored projection ``P`` (``[d, D]``, orthonormal rows):

- float32 rows equal ``x @ P.T`` within 1e-6; float16 within 1e-3 (|values| <= 1);
- int8 rows within half their row's scale (``max|row| / 127 / 2``) plus 1e-6;
- mapped back (``rows @ P``), the mean squared error over the whole corpus is within 0.05
  of the share of the squared norm the PCA drops on its sample (``1 - energy``).
"""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from lealla_tf import config
from lealla_tf.data import pipeline
from lealla_tf.distill import store
from support import hermetic

DIM = 16


@pytest.fixture(scope="module")
def teacher():
    return hermetic.byte_count_teacher(DIM)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher, hermetic_files):
    folder = str(tmp_path_factory.mktemp("full"))
    store.precompute(teacher, hermetic_files, folder, shard_size=128, dtype="float32",
                     progress=False)
    return folder


def _rows(folder, files):
    parts = [store.load_precomputed(folder, f) for f in files]
    return (np.concatenate([p[0] for p in parts]).astype(np.float32),
            np.concatenate([p[1] for p in parts]).astype(np.float32))


@pytest.mark.parametrize("dim,dtype", [(0, "float16"), (0, "int8"), (6, "float32"),
                                       (6, "float16"), (6, "int8")])
def test_round_trip_within_stated_error(tmp_path, teacher, reference, hermetic_files, dim,
                                        dtype):
    folder = str(tmp_path / "compact")
    manifest = store.precompute(teacher, hermetic_files, folder, shard_size=128, dim=dim,
                                dtype=dtype, pca_sample=400, progress=False)
    x_src, x_tgt = _rows(reference, hermetic_files)
    y_src, y_tgt = _rows(folder, hermetic_files)
    stored_dim = dim or DIM
    assert manifest["dim"] == y_src.shape[1] == stored_dim and manifest["teacher_dim"] == DIM
    assert manifest["dtype"] == dtype
    projection = store.load_projection(folder)
    assert (projection is None) == (dim == 0)
    p = np.eye(DIM, dtype=np.float32) if projection is None else projection["components"]
    if projection is not None:
        np.testing.assert_allclose(p @ p.T, np.eye(dim), atol=1e-5)  # orthonormal rows
        assert 0.5 < projection["energy"] < 1 and projection["sample_size"] == 400
    for x, y in ((x_src, y_src), (x_tgt, y_tgt)):
        exact = x @ p.T
        err = np.abs(y - exact)
        if dtype == "float32":
            assert err.max() <= 1e-6
        elif dtype == "float16":
            assert err.max() <= 1e-3
        else:
            # (+ the float16 rounding of the copy training keeps in memory: <= 2.5e-4)
            bound = np.abs(exact).max(axis=1) / 127 / 2 + 2.5e-4
            assert np.all(err.max(axis=1) <= bound)
        back = store.reconstruct(folder, y)
        lost = np.mean(np.sum((x - back) ** 2, axis=1))
        dropped = 0.0 if projection is None else 1 - projection["energy"]
        assert lost <= dropped + (0.05 if projection is not None else 1e-3), (lost, dropped)
        if projection is not None:
            assert lost > 1e-3  # really reduced
    if dtype == "int8":  # the shard itself: within half a step of its row's scale
        entry = manifest["files"][os.path.abspath(hermetic_files[0])]
        with np.load(os.path.join(folder, entry["dir"], entry["shards"][0]["file"])) as z:
            assert z["src"].dtype == np.int8 and z["src_scale"].shape == (128,)
            decoded = store.decode_rows(z, "src")
        exact = x_src[:128] @ p.T
        bound = np.abs(exact).max(axis=1) / 127 / 2 + 1e-6
        assert np.all(np.abs(decoded - exact).max(axis=1) <= bound)
        assert np.abs(decoded - exact).max() > 1e-4  # really quantised
    assert store.verify(folder) == []


def test_mismatched_projection_refused(tmp_path, teacher, hermetic_files):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    store.precompute(teacher, hermetic_files, a, dim=6, dtype="int8", pca_sample=300,
                     progress=False)
    store.precompute(teacher, hermetic_files, b, dim=6, dtype="int8", pca_sample=200,
                     progress=False)
    good = open(os.path.join(a, store.PROJECTION), "rb").read()
    other = open(os.path.join(b, store.PROJECTION), "rb").read()
    assert hashlib.sha256(good).digest() != hashlib.sha256(other).digest()
    shutil.copy(os.path.join(b, store.PROJECTION), os.path.join(a, store.PROJECTION))
    with pytest.raises(ValueError, match="does not match the shards"):
        store.load_precomputed(a, hermetic_files[0])
    assert any("does not match the shards" in p for p in store.verify(a))
    with pytest.raises(ValueError, match="does not match the shards"):
        pipeline.load_corpus(hermetic_files, teacher_loader=store.loader(a))
    os.remove(os.path.join(a, store.PROJECTION))
    with pytest.raises(ValueError, match="projection.npz is missing"):
        store.load_precomputed(a, hermetic_files[0])
    # A shard made with another projection is refused too.
    with open(os.path.join(a, store.PROJECTION), "wb") as f:
        f.write(good)
    manifest = json.load(open(os.path.join(a, store.MANIFEST)))
    entry = manifest["files"][os.path.abspath(hermetic_files[0])]
    shard = os.path.join(a, entry["dir"], entry["shards"][0]["file"])
    shutil.copy(os.path.join(b, entry["dir"], entry["shards"][0]["file"]), shard)
    with pytest.raises(ValueError, match="another projection"):
        store.load_precomputed(a, hermetic_files[0])
    assert any("another projection" in p for p in store.verify(a))


def test_resume_keeps_projection_and_other_layouts_are_refused(tmp_path, teacher,
                                                               hermetic_files):
    folder = str(tmp_path / "c")
    first = store.precompute(teacher, hermetic_files[:2], folder, dim=6, dtype="float16",
                             pca_sample=300, progress=False)
    projection = open(os.path.join(folder, store.PROJECTION), "rb").read()
    again = store.precompute(teacher, hermetic_files, folder, dim=6, dtype="float16",
                             pca_sample=300, progress=False)
    assert again["projection"] == first["projection"]
    assert open(os.path.join(folder, store.PROJECTION), "rb").read() == projection
    assert again["last_run"]["sentences_encoded"] > 0  # only the two new files
    assert store.precompute(teacher, hermetic_files, folder, dim=6, dtype="float16",
                            progress=False)["last_run"]["sentences_encoded"] == 0
    for dim, dtype in ((4, "float16"), (6, "int8"), (0, "float16")):
        with pytest.raises(ValueError, match="holds other teacher embeddings"):
            store.precompute(teacher, hermetic_files, folder, dim=dim, dtype=dtype,
                             progress=False)
    # Nothing was lost: the projection and shards still read.
    assert open(os.path.join(folder, store.PROJECTION), "rb").read() == projection
    assert store.verify(folder) == []
    with pytest.raises(ValueError, match="exceeds the teacher's dimension"):
        store.precompute(teacher, hermetic_files, str(tmp_path / "d"), dim=DIM + 1,
                         progress=False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        store.precompute(teacher, hermetic_files, str(tmp_path / "d"), dtype="int4",
                         progress=False)


def test_training_reads_compact_shards(tmp_path, teacher, hermetic_files, hermetic_config,
                                       hermetic_vocab):
    from lealla_tf.training import dual_encoder
    folder = str(tmp_path / "int8")
    store.precompute(teacher, hermetic_files, folder, dim=6, dtype="int8", pca_sample=300,
                     progress=False)
    corpus_ = pipeline.load_corpus(hermetic_files, teacher_loader=store.loader(folder))
    assert corpus_.teacher_dim == 6 and corpus_.teacher_dtype == "float16"
    cfg = config.load("tiny", [
        f"vocab.model_file={hermetic_vocab}", f"model.vocab_size={hermetic_config.model.vocab_size}",
        f"data.train_files=[{','.join(hermetic_files)}]", f"data.teacher_embeddings={folder}",
        "train.steps=2", "train.steps_per_loop=2", "train.global_batch_size=16",
        "loss.feature_distill_weight=1.0", "loss.logit_distill_weight=1.0"])
    # teacher.dim is the teacher's own (16), also for shards it reduced to 6.
    cfg.teacher.dim = DIM + 1
    with pytest.raises(config.ConfigError, match="teacher.dim is 17"):
        dual_encoder.Trainer(cfg, str(tmp_path / "bad"), progress=False)
    cfg.teacher.dim = DIM
    trainer = dual_encoder.Trainer(cfg, str(tmp_path / "run"), progress=False)
    assert trainer.loss_layer.teacher_dim == 6
    result = trainer.run()
    assert np.isfinite(result.metrics["loss"]) and result.metrics["feature_distill"] > 0
