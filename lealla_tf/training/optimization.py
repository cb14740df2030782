"""The optimiser: AdamW with warm-up and linear decay, and its lazy variant for embedding tables.

:func:`build_optimizer` follows LaBSE's reference config. :class:`LazyAdamWeightDecay`
(``train.optimizer: lazy_adamw``) keeps AdamW's maths but, for a sparse gradient, updates the
moments, weight decay and values of the gathered rows only.

See docs/training.md, "The job" (optimiser).
"""

from __future__ import annotations

import tensorflow as tf
from official.modeling.optimization import legacy_adamw

from lealla_tf import config as config_lib

# LaBSE reference config (official/projects/labse/experiments/labse_base.yaml).
_ADAM_BETA_1, _ADAM_BETA_2, _ADAM_EPSILON = 0.9, 0.999, 1e-5
_NO_DECAY = ["LayerNorm", "layer_norm", "bias"]


class LazyAdamWeightDecay(legacy_adamw.AdamWeightDecay):
    """Model Garden's AdamW with lazy (row-wise) updates for sparse gradients."""

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        var_device, var_dtype = var.device, var.dtype.base_dtype
        coefficients = ((apply_state or {}).get((var_device, var_dtype))
                        or self._fallback_apply_state(var_device, var_dtype))
        m = self.get_slot(var, "m")
        v = self.get_slot(var, "v")
        m_rows = (coefficients["beta_1_t"] * tf.gather(m, indices)
                  + coefficients["one_minus_beta_1_t"] * grad)
        v_rows = (coefficients["beta_2_t"] * tf.gather(v, indices)
                  + coefficients["one_minus_beta_2_t"] * tf.square(grad))
        step = coefficients["lr"] * m_rows / (tf.sqrt(v_rows) + coefficients["epsilon"])
        if self._do_use_weight_decay(var.name):
            # The decoupled decay of AdamWeightDecay (learning rate without bias correction).
            step += (coefficients["lr_t"] * coefficients["weight_decay_rate"]
                     * tf.gather(var, indices))
        return tf.group(
            m.scatter_update(tf.IndexedSlices(m_rows, indices)),
            v.scatter_update(tf.IndexedSlices(v_rows, indices)),
            var.scatter_sub(tf.IndexedSlices(step, indices)))


def build_optimizer(train_cfg: config_lib.TrainConfig):
    """AdamW + warm-up + linear decay via ``official.modeling.optimization``.

    ``train.optimizer: lazy_adamw`` swaps in :class:`LazyAdamWeightDecay`
    (the same maths; an embedding table's unused rows are left alone).

    The learning rate rises linearly to ``train.learning_rate`` over ``train.warmup_steps``,
    then falls linearly to ``train.end_learning_rate`` at ``train.steps``. Gradient clipping
    is left to the train step (after the cross-replica sum).

    Returns:
      ``(optimizer, learning_rate_schedule)``.
    """
    from official.modeling.optimization import optimizer_factory
    from official.modeling.optimization.configs import optimization_config

    params = {
        "optimizer": {"type": "adamw", "adamw": {
            "weight_decay_rate": train_cfg.weight_decay,
            "exclude_from_weight_decay": _NO_DECAY,
            "beta_1": _ADAM_BETA_1, "beta_2": _ADAM_BETA_2, "epsilon": _ADAM_EPSILON,
            "gradient_clip_norm": 0.0}},
        "learning_rate": {"type": "polynomial", "polynomial": {
            "initial_learning_rate": train_cfg.learning_rate,
            "decay_steps": max(1, train_cfg.steps - train_cfg.warmup_steps),
            "offset": train_cfg.warmup_steps,
            "end_learning_rate": train_cfg.end_learning_rate, "power": 1.0}},
    }
    if train_cfg.warmup_steps > 0:
        params["warmup"] = {"type": "polynomial", "polynomial": {
            "warmup_steps": train_cfg.warmup_steps, "power": 1.0}}
    factory = optimizer_factory.OptimizerFactory(optimization_config.OptimizationConfig(params))
    schedule = factory.build_learning_rate()
    if train_cfg.optimizer == "lazy_adamw":
        adamw = params["optimizer"]["adamw"]
        return LazyAdamWeightDecay(
            learning_rate=schedule, weight_decay_rate=adamw["weight_decay_rate"],
            exclude_from_weight_decay=adamw["exclude_from_weight_decay"],
            beta_1=adamw["beta_1"], beta_2=adamw["beta_2"], epsilon=adamw["epsilon"],
            gradient_clip_norm=0.0), schedule
    return factory.build_optimizer(schedule), schedule
