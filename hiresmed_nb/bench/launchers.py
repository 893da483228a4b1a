"""Benchmark 1: the same training function, data and 2 ranks through each way of launching them.

A launch path is a function ``(params) -> rank 0's timed_train result`` plus ``called`` (the
``time.time()`` its clock starts from), and one line in :data:`PATHS` naming it, its
first-step goal and what limits that goal when missed. Every path gets the same four figures
(steady s/step, call to first step, call to function running, function start to first step)
and its own first-step goal; the steady-state goal compares ipyparallel with horovodrun.

:func:`timed_train` is what the ranks run, on ipyparallel engines and under ``horovodrun``
(``python -m hiresmed_nb.bench.worker timed-train``).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from hiresmed_nb.bench.process import run_worker
from hiresmed_nb.bench.table import goal
from hiresmed_nb.bench.timing import (
    median_ratio,
    median_ratios,
    relative_iqr,
    step_clock,
    step_intervals,
    summarize,
)

# --- what the ranks run --------------------------------------------------------------------------


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


def steady_seconds(run: dict[str, Any]) -> list[float]:
    """Rank 0's seconds per step from the second epoch on (images cached after the first)."""
    return step_intervals(run["batch_ends"], run["epoch_starts"], 1)


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


def in_fresh_results_dir(run: Callable, params: dict[str, Any]) -> dict[str, Any]:
    """``run(params)`` with ``RESULTS_DIR`` set to a scratch folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="hiresmed-bench-run-") as scratch:
        return run({**params, "RESULTS_DIR": scratch})


# --- the launch paths ----------------------------------------------------------------------------


def via_ipyparallel(params: dict[str, Any]) -> dict[str, Any]:
    """2 ranks on ipyparallel engines: the clock starts just before HorovodCluster(2) is entered."""
    from hiresmed_nb.cluster import HorovodCluster

    started = time.time()
    with HorovodCluster(2) as cluster:
        results = cluster.run(timed_train, {"params": params})
    return {**results[0], "called": started}


def via_horovodrun(params: dict[str, Any]) -> dict[str, Any]:
    """2 ranks under horovodrun: the clock starts just before horovodrun is started."""
    # As the cluster sets for its engines: one OpenMP thread per rank.
    result, started = run_worker(
        "timed-train", {"params": params}, ranks=2, env={"OMP_NUM_THREADS": "1"}
    )
    return {**result, "called": started}


class LaunchPath(NamedTuple):
    """One way to start the ranks, and its goal "call to first step, <goal_name>".

    ``limits``: what limits that goal when it is missed, a ``str.format`` template over the
    medians of the launchers figures (``{ipyparallel_setup_seconds:.1f}``).
    """

    run: Callable[[dict[str, Any]], dict[str, Any]]
    goal_name: str
    limits: str


PATHS: dict[str, LaunchPath] = {
    "ipyparallel": LaunchPath(
        via_ipyparallel,
        "ipyparallel path",
        "Starting 2 engines and the controller takes {ipyparallel_launch_seconds:.1f} s; then "
        "each rank imports TensorFlow and Horovod, joins the rendezvous, checks and reads its "
        "images, builds and traces the model: {ipyparallel_setup_seconds:.1f} s, on 2 cores "
        "shared by both ranks. horovodrun pays the same per-rank setup "
        "({horovodrun_setup_seconds:.1f} s).",
    ),
    "horovodrun": LaunchPath(
        via_horovodrun,
        "horovodrun",
        "Python start, TensorFlow import and graph tracing on 2 shared cores.",
    ),
}
FIRST_STEP_TARGET_SECONDS = 10.0


# --- the benchmark -------------------------------------------------------------------------------


def _path_figures(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The four figures of one path over its repeats."""
    return {
        f"{name}_step_seconds": summarize(
            [s for run in runs for s in steady_seconds(run)], "s", f"{name}: steady-state s/step"
        ),
        f"{name}_first_step_seconds": summarize(
            [run["batch_ends"][0] - run["called"] for run in runs],
            "s",
            f"{name}: call to first step end",
        ),
        f"{name}_launch_seconds": summarize(
            [run["entered"] - run["called"] for run in runs],
            "s",
            f"{name}: call to function running on rank 0",
        ),
        f"{name}_setup_seconds": summarize(
            [run["batch_ends"][0] - run["entered"] for run in runs],
            "s",
            f"{name}: function start to first step end (TF import, hvd.init, split, build, "
            "first batch)",
        ),
    }


def _goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The steady-state goal (ipyparallel against horovodrun), then each path's first step."""
    pairs = figures["step_ratio"]
    steady = goal(
        "steady-state s/step, ipyparallel / horovodrun",
        median_ratio(figures, "ipyparallel_step_seconds", "horovodrun_step_seconds"),
        "<=",
        1.03,
        "x",
        "Same function, data, threads and Gloo on both paths; the step-to-step spread "
        f"(IQR / median) is {relative_iqr(figures['ipyparallel_step_seconds']):.0%} "
        f"(ipyparallel) and {relative_iqr(figures['horovodrun_step_seconds']):.0%} "
        f"(horovodrun), and the ratio over repeat pairs ranges {pairs['min']:.2f}-"
        f"{pairs['max']:.2f}.",
    )
    medians = {key: figure["median"] for key, figure in figures.items()}
    first_steps = [
        goal(
            f"call to first step, {path.goal_name}",
            medians[f"{name}_first_step_seconds"],
            "<=",
            FIRST_STEP_TARGET_SECONDS,
            "s",
            path.limits.format(**medians),
        )
        for name, path in PATHS.items()
    ]
    return [steady, *first_steps]


def measure(level: dict[str, Any]) -> dict[str, Any]:
    """Every path of :data:`PATHS` ``launch_repeats`` times, alternating the order per repeat."""
    params = train_params(level, Path("unused"))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PATHS}
    for repeat in range(level["launch_repeats"]):
        order = list(PATHS) if repeat % 2 == 0 else list(PATHS)[::-1]
        for name in order:
            runs[name].append(in_fresh_results_dir(PATHS[name].run, params))
    figures: dict[str, Any] = {}
    for name, done in runs.items():
        figures.update(_path_figures(name, done))
    figures["step_ratio"] = summarize(
        median_ratios(
            [steady_seconds(run) for run in runs["ipyparallel"]],
            [steady_seconds(run) for run in runs["horovodrun"]],
        ),
        "x",
        "ipyparallel / horovodrun s/step",
    )
    return {
        "benchmark": "launchers",
        "title": "1. Notebook-hosted ranks (ipyparallel) against horovodrun",
        "config": {"params": params, "repeats": level["launch_repeats"]},
        "figures": figures,
        "goals": _goals(figures),
        "notes": [
            "Steady state: rank 0's intervals between batch ends from the second epoch on "
            "(images cached in memory after the first), pooled over repeats; the ratio's spread "
            "is over repeat pairs.",
            "Call: just before HorovodCluster(2) is entered, or just before horovodrun is "
            "started; first step: rank 0's first batch end.",
        ],
        "raw": runs,
    }
