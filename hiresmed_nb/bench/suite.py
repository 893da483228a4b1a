"""The suite: which benchmarks, what each level measures, running them in order, their JSON files.

``python -m hiresmed_nb bench [--tiny|--quick]`` calls :func:`run_suite`, which writes one JSON
per benchmark to ``outputs/bench/<name>.json`` (machine, versions, config, figures, goals) as soon
as it is done; :func:`load_results` reads them back, and the frames below are what
``notebooks/03_benchmarks.ipynb`` draws.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hiresmed_nb.bench import (
    allreduce,
    launchers,
    overhead,
    packing,
    pipeline,
    resolution,
    scripts,
    tensorboard_cost,
    threads,
)
from hiresmed_nb.bench.machine import contention, machine_info, versions
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path

BENCHMARKS = (
    "launchers",
    "pipeline",
    "resolution",
    "threads",
    "allreduce",
    "scripts",
    "tensorboard",
    "packing",
    "overhead",
)
DEFAULT_DIR = "outputs/bench"

# What each level measures. "tiny" is for the tests: structure only, seconds to run.
LEVELS: dict[str, dict[str, Any]] = {
    "tiny": {
        "train": {"IMAGE_SIZE": 32, "IMAGES_PER_CLASS": 4, "EPOCHS": 2, "BATCH_SIZE": 4},
        "launch_repeats": 1,
        "warm_memory_runs": 2,
        "pipeline": {"size": 32, "batch": 4, "images_per_class": 4, "epochs": 2, "repeats": 1},
        "decode_repeats": 1,
        "resolution": [("compact", 32, 2, "float32")],
        "planner": {"arch": "compact", "size": 32, "probes": [1, 2], "check": 4},
        "probe_steps": (1, 2),
        "allreduce": {"arch": "compact", "size": 32, "batch": 2, "with_top": False},
        "allreduce_repeats": 2,
        "script": {"epochs": 1, "samples": 64},
        "script_repeats": 1,
        "tensorboard": {
            "train": {"IMAGE_SIZE": 32, "IMAGES_PER_CLASS": 4, "EPOCHS": 2, "BATCH_SIZE": 4},
            "repeats": 2,
        },
        "packing": {"slots": 2, "seeds": 1},
        # The goal's arm alone: a cold run, then a warm one. The other arms run the same code
        # with other slots; tests/test_warm.py and tests/test_packed_study.py show their runs
        # reuse warm engines, one at a time and packed.
        "overhead": {"runs": 2, "arms": ["serial_one_at_a_time"]},
    },
    "quick": {
        "train": {"IMAGE_SIZE": 128, "IMAGES_PER_CLASS": 20, "EPOCHS": 4, "BATCH_SIZE": 8},
        "launch_repeats": 2,
        "warm_memory_runs": 10,
        "pipeline": {"size": 224, "batch": 8, "images_per_class": 20, "epochs": 3, "repeats": 3},
        "decode_repeats": 3,
        "resolution": [("compact", s, 8, "float32") for s in (112, 224, 448, 1024)]
        + [(a, s, 4, "float32") for a in ("VGG16", "ResNet50", "DenseNet169") for s in (112, 224)]
        + [("compact", 224, 8, "mixed_bfloat16"), ("ResNet50", 224, 4, "mixed_bfloat16")],
        "planner": {"arch": "compact", "size": 448, "probes": [1, 2, 4], "check": 16},
        "probe_steps": (1, 3),
        "allreduce": {"arch": "VGG16", "size": 64, "batch": 8, "with_top": True},
        "allreduce_repeats": 5,
        "script": {"epochs": 3, "samples": 2048},
        "script_repeats": 2,
        "tensorboard": {
            "train": {"IMAGE_SIZE": 128, "IMAGES_PER_CLASS": 20, "EPOCHS": 2, "BATCH_SIZE": 8},
            "repeats": 16,
        },
        "packing": {"slots": 4, "seeds": 2},
        "overhead": {"runs": 6},
    },
    "full": {
        "train": {"IMAGE_SIZE": 224, "IMAGES_PER_CLASS": 60, "EPOCHS": 4, "BATCH_SIZE": 8},
        "launch_repeats": 3,
        "warm_memory_runs": 10,
        "pipeline": {"size": 448, "batch": 8, "images_per_class": 60, "epochs": 3, "repeats": 3},
        "decode_repeats": 5,
        "resolution": [("compact", s, 8, "float32") for s in (112, 224, 448, 768, 1024)]
        + [
            (a, s, {112: 8, 224: 8, 448: 2, 768: 1, 1024: 1}[s], "float32")
            for a in ("VGG16", "ResNet50", "DenseNet169")
            for s in (112, 224, 448, 768, 1024)
        ]
        + [(a, 224, 8, "mixed_bfloat16") for a in ("compact", "VGG16", "ResNet50", "DenseNet169")],
        "planner": {"arch": "ResNet50", "size": 224, "probes": [1, 2, 4], "check": 16},
        "probe_steps": (1, 5),
        "allreduce": {"arch": "VGG16", "size": 224, "batch": 4, "with_top": True},
        "allreduce_repeats": 10,
        "script": {"epochs": 5, "samples": 4096},
        "script_repeats": 3,
        "tensorboard": {
            "train": {"IMAGE_SIZE": 224, "IMAGES_PER_CLASS": 60, "EPOCHS": 2, "BATCH_SIZE": 8},
            "repeats": 16,
        },
        "packing": {"slots": 4, "seeds": 2},
        "overhead": {"runs": 6},
    },
}


def write_result(payload: dict[str, Any], out_dir: str | Path) -> Path:
    """Write one benchmark's JSON as ``out_dir/<benchmark>.json``, adding machine and versions.

    ``payload`` must name its ``benchmark`` and hold ``figures`` (name -> ``summarize``).
    """
    from hiresmed_nb.science.records import now_iso, write_json_atomic

    for key in ("benchmark", "figures"):
        if key not in payload:
            raise HiresmedError(f"a benchmark result needs {key!r}")
    record = {
        "figure_order": list(payload["figures"]),
        "created": now_iso(),
        "machine": machine_info(),
        "versions": versions(),
        **payload,
    }
    return write_json_atomic(record, Path(out_dir) / f"{payload['benchmark']}.json")


def load_results(bench_dir: str | Path = DEFAULT_DIR) -> dict[str, dict[str, Any]]:
    """Every benchmark JSON in ``bench_dir``, by benchmark name, in :data:`BENCHMARKS` order."""
    folder = resolve_path(bench_dir)
    found = {}
    for name in BENCHMARKS:
        path = folder / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def figures_frame(results: dict[str, dict[str, Any]]) -> Any:
    """Every figure of every benchmark as one pandas DataFrame row, in each JSON's order."""
    import pandas as pd

    rows = []
    for name, result in results.items():
        for key in result.get("figure_order", list(result["figures"])):
            rows.append({"benchmark": name, "figure": key, **result["figures"][key]})
    return pd.DataFrame(rows)


