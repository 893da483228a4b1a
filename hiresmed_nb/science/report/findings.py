"""Findings in plain sentences: per-setting best resolution, arm against arm beyond the seed
spread, lever variants, the data-locality check, the cost of the study and retried runs."""

from __future__ import annotations

import pandas as pd

from hiresmed_nb.science.report.load import SETTING, ordered_modes, retried_runs
from hiresmed_nb.science.report.stats import summarise


def best_resolution(records: pd.DataFrame, metric: str = "accuracy") -> list[str]:
    """One sentence per setting (dataset, arch, images per class, mode): its best resolution.

    Says whether the best is the smallest, the largest, or an interior size (accuracy rising, then
    falling, as the paper reports), and by how much it beats the next best size.
    """
    summary = summarise(records, metric)
    sentences = []
    for setting, group in summary.groupby(SETTING, sort=True):
        dataset, arch, ipc, mode = setting
        by_size = group.groupby("image_size")["mean"].max().sort_index()
        best = int(by_size.idxmax())
        where = f"{arch} on {dataset}, {ipc} images per class, {mode}"
        if len(by_size) == 1:
            sentences.append(
                f"{where}: only {best} px was run ({100 * by_size[best]:.1f}%), so there is "
                "no best resolution to pick."
            )
            continue
        tied = [int(size) for size, value in by_size.items() if value >= by_size[best] - 1e-12]
        if len(tied) > 1:
            sizes = ", ".join(f"{size} px" for size in tied)
            sentences.append(
                f"{where}: no single best resolution; {sizes} tie at {100 * by_size[best]:.1f}%."
            )
            continue
        runner_up = by_size.drop(best)
        second = int(runner_up.idxmax())
        margin = 100 * (by_size[best] - runner_up.max())
        if best == by_size.index.min():
            shape = "the smallest size tried"
        elif best == by_size.index.max():
            shape = "the largest size tried"
        else:
            shape = "an interior optimum: accuracy is lower at both smaller and larger sizes"
        sentences.append(
            f"{where}: best at {best} px ({100 * by_size[best]:.1f}%), {shape}; "
            f"{margin:.1f} points above the next best, {second} px."
        )
    return sentences


def distributed_vs_serial(
    records: pd.DataFrame,
    metric: str = "accuracy",
    baseline: str = "serial",
    contender: str = "distributed",
) -> list[str]:
    """One sentence per cell run both ways: does ``contender`` beat ``baseline`` beyond the spread?

    ``baseline`` is e.g. ``serial`` or ``serial-accumulated`` (one device at the effective batch
    of several ranks); ``contender`` an arm such as ``distributed`` or a lever variant. The seed
    spread is the larger of the two cells' standard deviations over seeds; a difference of means
    larger than it counts. With one seed on either side, no verdict is given.
    """
    summary = summarise(records, metric)
    sentences = []
    for cell, group in summary.groupby(["dataset", "arch", "image_size", "images_per_class"]):
        dataset, arch, size, ipc = cell
        serial = group[group["mode"] == baseline]
        distributed = group[group["mode"] == contender]
        if serial.empty or distributed.empty:
            continue
        s, d = serial.iloc[0], distributed.iloc[0]
        diff = 100 * (d["mean"] - s["mean"])
        where = f"{arch} on {dataset} at {size} px, {ipc} images per class"
        ranks = f"{d['n_ranks']} rank" + ("s" if d["n_ranks"] != 1 else "")
        numbers = (
            f"{contender} ({ranks}) {100 * d['mean']:.1f}% vs {baseline} {100 * s['mean']:.1f}%"
        )
        if s["n"] < 2 or d["n"] < 2:
            sentences.append(
                f"{where}: {numbers}; one seed only, so the seed spread is unknown and no "
                "verdict is given."
            )
            continue
        spread = 100 * max(s["sd"], d["sd"])
        if diff > spread:
            verdict = (
                f"{contender} beats {baseline} by {diff:.1f} points, more than the seed spread"
            )
        elif -diff > spread:
            verdict = (
                f"{baseline} beats {contender} by {-diff:.1f} points, more than the seed spread"
            )
        else:
            verdict = (
                f"the difference ({diff:+.1f} points) is within the seed spread, so neither "
                "beats the other"
            )
        sentences.append(f"{where}: {numbers}; {verdict} ({spread:.1f} points).")
    return sentences


def lever_comparisons(records: pd.DataFrame, metric: str = "accuracy") -> list[str]:
    """Each lever variant (e.g. ``distributed+fp16-allreduce``) against its plain arm."""
    sentences = []
    for variant in ordered_modes(records["mode"]):
        if "+" in variant:
            base = variant.split("+")[0]
            sentences += distributed_vs_serial(records, metric, baseline=base, contender=variant)
    return sentences


def data_locality(records: pd.DataFrame) -> str:
    """One sentence on the data-locality check of the distributed runs."""
    distributed = records[records["mode"] == "distributed"]
    if distributed.empty:
        return "No distributed run, so no data-locality check."
    checked = distributed[distributed["data_locality_ok"].notna()]
    failed = checked[~checked["data_locality_ok"].astype(bool)]
    unchecked = len(distributed) - len(checked)
    sentence = (
        f"Data locality: {len(checked) - len(failed)} of {len(checked)} checked distributed runs "
        "passed (each rank's training pipeline opened only the images of its own shard, the "
        "shards were disjoint and together the training set; only model parameters crossed "
        "ranks)."
    )
    if len(failed):
        sentence += " FAILED: " + ", ".join(failed["run_id"]) + "."
    if unchecked:
        sentence += f" {unchecked} runs predate the check and carry no verdict."
    return sentence


def usage(records: pd.DataFrame) -> str:
    """One sentence on what the study used: runs, training images, image passes, train time."""
    if records.empty:
        return "No run has finished yet."
    seconds = float(records["train_seconds"].sum())
    passes = int((records["n_train"] * records["epochs"]).sum())
    return (
        f"{len(records)} runs trained on {int(records['n_train'].sum())} training images in all "
        f"({passes} image passes over the epochs) and tested on {int(records['n_test'].sum())} "
        f"images, in {seconds / 60:.1f} minutes of training ({seconds:.0f} s)."
    )


def retries(records: pd.DataFrame) -> str:
    """One sentence on the runs the runner retried (their record carries ``retry``)."""
    retried = retried_runs(records)
    if retried.empty:
        return "No run was retried."
    one = len(retried) == 1
    return (
        f"{len(retried)} run{'' if one else 's'} failed once and {'was' if one else 'were'} "
        "retried from the last checkpoint (listed below); a resumed run's train_seconds count "
        "only the resumed part, so the wall-time comparisons leave such runs out."
    )
