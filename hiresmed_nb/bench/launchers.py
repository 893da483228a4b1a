"""Benchmark 1: the same training function, data and 2 ranks through each way of launching them.

A launch path is one line in :data:`PATHS` naming its first-step target, what limits that goal
when missed, and its run: a function ``(params) -> {path name: rank 0's timed_train result}``
plus ``called`` (the ``time.time()`` its clock starts from). The paths: the first run of a
kernel's pool (``ipyparallel``: the pool starts the controller and engines in the call), its
second run on those engines (``warm``; both from one call of :func:`.warm.pool_runs`),
``horovodrun``, and 2 hosts x 1 rank (:mod:`.two_hosts`, on the hosts
``HIRESMED_BENCH_HOSTS`` names). Every path gets the same four figures (steady s/step, call to
first step, call to function running, function start to first step). Goals: steady state of
ipyparallel against horovodrun, each path's first step, warm against horovodrun in the same
run, and the warm engines' memory over :func:`.warm.memory_series`.

What the ranks run is :func:`hiresmed_nb.bench.timed.timed_train`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hiresmed_nb.bench import two_hosts, warm
from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.process import run_worker
from hiresmed_nb.bench.timed import (
    first_step_seconds,
    in_fresh_results_dir,
    steady_seconds,
    train_params,
)
from hiresmed_nb.bench.timing import median_ratio, median_ratios, relative_iqr, summarize

# --- the launch paths ----------------------------------------------------------------------------


def via_horovodrun(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """2 ranks under horovodrun: the clock starts just before horovodrun is started."""
    # As the cluster sets for its engines: one OpenMP thread per rank.
    result, started = run_worker(
        "timed-train", {"params": params}, ranks=2, env={"OMP_NUM_THREADS": "1"}
    )
    return {"horovodrun": {**result, "called": started}}


def via_two_hosts(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`.two_hosts.via_two_hosts`, by its path's name."""
    return {"two_hosts": two_hosts.via_two_hosts(params)}


class LaunchPath(NamedTuple):
    """One way to start the ranks, and its goal "call to first step, <goal_name>".

    ``run``: gives this path's result under its name; paths sharing a ``run`` (the pool's
    cold and warm runs) come from one call of it.

    ``target``: that goal's seconds (None: no goal, figures only). ``limits``: what limits the
    goal when it is missed, a ``str.format`` template over the medians of the launchers figures
    (``{ipyparallel_setup_seconds:.1f}``).
    """

    run: Callable[[dict[str, Any]], dict[str, dict[str, Any]]]
    goal_name: str
    target: float | None
    limits: str


FIRST_STEP_TARGET_SECONDS = 10.0
WARM_TARGET_SECONDS = 3.0  # warm engines: call to first step
WARM_TO_HOROVODRUN_TARGET = 0.4  # warm call to first step / horovodrun's, same run
PATHS: dict[str, LaunchPath] = {
    "ipyparallel": LaunchPath(
        warm.pool_runs,
        "ipyparallel path",
        FIRST_STEP_TARGET_SECONDS,
        "Starting 2 engines and the controller takes {ipyparallel_launch_seconds:.1f} s; then "
        "each rank imports TensorFlow and Horovod, joins the rendezvous, checks and reads its "
        "images, builds and traces the model: {ipyparallel_setup_seconds:.1f} s, on 2 cores "
        "shared by both ranks. horovodrun pays the same per-rank setup "
        "({horovodrun_setup_seconds:.1f} s).",
    ),
    "horovodrun": LaunchPath(
        via_horovodrun,
        "horovodrun",
        FIRST_STEP_TARGET_SECONDS,
        "Python start, TensorFlow import and graph tracing on 2 shared cores.",
    ),
    "warm": LaunchPath(
        warm.pool_runs,
        "warm engines (second run)",
        WARM_TARGET_SECONDS,
        "From the call to the function running on rank 0 (fresh rendezvous, reachability "
        "check, task sent): {warm_launch_seconds:.2f} s; from there to the first step end "
        "(hvd.init, split, model build, tracing, first batch; TensorFlow and Horovod already "
        "imported): {warm_setup_seconds:.2f} s, on 2 cores shared by both ranks.",
    ),
    "two_hosts": LaunchPath(via_two_hosts, "2 hosts x 1 rank", None, ""),
}


# --- the benchmark -------------------------------------------------------------------------------


