"""A kernel's first run on engines it starts (cold), its second on the same engines (warm), and
warm engines' memory.

All run on a :class:`~hiresmed_nb.cluster.pool.Pool`'s cluster, as a notebook's kernel does: 2
local ranks, kept between runs of :func:`~hiresmed_nb.bench.timed.timed_train` with the same
parameters, each run in its own ``RESULTS_DIR``; the pool is closed afterwards.
The cluster package is imported only when a run starts (it imports ipyparallel), so
``horovodrun``'s ranks, which import the benchmark modules, do not pay for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.timed import first_step_seconds, in_fresh_results_dir, timed_train
from hiresmed_nb.bench.timing import summarize
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import RunConfig

MB = 10**6


def _timed_run(run: Callable[..., list[Any]], params: RunConfig) -> list[dict[str, Any]]:
    """``run(timed_train, ...)`` (a pool's or a cluster's ``run``); every rank's result carries
    ``called``, the ``time.time()`` just before the call."""
    called = time.time()
    results = run(timed_train, {"params": params})
    return [{**result, "called": called} for result in results]


def _same_engines(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> None:
    """Raise HiresmedError unless both runs ran on the same engine processes."""
    pids = [r["pid"] for r in before], [r["pid"] for r in after]
    if pids[0] != pids[1]:
        raise HiresmedError(f"warm engines were replaced between runs: pids {pids[0]} -> {pids[1]}")


def pool_runs(params: dict[str, Any], warm_run: bool = True) -> dict[str, dict[str, Any]]:
    """2 ranks on a :class:`~hiresmed_nb.cluster.pool.Pool`'s engines, as a notebook's kernel
    runs them: a first run on engines the pool starts for it, then (``warm_run``) a second on
    the same engines, each in its own ``RESULTS_DIR``.

    Returns rank 0's result of each run plus ``called``, the ``time.time()`` just before its
    ``pool.run`` call: ``"ipyparallel"``, the first (cold: its clock includes starting the
    controller and engines) and, with ``warm_run``, ``"warm"``, the second, which also carries
    both runs' ``engine_pids`` (rank order) and ``memory``, these two runs as a
    :func:`memory_series` (the engines' RSS read after each run, outside the clocks). Raises
    HiresmedError when the second run did not reuse the engines.
    """
    from hiresmed_nb.cluster import Placement, Pool

    placement = Placement(2)  # 2 ranks on this machine, as horovodrun's path
    with Pool() as pool:
        run = partial(_timed_run, partial(pool.run, placement))
        first = in_fresh_results_dir(run, params)  # the pool starts the cluster in the call
        if not warm_run:
            return {"ipyparallel": first[0]}
        cluster = pool.cluster(placement)
        rss = [cluster.engine_memory()]
        second = in_fresh_results_dir(run, params)
        rss.append(cluster.engine_memory())
    _same_engines(first, second)
    pids = [[result["pid"] for result in run] for run in (first, second)]
    memory = _series(pids[0], rss, [first_step_seconds(run[0]) for run in (first, second)])
    return {"ipyparallel": first[0], "warm": {**second[0], "engine_pids": pids, "memory": memory}}


def _series(pids: list[int], rss: list[list[int]], first_steps: list[float]) -> dict[str, Any]:
    """A :func:`memory_series` result from the readings after each run (each: every rank's)."""
    return {
        "engine_pids": pids,
        "rss_bytes": [list(column) for column in zip(*rss, strict=True)],
        "first_step_seconds": first_steps,
    }


def memory_series(params: dict[str, Any], runs: int) -> dict[str, Any]:
    """``runs`` consecutive runs of the same training on one warm cluster, not recycled: this
    measures what an engine keeps per run, the growth that recycling bounds in use.

    Returns ``engine_pids`` (rank order), ``rss_bytes`` (one list per rank: after each run) and
    ``first_step_seconds`` of each run. Raises HiresmedError for fewer than 2 runs or when a
    run did not reuse the engines.
    """
    from hiresmed_nb.cluster import Placement, Pool

    if runs < 2:
        raise HiresmedError(f"warm_memory_runs: at least 2 runs to measure growth, got {runs}")
    with Pool() as pool:
        cluster = pool.cluster(Placement(2))
        pids = list(cluster.engine_pids)
        rss, first_steps = [], []
        for _ in range(runs):  # straight on the cluster: the pool would replace grown engines
            results = in_fresh_results_dir(partial(_timed_run, cluster.run), params)
            _same_engines([{"pid": pid} for pid in pids], results)
            rss.append(cluster.engine_memory())
            first_steps.append(first_step_seconds(results[0]))
    return _series(pids, rss, first_steps)


def _per_rank_mb(series: dict[str, Any]) -> np.ndarray:
    """RSS in MB after each run: shape (ranks, runs)."""
    return np.asarray(series["rss_bytes"], dtype=float) / MB


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
    """The memory goal: every rank's RSS grows by less than the bound past which the pool
    replaces engines (:data:`hiresmed_nb.cluster.memory.RECYCLE_GROWTH_BYTES`), run 1 to last."""
    from hiresmed_nb.cluster.memory import RECYCLE_GROWTH_BYTES

    rss = _per_rank_mb(series)
    growth = rss[:, -1] - rss[:, 0]
    last = rss.shape[1]
    return goal(
        f"engine RSS growth, warm run 1 -> run {last} (largest rank)",
        float(growth.max()),
        "<",
        RECYCLE_GROWTH_BYTES / MB,
        "MB",
        "Growth per rank: "
        + ", ".join(f"rank {r} {g:+.0f} MB" for r, g in enumerate(growth))
        + f". RSS after each run: {rss_lines(series)}.",
    )
