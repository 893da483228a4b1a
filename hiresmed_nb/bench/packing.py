"""A packed study of tiny runs, serial and 2-rank mixed, on CPU slots: slot utilisation and the
gap between a slot being freed and its next run starting, from the runner's account, and the
check from the records alone that no slot ever ran two runs at once.

``python -m hiresmed_nb.bench.packing [--slots 4] [--seeds 2] [--out outputs/bench]`` writes
``packing.json`` (the machine, the config, the figures and the goals) and prints the goals.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hiresmed_nb.bench.machine import contention, machine_info
from hiresmed_nb.bench.table import goal
from hiresmed_nb.params import resolve_path

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
    "MODE": ["distributed", "serial", "serial"],
}


def packed_study(slots: int, seeds: int) -> dict[str, Any]:
    """Run the tiny grid (per seed: one 2-rank and two serial runs) packed onto ``slots`` CPU
    slots in a fresh folder; returns the figures and the records' overlap check."""
    from hiresmed_nb import study
    from hiresmed_nb.study.occupancy import slot_overlaps

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
    occupancy = result.occupancy
    gaps = occupancy.all_gaps()
    return {
        "runs": len(runs),
        "failed": sorted(result.failed),
        "slots": slots,
        "study_seconds": wall,
        "utilisation": occupancy.utilisation(),
        "busy_slot_seconds": occupancy.busy_slot_seconds(),
        "packed_wall_seconds": occupancy.wall_seconds(),
        "gaps_seconds": gaps,
        "max_gap_seconds": max(gaps, default=0.0),
        "slot_overlaps": [str(overlap) for overlap in slot_overlaps(records)],
        "summary": occupancy.summary(),
    }


def goals_of(figures: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        goal("slot utilisation", figures["utilisation"], ">=", UTILISATION_GOAL),
        goal(
            "slot freed to next run started (max)",
            figures["max_gap_seconds"],
            "<=",
            GAP_GOAL_SECONDS,
            "s",
        ),
        goal("runs sharing a slot at once (records)", len(figures["slot_overlaps"]), "<=", 0),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hiresmed_nb.bench.packing")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2, help="grid size: 3 runs per seed")
    parser.add_argument("--out", default="outputs/bench")
    args = parser.parse_args(argv)
    before = contention()  # other work on the machine (shared cores)
    figures = packed_study(args.slots, args.seeds)
    payload = {
        "benchmark": "packing",
        "machine": machine_info(),
        "contention_before": before,
        "config": {**TINY, "slots": args.slots, "seeds": args.seeds},
        "figures": figures,
        "goals": goals_of(figures),
    }
    out = resolve_path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "packing.json").write_text(json.dumps(payload, indent=2))
    print(figures["summary"])
    for entry in payload["goals"]:
        print(
            f"{entry['name']}: {entry['value']:.3g} {entry['op']} {entry['target']:g}: "
            f"{'met' if entry['met'] else 'MISSED ' + entry['miss']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
