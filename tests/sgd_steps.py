"""One plain-SGD step of a tiny conv net, serially or on Horovod ranks: the equivalence checks
that gradients are averaged (not summed or dropped) and that accumulation matches a bigger
batch. Importable on engines (the tests put this folder on their PYTHONPATH)."""

from __future__ import annotations

import numpy as np


def one_sgd_step(
    images: np.ndarray,
    labels: np.ndarray,
    distributed: bool,
    learning_rate: float = 0.1,
    accumulation_steps: int = 1,
) -> list[np.ndarray]:
    """One plain-SGD step of a tiny conv net (no batch norm) on ``images``; returns the weights.

    Serial: one step on the whole batch. Distributed: rank r takes the r-th equal slice, and
    Horovod averages the gradients, which must give the serial weights (the equivalence check
    that gradients are averaged, not summed or dropped). With ``accumulation_steps`` k, each
    rank's slice is fed as k micro-batches whose gradients are accumulated into the one step.
    """
    import tensorflow as tf

    rank, size = 0, 1
    if distributed:
        import horovod.tensorflow.keras as hvd

        hvd.init()
        rank, size = hvd.rank(), hvd.size()
    per_rank = len(images) // size
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    init = tf.keras.initializers.GlorotUniform(seed=7)
    model = tf.keras.Sequential(
        [
            tf.keras.Input(images.shape[1:]),
            tf.keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=init),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(int(labels.max()) + 1, kernel_initializer=init),
        ]
    )
    optimizer = tf.keras.optimizers.SGD(learning_rate)
    if distributed:
        optimizer = hvd.DistributedOptimizer(optimizer)  # Horovod: average gradients.
    if accumulation_steps > 1:
        from hiresmed_nb.science.accumulation import AccumulatingModel

        model = AccumulatingModel.wrap(model, accumulation_steps)
    model.compile(optimizer, tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for micro_images, micro_labels in zip(
        np.array_split(images[mine], accumulation_steps),
        np.array_split(labels[mine], accumulation_steps),
        strict=True,
    ):
        model.train_on_batch(micro_images, micro_labels)
    return [variable.numpy() for variable in model.trainable_variables]