def _path_figures(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The four figures of one path over its repeats."""
    return {
        f"{name}_step_seconds": summarize(
            [s for run in runs for s in steady_seconds(run)], "s", f"{name}: steady-state s/step"
        ),
        f"{name}_first_step_seconds": summarize(
            [first_step_seconds(run) for run in runs], "s", f"{name}: call to first step end"
        ),
        f"{name}_launch_seconds": summarize(
            [run["entered"] - run["called"] for run in runs],
            "s",
            f"{name}: call to function running on rank 0",
        ),
        f"{name}_setup_seconds": summarize(
            [run["batch_ends"][0] - run["entered"] for run in runs],
            "s",
            f"{name}: function start to first step end (imports unless warm, hvd.init, split, "
            "build, first batch)",
        ),
    }


def _ratio_figures(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per repeat pair: ipyparallel / horovodrun s/step, warm / horovodrun call to first step,
    2 hosts x 1 / 1 host x 2 ranks s/step; each where both paths ran."""
    figures = {}

    def both(a: str, b: str) -> bool:
        return bool(runs.get(a)) and bool(runs.get(b))

    if both("ipyparallel", "horovodrun"):
        figures["step_ratio"] = summarize(
            median_ratios(
                [steady_seconds(run) for run in runs["ipyparallel"]],
                [steady_seconds(run) for run in runs["horovodrun"]],
            ),
            "x",
            "ipyparallel / horovodrun s/step",
        )
    if both("warm", "horovodrun"):
        figures["warm_first_step_ratio"] = summarize(
            median_ratios(
                [first_step_seconds(run) for run in runs["warm"]],
                [first_step_seconds(run) for run in runs["horovodrun"]],
            ),
            "x",
            "warm / horovodrun call to first step",
        )
    if both("two_hosts", "ipyparallel"):
        figures["two_hosts_step_ratio"] = summarize(
            median_ratios(
                [steady_seconds(run) for run in runs["two_hosts"]],
                [steady_seconds(run) for run in runs["ipyparallel"]],
            ),
            "x",
            "2 hosts x 1 rank / 1 host x 2 ranks s/step (same 2 cores: overhead, not speed-up)",
        )
    return figures


def _goals(figures: dict[str, Any], memory: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The steady-state goal (ipyparallel against horovodrun), each path's first step, warm
    against horovodrun, and the warm engines' memory; each where its figures exist."""
    found = []
    if "step_ratio" in figures:
        pairs = figures["step_ratio"]
        found.append(
            goal(
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
        )
    medians = {key: figure["median"] for key, figure in figures.items()}
    for name, path in PATHS.items():
        if path.target is not None and f"{name}_first_step_seconds" in figures:
            found.append(
                goal(
                    f"call to first step, {path.goal_name}",
                    medians[f"{name}_first_step_seconds"],
                    "<=",
                    path.target,
                    "s",
                    path.limits.format_map(_Medians(medians)),
                )
            )
    if "warm_first_step_ratio" in figures:
        found.append(
            goal(
                "call to first step, warm engines / horovodrun (same run)",
                median_ratio(figures, "warm_first_step_seconds", "horovodrun_first_step_seconds"),
                "<=",
                WARM_TO_HOROVODRUN_TARGET,
                "x",
                f"warm {medians['warm_first_step_seconds']:.2f} s against horovodrun "
                f"{medians['horovodrun_first_step_seconds']:.2f} s; per repeat pair "
                f"{figures['warm_first_step_ratio']['min']:.2f}-"
                f"{figures['warm_first_step_ratio']['max']:.2f}.",
            )
        )
    if memory is not None:
        found.append(warm.memory_goal(memory))
    return found


class _Medians(dict):
    """Medians for a limits template; a figure not measured this time shows as '?'."""

    def __missing__(self, key: str) -> Any:
        return _Unmeasured()


class _Unmeasured:
    def __format__(self, spec: str) -> str:
        return "?"


def _run_paths(
    params: dict[str, Any], chosen: list[str], repeats: int, skipped: dict[str, str]
) -> dict[str, list[dict[str, Any]]]:
    """Every chosen path ``repeats`` times, alternating the order of the calls per repeat (one
    call for the paths that share a run). A failing 2-host run is recorded in ``skipped`` (its
    runs dropped); any other failure is raised."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    names_of: dict[Callable, list[str]] = {}  # each call, with the chosen paths it gives
    for name in chosen:
        names_of.setdefault(PATHS[name].run, []).append(name)
    calls = list(names_of)
    for repeat in range(repeats):
        for call in calls if repeat % 2 == 0 else calls[::-1]:
            names = names_of[call]
            if any(name in skipped for name in names):
                continue
            try:
                results = in_fresh_results_dir(call, params)
            except Exception as error:
                if names != ["two_hosts"]:
                    raise
                failed = f"the 2-host run failed: {type(error).__name__}: {error}"
                skipped["two_hosts"] = failed[:3000]
                runs["two_hosts"] = []
                continue
            for name in names:
                runs[name].append(results[name])
    return {name: done for name, done in runs.items() if done}


def _warm_memory(
    params: dict[str, Any], series_runs: int, warm_runs: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The warm engines' memory over ``series_runs`` runs (None for 0 or without the warm
    path). Two runs are what the first repeat's pool did (its cold run, then its warm one), so
    they are taken from it; more run on a fresh cluster of their own. Every warm run's ``memory`` is
    moved out of it (the raw runs keep their timings only)."""
    own = [run.pop("memory") for run in warm_runs]
    if not series_runs or not warm_runs:
        return None
    if series_runs == 2:
        return own[0]
    return warm.memory_series(params, series_runs)


def measure(level: dict[str, Any], paths: Sequence[str] = tuple(PATHS)) -> dict[str, Any]:
    """Each of ``paths`` ``launch_repeats`` times, then (with the warm path)
    ``warm_memory_runs`` runs on one warm cluster (:func:`_warm_memory`). The 2-host path is
    skipped, with the reason in ``skipped``, where simulated hosts cannot be built or its run
    fails."""
    params = train_params(level, Path("unused"))
    chosen = [name for name in PATHS if name in paths]
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if "two_hosts" in chosen:
            reason = stack.enter_context(two_hosts.host_pair())
            if reason:
                skipped["two_hosts"] = reason
        runs = _run_paths(params, chosen, level["launch_repeats"], skipped)
    series_runs = level.get("warm_memory_runs", 0)
    memory = _warm_memory(params, series_runs, runs.get("warm", []))
    figures: dict[str, Any] = {}
    for name, done in runs.items():
        figures.update(_path_figures(name, done))
    figures.update(_ratio_figures(runs))
    if memory is not None:
        figures.update(warm.memory_figures(memory))
    return {
        "benchmark": "launchers",
        "title": "1. Launching 2 ranks: ipyparallel (cold, warm, 2 simulated hosts), horovodrun",
        "config": {
            "params": params,
            "repeats": level["launch_repeats"],
            "paths": chosen,
            "first_step_targets": {n: PATHS[n].target for n in chosen},
            "two_hosts": two_hosts.bench_hosts(),
            "two_hosts_threads_per_rank": two_hosts.rank_threads(),
            "warm_memory_runs": len(memory["first_step_seconds"]) if memory else 0,
            "warm_memory_cluster": _series_cluster(series_runs) if memory else "",
        },
        "figures": figures,
        "goals": _goals(figures, memory),
        "skipped": skipped,
        "notes": _notes(runs, memory, skipped, _series_cluster(series_runs)),
        "raw": {**runs, "warm_memory": memory},
    }


def _series_cluster(series_runs: int) -> str:
    """Which cluster ran the warm memory series of ``series_runs`` runs (:func:`_warm_memory`)."""
    if series_runs == 2:
        return "the pool's own: its cold run, then its warm one"
    return "one of its own, started after the launch paths"


def _notes(
    runs: dict[str, list[dict[str, Any]]],
    memory: dict[str, Any] | None,
    skipped: dict[str, str],
    series_cluster: str,
) -> list[str]:
    """What each figure's clock measures, the 2-host placement or why it was skipped, and the
    warm engines' RSS after every run."""
    notes = [
        "Steady state: rank 0's intervals between batch ends from the second epoch on "
        "(images cached in memory after the first), pooled over repeats; ratios' spreads are "
        "over repeat pairs.",
        "Call: just before a new pool's first pool.run call (ipyparallel, cold: the pool "
        "starts the controller and engines in it), just before horovodrun is started, or just "
        "before that pool's second pool.run call, on the engines that ran the same training "
        "once (warm); first step: rank 0's first batch end.",
    ]
    if "two_hosts" in runs:
        placement = runs["two_hosts"][0]["placement"]
        notes.append(
            f"2 hosts x 1 rank: HOSTS={two_hosts.bench_hosts()} ({two_hosts.HOSTS_VARIABLE}): "
            f"{placement}. Where both hosts are on this machine (network namespaces with their "
            "own sshd, as the tests build them) both layouts share the same cores, so this "
            "measures the overhead of crossing hosts (ssh start, Gloo over a bridge instead of "
            "loopback), not a speed-up; each rank had "
            f"{two_hosts.rank_threads()} TensorFlow thread(s), as a rank of 1 host x 2 ranks."
        )
    if "two_hosts" in skipped:
        notes.append(f"2 hosts x 1 rank: skipped: {skipped['two_hosts']}")
    if memory is not None:
        notes.append(
            f"Warm memory: {len(memory['first_step_seconds'])} consecutive runs of this training "
            f"on one warm cluster ({series_cluster}; each run with its own RESULTS_DIR), "
            "recycling off: in use, engines "
            "grown by more than 100 MB since their first run are replaced before the next run "
            f"(hiresmed_nb.cluster.memory). Engine RSS after each run, in MB (10^6 bytes): "
            f"{warm.rss_lines(memory)}."
        )
    return notes
