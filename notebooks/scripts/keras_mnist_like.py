"""Train a small CNN on 10 classes of synthetic MNIST-like images with Horovod and Keras.

The shape of Horovod's ``examples/tensorflow2/tensorflow2_keras_mnist.py``, on **synthetic**
data made here (28 x 28 noise with a bright bar whose position is the class; nothing is
downloaded), so it runs anywhere. Each rank makes its own images (its own seed): data-parallel
training where only gradients cross ranks. Run it as any Horovod script::

    horovodrun -np 2 python notebooks/scripts/keras_mnist_like.py --epochs 2

or from a notebook cell, after ``%load_ext hiresmed_nb``::

    %horovodrun -np 2 scripts/keras_mnist_like.py --epochs 2
"""

import argparse

import horovod.tensorflow.keras as hvd
import numpy as np
import tensorflow as tf

parser = argparse.ArgumentParser(description="Horovod Keras training on synthetic digits")
parser.add_argument("--epochs", type=int, default=2, help="passes over each rank's images")
parser.add_argument("--batch-size", type=int, default=32, help="images per step per rank")
parser.add_argument("--samples", type=int, default=1024, help="training images per rank")
parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's rate for 1 rank")
args = parser.parse_args()

# Horovod: join the ranks (horovodrun, or %horovodrun, set HOROVOD_* to say where they are).
hvd.init()
tf.keras.utils.set_random_seed(hvd.rank())

# Synthetic digits: class k is a bright 8 x 5 bar at its own place in a 2 x 5 grid, under noise.
templates = np.zeros((10, 28, 28, 1), "float32")
for digit in range(10):
    row, col = divmod(digit, 5)
    templates[digit, 4 + 12 * row : 12 + 12 * row, 1 + 5 * col : 6 + 5 * col] = 1.0
rng = np.random.default_rng(hvd.rank())  # Horovod: each rank its own shard of the data.
labels = rng.integers(0, 10, args.samples)
images = templates[labels] + rng.normal(0.0, 0.5, (args.samples, 28, 28, 1)).astype("float32")
dataset = (
    tf.data.Dataset.from_tensor_slices((images, labels))
    .shuffle(args.samples, seed=hvd.rank())
    .batch(args.batch_size)
)

model = tf.keras.Sequential(
    [
        tf.keras.Input((28, 28, 1)),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),  # the class is where the bar is: keep the positions
        tf.keras.layers.Dense(10, activation="softmax"),
    ]
)
# Horovod: the effective batch is hvd.size() times larger, so is the learning rate.
optimizer = tf.keras.optimizers.Adam(args.learning_rate * hvd.size())
# Horovod: average the gradients over the ranks at every step.
optimizer = hvd.DistributedOptimizer(optimizer)
model.compile(optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])

callbacks = [
    # Horovod: start every rank from rank 0's initial weights.
    hvd.callbacks.BroadcastGlobalVariablesCallback(0),
    # Horovod: report metrics averaged over the ranks, not rank 0's alone.
    hvd.callbacks.MetricAverageCallback(),
]
# Horovod: only rank 0 prints its progress.
history = model.fit(
    dataset, epochs=args.epochs, callbacks=callbacks, verbose=2 if hvd.rank() == 0 else 0
)
if hvd.rank() == 0:
    print(f"final accuracy on synthetic digits, all ranks: {history.history['accuracy'][-1]:.3f}")
