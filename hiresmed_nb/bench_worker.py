"""What the benchmarks run inside Horovod ranks and fresh processes.

Each task takes a JSON config and returns a JSON-able dict; :mod:`hiresmed_nb.bench` starts them
and summarises what they return. The same :func:`timed_train` runs on ipyparallel engines
(``HorovodCluster(2).run(timed_train, config)``) and under Horovod's own launcher::

    horovodrun -np 2 --gloo -H localhost:2 --network-interface lo \\
        python -m hiresmed_nb.bench_worker timed-train --config CONFIG.json --out OUT.json

Only rank 0 writes ``--out``. Times are ``time.time()`` wall-clock seconds, so timestamps taken
in different processes on one host compare directly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ``ru_maxrss`` in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def step_clock() -> Any:
    """A Keras callback that timestamps every training batch end and notes epoch boundaries.

    ``batch_ends``: ``time.time()`` at each batch end, in order; ``epoch_starts``: the index in
    ``batch_ends`` of each epoch's first batch.
    """
    import tensorflow as tf

    class StepClock(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.batch_ends: list[float] = []
            self.epoch_starts: list[int] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_starts.append(len(self.batch_ends))

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.batch_ends.append(time.time())

    return StepClock()


def step_intervals(batch_ends: list[float], epoch_starts: list[int], from_epoch: int) -> list:
    """Seconds between consecutive batch ends, counting only steps of epochs >= ``from_epoch``
    (an epoch's first step is measured from the previous epoch's last batch end)."""
    first = epoch_starts[from_epoch] if from_epoch < len(epoch_starts) else len(batch_ends)
    first = max(first, 1)
    return [batch_ends[i] - batch_ends[i - 1] for i in range(first, len(batch_ends))]


# --- 1, 4: the training function itself, timed -------------------------------------------------


def timed_train(config: dict[str, Any]) -> dict[str, Any]:
    """``training.train(params)`` with a :func:`step_clock`; returns this rank's timestamps.

    ``config``: ``params`` (run parameters). Returns ``rank``, ``entered`` (when this function
    started on the rank), ``batch_ends``, ``epoch_starts``, ``images_per_step`` (global) and
    rank 0's ``images_per_second`` as :func:`training.train` reports it.
    """
    entered = time.time()
    from hiresmed_nb import training

    clock = step_clock()
    result = training.train(dict(config["params"]), callbacks=[clock])
    params = config["params"]
    ranks = result.get("n_ranks", 1) if result["rank"] == 0 else None
    return {
        "rank": result["rank"],
        "pid": os.getpid(),
        "entered": entered,
        "batch_ends": clock.batch_ends,
        "epoch_starts": clock.epoch_starts,
        "n_ranks": ranks,
        "images_per_step": params["BATCH_SIZE"] * (ranks or 1),
        "images_per_second_reported": result.get("images_per_second"),
    }


# --- 3: cost by resolution and the batch-size planner -----------------------------------------


def probe(config: dict[str, Any]) -> dict[str, Any]:
    """Train ``arch`` at ``size`` on one in-memory batch; step times and peak RSS.

    Run in a fresh process so ``peak_rss_bytes`` belongs to this config alone. ``config``:
    ``arch``, ``size``, ``batch``, ``precision``, ``warmup`` and ``steps`` (train steps timed
    after ``warmup`` untimed ones), ``threads``.
    """
    from hiresmed_nb import models, training

    training.configure_threads(config["threads"])
    import tensorflow as tf

    rss_before_model = peak_rss_bytes()
    tf.keras.mixed_precision.set_global_policy(config["precision"])
    model = models.build_model(config["arch"], config["size"], 4, None, 0)
    model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = tf.constant(
        rng.uniform(0, 255, (config["batch"], config["size"], config["size"], 3)), tf.float32
    )
    images = models.preprocessing_for(config["arch"])(images)
    labels = tf.constant(rng.integers(0, 4, config["batch"]), tf.int32)
    seconds = []
    for step in range(config["warmup"] + config["steps"]):
        started = time.perf_counter()
        model.train_on_batch(images, labels)
        if step >= config["warmup"]:
            seconds.append(time.perf_counter() - started)
    return {
        **config,
        "parameters": int(model.count_params()),
        "step_seconds": seconds,
        "images_per_second": [config["batch"] / s for s in seconds],
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_model_bytes": rss_before_model,
    }


# --- 2: the input pipeline ----------------------------------------------------------------------


def _fit_clocked(model: Any, dataset: Any, epochs: int, steps_per_epoch: int) -> Any:
    clock = step_clock()
    model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[clock], verbose=0)
    return clock


def pipeline(config: dict[str, Any]) -> dict[str, Any]:
    """The real pipeline (1024 px PNGs decoded, resized, cached in memory) against the same steps
    from tensors in memory, and against a pipeline cached on disk; decode throughput.

    ``config``: ``dataset``, ``images_per_class``, ``arch``, ``size``, ``batch``, ``epochs``,
    ``repeats``, ``decode_repeats``, ``threads``, ``cache_dir`` (a scratch folder).
    Per repeat, the three variants run in a rotating order, each with a fresh model.
    """
    from hiresmed_nb import data, models, training
    from hiresmed_nb.params import validate

    training.configure_threads(config["threads"])
    import tensorflow as tf

    params = validate(
        {
            "DATASET": config["dataset"],
            "IMAGES_PER_CLASS": config["images_per_class"],
            "IMAGE_SIZE": config["size"],
        }
    )
    split = data.make_split(
        params["DATASET"], training.data_dir_for(params), params["IMAGES_PER_CLASS"], 0
    )
    files, labels = split.train_files, split.train_labels
    size, batch, arch = config["size"], config["batch"], config["arch"]
    preprocess = models.preprocessing_for(arch)
    steps_per_epoch = math.ceil(len(files) / batch)
    paths = [str(split.data_dir / name) for name in files]

    decode_seconds = []
    for _ in range(config["decode_repeats"]):
        decoded = tf.data.Dataset.from_tensor_slices(paths).map(
            lambda path: data.load_image(path, size, split.greyscale),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        started = time.perf_counter()
        for _image in decoded:
            pass
        decode_seconds.append(time.perf_counter() - started)

    # The same preprocessed images, held as one tensor in memory.
    cached = data.make_dataset(split, files, labels, size, preprocess, len(files))
    in_memory_images, in_memory_labels = next(iter(cached))

    def real() -> Any:
        return data.make_dataset(
            split, files, labels, size, preprocess, batch, shuffle_seed=0, repeat=True
        )

    def memory() -> Any:
        dataset = tf.data.Dataset.from_tensor_slices((in_memory_images, in_memory_labels))
        dataset = dataset.shuffle(len(files), seed=0, reshuffle_each_iteration=True).repeat()
        return dataset.batch(batch).prefetch(tf.data.AUTOTUNE)

    disk_files = []

    def disk() -> Any:
        # make_dataset's pipeline with tf.data's file cache instead of the in-memory one.
        cache_file = str(Path(config["cache_dir"]) / f"cache-{len(disk_files)}")
        disk_files.append(cache_file)
        dataset = tf.data.Dataset.from_tensor_slices((paths, list(labels)))
        dataset = dataset.map(
            lambda path, label: (data.load_image(path, size, split.greyscale), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).cache(cache_file)
        dataset = dataset.shuffle(len(paths), seed=0, reshuffle_each_iteration=True).repeat()
        dataset = dataset.map(lambda image, label: (preprocess(image), label))
        return dataset.batch(batch).prefetch(tf.data.AUTOTUNE)

    variants = {"pipeline": real, "in_memory": memory, "disk_cache": disk}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(config["repeats"]):
        for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
            model = models.build_model(arch, size, len(split.class_names), None, 0)
            model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
            started = time.time()
            clock = _fit_clocked(model, variants[name](), config["epochs"], steps_per_epoch)
            runs[name].append(
                {
                    "first_step_seconds": clock.batch_ends[0] - started,
                    "first_epoch_seconds": clock.batch_ends[steps_per_epoch - 1] - started,
                    "first_epoch_step_seconds": step_intervals(clock.batch_ends, [0, 1], 1)[
                        : steps_per_epoch - 1
                    ],
                    "steady_step_seconds": step_intervals(clock.batch_ends, clock.epoch_starts, 1),
                }
            )
    cache_bytes = sum(
        path.stat().st_size for path in Path(config["cache_dir"]).glob("cache-*") if path.is_file()
    )
    return {
        **config,
        "n_images": len(files),
        "steps_per_epoch": steps_per_epoch,
        "decode_seconds": decode_seconds,
        "runs": runs,
        "disk_cache_bytes_per_copy": cache_bytes / max(1, len(disk_files)),
        "in_memory_cache_bytes": int(in_memory_images.numpy().nbytes),
    }


# --- 5: gradient traffic -----------------------------------------------------------------------


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
    from hiresmed_nb import models, training

    training.configure_threads(max(1, (os.cpu_count() or 1) // hvd.local_size()))
    import horovod.tensorflow as hvd_tf
    import tensorflow as tf

    compressions = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}
    rng = np.random.default_rng(hvd.rank())
    size, batch = config["size"], config["batch"]
    images = models.preprocessing_for(config["arch"])(
        tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32)
    )
    labels = tf.constant(rng.integers(0, 4, batch), tf.int32)
    model = models.build_model(config["arch"], size, 4, None, 0)

    def timed_steps(optimizer: Any, tag: str) -> list[float]:
        model.compile(optimizer, "sparse_categorical_crossentropy")
        seconds = []
        for step in range(config["warmup"] + config["steps"]):
            # Horovod: a scalar allreduce as a barrier, so both ranks start the step together.
            hvd_tf.allreduce(tf.constant(0.0), name=f"align_{tag}_{step}")
            started = time.perf_counter()
            model.train_on_batch(images, labels)
            if step >= config["warmup"]:
                seconds.append(time.perf_counter() - started)
        return seconds

    def timed_allreduce(shapes: list[tuple[int, ...]], compression: str, tag: str) -> list[float]:
        tensors = [tf.random.normal(shape) for shape in shapes]

        @tf.function
        def reduce_all(values: list[tf.Tensor]) -> list[tf.Tensor]:
            return [
                hvd_tf.allreduce(
                    value,
                    op=hvd_tf.Average,
                    compression=compressions[compression],
                    name=f"{tag}_{i}",
                )
                for i, value in enumerate(values)
            ]

        seconds = []
        for repeat in range(config["warmup"] + config["allreduce_repeats"]):
            hvd_tf.allreduce(tf.constant(0.0), name=f"align_{tag}_{repeat}")
            started = time.perf_counter()
            outputs = reduce_all(tensors)
            _ = [output.numpy() for output in outputs[-1:]]
            if repeat >= config["warmup"]:
                seconds.append(time.perf_counter() - started)
        return seconds

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


TASKS = {
    "timed-train": timed_train,
    "probe": probe,
    "pipeline": pipeline,
    "allreduce-share": allreduce_share,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hiresmed_nb.bench_worker")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--config", required=True, help="JSON file with the task's config")
    parser.add_argument("--out", required=True, help="where rank 0 writes the result JSON")
    args = parser.parse_args(argv)
    result = TASKS[args.task](json.loads(Path(args.config).read_text()))
    if result.get("rank", 0) == 0:
        Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
