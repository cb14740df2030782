"""Losses: NumPy reference, margin only on positives, both directions, replica parity."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from lealla_tf.config import LossConfig
from lealla_tf.training import losses


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_ams(x, y, margin, scale, bidirectional=True):
    x, y = _unit(x), _unit(y)
    cos = x @ y.T
    logits = scale * (cos - margin * np.eye(len(x)))
    s2t = -np.mean(np.diag(_log_softmax(logits)))
    t2s = -np.mean(np.diag(_log_softmax(logits.T)))
    return s2t + t2s if bidirectional else s2t


def _data(n=8, d=6, D=10, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in [(n, d), (n, d), (n, D), (n, D)]]


@pytest.mark.parametrize("margin,scale", [(0.3, 100.0), (0.0, 1.0), (0.5, 10.0)])
def test_ams_matches_numpy(margin, scale):
    x, y, _, _ = _data()
    out = losses.additive_margin_softmax_loss(x, y, margin=margin, scale=scale)
    np.testing.assert_allclose(out["ams"].numpy(), numpy_ams(x, y, margin, scale), rtol=1e-5)
    one_way = losses.additive_margin_softmax_loss(x, y, margin, scale, bidirectional=False)
    np.testing.assert_allclose(one_way["ams"].numpy(),
                               numpy_ams(x, y, margin, scale, bidirectional=False), rtol=1e-5)


def test_both_directions_are_summed():
    x, y, _, _ = _data(seed=1)
    out = losses.additive_margin_softmax_loss(x, y, 0.3, 10.0)
    swapped = losses.additive_margin_softmax_loss(y, x, 0.3, 10.0, bidirectional=False)
    forward = losses.additive_margin_softmax_loss(x, y, 0.3, 10.0, bidirectional=False)
    np.testing.assert_allclose(out["ams_tgt_to_src"].numpy(), swapped["ams"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["ams"].numpy(),
                               forward["ams"].numpy() + swapped["ams"].numpy(), rtol=1e-6)
    assert abs(out["ams_src_to_tgt"].numpy() - out["ams_tgt_to_src"].numpy()) > 1e-4


def test_margin_applies_only_to_positives():
    # With orthogonal negatives, a margin on the negatives would change the loss in a way
    # the reference formula does not: check against explicit per-entry logits.
    x, y, _, _ = _data(seed=2)
    scale, margin = 5.0, 0.4
    out = losses.additive_margin_softmax_loss(x, y, margin, scale, bidirectional=False)
    cos = _unit(x) @ _unit(y).T
    logits = scale * cos
    logits[np.arange(8), np.arange(8)] -= scale * margin  # diagonal only
    ref = -np.mean(np.diag(_log_softmax(logits)))
    np.testing.assert_allclose(out["ams"].numpy(), ref, rtol=1e-5)
    # Subtracting the margin from every entry of a row leaves softmax unchanged; the
    # margin must therefore raise the loss (it makes the positive harder).
    no_margin = losses.additive_margin_softmax_loss(x, y, 0.0, scale, bidirectional=False)
    assert out["ams"].numpy() > no_margin["ams"].numpy() + 1e-3


def test_accuracy_counts_in_batch_retrieval():
    x = np.eye(4, dtype=np.float32)
    y = np.eye(4, dtype=np.float32)[[0, 1, 3, 2]]  # rows 2 and 3 swapped
    out = losses.additive_margin_softmax_loss(x, y, 0.3, 100.0)
    assert out["accuracy"].numpy() == pytest.approx(0.5)
    out = losses.additive_margin_softmax_loss(x, x, 0.3, 100.0)
    assert out["accuracy"].numpy() == pytest.approx(1.0)


def test_distillation_terms_match_numpy():
    x, y, tx, ty = _data(seed=3)
    cfg = LossConfig(margin=0.3, scale=20.0, feature_distill_weight=0.5,
                     logit_distill_weight=2.0)
    loss_fn = losses.DualEncoderLoss(cfg, teacher_dim=10)
    out = loss_fn(x, y, tx, ty)
    w = loss_fn.feature_projection.kernel.numpy()
    feat = sum(np.mean(np.mean((_unit(s) @ w - _unit(t)) ** 2, axis=-1))
               for s, t in [(x, tx), (y, ty)])
    np.testing.assert_allclose(out["feature_distill"].numpy(), feat, rtol=1e-5)
    s_cos, t_cos = _unit(x) @ _unit(y).T, _unit(tx) @ _unit(ty).T
    logit = 2 * np.mean((s_cos - t_cos) ** 2)  # both directions, same entries
    np.testing.assert_allclose(out["logit_distill"].numpy(), logit, rtol=1e-5)
    total = numpy_ams(x, y, 0.3, 20.0) + 0.5 * feat + 2.0 * logit
    np.testing.assert_allclose(out["loss"].numpy(), total, rtol=1e-5)


def test_kl_logit_distillation_matches_numpy():
    x, y, tx, ty = _data(seed=4)
    got = losses.logit_distillation_loss(x, y, tx, ty, kind="kl", temperature=2.0, scale=10.0)
    ref = 0.0
    for s_cos, t_cos in [(_unit(x) @ _unit(y).T, _unit(tx) @ _unit(ty).T),
                         (_unit(y) @ _unit(x).T, _unit(ty) @ _unit(tx).T)]:
        lt, ls = _log_softmax(10.0 * t_cos / 2.0), _log_softmax(10.0 * s_cos / 2.0)
        ref += 4.0 * np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    same = losses.logit_distillation_loss(tx, ty, tx, ty, kind="kl")
    assert abs(same.numpy()) < 1e-5


def test_distillation_needs_teacher_dim():
    with pytest.raises(ValueError, match="teacher"):
        losses.DualEncoderLoss(LossConfig(feature_distill_weight=1.0))


# ---------------------------------------------------------------------------- parity
def _tower(d_in, d_out, seed):
    tf_keras.utils.set_random_seed(seed)
    inp = tf_keras.Input((d_in,))
    h = tf_keras.layers.Dense(16, activation="tanh")(inp)
    return tf_keras.Model(inp, tf_keras.layers.Dense(d_out)(h))


def _loss_and_grads(model, loss_fn, xs, ys, txs, tys):
    with tf.GradientTape() as tape:
        terms = loss_fn(model(xs), model(ys), txs, tys)
    variables = model.trainable_variables + loss_fn.trainable_variables
    return terms, tape.gradient(terms["loss"], variables)


@pytest.mark.parametrize("distill", ["none", "mse", "kl"])
def test_mirrored_two_replicas_equals_one_device(distill, two_cpu_strategy):
    cfg = LossConfig(margin=0.3, scale=100.0)
    if distill != "none":
        cfg = LossConfig(margin=0.3, scale=100.0, feature_distill_weight=1.0,
                         logit_distill_weight=1.0, logit_distill_type=distill,
                         logit_distill_temperature=2.0)
    rng = np.random.default_rng(5)
    n, d_in, D = 8, 12, 10
    xs, ys = (rng.normal(size=(n, d_in)).astype(np.float32) for _ in range(2))
    txs, tys = (rng.normal(size=(n, D)).astype(np.float32) for _ in range(2))

    model = _tower(d_in, 6, seed=1)
    loss_fn = losses.DualEncoderLoss(cfg, teacher_dim=D, student_dim=6)
    terms, grads = _loss_and_grads(model, loss_fn, xs, ys, txs, tys)

    strategy = two_cpu_strategy
    with strategy.scope():
        m_model = _tower(d_in, 6, seed=1)
        m_loss = losses.DualEncoderLoss(cfg, teacher_dim=D, student_dim=6)
    m_model.set_weights(model.get_weights())
    m_loss.set_weights(loss_fn.get_weights())

    def shard(ctx):
        i, k = ctx.replica_id_in_sync_group, n // ctx.num_replicas_in_sync
        return tuple(a[i * k:(i + 1) * k] for a in (xs, ys, txs, tys))

    inputs = strategy.experimental_distribute_values_from_function(shard)

    @tf.function
    def step(batch):
        def replica_fn(x, y, tx, ty):
            return _loss_and_grads(m_model, m_loss, x, y, tx, ty)
        out_terms, out_grads = strategy.run(replica_fn, args=batch)
        red = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
        return ({k: red(v) for k, v in out_terms.items()}, [red(g) for g in out_grads])

    m_terms, m_grads = step(inputs)
    for key in losses.LOSS_TERMS:
        np.testing.assert_allclose(m_terms[key].numpy(), terms[key].numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=key)
    assert len(m_grads) == len(grads) == len(model.trainable_variables) + (distill != "none")
    for g_m, g in zip(m_grads, grads):
        np.testing.assert_allclose(g_m.numpy(), g.numpy(), rtol=1e-4, atol=1e-5)
    assert terms["loss"].numpy() > 0
    assert max(float(np.abs(g.numpy()).max()) for g in grads) > 1e-3


def test_local_negatives_option(two_cpu_strategy):
    # Without cross-replica negatives, 2 replicas equal the mean of two half-batch losses.
    rng = np.random.default_rng(9)
    x, y = (rng.normal(size=(8, 6)).astype(np.float32) for _ in range(2))
    cfg = LossConfig(margin=0.3, scale=10.0, cross_replica_negatives=False)
    with two_cpu_strategy.scope():
        loss_fn = losses.DualEncoderLoss(cfg)

    def shard(ctx):
        i = ctx.replica_id_in_sync_group
        return x[i * 4:(i + 1) * 4], y[i * 4:(i + 1) * 4]

    per_replica = two_cpu_strategy.run(
        tf.function(lambda a, b: loss_fn(a, b)["ams"]),
        args=two_cpu_strategy.experimental_distribute_values_from_function(shard))
    got = two_cpu_strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    ref = (numpy_ams(x[:4], y[:4], 0.3, 10.0) + numpy_ams(x[4:], y[4:], 0.3, 10.0)) / 2
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    assert abs(ref - numpy_ams(x, y, 0.3, 10.0)) > 1e-3
