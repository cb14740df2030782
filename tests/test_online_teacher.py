"""teacher.mode: online -- the frozen teacher inside the training step.

Parity: with the same teacher, an online run and a precomputed run (float32 shards, so the
store adds no rounding) see the same teacher rows, hence the same loss and gradients at
step 1 and the same weights after several steps, on one device and under MirroredStrategy
over 2 logical CPUs. Tolerances (float32): loss rtol 1e-5; gradients atol 1e-5 (their
largest entries exceed 1e-3; the teacher encodes the sentences in other groupings, and two
replicas sum in another order); weights atol 1e-5 after 4 AdamW steps.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import cli, config, layout
from lealla_tf.distill import online_teacher
from lealla_tf.distill import store as teacher_store
from lealla_tf.embedders import teachers
from lealla_tf.export import exporter
from lealla_tf.training import dual_encoder
from support import harness, hermetic, standins

TEACHER_HIDDEN, TEACHER_FFN = 24, 48  # widths the tiny student (32, 64) never has


@pytest.fixture(scope="module")
def teacher_specs(tmp_path_factory, hermetic_files):
    """A LaBSE-layout preprocessor|encoder pair and a string-in SavedModel (same weights)."""
    root = tmp_path_factory.mktemp("online_teacher")
    sentences = [x for f in hermetic_files for line in open(f, encoding="utf-8")
                 for x in line.rstrip("\n").split("\t")]
    vocab = standins.make_vocab(sentences, str(root / "vocab.txt"), True, vocab_size=300)
    n = len(open(vocab, encoding="utf-8").read().split())
    encoder = standins.bert_encoder(n, hidden=TEACHER_HIDDEN, layers=1, heads=2,
                                    ffn=TEACHER_FFN, positions=64)
    standins.save_preprocessor(vocab, True, 32, str(root / "pre"))
    standins.save_encoder(encoder, vocab, True, str(root / "enc"))
    standins.save_string_model(encoder, vocab, True, 32, str(root / "string"))
    return {"pair": f"hub:{root / 'pre'}|{root / 'enc'}",
            "string": f"savedmodel:{root / 'string'}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory, teacher_specs, hermetic_files):
    """float32 teacher shards of the hermetic corpus (both teachers share their weights)."""
    folder = str(tmp_path_factory.mktemp("store"))
    teacher_store.precompute(teachers.load_teacher(teacher_specs["pair"]), hermetic_files,
                                  folder, shard_size=400, dtype="float32", progress=False)
    return folder


def _config(vocab_cfg, vocab, files, spec, mode, store="", *extra):
    return config.load("tiny", [
        f"vocab.model_file={vocab}", f"model.vocab_size={vocab_cfg.model.vocab_size}",
        f"data.train_files=[{','.join(files)}]", f"data.teacher_embeddings={store}",
        f"teacher.spec={spec}", f"teacher.mode={mode}",
        "model.dropout_rate=0.0", "model.attention_dropout_rate=0.0",
        "train.global_batch_size=16", "train.steps=4", "train.steps_per_loop=2",
        "train.warmup_steps=1", "train.checkpoint_every=4",
        "loss.feature_distill_weight=0.5", "loss.logit_distill_weight=2.0", *extra])


def _checkpoint_keys(model_dir):
    path = tf.train.latest_checkpoint(os.path.join(model_dir, layout.CHECKPOINT_DIR))
    return {name: tuple(shape) for name, shape in tf.train.list_variables(path)}


def _no_teacher_shapes(shapes, projections=0):
    """No variable of the teacher's widths, except the loss layer's feature projection
    (student 32 -> teacher 24; with its 2 Adam slots in a checkpoint)."""
    shapes = list(shapes)
    bad = [s for s in shapes if (TEACHER_HIDDEN in s or TEACHER_FFN in s) and s != (32, 24)]
    assert not bad, bad
    assert shapes.count((32, 24)) == projections


def test_online_equals_precomputed_one_device_and_mirrored(
        tmp_path, hermetic_config, hermetic_vocab, hermetic_files, teacher_specs, store,
        two_cpu_strategy):
    def make(name, kind, mode, strategy):
        cfg = _config(hermetic_config, hermetic_vocab, hermetic_files, teacher_specs[kind],
                      mode, store)
        return dual_encoder.Trainer(cfg, str(tmp_path / name), progress=False, strategy=strategy)

    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    pre = make("pre", "pair", "precomputed", one)
    # (The pair on one device is implied: two replicas equal one device fed the global batch.)
    runs = {"pair, 2 replicas": make("pair2", "pair", "online", two_cpu_strategy),
            "string-in SavedModel, one device": make("string1", "string", "online", one)}
    assert pre.online_teacher is None
    loss_pre, grads_pre = harness.first_step(pre)
    assert max(np.abs(g).max() for g in grads_pre) > 1e-3  # gradients are not all ~0
    start, start_loss = harness.snapshot(pre.encoder.weights), pre.loss_layer.get_weights()
    r_pre = pre.run()
    assert r_pre.metrics["feature_distill"] > 0 and r_pre.metrics["logit_distill"] > 0
    assert harness.largest_change(start, pre.encoder.weights) > 1e-4
    for what, on in runs.items():
        on.encoder.set_weights(start)
        on.loss_layer.set_weights(start_loss)
        teacher = on.online_teacher
        assert teacher.string_inputs == what.startswith("string")
        assert on.loss_layer.teacher_dim == pre.loss_layer.teacher_dim == TEACHER_HIDDEN
        assert teacher.variables and not ({v.ref() for v in teacher.variables}
                                          & {w.ref() for w in on.variables})
        teacher_before = harness.snapshot(teacher.variables)

        loss_on, grads_on = harness.first_step(on)
        np.testing.assert_allclose(loss_on, loss_pre, rtol=1e-5, err_msg=what)
        assert len(grads_on) == len(grads_pre) == len(pre.variables)
        for a, b in zip(grads_on, grads_pre):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=what)
        r_on = on.run()
        for key in ("loss", "feature_distill", "logit_distill"):
            np.testing.assert_allclose(r_on.metrics[key], r_pre.metrics[key], rtol=1e-5,
                                       err_msg=f"{what}: {key}")
        for a, b in zip(harness.snapshot(on.encoder.weights),
                        harness.snapshot(pre.encoder.weights)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5, err_msg=what)

        # The teacher is frozen, and absent from the checkpoint (the same keys as a
        # precomputed run's) and from the optimizer's slots.
        for a, b in zip(harness.snapshot(teacher.variables), teacher_before):
            np.testing.assert_array_equal(a, b, err_msg=what)
        keys = _checkpoint_keys(on.model_dir)
        assert keys == _checkpoint_keys(pre.model_dir), what
        _no_teacher_shapes(keys.values(), projections=3)
        assert len([v for v in on.optimizer.variables() if len(v.shape)]) == 2 * len(on.variables)

    # The export of an online run holds the student alone.
    out = str(tmp_path / "export")
    exporter.export_run(runs["pair, 2 replicas"].model_dir, out, tflite=(), progress=False)
    shapes = [tuple(v.shape) for v in tf.saved_model.load(os.path.join(out, "lealla")).variables]
    _no_teacher_shapes(shapes)
    assert sorted(shapes) == sorted(tuple(v.shape) for v in pre.encoder.variables)


def test_run_dir_teacher_under_mixed_precision(tmp_path, hermetic_config, hermetic_vocab,
                                               hermetic_files):
    # A run of this project as the teacher: its preprocessor in the pipeline, its encoder in
    # the step, built under the run's precision policy (bfloat16 on CPU).
    teacher_dir = str(tmp_path / "teacher")
    base = _config(hermetic_config, hermetic_vocab, hermetic_files, "", "precomputed", "",
                   "loss.feature_distill_weight=0.0", "loss.logit_distill_weight=0.0",
                   "train.steps=2")
    dual_encoder.train(base, teacher_dir, progress=False)
    cfg = _config(hermetic_config, hermetic_vocab, hermetic_files, f"run:{teacher_dir}",
                  "online", "", "train.mixed_precision=mixed")
    trainer = dual_encoder.Trainer(cfg, str(tmp_path / "student"), progress=False)
    teacher = trainer.online_teacher
    assert not teacher.string_inputs and teacher.dim == 32
    assert any(v.dtype == tf.float32 for v in teacher.variables)
    encoder = teacher.keep[1]
    assert encoder.bert.transformer_layers[0].compute_dtype == "bfloat16"
    before = harness.snapshot(teacher.variables)
    result = trainer.run()
    assert np.isfinite(result.metrics["loss"]) and result.metrics["feature_distill"] > 0
    for a, b in zip(harness.snapshot(teacher.variables), before):
        np.testing.assert_array_equal(a, b)


def test_non_tensorflow_teachers_point_to_precomputed(tmp_path, hermetic_config,
                                                      hermetic_vocab, hermetic_files):
    for spec in ("muse", "py:support.hermetic:byte_count_teacher",
                 str(tmp_path / "model.tflite")):
        if spec.endswith(".tflite"):
            open(spec, "wb").close()
        with pytest.raises(online_teacher.NotATensorFlowTeacher,
                           match="teacher.mode: precomputed"):
            online_teacher.load(spec)
    cfg = _config(hermetic_config, hermetic_vocab, hermetic_files, "muse", "online")
    with pytest.raises(config.ConfigError, match="not a TensorFlow graph.*teacher.mode: "
                                                 "precomputed"):
        dual_encoder.Trainer(cfg, str(tmp_path / "muse"), progress=False)
    cfg = _config(hermetic_config, hermetic_vocab, hermetic_files,
                  "py:support.hermetic:byte_count_teacher", "online")
    with pytest.raises(config.ConfigError, match="Python callable.*teacher.mode: precomputed"):
        dual_encoder.Trainer(cfg, str(tmp_path / "callable"), progress=False,
                         teacher=hermetic.byte_count_teacher())
    with pytest.raises(config.ConfigError, match="Python object.*teacher.mode: precomputed"):
        online_teacher.check_teacher(hermetic.byte_count_teacher())
    with pytest.raises(config.ConfigError, match="teacher.mode must be one of"):
        config.load("tiny", ["teacher.mode=live"]).validate()
    with pytest.raises(config.ConfigError, match="needs teacher.spec.*teacher.mode: precomputed"):
        config.load("tiny", ["teacher.mode=online"]).validate()


def test_cli_embed_compact(tmp_path, teacher_specs, hermetic_files, capsys):
    out = str(tmp_path / "emb")
    assert cli.main(["teacher", "embed", "--teacher", teacher_specs["string"], "--input",
                     *hermetic_files, "--output", out, "--dim", "8", "--dtype", "int8",
                     "--pca-sample", "500"]) == 0
    assert "8-d int8" in capsys.readouterr().out
    assert cli.main(["teacher", "verify", "--output", out]) == 0
    src, _, valid = teacher_store.load_precomputed(out, hermetic_files[0])
    assert src.shape[1] == 8 and valid.all()
