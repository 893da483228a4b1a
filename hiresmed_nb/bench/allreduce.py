"""Benchmark 5: the share of a training step spent in the gradient allreduce on 2 ranks, with and
without fp16 compression.

:func:`allreduce_share` runs on every rank under ``horovodrun`` (``python -m
hiresmed_nb.bench.worker allreduce-share``); :func:`measure` starts it and summarises rank 0's
seconds.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from hiresmed_nb.bench.process import run_worker
from hiresmed_nb.bench.resolution import random_batch
from hiresmed_nb.bench.timing import summarize, time_calls

COMPRESSIONS = ("none", "fp16")

# --- what the ranks run --------------------------------------------------------------------------


def allreduce_share(config: dict[str, Any]) -> dict[str, Any]:
    """On every rank at once: full training steps of ``arch`` with ``hvd.DistributedOptimizer``
    (compression none, then fp16), local steps without any allreduce, and ``hvd.allreduce`` alone
    of tensors shaped like the trainable weights (the project's model, and Keras' VGG16 with its
    fully connected top, 138 M parameters). Seconds per repetition; rank 0's are returned.

    ``config``: ``arch``, ``size``, ``batch``, ``warmup``, ``steps``, ``allreduce_repeats``,
    ``with_top`` (also time the 138 M tensors).
    """
    import horovod.tensorflow.keras as hvd

    hvd.init()  # Horovod: join the ranks started by horovodrun.
    from hiresmed_nb.science import models, training

    training.configure_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))
    import horovod.tensorflow as hvd_tf
    import tensorflow as tf

    compressions = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}
    images, labels = random_batch(config["arch"], config["size"], config["batch"], hvd.rank())
    model = models.build_model(config["arch"], config["size"], 4, None, 0)

    def align(tag: str) -> Any:
        # Horovod: a scalar allreduce as a barrier, so both ranks start each repetition together.
        return lambda index: hvd_tf.allreduce(tf.constant(0.0), name=f"align_{tag}_{index}")

    def timed_steps(optimizer: Any, tag: str) -> list[float]:
        model.compile(optimizer, "sparse_categorical_crossentropy")
        return time_calls(
            lambda: model.train_on_batch(images, labels),
            config["warmup"],
            config["steps"],
            before=align(tag),
        )

    def timed_allreduce(shapes: list[tuple[int, ...]], compression: str, tag: str) -> list[float]:
        tensors = [tf.random.normal(shape) for shape in shapes]

        @tf.function
        def reduce_all(values: list[tf.Tensor]) -> list[tf.Tensor]:
            return [
                # Horovod: average each tensor across ranks, sent as float32 or float16.
                hvd_tf.allreduce(
                    value,
                    op=hvd_tf.Average,
                    compression=compressions[compression],
                    name=f"{tag}_{i}",
                )
                for i, value in enumerate(values)
            ]

        def reduce_and_wait() -> None:
            outputs = reduce_all(tensors)
            _ = [output.numpy() for output in outputs[-1:]]

        return time_calls(
            reduce_and_wait, config["warmup"], config["allreduce_repeats"], before=align(tag)
        )

    result: dict[str, Any] = {**config, "rank": hvd.rank(), "size": hvd.size()}
    result["parameters"] = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    result["local_step_seconds"] = timed_steps(tf.keras.optimizers.Adam(1e-4), "local")
    for name, compression in compressions.items():
        # Horovod: average gradients across ranks, sent as float32 or float16.
        optimizer = hvd.DistributedOptimizer(
            tf.keras.optimizers.Adam(1e-4), compression=compression
        )
        result[f"step_seconds_{name}"] = timed_steps(optimizer, f"step_{name}")
    shapes = [tuple(w.shape) for w in model.trainable_weights]
    for name in compressions:
        result[f"allreduce_seconds_{name}"] = timed_allreduce(shapes, name, f"model_{name}")
    if config.get("with_top"):
        full = tf.keras.applications.VGG16(weights=None, include_top=True)
        top_shapes = [tuple(w.shape) for w in full.trainable_weights]
        result["vgg16_with_top_parameters"] = int(full.count_params())
        del full
        for name in compressions:
            result[f"allreduce_seconds_with_top_{name}"] = timed_allreduce(
                top_shapes, name, f"top_{name}"
            )
    return result


# --- the benchmark -------------------------------------------------------------------------------


def _compression_figures(result: dict[str, Any], name: str, local_step: float) -> dict:
    """Step with allreduce, allreduce alone, their shares, and the 138 M allreduce for one
    compression."""
    step = summarize(result[f"step_seconds_{name}"], "s", f"step with allreduce ({name})")
    reduce = summarize(
        result[f"allreduce_seconds_{name}"], "s", f"allreduce alone of the gradients ({name})"
    )
    figures = {
        f"step_seconds_{name}": step,
        f"allreduce_seconds_{name}": reduce,
        f"allreduce_share_{name}": summarize(
            [reduce["median"] / step["median"]], "", f"allreduce alone / step ({name})"
        ),
        f"step_overhead_share_{name}": summarize(
            [(step["median"] - local_step) / step["median"]],
            "",
            f"(step - local step) / step ({name})",
        ),
    }
    if f"allreduce_seconds_with_top_{name}" in result:
        figures[f"allreduce_seconds_with_top_{name}"] = summarize(
            result[f"allreduce_seconds_with_top_{name}"],
            "s",
            f"allreduce of VGG16-with-top shapes, {result['vgg16_with_top_parameters']:,} "
            f"parameters ({name})",
        )
    return figures


def measure(level: dict[str, Any]) -> dict[str, Any]:
    """:func:`allreduce_share` on 2 ranks under horovodrun, one OpenMP thread each."""
    warmup, steps = level["probe_steps"]
    config = {
        **level["allreduce"],
        "warmup": warmup,
        "steps": max(steps, 3),
        "allreduce_repeats": level["allreduce_repeats"],
    }
    result, _ = run_worker("allreduce-share", config, ranks=2, env={"OMP_NUM_THREADS": "1"})
    figures: dict[str, Any] = {
        "local_step_seconds": summarize(
            result["local_step_seconds"], "s", "step without allreduce (each rank alone)"
        )
    }
    for name in COMPRESSIONS:
        figures.update(_compression_figures(result, name, figures["local_step_seconds"]["median"]))
    return {
        "benchmark": "allreduce",
        "title": "5. Gradient traffic: allreduce share of the step, fp16 compression",
        "config": config,
        "figures": figures,
        "goals": [],
        "notes": [
            f"The project's {config['arch']} (models.build_model: no top, global pooling, "
            "4-class head) "
            f"has {result['parameters']:,} trainable parameters; Keras' VGG16 with its fully "
            "connected top carries 138 M, timed as allreduce alone.",
            "Accuracy of fp16 against none on the quick study is not measured here (a "
            "study-level comparison).",
        ],
        "raw": result,
    }
