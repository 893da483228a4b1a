"""Gradient accumulation inside the training step: one rank reaches the effective batch of
several ranks at the memory cost of one micro-batch.

Horovod's own ``backward_passes_per_step`` fails inside ``fit`` (Horovod #3497), so the
accumulation lives here, in ``train_step``: gradients of ``accumulation_steps`` micro-batches are
averaged, then applied once.
"""

from __future__ import annotations

import tensorflow as tf

from hiresmed_nb import compat


class AccumulatingModel(tf.keras.Model):
    """A functional model whose optimizer steps once every ``accumulation_steps`` batches."""

    def __init__(self, *args, accumulation_steps: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.accumulation_steps = accumulation_steps
        self._accumulated = [
            tf.Variable(tf.zeros_like(variable), trainable=False, name=f"accumulated_{i}")
            for i, variable in enumerate(self.trainable_variables)
        ]
        self._micro_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="micro_steps")

    @classmethod
    def wrap(cls, model: tf.keras.Model, accumulation_steps: int) -> AccumulatingModel:
        return cls(
            inputs=model.inputs,
            outputs=model.outputs,
            name=model.name,
            accumulation_steps=accumulation_steps,
        )

    def train_step(self, data):
        images, labels = data
        with tf.GradientTape() as tape:
            predictions = self(images, training=True)
            loss = self.compute_loss(images, labels, predictions)
        gradients = tape.gradient(loss, self.trainable_variables)
        for total, gradient in zip(self._accumulated, gradients, strict=True):
            total.assign_add(gradient / self.accumulation_steps)
        self._micro_steps.assign_add(1)
        tf.cond(self._micro_steps % self.accumulation_steps == 0, self._apply, tf.no_op)
        return self.compute_metrics(images, labels, predictions, sample_weight=None)

    def _apply(self):
        gradients = [tf.identity(total) for total in self._accumulated]
        # Horovod: average the accumulated gradients across ranks, once per optimizer step.
        gradients = compat.allreduce_gradients(self.optimizer, gradients, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=False))
        for total in self._accumulated:
            total.assign(tf.zeros_like(total))
        return tf.no_op()
