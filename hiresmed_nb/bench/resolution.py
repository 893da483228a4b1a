"""Benchmark 3: images/s and peak RSS per (arch, size, precision), and the batch-size planner.

Each config is one :func:`probe` in a fresh process (``python -m hiresmed_nb.bench.worker
probe``), so its peak RSS is its own. The planner fits peak RSS = a + b * batch on a few small
batches (:func:`fit_memory`) and picks the largest batch for a memory budget
(:func:`plan_batch_size`); the benchmark checks the fit at a larger batch.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.process import run_worker
from hiresmed_nb.bench.timing import GiB, peak_rss_bytes, summarize, time_calls
from hiresmed_nb.errors import HiresmedError

BUDGETS_GIB = (2, 4, 8, 16)

# --- the batch-size planner ----------------------------------------------------------------------


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
    # Under a byte per image is no growth: a flat line's fitted slope is rounding noise (1e-7 on
    # some CPUs), not zero.
    if b < 1.0:
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


# --- what the fresh process runs -----------------------------------------------------------------


def random_batch(arch: str, size: int, batch: int, seed: int) -> tuple[Any, Any]:
    """One batch of uniform random pixels, preprocessed for ``arch``, and labels in 0-3.

    Shapes: images ``(batch, size, size, 3)`` float32, labels ``(batch,)`` int32.
    """
    import tensorflow as tf

    from hiresmed_nb.science import models

    rng = np.random.default_rng(seed)
    images = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32)
    labels = tf.constant(rng.integers(0, 4, batch), tf.int32)
    return models.preprocessing_for(arch)(images), labels


def probe(config: dict[str, Any]) -> dict[str, Any]:
    """Train ``arch`` at ``size`` on one in-memory batch; step times and peak RSS.

    Run in a fresh process so ``peak_rss_bytes`` belongs to this config alone. ``config``:
    ``arch``, ``size``, ``batch``, ``precision``, ``warmup`` and ``steps`` (train steps timed
    after ``warmup`` untimed ones), ``threads``.
    """
    from hiresmed_nb.science import models, training

    training.configure_threads(config["threads"])
    import tensorflow as tf

    rss_before_model = peak_rss_bytes()
    tf.keras.mixed_precision.set_global_policy(config["precision"])
    model = models.build_model(config["arch"], config["size"], 4, None, 0)
    model.compile(tf.keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    images, labels = random_batch(config["arch"], config["size"], config["batch"], 0)
    seconds = time_calls(
        lambda: model.train_on_batch(images, labels), config["warmup"], config["steps"]
    )
    return {
        **config,
        "parameters": int(model.count_params()),
        "step_seconds": seconds,
        "images_per_second": [config["batch"] / s for s in seconds],
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_model_bytes": rss_before_model,
    }


# --- the benchmark -------------------------------------------------------------------------------


def probe_settings(level: dict[str, Any]) -> dict[str, Any]:
    """What every probe of ``level`` shares, built once: ``warmup`` and ``steps`` (from
    ``level["probe_steps"]``) and ``threads`` (all cores)."""
    warmup, steps = level["probe_steps"]
    return {"warmup": warmup, "steps": steps, "threads": os.cpu_count() or 1}


def _probe(settings: dict[str, Any], arch: str, size: int, batch: int, precision: str) -> dict:
    """One :func:`probe` in a fresh process (``settings`` from :func:`probe_settings`); a failure
    (out of memory, time) is kept as ``error`` in the returned config instead of stopping the
    benchmark."""
    config = {"arch": arch, "size": size, "batch": batch, "precision": precision, **settings}
    try:
        result, _ = run_worker("probe", config)
    except (HiresmedError, subprocess.TimeoutExpired) as error:
        return {**config, "error": str(error)[-500:]}
    return result


def _config_figures(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """img/s and peak RSS of each config that ran, then bf16 / fp32 where both ran."""
    figures: dict[str, Any] = {}
    for result in (c for c in configs if "error" not in c):
        arch, size, batch, precision = (result[k] for k in ("arch", "size", "batch", "precision"))
        key = f"{arch}_{size}px_{precision}"
        figures[f"{key}_images_per_second"] = summarize(
            result["images_per_second"], "img/s", f"{arch} {size} px {precision} b{batch}: img/s"
        )
        figures[f"{key}_peak_rss_gib"] = summarize(
            [result["peak_rss_bytes"] / GiB], "GiB", f"{arch} {size} px {precision}: peak RSS"
        )
    for config in (c for c in configs if c["precision"] == "mixed_bfloat16"):
        arch_size = f"{config['arch']}_{config['size']}px"
        base = figures.get(f"{arch_size}_float32_images_per_second")
        mixed = figures.get(f"{arch_size}_mixed_bfloat16_images_per_second")
        if base and mixed:
            figures[f"{arch_size}_bf16_speedup"] = summarize(
                [mixed["median"] / base["median"]],
                "x",
                f"{config['arch']} {config['size']} px: bf16 / fp32 img/s",
            )
    return figures


def _bf16_goal(figures: dict[str, Any], arch_size: str) -> dict[str, Any]:
    """bf16 / fp32 img/s >= 1 (not a goal), with whether the spreads overlap."""
    speedup = figures[f"{arch_size}_bf16_speedup"]
    fp32 = figures[f"{arch_size}_float32_images_per_second"]
    mixed = figures[f"{arch_size}_mixed_bfloat16_images_per_second"]
    overlap = mixed["q1"] <= fp32["q3"] and fp32["q1"] <= mixed["q3"]
    return goal(
        f"{speedup['label']} (not a goal: > 1 means bf16 helps)",
        speedup["median"],
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


def _planner(plan: dict[str, Any], probe: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """Probes (``probe(arch, size, batch, precision)``) at the planner's small batches and its
    check batch, as ``plan`` (``level["planner"]``) names them; the fit, its error at the check
    and the plan for each budget of :data:`BUDGETS_GIB` (when two probes and the check ran)."""
    probes = [probe(plan["arch"], plan["size"], b, "float32") for b in plan["probes"]]
    check = probe(plan["arch"], plan["size"], plan["check"], "float32")
    planner: dict[str, Any] = {"config": plan, "probes": probes, "check": check}
    usable = [(p["batch"], p["peak_rss_bytes"]) for p in probes if "error" not in p]
    if len(usable) < 2 or "error" in check:
        return planner
    a, b = fit_memory(usable)
    predicted = a + b * plan["check"]
    planner.update(
        {
            "intercept_bytes": a,
            "bytes_per_image": b,
            "predicted_check_bytes": predicted,
            "measured_check_bytes": check["peak_rss_bytes"],
            "relative_error": (predicted - check["peak_rss_bytes"]) / check["peak_rss_bytes"],
            "plans": {},
        }
    )
    for budget_gib in BUDGETS_GIB:
        try:
            planner["plans"][f"{budget_gib} GiB"] = plan_batch_size(budget_gib * GiB, usable)
        except HiresmedError as refused:
            planner["plans"][f"{budget_gib} GiB"] = str(refused)
    return planner


def measure(level: dict[str, Any]) -> dict[str, Any]:
    """Every config of the level, then the planner; goals: the planner's error, bf16 speedups.

    A config is probed once: one the planner also asks for (the tiny level's config is one of
    its probes) gets that same fresh process's reading.
    """
    probe = functools.cache(functools.partial(_probe, probe_settings(level)))
    configs = [probe(*config) for config in level["resolution"]]
    figures = _config_figures(configs)
    planner = _planner(level["planner"], probe)
    goals = []
    if "relative_error" in planner:
        plan = planner["config"]
        figures["planner_relative_error"] = summarize(
            [abs(planner["relative_error"])],
            "",
            f"planner: |predicted - measured| / measured peak RSS at batch {plan['check']}",
        )
        goals.append(
            goal(
                f"planner error at batch {plan['check']} (fit on {plan['probes']})",
                abs(planner["relative_error"]),
                "<=",
                0.10,
                "",
                "Peak RSS is not exactly linear in the batch: TensorFlow's allocator and "
                "oneDNN scratch buffers grow in steps, and the fixed part (runtime, graph) "
                "dominates small probes.",
            )
        )
    speedups = [key for key in figures if key.endswith("_bf16_speedup")]
    goals += [_bf16_goal(figures, key.removesuffix("_bf16_speedup")) for key in speedups]
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
            "A config that is also one of the planner's probes is probed once; both read it.",
        ],
    }
