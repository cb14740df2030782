"""Training never loses a run: a damaged run is refused (or recovered on request), one job
writes a run directory at a time, and Ctrl-C saves a checkpoint that resumes exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import cli, config, runs
from lealla_tf.training import dual_encoder, pretraining
from support import harness

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support",
                      "train_subprocess.py")


def _cfg(hermetic_config, hermetic_vocab, hermetic_files, *extra):
    return config.load("tiny", [
        f"vocab.model_file={hermetic_vocab}",
        f"model.vocab_size={hermetic_config.model.vocab_size}",
        f"data.train_files=[{','.join(hermetic_files)}]",
        "train.global_batch_size=16", "train.steps=6", "train.steps_per_loop=1",
        "train.warmup_steps=1", "train.checkpoint_every=2", "train.keep_checkpoints=5",
        "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0", *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hermetic_config, hermetic_vocab, hermetic_files):
    """A finished run with ckpt-2, ckpt-4, ckpt-6."""
    run = str(tmp_path_factory.mktemp("trained") / "run")
    dual_encoder.train(_cfg(hermetic_config, hermetic_vocab, hermetic_files), run,
                       progress=False)
    return run


def _copy(run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(run, out)
    return out


def _files(run):
    return sorted(os.path.relpath(os.path.join(d, f), run)
                  for d, _, fs in os.walk(run) for f in fs if f != runs.LOCK_FILE)


def _more_steps(hermetic_config, hermetic_vocab, hermetic_files, steps=8):
    return _cfg(hermetic_config, hermetic_vocab, hermetic_files, f"train.steps={steps}")


@pytest.mark.parametrize("damage", ["state", "index", "truncate"])
def test_train_refuses_a_damaged_run_and_keeps_every_file(
        tmp_path, trained, hermetic_config, hermetic_vocab, hermetic_files, damage):
    run = _copy(trained, tmp_path)
    harness.damage_checkpoint(os.path.join(run, "checkpoints"), 6, damage, keep=1 / 3)
    before = {p: open(os.path.join(run, p), "rb").read() for p in _files(run)}
    cfg = _more_steps(hermetic_config, hermetic_vocab, hermetic_files)
    with pytest.raises(runs.DamagedRunError, match="ckpt-2, ckpt-4"):
        dual_encoder.Trainer(cfg, run, progress=False)
    assert {p: open(os.path.join(run, p), "rb").read() for p in _files(run)} == before
    # Export and embedding of the run name the problem instead of failing deep inside.
    with pytest.raises(runs.DamagedRunError, match="ckpt"):
        runs.restore_encoder(run)


def test_recover_resumes_from_the_newest_good_checkpoint(
        tmp_path, trained, hermetic_config, hermetic_vocab, hermetic_files):
    run = _copy(trained, tmp_path)
    data = os.path.join(run, "checkpoints", "ckpt-6.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(100)
    cfg = _more_steps(hermetic_config, hermetic_vocab, hermetic_files)
    result = dual_encoder.train(cfg, run, progress=False, recover=True)
    assert result.step == 8
    names = os.listdir(os.path.join(run, "checkpoints"))
    for step in (2, 4, 6, 8):  # older ones kept; 6 and 8 trained again from ckpt-4
        assert f"ckpt-{step}.index" in names
    (stamp,) = os.listdir(os.path.join(run, "checkpoints", runs.DAMAGED_DIR))
    assert "ckpt-6.index" in os.listdir(os.path.join(run, "checkpoints", runs.DAMAGED_DIR,
                                                     stamp))


def test_cli_train_on_a_damaged_run_is_one_clear_line(
        tmp_path, trained, hermetic_config, hermetic_vocab, hermetic_files, capsys):
    run = _copy(trained, tmp_path)
    os.remove(os.path.join(run, "checkpoints", "checkpoint"))
    rc = cli.main(["train", "--config", "tiny", "--model-dir", run, "--no-progress",
                   "--set", f"vocab.model_file={hermetic_vocab}",
                   "--set", f"model.vocab_size={hermetic_config.model.vocab_size}",
                   "--set", f"data.train_files=[{','.join(hermetic_files)}]",
                   "--set", "model.dropout_rate=0.0", "--set", "model.attention_dropout_rate=0.0",
                   "--set", "train.steps=8"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot resume" in err and "--recover" in err
    assert "Traceback" not in err
    assert os.path.exists(os.path.join(run, "checkpoints", "ckpt-2.index"))


def test_one_job_per_run_directory(tmp_path, hermetic_config, hermetic_vocab, hermetic_files):
    run = str(tmp_path / "run")
    cfg = _cfg(hermetic_config, hermetic_vocab, hermetic_files)
    with dual_encoder.Trainer(cfg, run, progress=False):
        config_before = open(os.path.join(run, "config.yaml")).read()
        other = _cfg(hermetic_config, hermetic_vocab, hermetic_files, "train.learning_rate=0.5")
        with pytest.raises(runs.RunLockedError, match=f"pid {os.getpid()}"):
            dual_encoder.Trainer(other, run, progress=False)
        with pytest.raises(runs.RunLockedError):
            pretraining.Pretrainer(other, run, progress=False)
        assert open(os.path.join(run, "config.yaml")).read() == config_before
    # Released at the end: the run resumes.
    assert dual_encoder.train(cfg, run, progress=False).step == 6


def test_ctrl_c_saves_the_current_step_and_resumes_exactly(
        tmp_path, hermetic_config, hermetic_vocab, hermetic_files):
    overrides = [f"vocab.model_file={hermetic_vocab}",
                 f"model.vocab_size={hermetic_config.model.vocab_size}",
                 f"data.train_files=[{','.join(hermetic_files)}]",
                 "train.global_batch_size=16", "train.steps=6", "train.steps_per_loop=1",
                 "train.warmup_steps=1", "train.checkpoint_every=4",
                 "model.dropout_rate=0.1", "model.attention_dropout_rate=0.1"]
    run = str(tmp_path / "interrupted")
    proc = subprocess.run([sys.executable, HELPER, run, str(tmp_path / "unused.npz"),
                           "--config", "tiny", "--interrupt-after", "3", *overrides],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "interrupted at step 3" in proc.stderr and "ckpt-3" in proc.stderr
    # Saved at the interrupted step, not only at checkpoint_every.
    assert tf.train.latest_checkpoint(os.path.join(run, "checkpoints")).endswith("ckpt-3")
    cfg = config.load("tiny", overrides)
    resumed = dual_encoder.Trainer(cfg, run, progress=False)
    assert int(resumed.step.numpy()) == 3
    resumed.run()
    straight = dual_encoder.Trainer(cfg, str(tmp_path / "straight"), progress=False)
    straight.run()
    for a, b in zip(harness.snapshot(resumed.encoder.weights),
                    harness.snapshot(straight.encoder.weights)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
