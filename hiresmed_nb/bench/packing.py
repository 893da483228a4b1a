"""Benchmark 8: a packed study of tiny runs, serial and 2-rank mixed, on CPU slots: slot
utilisation and the gap between a slot being freed and its next run starting, from the runner's
account, and the check from the records alone that no slot ever ran two runs at once.

:func:`measure` runs the grid of ``level["packing"]`` (``slots``, ``seeds``) in a fresh folder
through the study runner, as ``python -m hiresmed_nb run ... --slots N`` does; ``python -m
hiresmed_nb bench --only packing`` runs it and writes ``packing.json``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.timing import summarize
from hiresmed_nb.cluster.devices import available_cores
from hiresmed_nb.cluster.ranks import threads_per_rank
from hiresmed_nb.errors import HiresmedError

UTILISATION_GOAL = 0.85
GAP_GOAL_SECONDS = 1.0
TINY = {
    "STUDY": "bench-packing",
    "DATASET": "synthetic-skin",
    "ARCH": "compact",
    "IMAGE_SIZE": 32,
    "IMAGES_PER_CLASS": 4,
    "TEST_IMAGES_PER_CLASS": 4,
    "BATCH_SIZE": 4,
    "EPOCHS": 1,
    "N_RANKS": 2,
}
SLOT_TURNS_PER_SEED = 4  # per seed: one 2-rank run and two serial runs


def check_config(slots: int, seeds: int) -> None:
    """HiresmedError unless the grid is at least 2 slots wide and needs more slot turns than
    there are slots, so that some slot is freed and given to a next run (a gap to measure)."""
    if slots < 2:
        raise HiresmedError(f"packing benchmark: slots must be >= 2 (a 2-rank run), got {slots}")
    if seeds < 1 or SLOT_TURNS_PER_SEED * seeds <= slots:
        raise HiresmedError(
            f"packing benchmark: seeds={seeds} gives {SLOT_TURNS_PER_SEED * max(seeds, 0)} slot "
            f"turns for slots={slots}; no slot would run twice, so no gap could be measured "
            f"(use seeds > {slots / SLOT_TURNS_PER_SEED:g})"
        )


def packed_study(slots: int, seeds: int) -> dict[str, Any]:
    """Run the tiny grid (per seed: one 2-rank and two serial runs) packed onto ``slots`` CPU
    slots in a fresh folder; returns the figures and the records' overlap check.

    Raises HiresmedError naming the failed runs when any failed: their slot time is not a run's.
    """
    from hiresmed_nb import study
    from hiresmed_nb.study.occupancy import slot_overlaps

    check_config(slots, seeds)
    grid = {**TINY, "MODE": ["distributed", "serial"], "SEEDS": list(range(seeds))}
    serial_only = {**TINY, "MODE": "serial", "SEEDS": list(range(seeds, 2 * seeds))}
    runs = study.expand(grid) + study.expand(serial_only)
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as folder:
        started = time.monotonic()
        result = study.run_study(
            runs,
            Path(folder),
            report=False,
            progress=False,
            slots=study.SlotRequest(slots=slots),
        )
        wall = time.monotonic() - started
        records = [json.loads(p.read_text()) for p in (Path(folder) / "runs").glob("*.json")]
    if result.failed:
        reasons = "; ".join(
            f"{run}: {failure['ename']}: {str(failure['evalue'])[:200]}"
            for run, failure in sorted(result.failed.items())
        )
        raise HiresmedError(f"packing benchmark: {len(result.failed)} run(s) failed: {reasons}")
    occupancy = result.occupancy
    gaps = occupancy.all_gaps()
    return {
        "runs": len(runs),
        "slots": slots,
        "study_seconds": wall,
        "utilisation": occupancy.utilisation(),
        "busy_slot_seconds": occupancy.busy_slot_seconds(),
        "packed_wall_seconds": occupancy.wall_seconds(),
        "gaps_seconds": gaps,
        "gaps_by_slot": occupancy.gaps,
        "max_gap_seconds": max(gaps, default=0.0),
        "slot_overlaps": [str(overlap) for overlap in slot_overlaps(records)],
        "summary": occupancy.summary(),
    }


def goals_of(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals from :func:`packed_study`'s figures: utilisation, the largest gap, overlaps."""
    return [
        goal("slot utilisation", figures["utilisation"], ">=", UTILISATION_GOAL),
        goal(
            "slot freed to next run started (max)",
            figures["max_gap_seconds"],
            "<=",
            GAP_GOAL_SECONDS,
            "s",
        ),
        goal(
            "runs sharing a slot at once (records)",
            len(figures["slot_overlaps"]),
            "<=",
            0,
            "runs",
        ),
    ]


def payload_of(
    study_figures: dict[str, Any], seeds: int, cores: int | None = None
) -> dict[str, Any]:
    """The suite's result for one packed study (``study_figures`` from :func:`packed_study`):
    its figures summarised, its goals and notes; ``cores`` defaults to this machine's."""
    cores = cores or available_cores()
    slots = study_figures["slots"]
    threads = threads_per_rank(cores, slots)  # as the slots were planned (devices.host_slots)
    figures = {
        "utilisation": summarize(
            [study_figures["utilisation"]], "", "slot utilisation: busy slot-s / (wall x slots)"
        ),
        "gap_seconds": summarize(
            study_figures["gaps_seconds"], "s", "slot freed to next run started (every gap)"
        ),
        "slot_overlaps": summarize(
            [len(study_figures["slot_overlaps"])], "runs", "runs sharing a slot at once (records)"
        ),
        "study_seconds": summarize(
            [study_figures["study_seconds"]], "s", "whole study, engines' start included"
        ),
    }
    notes = [
        f"{study_figures['runs']} tiny runs of the SYNTHETIC skin dataset (compact CNN, "
        f"{TINY['IMAGE_SIZE']} px, {TINY['IMAGES_PER_CLASS']} images per class, "
        f"{TINY['EPOCHS']} epoch, batch {TINY['BATCH_SIZE']}): per seed one 2-rank run and two "
        f"serial runs, {seeds} seed(s), packed by the study runner on {slots} CPU slots of "
        f"{threads} thread(s) each; one study, so utilisation and overlaps are single values "
        "(n = 1).",
        "A slot is busy from its run's start to its end as the runner sees them (the notebook's "
        "kernel start and checks included); a gap is the runner's own delay from a run ending "
        "to the next run being handed its slot, not the next notebook's start-up. Busy: "
        f"{study_figures['busy_slot_seconds']:.1f} slot-seconds over "
        f"{study_figures['packed_wall_seconds']:.1f} s (first run's start to last run's end) x "
        f"{slots} slots.",
    ]
    if cores < slots:
        notes.append(
            f"{slots} CPU slots on {cores} cores share the cores: high utilisation says the "
            "scheduler keeps every slot occupied, not that the runs go faster."
        )
    return {
        "benchmark": "packing",
        "title": "8. Packing a study on slots: utilisation and scheduling gaps",
        "config": {
            **TINY,
            "MODE": "per seed: distributed, serial, serial",
            "slots": slots,
            "seeds": seeds,
        },
        "figures": figures,
        "goals": goals_of(study_figures),
        "notes": notes,
        "raw": study_figures,
    }


def measure(level: dict[str, Any]) -> dict[str, Any]:
    """One packed study at ``level["packing"]`` (``slots``, ``seeds``), as the suite's result."""
    config = level["packing"]
    return payload_of(packed_study(config["slots"], config["seeds"]), config["seeds"])
