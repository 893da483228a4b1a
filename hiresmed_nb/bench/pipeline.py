"""Benchmark 2: the real input pipeline (1024 px PNGs) against tensors in memory and a disk cache.

:func:`time_variants` runs in a fresh process (``python -m hiresmed_nb.bench.worker pipeline``);
:func:`measure` starts it and summarises what it returns.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.process import run_worker
from hiresmed_nb.bench.timing import (
    GiB,
    median_ratio,
    median_ratios,
    step_clock,
    step_intervals,
    summarize,
)

VARIANTS = ("pipeline", "in_memory", "disk_cache")

# --- what the fresh process runs -----------------------------------------------------------------


def time_variants(config: dict[str, Any]) -> dict[str, Any]:
    """The real pipeline (1024 px PNGs decoded, resized, cached in memory) against the same steps
    from tensors in memory, and against a pipeline cached on disk; decode throughput.

    ``config``: ``dataset``, ``images_per_class``, ``arch``, ``size``, ``batch``, ``epochs``,
    ``repeats``, ``decode_repeats``, ``threads``, ``cache_dir`` (a scratch folder).
    Per repeat, the three variants run in a rotating order, each with a fresh model.
    """
    from hiresmed_nb.params import validate
    from hiresmed_nb.science import data, models, training

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

    variants = dict(zip(VARIANTS, (real, memory, disk), strict=True))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    order = list(variants)
    for repeat in range(config["repeats"]):
        for name in order[repeat % len(order) :] + order[: repeat % len(order)]:
            model = models.build_model(arch, size, len(split.class_names), None, 0)
            model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
            started = time.time()
            clock = step_clock()
            model.fit(
                variants[name](),
                epochs=config["epochs"],
                steps_per_epoch=steps_per_epoch,
                callbacks=[clock],
                verbose=0,
            )
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


# --- the benchmark -------------------------------------------------------------------------------


def _variant_figures(name: str, runs: list[dict[str, Any]], steps_per_epoch: int) -> dict:
    """The four figures of one variant over its repeats."""
    return {
        f"{name}_steady_step_seconds": summarize(
            [s for run in runs for s in run["steady_step_seconds"]],
            "s",
            f"{name}: steady-state s/step (epochs 2+)",
        ),
        f"{name}_first_epoch_step_seconds": summarize(
            [s for run in runs for s in run["first_epoch_step_seconds"]],
            "s",
            f"{name}: first-epoch s/step (steps 2+ of epoch 1)",
        ),
        f"{name}_first_step_seconds": summarize(
            [run["first_step_seconds"] for run in runs],
            "s",
            f"{name}: fit() call to first step end (tracing + first batch)",
        ),
        f"{name}_first_epoch_seconds": summarize(
            [run["first_epoch_seconds"] for run in runs],
            "s",
            f"{name}: fit() call to end of epoch 1 ({steps_per_epoch} steps, tracing included)",
        ),
    }


def _ratio_figures(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per repeat pair: pipeline and disk cache against in memory."""

    def per_repeat(name: str, key: str) -> list:
        return [run[key] for run in runs[name]]

    steady, first = "steady_step_seconds", "first_epoch_seconds"
    return {
        "steady_ratio": summarize(
            median_ratios(per_repeat("pipeline", steady), per_repeat("in_memory", steady)),
            "x",
            "pipeline / in-memory steady s/step",
        ),
        "first_epoch_ratio": summarize(
            median_ratios(per_repeat("pipeline", first), per_repeat("in_memory", first)),
            "x",
            "pipeline / in-memory first epoch seconds",
        ),
        "disk_cache_ratio": summarize(
            median_ratios(per_repeat("disk_cache", steady), per_repeat("in_memory", steady)),
            "x",
            "disk cache / in-memory steady s/step",
        ),
    }


def measure(level: dict[str, Any]) -> dict[str, Any]:
    """Decode rate, then each variant's steady and first-epoch figures and their ratios."""
    with tempfile.TemporaryDirectory(prefix="hiresmed-bench-cache-") as cache_dir:
        config = {
            "dataset": "synthetic-skin",
            "arch": "compact",
            "threads": os.cpu_count() or 1,
            "decode_repeats": level["decode_repeats"],
            "cache_dir": cache_dir,
            **level["pipeline"],
        }
        result, _ = run_worker("pipeline", config)
    runs, n = result["runs"], result["n_images"]
    figures = {
        "decode_images_per_second": summarize(
            [n / s for s in result["decode_seconds"]],
            "img/s",
            "decode + resize of 1024 px PNGs (tf.data, AUTOTUNE, all cores)",
        )
    }
    for name in VARIANTS:
        figures.update(_variant_figures(name, runs[name], result["steps_per_epoch"]))
    figures.update(_ratio_figures(runs))
    goals = [
        goal(
            "steady-state s/step, pipeline / in memory",
            median_ratio(figures, "pipeline_steady_step_seconds", "in_memory_steady_step_seconds"),
            "<=",
            1.05,
            "x",
            "After the first epoch the pipeline serves resized images from its in-memory "
            "cache; what remains (shuffle, preprocess map, batching) shares the 2 cores with "
            "the training step.",
        ),
        goal(
            "first epoch seconds, pipeline / in memory (not a goal: the decode cost)",
            median_ratio(figures, "pipeline_first_epoch_seconds", "in_memory_first_epoch_seconds"),
            "<=",
            1.05,
            "x",
            f"The first epoch decodes every 1024 px PNG at "
            f"{figures['decode_images_per_second']['median']:.0f} images/s on these 2 cores, "
            "the same cores that train; the in-memory cache removes this from later epochs.",
        ),
    ]
    cache_gib = result["in_memory_cache_bytes"] / GiB
    return {
        "benchmark": "pipeline",
        "title": "2. Input pipeline: 1024 px PNGs against tensors in memory",
        "config": {k: v for k, v in config.items() if k != "cache_dir"},
        "figures": figures,
        "goals": goals,
        "sizes": {
            "n_images": n,
            "in_memory_cache_bytes": result["in_memory_cache_bytes"],
            "disk_cache_bytes": result["disk_cache_bytes_per_copy"],
        },
        "notes": [
            f"The in-memory cache holds float32 resized images: {cache_gib * 1024:.1f} MiB for "
            f"{n} images at {config['size']} px, i.e. size^2 x 3 x 4 bytes each; caching uint8 "
            "before the cast would quarter it.",
            "disk_cache: make_dataset's pipeline with Dataset.cache(filename) instead of "
            ".cache(); data.make_dataset has no cache_dir option (not built); the measurement "
            "shows what one would cost.",
        ],
        "raw": result,
    }
