"""Findings in plain sentences: per-setting best resolution, arm against arm beyond seed noise
(paired 95% intervals), lever variants, the data-locality check, the cost of the study and
retried runs."""

from __future__ import annotations

import dataclasses

import pandas as pd

from hiresmed_nb.science.report.answers import q3_best_resolution
from hiresmed_nb.science.report.load import (
    base_rates,
    check_metric,
    has_lr_axis,
    ordered_modes,
    retried_runs,
)
from hiresmed_nb.science.report.optimum import resolution_sentences
from hiresmed_nb.science.report.stats import (
    HIGHER,
    LOWER,
    NOISE,
    Difference,
    format_points,
    paired_difference,
)
from hiresmed_nb.science.report.tables import format_lr


def best_resolution(records: pd.DataFrame, metric: str = "accuracy") -> list[str]:
    """One sentence per setting (dataset, arch, images per class, main arm, swept learning
    rate): the size with the highest mean, whether it is interior (bracketed beyond seed noise or
    only by the means) or at an edge of the grid, and whether it beats the next highest size
    beyond seed noise or the two are not separated."""
    return resolution_sentences(q3_best_resolution(records, metric))


def distributed_vs_serial(
    records: pd.DataFrame,
    metric: str = "accuracy",
    baseline: str = "serial",
    contender: str = "distributed",
) -> list[str]:
    """One sentence per cell run both ways: does ``contender`` beat ``baseline``?

    ``baseline`` is e.g. ``serial`` or ``serial-accumulated`` (one device at the effective batch
    of several ranks); ``contender`` an arm such as ``distributed`` or a lever variant. The seeds
    are paired (same seed: same split and initialisation) and one side beats the other only when
    the 95% t-interval of the per-seed differences excludes zero; with one seed, or the same
    difference in every seed, no verdict is given.
    """
    check_metric(metric)
    data = records.assign(_lr=base_rates(records).map(format_lr))
    keys = ["dataset", "arch", "image_size", "images_per_class", "_lr"]
    lr_axis = has_lr_axis(records)
    sentences = []
    for (dataset, arch, size, ipc, rate), group in data.groupby(keys):
        serial = group[group["mode"] == baseline]
        distributed = group[group["mode"] == contender]
        if serial.empty or distributed.empty:
            continue
        diff = paired_difference(
            distributed.set_index("seed")[metric], serial.set_index("seed")[metric]
        )
        where = f"{arch} on {dataset} at {size} px, {ipc} images per class"
        where += f", LEARNING_RATE {rate}" if lr_axis else ""
        ranks = "/".join(str(k) for k in sorted(set(distributed["n_ranks"])))
        ranks += " rank" + ("" if ranks == "1" else "s")
        numbers = (
            f"{contender} ({ranks}) {100 * distributed[metric].mean():.1f}% vs {baseline} "
            f"{100 * serial[metric].mean():.1f}%"
        )
        sentences.append(f"{where}: {numbers}; {_beats(diff, contender, baseline)}.")
    return sentences


def _beats(diff: Difference | None, contender: str, baseline: str) -> str:
    """Who beats whom, from the paired interval of contender - baseline."""
    if diff is None:
        return "no seed ran both, so no paired comparison"
    points = format_points(diff, unit=" points")
    if diff.verdict == HIGHER:
        return f"{contender} beats {baseline} by {points}"
    if diff.verdict == LOWER:
        flipped = dataclasses.replace(diff, mean=-diff.mean)
        return f"{baseline} beats {contender} by {format_points(flipped, unit=' points')}"
    if diff.verdict == NOISE:
        return f"the difference, {points}, is within seed noise, so neither beats the other"
    return f"the difference is {points}, so no verdict is given"


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
