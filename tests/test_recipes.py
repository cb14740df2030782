"""Every recipe in configs/ loads, and everything it names builds at tiny size."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import config
from lealla_tf.embedders import teachers
from lealla_tf.models import encoders
from lealla_tf.training import losses, optimization

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
# (Pre-training recipes: tests/test_pretraining.py.)
RECIPES = sorted(p for p in glob.glob(os.path.join(CONFIGS, "*.yaml"))
                 if (config.load(p).teacher.spec or "train" in os.path.basename(p))
                 and not os.path.basename(p).startswith("pretrain_"))
TINY = ["model.vocab_size=300", "model.hidden_size=16", "model.num_layers=1",
        "model.num_attention_heads=2", "model.intermediate_size=32"]


def test_there_are_paper_scale_recipes():
    names = {os.path.basename(p) for p in RECIPES}
    for size in ("small", "base", "large"):
        assert f"distill_lealla_{size}_labse_tpu.yaml" in names
    assert "demo.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_builds_at_tiny_size(path):
    full = config.load(path)
    cfg = config.load(path, TINY)
    # Everything except the shape is the recipe's own.
    assert cfg.train == full.train and cfg.loss == full.loss and cfg.data == full.data
    if full.distribute.strategy == "tpu":
        assert full.train.mixed_precision == "mixed_bfloat16"
    if full.teacher.spec:
        assert full.teacher.spec in ("muse", "labse") or full.teacher.spec.startswith(
            ("hub:", "savedmodel:"))
        if full.teacher.spec == "labse":
            assert full.teacher.dim == 768 and teachers.LABSE_ENCODER.endswith("LaBSE/2")
    teacher_dim = cfg.teacher.dim or 512
    encoder = encoders.LeallaEncoder.from_model_config(cfg.model)
    loss_fn = losses.DualEncoderLoss(cfg.loss, teacher_dim=teacher_dim,
                                     student_dim=cfg.model.hidden_size)
    optimizer, schedule = optimization.build_optimizer(cfg.train)
    rng = np.random.default_rng(0)
    batch, seq = 4, min(cfg.preprocess.seq_length, 8)

    def inputs():
        ids = rng.integers(5, 300, size=(batch, seq)).astype(np.int32)
        return {"input_word_ids": ids, "input_mask": np.ones_like(ids),
                "input_type_ids": np.zeros_like(ids)}

    t = rng.normal(size=(2, batch, teacher_dim)).astype(np.float32)
    src_in, tgt_in = inputs(), inputs()
    with tf.GradientTape() as tape:
        terms = loss_fn(encoder(src_in, training=True)["default"],
                        encoder(tgt_in, training=True)["default"], t[0], t[1])
    variables = encoder.trainable_variables + loss_fn.trainable_variables
    grads = tape.gradient(terms["loss"], variables)
    assert np.isfinite(float(terms["loss"]))
    assert all(g is not None for g in grads[:len(encoder.trainable_variables)])
    before = [v.numpy().copy() for v in encoder.trainable_variables]
    optimizer.apply_gradients(zip(grads, variables))
    moved = sum(not np.array_equal(b, v.numpy())
                for b, v in zip(before, encoder.trainable_variables))
    assert moved > 0
    assert float(schedule(0)) <= float(schedule(cfg.train.warmup_steps)) + 1e-12


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_paper_recipes_offer_both_teacher_modes(size):
    path = os.path.join(CONFIGS, f"distill_lealla_{size}_labse_tpu.yaml")
    cfg = config.load(path)
    assert cfg.teacher.mode == "precomputed" and cfg.data.teacher_embeddings
    online = config.load(path, ["teacher.mode=online"]).validate()
    assert online.teacher.mode == "online" and online.teacher.spec == "labse"
    text = open(path).read()
    assert "teacher.mode=online" in text and "--dim 128 --dtype int8" in text
