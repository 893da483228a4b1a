"""Benchmark 9: what a study spends per run besides training, serial and 2-rank, one run at a time
and packed on CPU slots.

For each arm, :func:`study_overhead` runs a tiny grid through the study runner (as ``python -m
hiresmed_nb run`` does), timing each notebook's execution; a run's overhead is that time minus
its record's ``train_seconds``: the notebook's kernel start and imports (unless a spare kernel
did them ahead, :mod:`hiresmed_nb.study.kernels`), its checks and split, attaching to its
engines, the rendezvous, the record and plots. A run is *warm* when its rank 0
engine had already trained a run of the study (no engine start, no TensorFlow import there);
the study's overhead per run is its whole wall time, engines' start included, minus the training
seconds, divided by its runs. :func:`arm_runs` says how many runs each arm takes: the level's
``runs``, or one past the runs that start together when the arm starts more than that at once (a
packed serial arm's first runs all start cold). ``python -m hiresmed_nb bench --only overhead``
writes ``overhead.json``.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hiresmed_nb.bench import packing
from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.timing import summarize
from hiresmed_nb.errors import HiresmedError

WARM_SERIAL_GOAL_SECONDS = 3.0  # a serial run on a warm engine, one run at a time
TINY = {**packing.TINY, "STUDY": "bench-overhead"}  # the packing benchmark's tiny run
ARMS = (("serial", None), ("distributed", None), ("serial", 2), ("distributed", 2))
GOAL_ARM = "serial_one_at_a_time"  # the arm of the warm serial goal


def arm_name(mode: str, slots: int | None) -> str:
    return f"{mode}_{'one_at_a_time' if slots is None else f'packed{slots}'}"


def arm_runs(mode: str, slots: int | None, runs: int) -> int:
    """Runs of the arm ``mode`` on ``slots`` CPU slots (None: one at a time) for the level's
    ``runs`` per arm: ``runs``, but at least one more than the runs the arm starts at once. Those
    all start on cold engines, so the arm needs one past them for a warm run: a serial arm packed
    on 2 slots starts 2 together and takes at least 3; a 2-rank run holds both of 2 slots, so
    that packed arm starts one run at a time, as the arms one at a time do.

    Raises HiresmedError for fewer than 2 ``runs`` (the first run of an arm is always cold), an
    unknown ``mode``, or ``slots`` too few for one run.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 2:
        raise HiresmedError(
            f"overhead benchmark: runs must be a whole number >= 2 (an arm's first run is cold), "
            f"got {runs!r}"
        )
    if mode not in ("serial", "distributed"):
        raise HiresmedError(
            f"overhead benchmark: mode must be 'serial' or 'distributed', got {mode!r}"
        )
    ranks = TINY["N_RANKS"] if mode == "distributed" else 1
    if slots is not None and slots < ranks:
        raise HiresmedError(
            f"overhead benchmark: slots must be >= {ranks} for a {mode} run of {ranks} rank(s), "
            f"got {slots}"
        )
    together = 1 if slots is None else slots // ranks  # runs that start at once, all cold
    return max(runs, together + 1)


def study_overhead(mode: str, slots: int | None, runs: int) -> dict[str, Any]:
    """Run ``runs`` tiny ``mode`` runs (seeds 0..runs-1) one at a time (``slots`` None) or
    packed on ``slots`` CPU slots, in a fresh folder; returns each run's overhead in seconds,
    which of them were warm, and the study's overhead per run.

    Raises HiresmedError naming the failed runs when any failed.
    """
    from hiresmed_nb import study
    from hiresmed_nb.study.executor import papermill_executor

    seconds: dict[str, float] = {}
    lock = threading.Lock()

    def timed_executor(notebook: Path, output: Path, parameters: dict, cwd: Path, **options):
        started = time.monotonic()
        try:
            papermill_executor(notebook, output, parameters, cwd, **options)
        finally:
            with lock:
                seconds[output.stem] = time.monotonic() - started

    grid = study.expand({**TINY, "MODE": mode, "SEEDS": list(range(runs))})
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder:
        started = time.monotonic()
        result = study.run_study(
            grid,
            Path(folder),
            executor=timed_executor,
            report=False,
            progress=False,
            echo=lambda _line: None,
            slots=study.SlotRequest(slots=slots) if slots else None,
        )
        wall = time.monotonic() - started
        records = [
            json.loads((Path(folder) / "runs" / f"{r.run_id}.json").read_text()) for r in grid
        ]
    if result.failed:
        raise HiresmedError(f"overhead benchmark: runs failed: {sorted(result.failed)}")
    return overheads(records, seconds, wall)


