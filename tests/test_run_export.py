"""``export/run_export.py``, the export stage's entry script, run as a script on a tiny run
directory: it exports (``lealla export``) and publishes (``lealla publish``)."""

import dataclasses
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import tf_keras

from lealla_tf import export, layout, runs
from lealla_tf.models import encoders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "export", "run_export.py")


def _tiny_run(run_dir, vocab, cfg):
    """A run directory as ``lealla train`` leaves it (random weights): config.yaml,
    vocab/spm.model, checkpoints/, data_stats.json."""
    cfg = dataclasses.replace(cfg, vocab=dataclasses.replace(cfg.vocab,
                                                             model_file=runs.vocab_file(cfg)))
    tf_keras.utils.set_random_seed(5)
    encoder = encoders.LeallaEncoder.from_model_config(cfg.model)
    encoder(encoder.dummy_inputs())
    with open(vocab, "rb") as f:
        runs.write_run(run_dir, cfg, f.read(), encoder, "data_stats.json",
                       {"pairs": 1200, "files": {"/d/train/deu-eng.tsv": {"ok": 600},
                                                 "/d/train/ell-eng.tsv": {"ok": 600}}})
    return cfg


def test_run_export_exports_and_publishes_a_run(tmp_path, hermetic_vocab, hermetic_config):
    run_dir, out, pub = (str(tmp_path / n) for n in ("run", "export", "publish"))
    cfg = _tiny_run(run_dir, hermetic_vocab, hermetic_config)
    metrics = tmp_path / "tatoeba.json"
    metrics.write_text(json.dumps({"task": "tatoeba", "average": 42.5, "n_languages": 2,
                                   "unit": "accuracy (%)"}))
    # As a user runs it: from another folder, without PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--model-dir", run_dir, "--output", out, "--tflite", "int8",
         "--metrics", str(metrics), "--publish", pub, "--base-url", "https://example.org/m"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    for name in export.SAVED_MODELS:
        assert os.path.isfile(os.path.join(out, name, "saved_model.pb")), name
    assert os.path.isfile(os.path.join(out, layout.tflite_file_name("int8")))
    assert not os.path.exists(os.path.join(out, layout.tflite_file_name("fp32")))
    with open(os.path.join(out, layout.INFO_FILE)) as f:
        info = json.load(f)
    assert info["model"]["embedding_dim"] == cfg.model.hidden_size
    card = open(os.path.join(out, layout.CARD_FILE), encoding="utf-8").read()
    assert "42.50" in card and "1,200" in card and "deu, ell" in card

    for name in export.SAVED_MODELS:
        archive = os.path.join(pub, name, f"{name}.tar.gz")
        with tarfile.open(archive) as tar:
            assert "saved_model.pb" in [os.path.normpath(m) for m in tar.getnames()], name
    assert "https://example.org/m/lealla/lealla.tar.gz" in open(
        os.path.join(pub, "lealla", layout.CARD_FILE), encoding="utf-8").read()

    vectors = export.load_embedder(out).encode(["dog", "Hund"])
    assert vectors.shape == (2, cfg.model.hidden_size)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
