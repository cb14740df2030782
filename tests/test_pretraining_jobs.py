"""The pre-training job: carried optimizer state at a stage boundary, resume after SIGKILL
across a stage boundary, two replicas = one device, and `lealla train` starting from it."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from test_pretraining import check_stacked_stage, hermetic_cfg

from lealla_tf import cli, config, runs
from lealla_tf.training import dual_encoder, pretraining

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support",
                      "pretrain_subprocess.py")
# Two stages (1 then 2 layers), small batches.
STAGED = ["model.num_layers=2", "pretrain.stages=[1, 2]", "pretrain.stage_steps=[3, 3]",
          "train.steps=6", "train.global_batch_size=8"]


def _args(vocab, files, *extra):
    import sentencepiece as spm
    n = spm.SentencePieceProcessor(model_file=vocab).get_piece_size()
    return [f"model.vocab_size={n}", f"vocab.model_file={vocab}",
            f"data.train_files=[{','.join(files)}]", "train.warmup_steps=1", *extra]


def _assert_same(a, b, atol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def test_carried_optimizer_state_follows_the_copied_layers(tmp_path, hermetic_vocab,
                                                          hermetic_files):
    check_stacked_stage(tmp_path, hermetic_vocab, hermetic_files, "carry")


def test_resume_after_kill_across_a_stage_boundary(tmp_path, hermetic_vocab, hermetic_files):
    # Dropout on: its random state must not break the resumed run. Killed after step 2
    # (checkpoint 2 of the 1-layer stage): the resumed process finishes that stage, stacks,
    # and trains the 2-layer stage.
    extra = _args(hermetic_vocab, hermetic_files, *STAGED, "train.steps_per_loop=1",
                  "train.checkpoint_every=2", "model.dropout_rate=0.1",
                  "model.attention_dropout_rate=0.1")
    killed_dir = str(tmp_path / "killed")
    proc = subprocess.run([sys.executable, HELPER, killed_dir, "--kill-after", "2", *extra],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert tf.train.latest_checkpoint(
        os.path.join(killed_dir, "stages", "layers-1")).endswith("ckpt-2")
    assert not tf.train.latest_checkpoint(os.path.join(killed_dir, "checkpoints"))
    cfg = config.load("tiny", extra)
    resumed = pretraining.Pretrainer(cfg, killed_dir, progress=False)
    assert resumed.step == 2 and resumed.stage.layers == 1
    result = resumed.run()
    assert result.step == 6 and result.checkpoint.endswith(os.path.join("checkpoints", "ckpt-6"))
    straight = pretraining.Pretrainer(cfg, str(tmp_path / "straight"), progress=False)
    straight.run()
    assert len(resumed.pretrainer.get_weights()) == len(straight.pretrainer.get_weights())
    _assert_same(resumed.pretrainer.get_weights(), straight.pretrainer.get_weights(), atol=1e-6)
    assert len(resumed.encoder.bert.transformer_layers) == 2
    # Rerunning the finished job has nothing left to do.
    assert pretraining.Pretrainer(cfg, killed_dir, progress=False).run().step == 6


def test_two_replicas_pretrain_like_one_device(tmp_path, hermetic_vocab, hermetic_files,
                                               two_cpu_strategy):
    cfg = hermetic_cfg(hermetic_vocab, hermetic_files, *STAGED[:2],
                       "pretrain.stage_steps=[2, 2]", "train.steps=4", "train.steps_per_loop=2",
                       "train.global_batch_size=8", "pretrain.stage_optimizer=carry")
    one = pretraining.Pretrainer(cfg, str(tmp_path / "one"), progress=False,
                                 strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = pretraining.Pretrainer(cfg, str(tmp_path / "two"), progress=False,
                                 strategy=two_cpu_strategy)
    two.pretrainer.set_weights(one.pretrainer.get_weights())
    start = [w.copy() for w in one.pretrainer.get_weights()]
    r1, r2 = one.run(), two.run()
    for key in ("loss", "accuracy", "mlm_loss", "tlm_loss", "grad_norm"):
        np.testing.assert_allclose(r2.metrics[key], r1.metrics[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    assert one.stage.layers == two.stage.layers == 2
    _assert_same(two.pretrainer.get_weights(), one.pretrainer.get_weights(), atol=1e-5)
    moved = [np.abs(a - b).max() for a, b in zip(start, one.pretrainer.get_weights()[:len(start)])
             if a.shape == b.shape]
    assert max(moved) > 1e-4


def test_train_starts_from_the_pretrained_encoder(tmp_path, hermetic_vocab, hermetic_files):
    base = _args(hermetic_vocab, hermetic_files, "model.dropout_rate=0.0",
                 "model.attention_dropout_rate=0.0", "train.global_batch_size=8")
    pt_dir = str(tmp_path / "pt")
    assert cli.main(["pretrain", "--config", "tiny", "--model-dir", pt_dir, "--no-progress",
                     *sum((["--set", o] for o in base + ["train.steps=2",
                                                        "train.steps_per_loop=2"]), [])]) == 0
    _, _, pretrained = runs.restore_encoder(pt_dir)
    # --init-from: shape and vocabulary from the run; the encoder equals it before step 1.
    cfg = config.load("tiny", base + ["train.steps=1", "model.num_layers=1"])
    cfg.train.init_from = pt_dir
    student = dual_encoder.Trainer(cfg, str(tmp_path / "ft"), progress=False)
    assert student.cfg.model.num_layers == 2
    _assert_same(student.encoder.get_weights(), pretrained.get_weights(), atol=0)
    # init_checkpoint: this config's shape, which must fit every tensor.
    ckpt = os.path.join(pt_dir, "checkpoints", "ckpt-2")
    cfg = config.load("tiny", base + ["train.steps=1", f"train.init_checkpoint={ckpt}"])
    student = dual_encoder.Trainer(cfg, str(tmp_path / "ft2"), progress=False)
    _assert_same(student.encoder.get_weights(), pretrained.get_weights(), atol=0)
    cfg = config.load("tiny", base + ["train.steps=1", f"train.init_checkpoint={pt_dir}",
                                      "model.intermediate_size=48"])
    with pytest.raises(config.ConfigError) as err:
        dual_encoder.Trainer(cfg, str(tmp_path / "ft3"), progress=False)
    message = str(err.value)
    assert "_intermediate_dense/kernel: model (32, 48) vs checkpoint (32, 64)" in message
    assert "_transformer_layers/1/" in message and "word_embeddings" not in message
    # A pre-training run that has not reached its last stage is named as such.
    unfinished = tmp_path / "unfinished"
    os.makedirs(unfinished / "stages" / "layers-2")
    shutil.copy(os.path.join(pt_dir, "config.yaml"), unfinished / "config.yaml")
    shutil.copytree(os.path.join(pt_dir, "vocab"), unfinished / "vocab")
    for path in tf.io.gfile.glob(ckpt + ".*"):
        shutil.copy(path, unfinished / "stages" / "layers-2")
    cfg = config.load("tiny", base + ["train.steps=1"])
    cfg.train.init_from = str(unfinished)
    with pytest.raises(FileNotFoundError, match="has not finished its last stage"):
        dual_encoder.Trainer(cfg, str(tmp_path / "ft4"), progress=False)
    # ... and one of its stage checkpoints can be named.
    cfg = config.load("tiny", base + ["train.steps=1", "train.init_checkpoint=" + str(
        unfinished / "stages" / "layers-2" / "ckpt-2")])
    student = dual_encoder.Trainer(cfg, str(tmp_path / "ft5"), progress=False)
    _assert_same(student.encoder.get_weights(), pretrained.get_weights(), atol=0)
