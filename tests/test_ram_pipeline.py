"""The whole pipeline with every output on TensorFlow's in-memory ``ram://`` file system:
vocabulary -> teacher embeddings -> training (interrupted, then resumed) -> export ->
evaluation (embedding cache and results). Nothing may assume a local disk, which is what
a TPU pod writing to ``gs://`` needs.
"""

import os

import numpy as np
import pytest

from lealla_tf import config, embedders, export, fileio
from lealla_tf.distill import store
from lealla_tf.evaluation import tatoeba
from lealla_tf.text import sentencepiece
from lealla_tf.training import dual_encoder
from support import hermetic

ROOT = "ram://pipeline_e2e"


class Killed(Exception):
    """Stands in for a killed process (ram:// lives in this process only)."""


def _teacher(dim=16):
    return hermetic.byte_count_teacher(dim, name="bytes")


def _cfg(files, vocab, emb, steps):
    return config.load("tiny", [
        "data.train_files=[" + ",".join(files) + "]", f"data.teacher_embeddings={emb}",
        f"vocab.model_file={vocab}", "model.vocab_size=200", f"train.steps={steps}",
        "train.global_batch_size=8", "train.warmup_steps=1", "train.checkpoint_every=2",
        "train.summary_every=2", "loss.feature_distill_weight=1.0", "teacher.dim=16"])


@pytest.fixture(scope="module")
def tatoeba_dir(tmp_path_factory):
    """Synthetic Tatoeba-layout test files (inputs stay local; outputs go to ram://)."""
    d = tmp_path_factory.mktemp("tatoeba")
    en = hermetic.english_sentences(60, seed=99)
    (d / "tatoeba.deu-eng.deu").write_text(
        "".join(hermetic.translate(s, "deu") + "\n" for s in en), encoding="utf-8")
    (d / "tatoeba.deu-eng.eng").write_text("".join(s + "\n" for s in en), encoding="utf-8")
    return str(d)


def test_pipeline_on_ram(hermetic_files, tatoeba_dir):
    vocab = sentencepiece.train_vocab(hermetic_files, f"{ROOT}/vocab", vocab_size=200,
                                      sentences_per_language=300, progress=False)
    assert vocab == f"{ROOT}/vocab/spm.model" and fileio.exists(vocab)
    assert not os.path.exists(vocab.split("://")[1])  # nothing leaked onto the local disk

    emb = f"{ROOT}/teacher"
    store.precompute(_teacher(), hermetic_files, emb, shard_size=100,
                                  progress=False)
    assert store.verify(emb) == []

    run, straight = f"{ROOT}/run", f"{ROOT}/straight"

    def kill_after_2(step, metrics):
        if step >= 2:
            raise Killed()
    with pytest.raises(Killed):
        dual_encoder.train(_cfg(hermetic_files, vocab, emb, 4), run, progress=False,
                       on_loop_end=kill_after_2)
    resumed = dual_encoder.train(_cfg(hermetic_files, vocab, emb, 4), run, progress=False)
    whole = dual_encoder.train(_cfg(hermetic_files, vocab, emb, 4), straight, progress=False)
    assert resumed.step == whole.step == 4
    np.testing.assert_allclose(resumed.metrics["loss"], whole.metrics["loss"], rtol=1e-5)

    out = f"{ROOT}/export"
    info = export.export_run(run, out, tflite="fp32", progress=False)
    assert info["files"]["tflite-fp32"]["min_cosine"] >= 0.9999
    assert fileio.exists(f"{out}/README.md") and fileio.exists(f"{out}/export_info.json")

    saved = embedders.load(out)
    lite = embedders.load(f"{out}/lealla-fp32.tflite")
    straight_model = embedders.load(f"run:{straight}")
    probe = ["Lecityen lesonge.", "City song.", "", "ковов"]
    a = saved.encode(probe)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    assert float(np.min(np.sum(a * lite.encode(probe), axis=1))) >= 0.9999
    # Resumed training = uninterrupted training, through the export.
    np.testing.assert_allclose(a, straight_model.encode(probe), atol=1e-5)

    cache = f"{ROOT}/cache"
    res = tatoeba.evaluate(saved, ["deu"], data_dir=tatoeba_dir, cache=cache, progress=False)
    assert 0 <= res["average"]["mean"] <= 100
    assert fileio.glob(f"{cache}/*/*.npy")
    again = tatoeba.evaluate(saved, ["deu"], data_dir=tatoeba_dir, cache=cache, progress=False)
    assert again["average"] == res["average"]
    tatoeba.save(res, f"{ROOT}/results/tatoeba.json", plot=f"{ROOT}/results/tatoeba.png")
    assert fileio.read_bytes(f"{ROOT}/results/tatoeba.png")[:4] == b"\x89PNG"
    assert '"average"' in fileio.read_text(f"{ROOT}/results/tatoeba.json")