def overheads(records: list[dict[str, Any]], seconds: dict[str, float], wall: float) -> dict:
    """Each run's overhead (its notebook's seconds minus ``train_seconds``), in the order the runs
    started, with whether its rank 0 engine (by pid) had trained an earlier run; and the study's
    overhead per run (``wall`` minus every run's training, over the runs)."""
    ordered = sorted(records, key=lambda record: record["started_at"])
    seen: set[int] = set()
    per_run, warm = [], []
    for record in ordered:
        engine = record["ranks"][0]["pid"]
        per_run.append(seconds[record["run_id"]] - record["train_seconds"])
        warm.append(engine in seen)
        seen.add(engine)
    training = sum(record["train_seconds"] for record in records)
    return {
        "runs": len(records),
        "overhead_seconds": per_run,
        "warm": warm,
        "study_seconds": wall,
        "train_seconds": training,
        "study_overhead_per_run": (wall - training) / len(records),
    }


def chosen_arms(names: list[str] | None) -> list[tuple[str, int | None]]:
    """The arms of :data:`ARMS` named in ``names`` (None: all of them), in that order.

    Raises HiresmedError naming an unknown arm, or without ``serial_one_at_a_time`` (the arm
    of the goal).
    """
    known = {arm_name(*arm): arm for arm in ARMS}
    unknown = [name for name in names or () if name not in known]
    if unknown or (names is not None and GOAL_ARM not in names):
        raise HiresmedError(
            f"overhead benchmark: arms must name {GOAL_ARM} (its goal's) and any of "
            f"{', '.join(known)}, got {names!r}"
        )
    return [arm for name, arm in known.items() if names is None or name in names]


def measure(level: dict[str, Any]) -> dict[str, Any]:
    """The level's arms (``level["overhead"]["arms"]``, default every arm of :data:`ARMS`), each
    with :func:`arm_runs` runs (``level["overhead"]["runs"]`` per arm, more where an arm needs
    them for a warm run), as the suite's result."""
    runs = level["overhead"]["runs"]
    arms = chosen_arms(level["overhead"].get("arms"))
    per_arm = {arm_name(mode, slots): arm_runs(mode, slots, runs) for mode, slots in arms}
    raw = {
        name: study_overhead(mode, slots, per_arm[name])
        for name, (mode, slots) in zip(per_arm, arms, strict=True)
    }
    figures = {}
    for name, arm in raw.items():
        warm = [
            o for o, is_warm in zip(arm["overhead_seconds"], arm["warm"], strict=True) if is_warm
        ]
        figures[f"{name}_warm"] = summarize(warm, "s", f"{name}: per run on a warm engine")
        figures[f"{name}_study"] = summarize(
            [arm["study_overhead_per_run"]], "s", f"{name}: study wall minus training, per run"
        )
    warm_serial = figures[f"{GOAL_ARM}_warm"]["median"]
    return {
        "benchmark": "overhead",
        "title": "9. Per-run overhead of a study: wall time minus training seconds",
        "config": {**TINY, "runs_per_arm": per_arm, "arms": list(per_arm)},
        "figures": figures,
        "goals": [
            goal(
                "serial run on a warm engine, overhead",
                warm_serial,
                "<=",
                WARM_SERIAL_GOAL_SECONDS,
                "s",
                "the notebook's cells around training (checks, split, attaching to its "
                "engine, plots, record) and its kernel's end; a warm run's kernel start and "
                "imports happen ahead, in a spare kernel",
            )
        ],
        "notes": [
            f"Tiny runs of the SYNTHETIC skin dataset ({TINY['IMAGE_SIZE']} px, compact CNN, "
            f"{TINY['EPOCHS']} epoch); runs per arm: "
            + ", ".join(f"{name} {count}" for name, count in per_arm.items())
            + ". A run's overhead is its notebook's "
            "execution time as the runner sees it (from the call to its kernel's end; but for a "
            "study's first runs, the kernel was started and the notebook's imports run in it by "
            "a spare while the run before executed) minus its record's "
            "training seconds; warm runs are those whose rank 0 engine had trained before in the "
            "same study. The study figure also counts the runner's own start, starting engines "
            "and their first TensorFlow import, once per study.",
        ],
        "raw": raw,
    }
