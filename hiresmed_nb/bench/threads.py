"""Benchmark 4: 2 ranks x 1 thread against 1 rank x 2 threads at the same global batch.

The 2-rank arm is benchmark 1's ipyparallel runs when they are given (same parameters), or
measured here the same way; the 1-rank arm runs the same :func:`timed.timed_train` in a
fresh process with ``MODE: serial`` and twice the batch.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from hiresmed_nb.bench import warm
from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.process import run_worker
from hiresmed_nb.bench.timed import in_fresh_results_dir, steady_seconds, train_params
from hiresmed_nb.bench.timing import median_ratio, median_ratios, summarize


def _serial(params: dict[str, Any]) -> dict[str, Any]:
    """One rank of ``timed_train`` in a fresh process (threads: all cores)."""
    return run_worker("timed-train", {"params": params})[0]


def measure(level: dict[str, Any], launchers: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steady img/s of both arms over ``launch_repeats`` repeats, and their ratio per pair.

    ``launchers``: benchmark 1's payload, whose ipyparallel runs are reused as the 2-rank arm.
    """
    params = train_params(level, Path("unused"))
    if launchers is None:
        two_ranks = [
            in_fresh_results_dir(partial(warm.pool_runs, warm_run=False), params)["ipyparallel"]
            for _ in range(level["launch_repeats"])
        ]
        source = "measured here (ipyparallel path)"
    else:
        two_ranks = launchers["raw"]["ipyparallel"]
        source = "the ipyparallel runs of benchmark 1 (same parameters)"
    serial_params = {**params, "MODE": "serial", "BATCH_SIZE": params["BATCH_SIZE"] * 2}
    one_rank = [
        in_fresh_results_dir(_serial, serial_params) for _ in range(level["launch_repeats"])
    ]
    global_batch = serial_params["BATCH_SIZE"]
    figures = {
        "two_ranks_images_per_second": summarize(
            [global_batch / s for run in two_ranks for s in steady_seconds(run)],
            "img/s",
            "2 ranks x 1 thread: steady img/s",
        ),
        "one_rank_images_per_second": summarize(
            [global_batch / s for run in one_rank for s in steady_seconds(run)],
            "img/s",
            "1 rank x 2 threads: steady img/s",
        ),
    }
    # img/s at one global batch: 2 ranks / 1 rank is 1 rank's s/step over 2 ranks'.
    pairs = median_ratios(
        [steady_seconds(run) for run in one_rank], [steady_seconds(run) for run in two_ranks]
    )
    figures["ratio"] = summarize(pairs, "x", "2 ranks / 1 rank img/s")
    goals = [
        goal(
            "throughput, 2 ranks x 1 thread / 1 rank x 2 threads",
            median_ratio(figures, "two_ranks_images_per_second", "one_rank_images_per_second"),
            ">=",
            0.95,
            "x",
            "Two ranks add a gradient allreduce per step and run two Python/Keras step loops "
            "on the same 2 cores.",
        )
    ]
    return {
        "benchmark": "threads",
        "title": "4. Ranks against threads on the same 2 cores",
        "config": {"two_ranks": params, "one_rank": serial_params, "two_rank_source": source},
        "figures": figures,
        "goals": goals,
        "notes": [
            "Global batch equal: 2 ranks x BATCH_SIZE against 1 rank x 2*BATCH_SIZE. Threads "
            "split by training.configure_threads (cores // local ranks).",
        ],
        "raw": {"two_ranks": two_ranks, "one_rank": one_rank},
    }
