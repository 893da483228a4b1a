"""What a run draws per epoch, drawn from the seed, the rank and the epoch alone.

A resumed run must train on what the uninterrupted run would have. Nothing here is carried from
one epoch to the next (no shuffle buffer reshuffled by a seed generator that counts the epochs
this process ran), so a run started at epoch k draws exactly what an uninterrupted run draws
from epoch k on, whatever this process (or a warm engine) ran before.

Data order. A rank's batches come from one stream: passes over its cached images, pass p in an
order drawn from ``(seed, rank, p)``, concatenated and cut into batches of ``batch_size``; epoch
e is batches ``e * steps_per_epoch`` to ``(e + 1) * steps_per_epoch - 1`` of that stream (an
epoch may cross into the next pass: every rank takes the same number of steps). A pipeline for
epochs ``[first, last)`` starts the stream at epoch ``first`` without drawing the earlier ones.

Nothing else is drawn during training: Keras' random layers (dropout, noise, augmentation) draw
from TensorFlow's stateful random ops, whose state no checkpoint holds, so models with such
layers are refused (:func:`check_nothing_random_per_step`); none of the architectures has one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hiresmed_nb.errors import HiresmedError

if TYPE_CHECKING:
    import tensorflow as tf


def drawn_seed(*keys: int) -> int:
    """A 31-bit seed drawn from ``keys`` alone (NumPy's SeedSequence), e.g. (seed, rank, pass)."""
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(1)[0] >> 1)


@dataclass(frozen=True)
class EpochBatches:
    """One rank's training batches, epoch by epoch (see the module docstring).

    ``images``: the rank's (image, label) pairs from :func:`hiresmed_nb.science.data.cached_images`
    (every pipeline made here shares its cache: each file is decoded once per process).
    """

    images: tf.data.Dataset
    preprocess: Callable
    batch_size: int
    steps_per_epoch: int
    seed: int
    rank: int

    def pass_order(self, index: int) -> tf.data.Dataset:
        """The images in pass ``index``'s order, drawn from (seed, rank, index) alone (tf.data
        pairs this seed with TensorFlow's global seed, which the run sets to its seed first)."""
        n_images = int(self.images.cardinality())  # known: a list of files, mapped and cached
        return self.images.shuffle(
            n_images,
            seed=drawn_seed(self.seed, self.rank, index),
            reshuffle_each_iteration=False,  # each pass is its own dataset with its own seed
        )

    def epochs(self, first: int, last: int) -> tf.data.Dataset:
        """The batches of epochs ``first`` to ``last - 1``, ``steps_per_epoch`` each, prefetched."""
        import tensorflow as tf

        n_images = int(self.images.cardinality())
        per_epoch = self.steps_per_epoch * self.batch_size
        start, stop = first * per_epoch, max(last, first) * per_epoch  # positions in the stream
        if stop == start:
            stream = self.images.take(0)
        else:
            passes = range(start // n_images, (stop - 1) // n_images + 1)
            stream = _concatenated([self.pass_order(index) for index in passes])
            stream = stream.skip(start - passes[0] * n_images).take(stop - start)
        stream = stream.map(lambda image, label: (self.preprocess(image), label))
        return stream.batch(self.batch_size).prefetch(tf.data.AUTOTUNE)


def _concatenated(datasets: Sequence[tf.data.Dataset]) -> tf.data.Dataset:
    """The datasets one after the other; a balanced tree of ``concatenate``, which opens each
    input only when the one before it ends (the first pass completes the shared cache before
    the next pass reads it)."""
    if len(datasets) == 1:
        return datasets[0]
    middle = len(datasets) // 2
    return _concatenated(datasets[:middle]).concatenate(_concatenated(datasets[middle:]))


def random_layers(model: Any) -> list[Any]:
    """The layers of ``model`` that draw random numbers while training (dropout, noise,
    random augmentation): Keras' ``BaseRandomLayer`` subclasses."""
    import tensorflow as tf

    random_layer = tf.keras.__internal__.layers.BaseRandomLayer
    return [layer for layer in model.submodules if isinstance(layer, random_layer)]


def check_nothing_random_per_step(model: Any) -> None:
    """Refuse a model with random layers (see the module docstring): a resumed run would draw
    other masks than the uninterrupted one. No architecture here has one; this keeps it so."""
    found = random_layers(model)
    if found:
        names = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in found)
        raise HiresmedError(
            f"model {model.name} has random layers ({names}): a resumed run could not repeat "
            "their draws (see hiresmed_nb.science.epochs); remove them"
        )
