"""LazyAdam: Adam whose update for a row-sparse gradient reads and writes only those rows.

tf-keras Adam applies a ``tf.IndexedSlices`` gradient (an embedding lookup's) by decaying both
moments of *every* row and then updating every row of the variable, so a step costs the
table's size. Here the moments and the variable are gathered, updated and scattered back at
the gradient's rows only (the gradient's indices are unique: ``apply_gradients`` sums
duplicates first). A row that a step does not touch keeps its moments and its value, as in
TensorFlow Addons' ``LazyAdam``: the moments of a row decay once per step that uses it, not
once per step. Dense gradients get plain Adam. The slots are Adam's (``m``, ``v``), so
checkpoints hold the same variables.
"""
from __future__ import annotations

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfrs_movies")
class LazyAdam(tf.keras.optimizers.Adam):
    """``tf.keras.optimizers.Adam`` with row-sparse updates for ``tf.IndexedSlices``."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices) or self.amsgrad:
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        beta_1_power = tf.pow(beta_1, local_step)
        beta_2_power = tf.pow(beta_2, local_step)
        alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        epsilon = self.epsilon * tf.sqrt(1 - beta_2_power) if self.adaptive_epsilon \
            else self.epsilon

        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        rows, values = gradient.indices, tf.cast(gradient.values, dtype)
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon),
                                              rows))
