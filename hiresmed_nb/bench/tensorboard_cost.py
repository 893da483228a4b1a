"""Benchmark 7: what TensorBoard logging costs a run: steady step time with and without it.

:func:`step_times_with_and_without_logs` runs in a fresh process (``python -m
hiresmed_nb.bench.worker tensorboard-cost``): one serial model and pipeline, built by the
training steps of :mod:`hiresmed_nb.science.training`, trained in short alternating fits with and
without :class:`~hiresmed_nb.science.tensorboard_logs.RunLogger`
(order ABBA, so drift and other jobs on
the machine hit both arms alike); :func:`measure` summarises each pair of fits as a ratio, of
wall-clock seconds per step and of this process's CPU seconds per step (which other jobs on a
shared machine disturb far less). The logger's own work is also timed where it happens: at the
start of a run, at each epoch end, and for the end-of-run results.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.process import run_worker
from hiresmed_nb.bench.timing import median_ratio, summarize

ARMS = ("with_logs", "without_logs")
GOAL_RATIO = 1.02

# --- what the fresh process runs -----------------------------------------------------------------


def step_times_with_and_without_logs(config: dict[str, Any]) -> dict[str, Any]:
    """Alternating fits of one serial model, with and without the run's TensorBoard logger.

    ``config``: ``train`` (run parameters: size, images per class, batch, epochs per fit),
    ``repeats`` (pairs of fits), ``scratch`` (a folder for the logs). One untimed epoch first
    caches the images and traces the step. Returns, per arm and fit, the wall-clock and CPU
    seconds from its first batch end to its last (epoch boundaries and the logger's epoch-end
    writes included) and the number of steps between; and the logger's seconds at each run's
    start, at each epoch end, and for the end-of-run results.
    """
    import tensorflow as tf

    from hiresmed_nb.params import validate
    from hiresmed_nb.science import tensorboard_logs, training

    params = validate(
        {
            "DATASET": "synthetic-skin",
            "ARCH": "compact",
            "MODE": "serial",
            "TEST_IMAGES_PER_CLASS": 2,
            "RESULTS_DIR": config["scratch"],
            **config["train"],
        }
    )
    ranks = training.join_ranks(False)
    training.seed_run(params)
    shard = training.shard_data(params, ranks, None)
    model, _ = training.build_and_compile(params, ranks, len(shard.split.class_names))
    steps = shard.steps_per_epoch
    model.fit(shard.batches.epochs(0, 1), epochs=1, steps_per_epoch=steps, verbose=0)  # warm up

    class Clock(tf.keras.callbacks.Callback):
        """Wall-clock and process CPU time at every batch end."""

        def __init__(self) -> None:
            super().__init__()
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())

    class TimedLogger(tensorboard_logs.RunLogger):
        """The run's logger, timing its own work at a run's start and at each epoch end."""

        def on_train_begin(self, logs: dict | None = None) -> None:
            started = time.perf_counter()
            super().on_train_begin(logs)
            self.begin_seconds = time.perf_counter() - started
            self.epoch_end_seconds: list[float] = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            started = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            self.epoch_end_seconds.append(time.perf_counter() - started)

    loggers: list[TimedLogger] = []
    fits: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for repeat in range(config["repeats"]):
        for arm in ARMS if repeat % 2 == 0 else ARMS[::-1]:
            clock = Clock()
            logger = [TimedLogger(params, {})] if arm == "with_logs" else []
            loggers += logger
            model.fit(
                shard.batches.epochs(0, params["EPOCHS"]),
                epochs=params["EPOCHS"],
                steps_per_epoch=steps,
                callbacks=[*logger, clock],
                verbose=0,
            )
            fits[arm].append(
                {
                    "wall_seconds": clock.wall[-1] - clock.wall[0],
                    "cpu_seconds": clock.cpu[-1] - clock.cpu[0],
                    "steps": len(clock.wall) - 1,
                }
            )
    result = training.evaluate_test_set(params, ranks, shard, model)
    result.update(class_names=shard.split.class_names, images_per_second=0.0)
    results_seconds = []
    for _ in range(config["repeats"]):
        started = time.perf_counter()
        tensorboard_logs.write_results(tensorboard_logs.run_log_dir(params), params, result)
        results_seconds.append(time.perf_counter() - started)
    return {
        **config,
        "steps_per_epoch": steps,
        "fits": fits,
        "begin_seconds": [logger.begin_seconds for logger in loggers],
        "epoch_end_seconds": [s for logger in loggers for s in logger.epoch_end_seconds],
        "results_seconds": results_seconds,
    }


# --- the benchmark -------------------------------------------------------------------------------


def per_step(fits: list[dict[str, float]], clock: str) -> list[float]:
    """Each fit's ``clock`` (``wall`` or ``cpu``) seconds per step."""
    return [fit[f"{clock}_seconds"] / fit["steps"] for fit in fits]


