"""What the ranks of the launch benchmarks run: one training with a step clock, and its params.

:func:`timed_train` runs on ipyparallel engines (cold, warm, on simulated hosts) and under
``horovodrun`` (``python -m hiresmed_nb.bench.worker timed-train``); every launch path and the
threads benchmark train :func:`train_params`, each run in a fresh ``RESULTS_DIR`` so that no run
resumes from another's checkpoint.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiresmed_nb.bench.timing import step_clock, step_intervals
from hiresmed_nb.params import RunConfig, validate


def timed_train(config: dict[str, Any]) -> dict[str, Any]:
    """``training.train(params)`` with a :func:`step_clock`; returns this rank's timestamps.

    ``config``: ``params`` (run parameters) and optionally ``threads``, TensorFlow's intra-op
    threads for this rank, fixed before ``train`` would choose them from the host's cores and
    local ranks (takes effect only in a process where TensorFlow is not initialised yet).
    Returns ``rank``, ``pid``, ``hostname``, ``entered`` (when this function started on the
    rank), ``batch_ends``, ``epoch_starts``, ``images_per_step`` (global) and rank 0's
    ``images_per_second`` as :func:`training.train` reports it.
    """
    entered = time.time()
    from hiresmed_nb.science import training

    if config.get("threads"):
        import tensorflow as tf

        training.configure_threads(int(config["threads"]))
        tf.config.list_logical_devices()  # initialise TensorFlow now: train() keeps these threads
    params = config["params"]
    if not isinstance(params, RunConfig):  # a process of its own (horovodrun): its own head
        params = validate(params)
    clock = step_clock()
    result = training.train(params, callbacks=[clock])
    ranks = result.get("n_ranks", 1) if result["rank"] == 0 else None
    return {
        "rank": result["rank"],
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "entered": entered,
        "batch_ends": clock.batch_ends,
        "epoch_starts": clock.epoch_starts,
        "n_ranks": ranks,
        "images_per_step": params["BATCH_SIZE"] * (ranks or 1),
        "images_per_second_reported": result.get("images_per_second"),
    }


def steady_seconds(run: dict[str, Any]) -> list[float]:
    """Rank 0's seconds per step from the second epoch on (images cached after the first)."""
    return step_intervals(run["batch_ends"], run["epoch_starts"], 1)


def first_step_seconds(run: dict[str, Any]) -> float:
    """Seconds from a launch path's ``called`` to rank 0's first batch end."""
    return run["batch_ends"][0] - run["called"]


def train_params(level: dict[str, Any], scratch: Path, mode: str = "distributed") -> dict:
    """The run the launcher and threads benchmarks train: compact CNN on synthetic-skin."""
    return {
        "DATASET": "synthetic-skin",
        "ARCH": "compact",
        "MODE": mode,
        "N_RANKS": 2,
        "TEST_IMAGES_PER_CLASS": 2,
        "RESULTS_DIR": str(scratch),
        **level["train"],
    }


def in_fresh_results_dir(run: Callable, params: dict[str, Any]) -> Any:
    """``run(params)``, checked, with ``RESULTS_DIR`` set to a scratch folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hiresmed-bench-run-") as scratch:
        return run(validate({**params, "RESULTS_DIR": scratch}))
