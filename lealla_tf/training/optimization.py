"""AdamW whose embedding-table updates touch only the rows a batch uses.

Model Garden's ``AdamWeightDecay`` (the LaBSE optimiser) handles a sparse gradient the way
Keras's legacy Adam does: it decays the first and second moments of *every* row of the table,
applies weight decay to every row, and subtracts an update from every row, on every step. With
the teacher's 128k-piece vocabulary that is six dense passes over a 16M-value table per step,
most of a small student's step time on CPU.

``LazyAdamWeightDecay`` keeps the optimiser's maths for dense variables and, for a sparse
gradient, updates the moments, the weight decay and the value of the gathered rows only (the
"lazy Adam" rule of TensorFlow Addons' ``LazyAdam``, which no longer installs with current
TensorFlow). Rows that a step does not use keep their moments and values unchanged.
Duplicate indices are summed by the base class before the update.
"""

from __future__ import annotations

import tensorflow as tf
from official.modeling.optimization import legacy_adamw


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
