"""Benchmarks: launchers, input pipeline, cost by resolution, ranks against threads, allreduce.

``python -m hiresmed_nb bench [--quick]`` runs each benchmark, writes one JSON per benchmark to
``outputs/bench/<name>.json`` and a Markdown summary beside them. Every JSON holds the machine
(CPU model, cores, RAM, OS), the versions, the config, and every figure as the median and spread
(quartiles, min, max, n and the values) of repeated measurements, plus the issue's goals with
whether each was met. Timing never enters a test; the tests check the helpers here.

The measured work runs in fresh processes (:mod:`hiresmed_nb.bench_worker`), so peak RSS
belongs to one config and TensorFlow's thread settings are fresh in each.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiresmed_nb.params import HiresmedError, project_root, resolve_path

BENCHMARKS = ("launchers", "pipeline", "resolution", "threads", "allreduce")
DEFAULT_DIR = "outputs/bench"
MARKDOWN_BEGIN = "<!-- bench:begin (written by `python -m hiresmed_nb bench`) -->"
MARKDOWN_END = "<!-- bench:end -->"
BUSY_PATTERN = "pytest|hiresmed_nb run"
GiB = 1024**3

# What each level measures. "tiny" is for the tests: structure only, seconds to run.
LEVELS: dict[str, dict[str, Any]] = {
    "tiny": {
        "train": {"IMAGE_SIZE": 32, "IMAGES_PER_CLASS": 4, "EPOCHS": 2, "BATCH_SIZE": 4},
        "launch_repeats": 1,
        "pipeline": {"size": 32, "batch": 4, "images_per_class": 4, "epochs": 2, "repeats": 1},
        "decode_repeats": 1,
        "resolution": [("compact", 32, 2, "float32")],
        "planner": {"arch": "compact", "size": 32, "probes": [1, 2], "check": 4},
        "probe_steps": (1, 2),
        "allreduce": {"arch": "compact", "size": 32, "batch": 2, "with_top": False},
        "allreduce_repeats": 2,
    },
    "quick": {
        "train": {"IMAGE_SIZE": 128, "IMAGES_PER_CLASS": 20, "EPOCHS": 4, "BATCH_SIZE": 8},
        "launch_repeats": 2,
        "pipeline": {"size": 224, "batch": 8, "images_per_class": 20, "epochs": 3, "repeats": 3},
        "decode_repeats": 3,
        "resolution": [("compact", s, 8, "float32") for s in (112, 224, 448, 1024)]
        + [(a, s, 4, "float32") for a in ("VGG16", "ResNet50", "DenseNet169") for s in (112, 224)]
        + [("compact", 224, 8, "mixed_bfloat16"), ("ResNet50", 224, 4, "mixed_bfloat16")],
        "planner": {"arch": "compact", "size": 448, "probes": [1, 2, 4], "check": 16},
        "probe_steps": (1, 3),
        "allreduce": {"arch": "VGG16", "size": 64, "batch": 8, "with_top": True},
        "allreduce_repeats": 5,
    },
    "full": {
        "train": {"IMAGE_SIZE": 224, "IMAGES_PER_CLASS": 60, "EPOCHS": 4, "BATCH_SIZE": 8},
        "launch_repeats": 3,
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
    },
}


# --- statistics, machine, JSON -----------------------------------------------------------------


def summarize(values: Sequence[float], unit: str = "", label: str = "") -> dict[str, Any]:
    """Median and spread of repeated measurements.

    Returns ``median``, ``q1``/``q3`` (25th/75th percentiles, linear interpolation), ``iqr``,
    ``min``, ``max``, ``n`` and the ``values`` themselves, plus ``unit`` and ``label``.
    Raises :class:`HiresmedError` on no values or a non-finite one.
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise HiresmedError(f"no measurements to summarise for {label or 'a figure'}")
    if not np.all(np.isfinite(array)):
        raise HiresmedError(f"non-finite measurement in {label or 'a figure'}: {array.tolist()}")
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return {
        "label": label,
        "unit": unit,
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
        "values": [float(v) for v in array],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: CPU model and features, cores, RAM, OS, host."""
    import psutil

    flags = _cpu_flags()
    return {
        "cpu_model": _cpu_model(),
        "cpu_features": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"}),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": int(psutil.virtual_memory().total),
        "os": platform.platform(),
        "hostname": platform.node(),
    }


def versions() -> dict[str, Any]:
    """Python, TensorFlow, Horovod, ipyparallel, papermill, this package; and the git commit."""
    from hiresmed_nb import records

    found: dict[str, Any] = dict(records.versions())
    found["git_commit"], found["git_dirty"] = records.git_state()
    return found


def contention() -> dict[str, Any]:
    """Load average and the other heavy jobs (pytest, study runs) on this host right now."""
    found = subprocess.run(
        ["pgrep", "-af", BUSY_PATTERN], capture_output=True, text=True, check=False
    ).stdout
    mine = {os.getpid(), os.getppid()}
    busy = [
        line
        for line in found.splitlines()
        if line.strip() and int(line.split()[0]) not in mine and "pgrep" not in line
    ]
    return {"load_average": list(os.getloadavg()), "other_jobs": busy}


def write_result(payload: dict[str, Any], out_dir: str | Path) -> Path:
    """Write one benchmark's JSON as ``out_dir/<benchmark>.json``, adding machine and versions.

    ``payload`` must name its ``benchmark`` and hold ``figures`` (name -> :func:`summarize`).
    """
    from hiresmed_nb.records import now_iso, write_json_atomic

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


# --- the batch-size planner --------------------------------------------------------------------


def fit_memory(probes: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares fit of peak memory = a + b * batch over ``(batch, bytes)`` probes.

    Needs at least two distinct batch sizes. Returns ``(a, b)``: bytes, bytes per image.
    """
    batches = np.asarray([p[0] for p in probes], dtype=float)
    memory = np.asarray([p[1] for p in probes], dtype=float)
    if len(set(batches.tolist())) < 2:
        raise HiresmedError("the memory fit needs probes at two or more batch sizes")
    b, a = np.polyfit(batches, memory, 1)
    return float(a), float(b)


def plan_batch_size(budget_bytes: float, probes: Sequence[tuple[int, float]]) -> int:
    """The largest per-rank batch whose predicted peak memory fits ``budget_bytes``.

    ``probes``: ``(batch, peak bytes)`` measured at a few small batches; the prediction is the
    linear fit of :func:`fit_memory`. Raises :class:`HiresmedError` when memory does not grow
    with the batch or when even a batch of 1 is predicted not to fit.
    """
    a, b = fit_memory(probes)
    if b <= 0:
        raise HiresmedError(
            f"peak memory does not grow with the batch in these probes (slope {b:.3g} bytes per "
            "image); probe larger batches"
        )
    # The tolerance keeps a budget exactly on the line from losing a batch to rounding.
    batch = int(math.floor((budget_bytes - a) / b + 1e-9))
    if batch < 1:
        raise HiresmedError(
            f"a budget of {budget_bytes / GiB:.2f} GiB is below what one image needs "
            f"({(a + b) / GiB:.2f} GiB: {a / GiB:.2f} GiB fixed + {b / GiB:.3f} GiB per image)"
        )
    return batch


# --- running workers ----------------------------------------------------------------------------


def _worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = str(project_root()) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_worker(
    task: str,
    config: dict[str, Any],
    ranks: int = 1,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> tuple[dict[str, Any], float]:
    """Run a :mod:`bench_worker` task in a fresh process (or ``ranks`` under ``horovodrun``).

    Returns ``(rank 0's result, time.time() just before the process was started)``. Raises
    :class:`HiresmedError` with the tail of the output when the task fails.
    """
    with tempfile.TemporaryDirectory(prefix="hiresmed-bench-") as scratch:
        config_file, out_file = Path(scratch) / "config.json", Path(scratch) / "out.json"
        config_file.write_text(json.dumps(config))
        command = [sys.executable, "-m", "hiresmed_nb.bench_worker", task]
        command += ["--config", str(config_file), "--out", str(out_file)]
        if ranks > 1:
            horovodrun = str(Path(sys.executable).parent / "horovodrun")
            command = [
                horovodrun,
                "-np",
                str(ranks),
                "--gloo",
                "-H",
                f"localhost:{ranks}",
                "--network-interface",
                "lo",
                *command,
            ]
        started = time.time()
        finished = subprocess.run(
            command,
            cwd=project_root(),
            env=_worker_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if finished.returncode != 0 or not out_file.exists():
            tail = (finished.stdout + finished.stderr)[-3000:]
            raise HiresmedError(
                f"benchmark task {task} failed (exit {finished.returncode}): "
                f"{shlex.join(command)}\n{tail}"
            )
        return json.loads(out_file.read_text()), started


def _goal(
    name: str, value: float, op: str, target: float, unit: str = "", limits: str = ""
) -> dict[str, Any]:
    """One goal of the issue: ``value op target``; ``miss`` says by how much when missed."""
    met = value <= target if op == "<=" else value >= target
    miss = ""
    if not met:
        relative = (value - target) / target if target else float("inf")
        miss = f"{value - target:+.3g} {unit} ({relative:+.0%})".replace("  ", " ")
    return {
        "name": name,
        "value": float(value),
        "op": op,
        "target": float(target),
        "unit": unit,
        "met": bool(met),
        "miss": miss,
        "limits": "" if met else limits,
    }


def _relative_iqr(figure: dict[str, Any]) -> float:
    return figure["iqr"] / figure["median"] if figure["median"] else float("nan")


def figures_frame(results: dict[str, dict[str, Any]]) -> Any:
    """Every figure of every benchmark as one pandas DataFrame row (for the notebook's plots)."""
    import pandas as pd

    rows = []
    for name, result in results.items():
        for key in result.get("figure_order", list(result["figures"])):
            figure = result["figures"][key]
            rows.append({"benchmark": name, "figure": key, **figure})
    return pd.DataFrame(rows)


def goals_frame(results: dict[str, dict[str, Any]]) -> Any:
    """Every goal of every benchmark as one pandas DataFrame row."""
    import pandas as pd

    rows = [{"benchmark": n, **g} for n, r in results.items() for g in r.get("goals", [])]
    return pd.DataFrame(rows)


# --- 1. notebook-hosted ranks against horovodrun -----------------------------------------------


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


def _steady(run: dict[str, Any]) -> list[float]:
    from hiresmed_nb.bench_worker import step_intervals

    return step_intervals(run["batch_ends"], run["epoch_starts"], 1)


def _ipyparallel_run(params: dict[str, Any]) -> dict[str, Any]:
    from hiresmed_nb import bench_worker
    from hiresmed_nb.cluster import HorovodCluster

    started = time.time()
    with HorovodCluster(2) as cluster:
        results = cluster.run(bench_worker.timed_train, {"params": params})
    return {**results[0], "called": started}


def _horovodrun_run(params: dict[str, Any]) -> dict[str, Any]:
    # As the cluster sets for its engines: one OpenMP thread per rank.
    result, started = run_worker(
        "timed-train", {"params": params}, ranks=2, env={"OMP_NUM_THREADS": "1"}
    )
    return {**result, "called": started}


def _with_fresh_results_dir(run: Callable, params: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hiresmed-bench-run-") as scratch:
        return run({**params, "RESULTS_DIR": scratch})


def bench_launchers(level: dict[str, Any]) -> dict[str, Any]:
    """The same training function, data and 2 ranks through HorovodCluster and horovodrun."""
    params = train_params(level, Path("unused"))
    paths = {"ipyparallel": _ipyparallel_run, "horovodrun": _horovodrun_run}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    for repeat in range(level["launch_repeats"]):
        order = list(paths) if repeat % 2 == 0 else list(paths)[::-1]
        for name in order:
            runs[name].append(_with_fresh_results_dir(paths[name], params))
    figures: dict[str, Any] = {}
    for name, done in runs.items():
        figures[f"{name}_step_seconds"] = summarize(
            [s for run in done for s in _steady(run)], "s", f"{name}: steady-state s/step"
        )
        figures[f"{name}_first_step_seconds"] = summarize(
            [run["batch_ends"][0] - run["called"] for run in done],
            "s",
            f"{name}: call to first step end",
        )
        figures[f"{name}_launch_seconds"] = summarize(
            [run["entered"] - run["called"] for run in done],
            "s",
            f"{name}: call to function running on rank 0",
        )
        figures[f"{name}_setup_seconds"] = summarize(
            [run["batch_ends"][0] - run["entered"] for run in done],
            "s",
            f"{name}: function start to first step end (TF import, hvd.init, split, build, "
            "first batch)",
        )
    pair_ratios = [
        float(np.median(_steady(a)) / np.median(_steady(b)))
        for a, b in zip(runs["ipyparallel"], runs["horovodrun"], strict=True)
    ]
    ratio = (
        figures["ipyparallel_step_seconds"]["median"] / figures["horovodrun_step_seconds"]["median"]
    )
    figures["step_ratio"] = summarize(pair_ratios, "x", "ipyparallel / horovodrun s/step")
    first = figures["ipyparallel_first_step_seconds"]["median"]
    goals = [
        _goal(
            "steady-state s/step, ipyparallel / horovodrun",
            ratio,
            "<=",
            1.03,
            "x",
            "Same function, data, threads and Gloo on both paths; the step-to-step spread "
            f"(IQR / median) is {_relative_iqr(figures['ipyparallel_step_seconds']):.0%} "
            f"(ipyparallel) and {_relative_iqr(figures['horovodrun_step_seconds']):.0%} "
            "(horovodrun), and the ratio over repeat pairs ranges "
            f"{figures['step_ratio']['min']:.2f}-{figures['step_ratio']['max']:.2f}.",
        ),
        _goal(
            "call to first step, ipyparallel path",
            first,
            "<=",
            10.0,
            "s",
            f"Starting 2 engines and the controller takes "
            f"{figures['ipyparallel_launch_seconds']['median']:.1f} s; then each rank imports "
            "TensorFlow and Horovod, joins the rendezvous, checks and reads its images, builds "
            f"and traces the model: {figures['ipyparallel_setup_seconds']['median']:.1f} s, on 2 "
            "cores shared by both ranks. horovodrun pays the same per-rank setup "
            f"({figures['horovodrun_setup_seconds']['median']:.1f} s).",
        ),
        _goal(
            "call to first step, horovodrun",
            figures["horovodrun_first_step_seconds"]["median"],
            "<=",
            10.0,
            "s",
            "Python start, TensorFlow import and graph tracing on 2 shared cores.",
        ),
    ]
    return {
        "benchmark": "launchers",
        "title": "1. Notebook-hosted ranks (ipyparallel) against horovodrun",
        "config": {"params": params, "repeats": level["launch_repeats"]},
        "figures": figures,
        "goals": goals,
        "notes": [
            "Steady state: rank 0's intervals between batch ends from the second epoch on "
            "(images cached in memory after the first), pooled over repeats; the ratio's spread "
            "is over repeat pairs.",
            "Call: just before HorovodCluster(2) is entered, or just before horovodrun is "
            "started; first step: rank 0's first batch end.",
        ],
        "raw": runs,
    }


# --- 2. input pipeline -------------------------------------------------------------------------


def bench_pipeline(level: dict[str, Any]) -> dict[str, Any]:
    """Real pipeline (1024 px PNGs) against tensors in memory and a disk cache; decode rate."""
    with tempfile.TemporaryDirectory(prefix="hiresmed-bench-cache-") as cache_dir:
        config = {
            "dataset": "synthetic-skin",
            "arch": "compact",
            "threads": os.cpu_count() or 1,
            "decode_repeats": level["decode_repeats"],
            "cache_dir": cache_dir,
            **level["pipeline"],
        }
        result, _ = run_worker("pipeline", config)
    runs = result["runs"]
    n = result["n_images"]
    figures = {
        "decode_images_per_second": summarize(
            [n / s for s in result["decode_seconds"]],
            "img/s",
            "decode + resize of 1024 px PNGs (tf.data, AUTOTUNE, all cores)",
        )
    }
    for name in ("pipeline", "in_memory", "disk_cache"):
        figures[f"{name}_steady_step_seconds"] = summarize(
            [s for run in runs[name] for s in run["steady_step_seconds"]],
            "s",
            f"{name}: steady-state s/step (epochs 2+)",
        )
        figures[f"{name}_first_epoch_step_seconds"] = summarize(
            [s for run in runs[name] for s in run["first_epoch_step_seconds"]],
            "s",
            f"{name}: first-epoch s/step (steps 2+ of epoch 1)",
        )
        figures[f"{name}_first_step_seconds"] = summarize(
            [run["first_step_seconds"] for run in runs[name]],
            "s",
            f"{name}: fit() call to first step end (tracing + first batch)",
        )
        figures[f"{name}_first_epoch_seconds"] = summarize(
            [run["first_epoch_seconds"] for run in runs[name]],
            "s",
            f"{name}: fit() call to end of epoch 1 ({result['steps_per_epoch']} steps, tracing "
            "included)",
        )
    per_repeat = [
        float(np.median(p["steady_step_seconds"]) / np.median(m["steady_step_seconds"]))
        for p, m in zip(runs["pipeline"], runs["in_memory"], strict=True)
    ]
    figures["steady_ratio"] = summarize(per_repeat, "x", "pipeline / in-memory steady s/step")
    first_ratio = [
        p["first_epoch_seconds"] / m["first_epoch_seconds"]
        for p, m in zip(runs["pipeline"], runs["in_memory"], strict=True)
    ]
    figures["first_epoch_ratio"] = summarize(
        first_ratio, "x", "pipeline / in-memory first epoch seconds"
    )
    disk_ratio = [
        float(np.median(d["steady_step_seconds"]) / np.median(m["steady_step_seconds"]))
        for d, m in zip(runs["disk_cache"], runs["in_memory"], strict=True)
    ]
    figures["disk_cache_ratio"] = summarize(disk_ratio, "x", "disk cache / in-memory steady s/step")
    steady = (
        figures["pipeline_steady_step_seconds"]["median"]
        / figures["in_memory_steady_step_seconds"]["median"]
    )
    first = (
        figures["pipeline_first_epoch_seconds"]["median"]
        / figures["in_memory_first_epoch_seconds"]["median"]
    )
    goals = [
        _goal(
            "steady-state s/step, pipeline / in memory",
            steady,
            "<=",
            1.05,
            "x",
            "After the first epoch the pipeline serves resized images from its in-memory "
            "cache; what remains (shuffle, preprocess map, batching) shares the 2 cores with "
            "the training step.",
        ),
        _goal(
            "first epoch seconds, pipeline / in memory (not an issue goal: the decode cost)",
            first,
            "<=",
            1.05,
            "x",
            f"The first epoch decodes every 1024 px PNG at "
            f"{figures['decode_images_per_second']['median']:.0f} images/s on these 2 cores, "
            "the same cores that train; the in-memory cache removes this from later epochs.",
        ),
    ]
    cache_gib = result["in_memory_cache_bytes"] / GiB
    return {
        "benchmark": "pipeline",
        "title": "2. Input pipeline: 1024 px PNGs against tensors in memory",
        "config": {k: v for k, v in config.items() if k != "cache_dir"},
        "figures": figures,
        "goals": goals,
        "sizes": {
            "n_images": n,
            "in_memory_cache_bytes": result["in_memory_cache_bytes"],
            "disk_cache_bytes": result["disk_cache_bytes_per_copy"],
        },
        "notes": [
            f"The in-memory cache holds float32 resized images: {cache_gib * 1024:.1f} MiB for "
            f"{n} images at {config['size']} px, i.e. size^2 x 3 x 4 bytes each; caching uint8 "
            "before the cast would quarter it.",
            "disk_cache: make_dataset's pipeline with Dataset.cache(filename) instead of "
            ".cache(); a cache_dir option in data.make_dataset was not added (data.py had the "
            "lead's uncommitted work in progress); the measurement shows what it would cost.",
        ],
        "raw": result,
    }


# --- 3. cost by resolution and the batch-size planner ------------------------------------------


def _probe(level: dict[str, Any], arch: str, size: int, batch: int, precision: str) -> dict:
    warmup, steps = level["probe_steps"]
    config = {
        "arch": arch,
        "size": size,
        "batch": batch,
        "precision": precision,
        "warmup": warmup,
        "steps": steps,
        "threads": os.cpu_count() or 1,
    }
    try:
        result, _ = run_worker("probe", config)
    except (HiresmedError, subprocess.TimeoutExpired) as error:
        return {**config, "error": str(error)[-500:]}
    return result


def bench_resolution(level: dict[str, Any]) -> dict[str, Any]:
    """Images/s and peak RSS per (arch, size, precision), one fresh process each; the planner."""
    configs = []
    figures: dict[str, Any] = {}
    for arch, size, batch, precision in level["resolution"]:
        result = _probe(level, arch, size, batch, precision)
        configs.append(result)
        if "error" in result:
            continue
        key = f"{arch}_{size}px_{precision}"
        figures[f"{key}_images_per_second"] = summarize(
            result["images_per_second"], "img/s", f"{arch} {size} px {precision} b{batch}: img/s"
        )
        figures[f"{key}_peak_rss_gib"] = summarize(
            [result["peak_rss_bytes"] / GiB], "GiB", f"{arch} {size} px {precision}: peak RSS"
        )
    bf16 = []
    for arch, size, _, precision in level["resolution"]:
        if precision != "mixed_bfloat16":
            continue
        base = figures.get(f"{arch}_{size}px_float32_images_per_second")
        mixed = figures.get(f"{arch}_{size}px_mixed_bfloat16_images_per_second")
        if base and mixed:
            figures[f"{arch}_{size}px_bf16_speedup"] = summarize(
                [mixed["median"] / base["median"]], "x", f"{arch} {size} px: bf16 / fp32 img/s"
            )
            bf16.append(f"{arch}_{size}px_bf16_speedup")

    plan = level["planner"]
    probes = []
    for batch in plan["probes"]:
        result = _probe(level, plan["arch"], plan["size"], batch, "float32")
        probes.append(result)
    check = _probe(level, plan["arch"], plan["size"], plan["check"], "float32")
    planner: dict[str, Any] = {"config": plan, "probes": probes, "check": check}
    goals = []
    usable = [(p["batch"], p["peak_rss_bytes"]) for p in probes if "error" not in p]
    if len(usable) >= 2 and "error" not in check:
        a, b = fit_memory(usable)
        predicted = a + b * plan["check"]
        error = (predicted - check["peak_rss_bytes"]) / check["peak_rss_bytes"]
        planner.update(
            {
                "intercept_bytes": a,
                "bytes_per_image": b,
                "predicted_check_bytes": predicted,
                "measured_check_bytes": check["peak_rss_bytes"],
                "relative_error": error,
                "plans": {},
            }
        )
        for budget_gib in (2, 4, 8, 16):
            try:
                planner["plans"][f"{budget_gib} GiB"] = plan_batch_size(budget_gib * GiB, usable)
            except HiresmedError as refused:
                planner["plans"][f"{budget_gib} GiB"] = str(refused)
        figures["planner_relative_error"] = summarize(
            [abs(error)],
            "",
            f"planner: |predicted - measured| / measured peak RSS at batch {plan['check']}",
        )
        goals.append(
            _goal(
                f"planner error at batch {plan['check']} (fit on {plan['probes']})",
                abs(error),
                "<=",
                0.10,
                "",
                "Peak RSS is not exactly linear in the batch: TensorFlow's allocator and "
                "oneDNN scratch buffers grow in steps, and the fixed part (runtime, graph) "
                "dominates small probes.",
            )
        )
    for key in bf16:
        arch_size = key.removesuffix("_bf16_speedup")
        fp32 = figures[f"{arch_size}_float32_images_per_second"]
        mixed = figures[f"{arch_size}_mixed_bfloat16_images_per_second"]
        overlap = mixed["q1"] <= fp32["q3"] and fp32["q1"] <= mixed["q3"]
        goals.append(
            _goal(
                f"{figures[key]['label']} (not an issue goal: > 1 means bf16 helps)",
                figures[key]["median"],
                ">=",
                1.0,
                "x",
                f"Per-step img/s, q1-q3: float32 {fp32['q1']:.1f}-{fp32['q3']:.1f}, bf16 "
                f"{mixed['q1']:.1f}-{mixed['q3']:.1f}; "
                + (
                    "the spreads overlap, so this run does not tell them apart."
                    if overlap
                    else "bf16 is slower beyond the spread (cause not profiled: casts around "
                    "batch norm, pooling and the float32 head are the usual suspects)."
                ),
            )
        )
    return {
        "benchmark": "resolution",
        "title": "3. Cost by resolution: images/s and peak RSS; the batch-size planner",
        "config": {"configs": level["resolution"], "probe_steps": level["probe_steps"]},
        "figures": figures,
        "goals": goals,
        "configs": configs,
        "planner": planner,
        "notes": [
            "Each config trains on one in-memory batch in a fresh process with all cores; "
            "img/s is over the timed steps after the warm-up (tracing) step(s); peak RSS "
            "(ru_maxrss) is one reading per process (n=1).",
            "Images are in memory, so this is the model's cost alone; the pipeline's is in 2.",
        ],
    }


# --- 4. ranks against threads ------------------------------------------------------------------


def bench_threads(level: dict[str, Any], launchers: dict[str, Any] | None = None) -> dict:
    """2 ranks x 1 thread against 1 rank x 2 threads at the same global batch, same function."""
    params = train_params(level, Path("unused"))
    if launchers is None:
        two_ranks = [
            _with_fresh_results_dir(_ipyparallel_run, params)
            for _ in range(level["launch_repeats"])
        ]
        source = "measured here (ipyparallel path)"
    else:
        two_ranks = launchers["raw"]["ipyparallel"]
        source = "the ipyparallel runs of benchmark 1 (same parameters)"
    serial_params = {**params, "MODE": "serial", "BATCH_SIZE": params["BATCH_SIZE"] * 2}

    def serial(run_params: dict[str, Any]) -> dict[str, Any]:
        return run_worker("timed-train", {"params": run_params})[0]

    one_rank = [
        _with_fresh_results_dir(serial, serial_params) for _ in range(level["launch_repeats"])
    ]
    global_batch = serial_params["BATCH_SIZE"]
    figures = {
        "two_ranks_images_per_second": summarize(
            [global_batch / s for run in two_ranks for s in _steady(run)],
            "img/s",
            "2 ranks x 1 thread: steady img/s",
        ),
        "one_rank_images_per_second": summarize(
            [global_batch / s for run in one_rank for s in _steady(run)],
            "img/s",
            "1 rank x 2 threads: steady img/s",
        ),
    }
    pairs = [
        float(np.median(_steady(b)) / np.median(_steady(a)))
        for a, b in zip(two_ranks, one_rank, strict=True)
    ]
    figures["ratio"] = summarize(pairs, "x", "2 ranks / 1 rank img/s")
    ratio = (
        figures["two_ranks_images_per_second"]["median"]
        / figures["one_rank_images_per_second"]["median"]
    )
    goals = [
        _goal(
            "throughput, 2 ranks x 1 thread / 1 rank x 2 threads",
            ratio,
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


# --- 5. gradient traffic -----------------------------------------------------------------------


def bench_allreduce(level: dict[str, Any]) -> dict[str, Any]:
    """Share of the step spent in allreduce on 2 ranks, with and without fp16 compression."""
    warmup, steps = level["probe_steps"]
    config = {
        **level["allreduce"],
        "warmup": warmup,
        "steps": max(steps, 3),
        "allreduce_repeats": level["allreduce_repeats"],
    }
    result, _ = run_worker("allreduce-share", config, ranks=2, env={"OMP_NUM_THREADS": "1"})
    figures: dict[str, Any] = {
        "local_step_seconds": summarize(
            result["local_step_seconds"], "s", "step without allreduce (each rank alone)"
        )
    }
    for name in ("none", "fp16"):
        step = summarize(result[f"step_seconds_{name}"], "s", f"step with allreduce ({name})")
        reduce = summarize(
            result[f"allreduce_seconds_{name}"], "s", f"allreduce alone of the gradients ({name})"
        )
        figures[f"step_seconds_{name}"] = step
        figures[f"allreduce_seconds_{name}"] = reduce
        figures[f"allreduce_share_{name}"] = summarize(
            [reduce["median"] / step["median"]], "", f"allreduce alone / step ({name})"
        )
        figures[f"step_overhead_share_{name}"] = summarize(
            [(step["median"] - figures["local_step_seconds"]["median"]) / step["median"]],
            "",
            f"(step - local step) / step ({name})",
        )
        if f"allreduce_seconds_with_top_{name}" in result:
            figures[f"allreduce_seconds_with_top_{name}"] = summarize(
                result[f"allreduce_seconds_with_top_{name}"],
                "s",
                f"allreduce of VGG16-with-top shapes, {result['vgg16_with_top_parameters']:,} "
                f"parameters ({name})",
            )
    return {
        "benchmark": "allreduce",
        "title": "5. Gradient traffic: allreduce share of the step, fp16 compression",
        "config": config,
        "figures": figures,
        "goals": [],
        "notes": [
            f"The project's {config['arch']} (models.build_model: no top, global pooling, "
            "4-class head) "
            f"has {result['parameters']:,} trainable parameters; Keras' VGG16 with its fully "
            "connected top carries 138 M, timed as allreduce alone.",
            "Accuracy of fp16 against none on the quick study is not measured here (a "
            "study-level comparison).",
        ],
        "raw": result,
    }


# --- the suite and its Markdown ----------------------------------------------------------------


def run_suite(
    level_name: str = "quick",
    only: Sequence[str] = BENCHMARKS,
    out_dir: str | Path = DEFAULT_DIR,
    command: str = "",
) -> list[Path]:
    """Run the chosen benchmarks in order, writing each JSON as soon as it is done."""
    from hiresmed_nb.synthetic import ensure_dataset

    unknown = [name for name in only if name not in BENCHMARKS]
    if unknown:
        raise HiresmedError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    level = LEVELS[level_name]
    ensure_dataset("synthetic-skin")
    folder = resolve_path(out_dir)
    written = []
    launchers = None
    for name in BENCHMARKS:
        if name not in only:
            continue
        before = contention()
        started = time.time()
        print(f"bench: {name} ...", flush=True)
        if name == "threads":
            payload = bench_threads(level, launchers)
        else:
            payload = globals()[f"bench_{name}"](level)
        if name == "launchers":
            launchers = payload
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
    summary = folder / "BENCHMARKS.md"
    summary.write_text(render_markdown(load_results(folder)))
    written.append(summary)
    return written


def _fmt(value: float, unit: str = "") -> str:
    if unit == "img/s":
        return f"{value:.1f}"
    if unit == "":
        return f"{value:.1%}"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "GiB":
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def render_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The tables of every benchmark JSON: goals first, then every figure, with the machine."""
    if not results:
        return "No benchmark results yet: run `python -m hiresmed_nb bench --quick`.\n"
    first = next(iter(results.values()))
    machine, found = first["machine"], first["versions"]
    dirty = " (dirty tree)" if found.get("git_dirty") else ""
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({', '.join(machine['cpu_features'])}), {machine['ram_bytes'] / GiB:.1f} GiB RAM, "
        f"{machine['os']}.",
        f"Versions: Python {found.get('python')}, TensorFlow {found.get('tensorflow')}, "
        f"Horovod {found.get('horovod')}, ipyparallel {found.get('ipyparallel')}; commit "
        f"{(found.get('git_commit') or '?')[:10]}{dirty}.",
        "",
        "Each benchmark: the command that wrote it, when it finished, how long it took, the "
        "1-minute load average at its start and end, and the other heavy jobs that "
        '`pgrep -af "pytest|hiresmed_nb run"` found then (contention):',
        "",
    ]
    for name, result in results.items():
        seen = result.get("contention", {})
        jobs = {j for side in ("before", "after") for j in seen.get(side, {}).get("other_jobs", [])}
        loads = [seen.get(side, {}).get("load_average", [0])[0] for side in ("before", "after")]
        jobs_text = "; ".join(sorted(j.split(" ", 1)[1][:60] for j in jobs)) if jobs else "none"
        lines.append(
            f"- {name}: `{result.get('command') or 'python -m hiresmed_nb bench'}` at "
            f"{result['created']}, {result.get('wall_seconds', 0):.0f} s; load "
            f"{loads[0]:.2f} -> {loads[1]:.2f}; other jobs: {jobs_text}"
        )
    lines += ["", "### Goals", "", "| benchmark | goal | measured | target | met | missed by |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    limits = []
    for name, result in results.items():
        for goal in result.get("goals", []):
            unit = goal["unit"]
            met = "yes" if goal["met"] else "**no**"
            measured = f"{_fmt(goal['value'], unit)} {unit}".strip()
            target = f"{goal['op']} {_fmt(goal['target'], unit)} {unit}".strip()
            lines.append(
                f"| {name} | {goal['name']} | {measured} | {target} | {met} | {goal['miss']} |"
            )
            if goal["limits"]:
                limits.append(f"- **{goal['name']}**: {goal['limits']}")
    if limits:
        lines += ["", "What limits the missed goals (from the measurements):", "", *limits]
    for name, result in results.items():
        lines += [
            "",
            f"### {result.get('title', name)}",
            "",
            "| figure | median | IQR (q1-q3) | min-max | n | unit |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for key in result.get("figure_order", list(result["figures"])):
            figure = result["figures"][key]
            unit = figure["unit"]
            label = figure["label"].replace("|", "\\|")
            lines.append(
                f"| {label} | {_fmt(figure['median'], unit)} | "
                f"{_fmt(figure['q1'], unit)}-{_fmt(figure['q3'], unit)} | "
                f"{_fmt(figure['min'], unit)}-{_fmt(figure['max'], unit)} | {figure['n']} | "
                f"{unit or 'fraction'} |"
            )
        if name == "resolution" and result.get("planner", {}).get("plans"):
            planner = result["planner"]
            lines += [
                "",
                f"Planner ({planner['config']['arch']} at {planner['config']['size']} px, "
                f"probes at batch {planner['config']['probes']}): peak RSS = "
                f"{planner['intercept_bytes'] / GiB:.2f} GiB + "
                f"{planner['bytes_per_image'] / 2**20:.1f} MiB x batch; at batch "
                f"{planner['config']['check']} predicted "
                f"{planner['predicted_check_bytes'] / GiB:.2f} GiB, measured "
                f"{planner['measured_check_bytes'] / GiB:.2f} GiB "
                f"({planner['relative_error']:+.1%}). Largest per-rank batch by budget: "
                + ", ".join(
                    f"{k}: {v}"
                    for k, v in sorted(planner["plans"].items(), key=lambda kv: float(kv[0][:-4]))
                )
                + ".",
            ]
        failed = [c for c in result.get("configs", []) if "error" in c]
        for config in failed:
            lines.append(
                f"- {config['arch']} {config['size']} px b{config['batch']} "
                f"{config['precision']}: failed ({config['error'][-120:].strip()})"
            )
        for note in result.get("notes", []):
            lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def update_markdown(path: str | Path, generated: str) -> Path:
    """Replace the generated block of ``path`` (between the bench markers), or append one."""
    path = Path(path)
    block = f"{MARKDOWN_BEGIN}\n{generated}{MARKDOWN_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if MARKDOWN_BEGIN in text and MARKDOWN_END in text:
        head, rest = text.split(MARKDOWN_BEGIN, 1)
        text = head + block + rest.split(MARKDOWN_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return path