def goals_frame(results: dict[str, dict[str, Any]]) -> Any:
    """Every goal of every benchmark as one pandas DataFrame row."""
    import pandas as pd

    rows = [{"benchmark": n, **g} for n, r in results.items() for g in r.get("goals", [])]
    return pd.DataFrame(rows)


def _measure(name: str, level: dict[str, Any], done: dict[str, dict[str, Any]]) -> dict:
    """Benchmark ``name`` at ``level``; threads reuses the launchers runs when ``done`` has them."""
    if name == "threads":
        return threads.measure(level, done.get("launchers"))
    return {
        "launchers": launchers.measure,
        "pipeline": pipeline.measure,
        "resolution": resolution.measure,
        "allreduce": allreduce.measure,
        "scripts": scripts.measure,
        "tensorboard": tensorboard_cost.measure,
        "packing": packing.measure,
        "overhead": overhead.measure,
    }[name](level)


def run_suite(
    level_name: str = "quick",
    only: Sequence[str] = BENCHMARKS,
    out_dir: str | Path = DEFAULT_DIR,
    command: str = "",
) -> list[Path]:
    """Run the chosen benchmarks in order, writing each JSON as soon as it is done."""
    from hiresmed_nb.science.synthetic import ensure_dataset

    unknown = [name for name in only if name not in BENCHMARKS]
    if unknown:
        raise HiresmedError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    level = LEVELS[level_name]
    ensure_dataset("synthetic-skin")
    folder = resolve_path(out_dir)
    written = []
    done: dict[str, dict[str, Any]] = {}
    for name in (name for name in BENCHMARKS if name in only):
        before = contention()
        started = time.time()
        print(f"bench: {name} ...", flush=True)
        payload = done[name] = _measure(name, level, done)
        payload.update(
            {
                "level": level_name,
                "command": command,
                "wall_seconds": time.time() - started,
                "contention": {"before": before, "after": contention()},
            }
        )
        written.append(write_result(payload, folder))
        print(f"bench: {name} done in {payload['wall_seconds']:.0f} s -> {written[-1]}", flush=True)
    return written
