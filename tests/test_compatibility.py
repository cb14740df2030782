"""Files users already have: a run directory and an export written by the flat package
(commit e9c2098, before the subpackages; tests/data/legacy/README.md) still restore to the
same embeddings as the export, load through the embedder specs and TF Hub, resume training
with ``lealla train`` and export again."""

import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer ops)

from lealla_tf import cli, embedders, export, runs
from support import harness, hermetic

LEGACY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "legacy")
RUN = os.path.join(LEGACY, "run")
EXPORT = os.path.join(LEGACY, "export")
SENTENCES = ["dog", "Hund", "собака", "σκύλος", "The weather is nice today.",
             "Das Wetter ist heute schön.", "", " ", "x" * 500]


@pytest.fixture(scope="module")
def restored():
    """``(config, embeddings)`` of the legacy run restored by the current code."""
    cfg, pre, encoder = runs.restore_encoder(RUN)
    return cfg, harness.embed(pre, encoder, SENTENCES)


def test_legacy_run_restores_as_its_export(restored):
    cfg, memory = restored
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.vocab_size) == (1, 16, 120)
    assert memory.shape == (len(SENTENCES), 16)
    np.testing.assert_allclose(np.linalg.norm(memory, axis=1), 1.0, atol=1e-5)
    from_spec = embedders.load(f"export:{EXPORT}").encode(SENTENCES)
    np.testing.assert_allclose(from_spec, memory, atol=1e-6)
    import tensorflow_hub as hub
    layer = hub.KerasLayer(os.path.join(EXPORT, export.LEALLA))
    np.testing.assert_allclose(layer(tf.constant(SENTENCES)).numpy(), memory, atol=1e-6)
    # The legacy TFLite file and the run itself as a model spec agree too.
    got = harness.export_embeddings(EXPORT, SENTENCES, tflite=("fp32",))
    np.testing.assert_allclose(got["lealla"], memory, atol=1e-6)
    assert export.cosine_rows(got["fp32"], memory).min() >= export.TFLITE_MIN_COSINE["fp32"]
    np.testing.assert_allclose(embedders.load(f"run:{RUN}").encode(SENTENCES), memory,
                               atol=1e-6)


def test_legacy_run_resumes_and_exports(restored, tmp_path, monkeypatch, capsys, caplog):
    # A copy (the fixture stays as it was written), beside the corpus its config names.
    shutil.copytree(RUN, tmp_path / "run")
    hermetic.write_corpus(str(tmp_path / "corpus"), ("deu", "rus"), pairs=60)
    monkeypatch.chdir(tmp_path)
    _, _, legacy = runs.restore_encoder("run")
    caplog.set_level(logging.INFO)
    assert cli.main(["train", "--config", "run/config.yaml", "--model-dir", "run",
                     "--no-progress", "--set", "train.steps=4"]) == 0
    assert "step 4:" in capsys.readouterr().out
    assert any("resumed from" in r.getMessage() and "ckpt-2 at step 2" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert os.path.basename(runs.latest_checkpoint("run")) == "ckpt-4"
    _, pre, encoder = runs.restore_encoder("run")
    assert harness.largest_change(legacy.weights, encoder.weights) > 0  # 2 more steps moved it
    with open(os.path.join(RUN, "vocab", "spm.model"), "rb") as f:
        assert (tmp_path / "run" / "vocab" / "spm.model").read_bytes() == f.read()

    assert cli.main(["export", "--model-dir", "run", "--output", "export", "--tflite",
                     "fp32"]) == 0
    memory = harness.embed(pre, encoder, SENTENCES)
    got = harness.export_embeddings("export", SENTENCES, tflite=("fp32",))
    np.testing.assert_allclose(got["lealla"], memory, atol=1e-6)
    assert export.cosine_rows(got["fp32"], memory).min() >= export.TFLITE_MIN_COSINE["fp32"]
    assert np.abs(memory - restored[1]).max() > 0  # the resumed run's own weights