def pair_ratios(fits: dict[str, list[dict[str, float]]], clock: str) -> list[float]:
    """With over without logs, seconds per step, for each pair of fits run one after the other."""
    return [
        with_logs / without
        for with_logs, without in zip(
            per_step(fits["with_logs"], clock), per_step(fits["without_logs"], clock), strict=True
        )
    ]


def measure(level: dict[str, Any]) -> dict[str, Any]:
    """Seconds per step of each arm, their ratios per pair of fits, the logger's own seconds."""
    with tempfile.TemporaryDirectory(prefix="hiresmed-bench-tensorboard-") as scratch:
        config = {**level["tensorboard"], "scratch": scratch}
        result, _ = run_worker("tensorboard-cost", config)
    fits = result["fits"]
    figures = {}
    for arm in ARMS:
        name = arm.replace("_", " ")
        figures[f"{arm}_step_seconds"] = summarize(
            per_step(fits[arm], "wall"), "s", f"{name}: wall-clock s/step of a fit"
        )
        figures[f"{arm}_cpu_step_seconds"] = summarize(
            per_step(fits[arm], "cpu"), "s", f"{name}: process CPU s/step of a fit"
        )
    figures["step_ratio"] = summarize(
        pair_ratios(fits, "wall"), "x", "with / without logs: wall-clock s/step, per pair of fits"
    )
    figures["cpu_step_ratio"] = summarize(
        pair_ratios(fits, "cpu"), "x", "with / without logs: CPU s/step, per pair of fits"
    )
    figures["epoch_end_seconds"] = summarize(
        result["epoch_end_seconds"], "s", "logger at an epoch end (2 scalars)"
    )
    figures["run_start_seconds"] = summarize(
        result["begin_seconds"], "s", "logger at a run's start (folder, HParams, description)"
    )
    figures["run_end_seconds"] = summarize(
        result["results_seconds"], "s", "end-of-run results (5 scalars, confusion matrix PNG)"
    )
    steps = result["steps_per_epoch"]
    epoch_share = figures["epoch_end_seconds"]["median"] / (
        steps * figures["without_logs_step_seconds"]["median"]
    )
    limits = (
        f"The logger adds no work to a step (no batch hooks) and {steps} steps' worth of its "
        f"epoch-end write is {epoch_share:.2%} of an epoch; what is left is other jobs on the "
        "shared cores, which move wall-clock time from one fit to the next."
    )
    goals = [
        goal(
            "wall-clock s/step, with / without TensorBoard logs",
            figures["step_ratio"]["median"],
            "<=",
            GOAL_RATIO,
            "x",
            limits,
        ),
        goal(
            "CPU s/step, with / without TensorBoard logs",
            figures["cpu_step_ratio"]["median"],
            "<=",
            GOAL_RATIO,
            "x",
            limits,
        ),
    ]
    train = config["train"]
    return {
        "benchmark": "tensorboard",
        "title": "7. TensorBoard logging: steady step time with and without it",
        "config": {k: v for k, v in config.items() if k != "scratch"},
        "figures": figures,
        "goals": goals,
        "notes": [
            f"Serial compact CNN at {train['IMAGE_SIZE']} px, {train['IMAGES_PER_CLASS']} images "
            f"per class, batch {train['BATCH_SIZE']} ({steps} steps per epoch), "
            f"{train['EPOCHS']} epochs per fit, {config['repeats']} fits per arm in one "
            "process, in ABBA order after one untimed epoch; a fit's seconds run from its "
            "first batch end to its last, so they hold its epoch-end writes but not its start.",
            f"The logger's epoch-end write is {epoch_share:.2%} of an epoch without logs; its "
            "start and end-of-run writes happen once per run, outside the steps. With Horovod, "
            "rank 0 alone writes, at the same points.",
            "Pooled over fits instead of paired, the with-logs median wall-clock s/step over "
            "the without-logs median: "
            f"{median_ratio(figures, 'with_logs_step_seconds', 'without_logs_step_seconds'):.3f}.",
        ],
        "raw": {k: v for k, v in result.items() if k != "scratch"},
    }
