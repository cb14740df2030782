"""train.optimizer: lazy_adamw equals Model Garden's AdamW on rows a step uses, leaves the rest."""

import numpy as np
import pytest
import tensorflow as tf

from lealla_tf import config as config_lib
from lealla_tf.training import optimization

ROWS, DIM = 40, 6


def _optimizer(name, weight_decay=0.01):
    cfg = config_lib.TrainConfig(optimizer=name, learning_rate=0.01, warmup_steps=2, steps=20,
                                 weight_decay=weight_decay)
    return optimization.build_optimizer(cfg)[0]


def _run(name, grads_per_step, sparse, var_name="word_embeddings/embeddings"):
    rng = np.random.default_rng(0)
    var = tf.Variable(rng.normal(size=(ROWS, DIM)).astype(np.float32), name=var_name)
    opt = _optimizer(name)
    for values, indices in grads_per_step:
        if sparse:
            grad = tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                                    tf.constant([ROWS, DIM]))
        else:
            grad = tf.math.unsorted_segment_sum(values, indices, ROWS)
        opt.apply_gradients([(grad, var)])
    return var.numpy(), opt


def _steps(cover_all, n=5):
    rng = np.random.default_rng(1)
    steps = []
    for _ in range(n):
        if cover_all:  # every row, shuffled, some twice (their gradients add up)
            indices = np.concatenate([rng.permutation(ROWS), rng.integers(0, ROWS, 7)])
        else:  # only the first half of the table
            indices = rng.integers(0, ROWS // 2, 15)
        steps.append((rng.normal(size=(len(indices), DIM)).astype(np.float32),
                      indices.astype(np.int32)))
    return steps


def test_lazy_equals_adamw_when_every_row_is_used():
    steps = _steps(cover_all=True)
    dense, _ = _run("adamw", steps, sparse=False)
    lazy, _ = _run("lazy_adamw", steps, sparse=True)
    assert np.abs(dense - lazy).max() < 1e-6
    legacy_sparse, _ = _run("adamw", steps, sparse=True)
    assert np.abs(legacy_sparse - lazy).max() < 1e-6


@pytest.mark.parametrize("var_name", ["word_embeddings/embeddings", "layer_norm/bias"])
def test_lazy_leaves_unused_rows_alone(var_name):
    start, _ = _run("lazy_adamw", [], sparse=True, var_name=var_name)
    steps = _steps(cover_all=False)
    lazy, opt = _run("lazy_adamw", steps, sparse=True, var_name=var_name)
    dense, _ = _run("adamw", steps, sparse=True, var_name=var_name)
    used = np.zeros(ROWS, bool)
    used[np.concatenate([i for _, i in steps])] = True
    assert not used[ROWS // 2:].any()
    np.testing.assert_array_equal(lazy[~used], start[~used])
    assert (np.abs(lazy[used] - start[used]) > 1e-4).all()
    if var_name.endswith("embeddings"):
        # Model Garden's AdamW decays every row of a decayed table; the lazy one must not.
        assert np.abs(dense[~used] - start[~used]).max() > 1e-5


def test_unknown_optimizer_is_refused():
    with pytest.raises(config_lib.ConfigError, match="train.optimizer"):
        config_lib.TrainConfig(optimizer="sgd").validate()
