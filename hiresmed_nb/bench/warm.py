"""Warm engines: a second run's launch on engines that already trained, and their memory.

Both use the kernel's warm cluster (:mod:`hiresmed_nb.cluster.warm`) as ``training.run`` does:
2 local ranks, kept between runs of :func:`~hiresmed_nb.bench.timed.timed_train` with the
same parameters, each run in its own ``RESULTS_DIR``; the cluster is stopped afterwards.
The cluster package is imported only when a run starts (it imports ipyparallel), so
``horovodrun``'s ranks, which import the benchmark modules, do not pay for it.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np

from hiresmed_nb.bench.table import goal
from hiresmed_nb.bench.timed import first_step_seconds, in_fresh_results_dir, timed_train
from hiresmed_nb.bench.timing import summarize
from hiresmed_nb.errors import HiresmedError

MB = 10**6
RSS_GROWTH_TARGET_MB = 100.0


def _warm_run(params: dict[str, Any], recycle: bool = True) -> list[dict[str, Any]]:
    """One run on the warm cluster; every rank's result carries ``called``, the ``time.time()``
    just before ``run_warm`` was called. ``recycle=False`` keeps the engines whatever their
    memory growth (:mod:`hiresmed_nb.cluster.memory`)."""
    from hiresmed_nb.cluster import Placement, run_warm

    placement = Placement(2)  # 2 ranks on this machine, as the cold ipyparallel path
    called = time.time()
    results = run_warm(placement, timed_train, {"params": params}, recycle=recycle)
    return [{**result, "called": called} for result in results]


def _same_engines(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    """Raise HiresmedError unless both runs ran on the same engine processes."""
    pids = [r["pid"] for r in before], [r["pid"] for r in after]
    if pids[0] != pids[1]:
        raise HiresmedError(f"warm engines were replaced between runs: pids {pids[0]} -> {pids[1]}")


def via_warm_engines(params: dict[str, Any]) -> dict[str, Any]:
    """2 ranks on warm engines: one untimed run first (the engines import TensorFlow and
    Horovod and train), then the clock starts just before the second run's ``run_warm`` call.

    Returns rank 0's result of the second run plus ``called`` and both runs' ``engine_pids``
    (rank order). Raises HiresmedError when the second run did not reuse the engines.
    """
    from hiresmed_nb.cluster import stop_warm_cluster

    try:
        first = in_fresh_results_dir(_warm_run, params)
        second = in_fresh_results_dir(_warm_run, params)
    finally:
        stop_warm_cluster()
    _same_engines(first, second)
    pids = [[result["pid"] for result in run] for run in (first, second)]
    return {**second[0], "engine_pids": pids}


def _rss_bytes(pids: list[int]) -> list[int]:
    import psutil

    return [int(psutil.Process(pid).memory_info().rss) for pid in pids]


def memory_series(params: dict[str, Any], runs: int) -> dict[str, Any]:
    """``runs`` consecutive runs of the same training on one warm cluster, not recycled: this
    measures what an engine keeps per run, the growth that recycling bounds in use.

    Returns ``engine_pids`` (rank order), ``rss_bytes`` (one list per rank: after the engines
    started, then after each run) and ``first_step_seconds`` of each run. Raises HiresmedError
    for fewer than 2 runs or when a run did not reuse the engines.
    """
    from hiresmed_nb.cluster import Placement, stop_warm_cluster, warm_cluster

    if runs < 2:
        raise HiresmedError(f"warm_memory_runs: at least 2 runs to measure growth, got {runs}")
    try:
        pids = list(warm_cluster(Placement(2)).engine_pids)
        rss = [_rss_bytes(pids)]
        first_steps = []
        for _ in range(runs):
            results = in_fresh_results_dir(partial(_warm_run, recycle=False), params)
            _same_engines([{"pid": pid} for pid in pids], results)
            rss.append(_rss_bytes(pids))
            first_steps.append(first_step_seconds(results[0]))
    finally:
        stop_warm_cluster()
    return {
        "engine_pids": pids,
        "rss_bytes": [list(column) for column in zip(*rss, strict=True)],
        "first_step_seconds": first_steps,
    }


def _per_rank_mb(series: dict[str, Any]) -> np.ndarray:
    """RSS in MB after each run: shape (ranks, runs) (the reading before run 1 dropped)."""
    return np.asarray(series["rss_bytes"], dtype=float)[:, 1:] / MB


def memory_figures(series: dict[str, Any]) -> dict[str, Any]:
    """RSS per rank after run 1 and after the last run, its growth, and the warm runs' call to
    first step (runs 2 on)."""
    rss = _per_rank_mb(series)
    last = rss.shape[1]
    return {
        "warm_rss_first_run_mb": summarize(rss[:, 0], "MB", "warm engines: RSS after run 1, ranks"),
        "warm_rss_last_run_mb": summarize(
            rss[:, -1], "MB", f"warm engines: RSS after run {last}, ranks"
        ),
        "warm_rss_growth_mb": summarize(
            rss[:, -1] - rss[:, 0], "MB", f"warm engines: RSS growth run 1 -> run {last}, ranks"
        ),
        "warm_series_first_step_seconds": summarize(
            series["first_step_seconds"][1:],
            "s",
            f"warm engines: call to first step, runs 2-{last} of that series",
        ),
    }


def rss_lines(series: dict[str, Any]) -> str:
    """Each rank's RSS after every run, e.g. 'rank 0: 612, 640, 641 MB; rank 1: ...'."""
    return "; ".join(
        f"rank {rank}: " + ", ".join(f"{value:.0f}" for value in row) + " MB"
        for rank, row in enumerate(_per_rank_mb(series))
    )


def memory_goal(series: dict[str, Any]) -> dict[str, Any]:
    """The issue's goal: every rank's RSS grows by less than 100 MB from run 1 to the last."""
    rss = _per_rank_mb(series)
    growth = rss[:, -1] - rss[:, 0]
    last = rss.shape[1]
    return goal(
        f"engine RSS growth, warm run 1 -> run {last} (largest rank)",
        float(growth.max()),
        "<",
        RSS_GROWTH_TARGET_MB,
        "MB",
        "Growth per rank: "
        + ", ".join(f"rank {r} {g:+.0f} MB" for r, g in enumerate(growth))
        + f". RSS after each run: {rss_lines(series)}.",
    )
