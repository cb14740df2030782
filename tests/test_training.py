"""The training job: learning on real data, replica parity, resume after kill,
multi-worker, NaN stop, the model dir and the CLI."""

import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import cli, config, corpus, layout, paths, runs
from lealla_tf.data import pipeline
from lealla_tf.training import dual_encoder, loop
from support import harness

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TRAIN_TINY = os.path.join(ROOT, "configs", "train_tiny.yaml")
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support",
                      "train_subprocess.py")


def _overrides(vocab, *extra):
    # A small slice of the real training data, in languages the test vocabulary covers.
    import sentencepiece as spm
    pieces = spm.SentencePieceProcessor(model_file=vocab).get_piece_size()
    return [f"vocab.model_file={vocab}", f"model.vocab_size={pieces}",
            "data.languages=[deu, rus, ell]", "data.max_pairs_per_language=300",
            "train.global_batch_size=16", *extra]


def _events(model_dir):
    out = {}
    for path in glob.glob(os.path.join(model_dir, layout.TRAIN_LOG_DIR, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(
                    (event.step, float(tf.make_ndarray(value.tensor))))
    return {k: [v for _, v in sorted(vals)] for k, vals in out.items()}


def _assert_same(a, b, atol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def test_cli_short_run_learns_and_fills_model_dir(tmp_path, tiny_vocab, data_dir):
    model_dir = str(tmp_path / "run")
    rc = cli.main(["train", "--config", TRAIN_TINY, "--model-dir", model_dir, "--no-progress",
                   *sum((["--set", o] for o in _overrides(
                       tiny_vocab, "train.steps=150", "train.steps_per_loop=10",
                       "train.summary_every=10", "train.checkpoint_every=50",
                       "train.keep_checkpoints=2", "train.learning_rate=0.002")), [])])
    assert rc == 0
    events = _events(model_dir)
    for tag in ("loss/loss", "loss/ams", "loss/ams_src_to_tgt", "loss/ams_tgt_to_src",
                "loss/feature_distill", "loss/logit_distill", "accuracy/accuracy",
                "learning_rate", "examples_per_second", "grad_norm"):
        assert tag in events, tag
    loss, acc = events["loss/loss"], events["accuracy/accuracy"]
    assert len(loss) == 15
    assert np.mean(loss[-3:]) < np.mean(loss[:2]) - 1.0, loss
    assert np.mean(acc[-3:]) > np.mean(acc[:2]) + 0.1, acc
    # The model dir holds what export needs; only the last 2 checkpoints are kept.
    assert os.path.exists(os.path.join(model_dir, "config.yaml"))
    assert os.path.exists(os.path.join(model_dir, "vocab", "spm.model"))
    ckpts = sorted(os.path.basename(p) for p in glob.glob(
        os.path.join(model_dir, "checkpoints", "ckpt-*.index")))
    assert ckpts == ["ckpt-100.index", "ckpt-150.index"]
    stats = json.load(open(os.path.join(model_dir, "data_stats.json")))
    assert stats["pairs"] == 900
    cfg, pre, encoder = runs.restore_encoder(model_dir)
    assert cfg.vocab.model_file == layout.VOCAB_FILE
    emb = encoder(pre(tf.constant(["Der Hund schläft.", "The dog sleeps.", "Ρώτα με."])))
    emb = emb["default"].numpy()
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # Rerunning the finished command resumes and has nothing left to do.
    assert cli.main(["train", "--config", TRAIN_TINY, "--model-dir", model_dir,
                     "--no-progress", *sum((["--set", o] for o in _overrides(
                         tiny_vocab, "train.steps=150")), [])]) == 0


def _teacher_corpus(cfg):
    files = corpus.find_files(cfg.data.train_files, paths.data_dir(), cfg.data.languages)

    def loader(path):
        rng = np.random.default_rng(len(path))
        n = corpus.count_lines(path)
        rows = rng.normal(size=(n, 24)).astype(np.float16)
        return rows, rows[::-1].copy(), np.ones(n, bool)

    return pipeline.load_corpus(files, cfg.data.max_pairs_per_language, teacher_loader=loader)


@pytest.mark.parametrize("bucketed", [False, True], ids=["fixed_length", "bucketed"])
def test_two_replicas_train_like_one_device(tmp_path, tiny_vocab, data_dir, two_cpu_strategy,
                                            bucketed):
    # With distillation on (AMS-only parity of loss and gradients: tests/test_losses.py).
    # Bucketed: each replica pads its rows to their own longest sentence.
    distill = True
    extra = ["train.steps=4", "train.steps_per_loop=2", "train.warmup_steps=1",
             "loss.feature_distill_weight=0.5", "loss.logit_distill_weight=2.0"]
    if bucketed:
        extra += ["data.bucket_pool=4", "preprocess.dynamic_length=true"]
    cfg = config.load(TRAIN_TINY, _overrides(tiny_vocab, *extra))
    corpus_ = _teacher_corpus(cfg)
    one = dual_encoder.Trainer(cfg, str(tmp_path / "one"), progress=False, corpus=corpus_,
                           strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = dual_encoder.Trainer(cfg, str(tmp_path / "two"), progress=False, corpus=corpus_,
                           strategy=two_cpu_strategy)
    two.encoder.set_weights(one.encoder.get_weights())
    two.loss_layer.set_weights(one.loss_layer.get_weights())
    assert len(one.loss_layer.trainable_variables) == int(distill)
    start = harness.snapshot(one.encoder.weights)
    r1, r2 = one.run(), two.run()
    # (Not accuracy: at initialisation all cosines are within rounding of each other, so
    # its argmax is decided by rounding.)
    for key in ("loss", "ams", "feature_distill", "logit_distill"):
        np.testing.assert_allclose(r2.metrics[key], r1.metrics[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    # The gradient norm sums the squares of every gradient, added up per replica and then
    # across replicas: float32 in another order (2.5e-5 apart in one full-suite run). A
    # mis-scaled cross-replica sum would be a factor of 2 off.
    np.testing.assert_allclose(r2.metrics["grad_norm"], r1.metrics["grad_norm"], rtol=1e-4)
    assert (r1.metrics["feature_distill"] > 0) == distill
    _assert_same(harness.snapshot(two.encoder.weights), harness.snapshot(one.encoder.weights),
                 atol=1e-5)
    _assert_same(two.loss_layer.get_weights(), one.loss_layer.get_weights(), atol=1e-5)
    assert harness.largest_change(start, one.encoder.weights) > 1e-4


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_vocab, data_dir):
    # Dropout on: its random state must not break the resumed run either. With length
    # bucketing (pools of 3 batches, so the kill and the checkpoint fall inside pools) and
    # per-batch padding: the sampler's unpooled resume is tested in tests/test_data.py.
    extra = ["train.steps=8", "train.steps_per_loop=2", "train.checkpoint_every=4",
             "model.dropout_rate=0.1", "model.attention_dropout_rate=0.1",
             "data.bucket_pool=3", "preprocess.dynamic_length=true",
             "preprocess.length_multiple=4"]
    killed_dir = str(tmp_path / "killed")
    proc = subprocess.run([sys.executable, HELPER, killed_dir, str(tmp_path / "unused.npz"),
                           "--kill-after", "6", *_overrides(tiny_vocab, *extra)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert tf.train.latest_checkpoint(os.path.join(killed_dir, "checkpoints")).endswith("ckpt-4")
    cfg = config.load(TRAIN_TINY, _overrides(tiny_vocab, *extra))
    resumed = dual_encoder.Trainer(cfg, killed_dir, progress=False)
    assert int(resumed.step.numpy()) == 4
    resumed.run()
    straight = dual_encoder.Trainer(cfg, str(tmp_path / "straight"), progress=False)
    start = harness.snapshot(straight.encoder.weights)
    straight.run()
    _assert_same(harness.snapshot(resumed.encoder.weights),
                 harness.snapshot(straight.encoder.weights), atol=1e-6)
    assert harness.largest_change(start, straight.encoder.weights) > 1e-4


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_processes_end_with_identical_weights(tmp_path, tiny_vocab, data_dir):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = str(tmp_path / "mw")
    procs = []
    for i in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, HELPER, model_dir, str(tmp_path / f"w{i}.npz"),
             *_overrides(tiny_vocab, "distribute.strategy=multi_worker", "train.steps=3",
                         "train.steps_per_loop=1", "train.checkpoint_every=3")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    w0, w1 = (np.load(tmp_path / f"w{i}.npz") for i in range(2))
    assert len(w0.files) == len(w1.files) > 0
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key])
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-3")
    _, _, encoder = runs.restore_encoder(model_dir)
    for a, key in zip(encoder.get_weights(), w0.files):
        np.testing.assert_array_equal(a, w0[key])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_vocab, data_dir):
    model_dir = str(tmp_path / "nan")
    base = _overrides(tiny_vocab, "train.steps_per_loop=1", "train.checkpoint_every=2")
    dual_encoder.train(config.load(TRAIN_TINY, base + ["train.steps=2"]), model_dir,
                   progress=False)
    good = harness.snapshot(runs.restore_encoder(model_dir)[2].weights)
    cfg = config.load(TRAIN_TINY, base + ["train.steps=6", "train.learning_rate=1.0e+30",
                                          "train.warmup_steps=0", "train.clip_norm=0.0"])
    with pytest.raises(loop.TrainingDiverged, match="last good checkpoint"):
        dual_encoder.train(cfg, model_dir, progress=False)
    assert os.path.exists(os.path.join(model_dir, layout.DIVERGED_FILE))
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest.endswith("ckpt-2")
    _assert_same(harness.snapshot(runs.restore_encoder(model_dir)[2].weights), good, atol=0)


def test_resume_refuses_another_model_shape(tmp_path, tiny_vocab, data_dir):
    model_dir = str(tmp_path / "r")
    dual_encoder.train(config.load(TRAIN_TINY, _overrides(tiny_vocab, "train.steps=1")),
                   model_dir, progress=False)
    with pytest.raises(config.ConfigError, match="another model config"):
        dual_encoder.Trainer(config.load(TRAIN_TINY, _overrides(
            tiny_vocab, "train.steps=2", "model.num_layers=1")), model_dir, progress=False)
    # The exports' sequence length is not part of the trained model: a resumed run may set it.
    dual_encoder.Trainer(config.load(TRAIN_TINY, _overrides(
        tiny_vocab, "train.steps=2", "preprocess.inference_seq_length=48")), model_dir,
        progress=False)
    assert runs.restore_encoder(model_dir)[1].seq_length == 48


def test_restore_encoder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        runs.restore_encoder(str(tmp_path))


def test_mixed_precision_trains_in_bfloat16_on_cpu(tmp_path, tiny_vocab, data_dir):
    import tf_keras
    cfg = config.load(TRAIN_TINY, _overrides(tiny_vocab, "train.steps=2", "train.warmup_steps=1",
                                              "train.mixed_precision=mixed"))
    trainer = dual_encoder.Trainer(cfg, str(tmp_path / "bf16"), progress=False)
    assert trainer.policy == "mixed_bfloat16"
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored
    result = trainer.run()
    assert np.isfinite(result.metrics["loss"])
    assert all(v.dtype == tf.float32 for v in trainer.encoder.trainable_variables)
    assert trainer.encoder.bert.transformer_layers[0].compute_dtype == "bfloat16"
