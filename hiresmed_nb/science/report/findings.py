"""Findings in plain sentences: per-setting best resolution, arm against arm beyond seed noise
(paired 95% intervals, the comparisons of one list adjusted together by Holm's procedure), lever
variants, the data-locality check, the cost of the study and retried runs."""

from __future__ import annotations

import dataclasses

import pandas as pd

from hiresmed_nb.science.report.answers import q3_best_resolution
from hiresmed_nb.science.report.family import adjusted_verdicts, family_size
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


def _arm_comparisons(
    records: pd.DataFrame, metric: str, baseline: str, contender: str
) -> list[tuple[str, Difference | None]]:
    """Per cell run both ways, the start of its sentence and the paired difference contender -
    baseline (None when no seed ran both)."""
    check_metric(metric)
    data = records.assign(_lr=base_rates(records).map(format_lr))
    keys = ["dataset", "arch", "image_size", "images_per_class", "_lr"]
    lr_axis = has_lr_axis(records)
    found = []
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
        found.append((f"{where}: {numbers}", diff))
    return found


def _family_sentences(
    found: list[tuple[str, Difference | None, str, str]],
) -> list[str]:
    """One sentence per comparison (its start, difference, contender and baseline), with the
    verdicts adjusted over all of them together (Holm's procedure, :mod:`.family`)."""
    tested = [diff for _, diff, _, _ in found if diff is not None]
    verdicts = iter(adjusted_verdicts(tested))
    m = family_size(tested)
    sentences = []
    for start, diff, contender, baseline in found:
        verdict = None if diff is None else next(verdicts)
        sentences.append(f"{start}; {_beats(diff, verdict, m, contender, baseline)}.")
    return sentences


def distributed_vs_serial(
    records: pd.DataFrame,
    metric: str = "accuracy",
    baseline: str = "serial",
    contender: str = "distributed",
) -> list[str]:
    """One sentence per cell run both ways: does ``contender`` beat ``baseline``?

    ``baseline`` is e.g. ``serial`` or ``serial-accumulated`` (one device at the effective batch
    of several ranks); ``contender`` an arm such as ``distributed`` or a lever variant. The seeds
    are paired (same seed: same split and initialisation); the cells are one family, and one side
    beats the other only where Holm's procedure over the cells names it (in one cell: where the
    95% t-interval of the per-seed differences excludes zero). Each sentence shows the cell's own
    interval, labelled unadjusted when there are several; with one seed, or the same difference
    in every seed, no verdict is given.
    """
    found = _arm_comparisons(records, metric, baseline, contender)
    return _family_sentences([(start, diff, contender, baseline) for start, diff in found])


def _beats(
    diff: Difference | None, verdict: str | None, m: int, contender: str, baseline: str
) -> str:
    """Who beats whom, from the ``verdict`` of contender - baseline adjusted over a family of
    ``m`` tested comparisons; the interval shown is the comparison's own."""
    if diff is None:
        return "no seed ran both, so no paired comparison"
    own = "" if m < 2 else f" (its own interval, unadjusted; verdict by Holm over {m} comparisons)"
    points = format_points(diff, unit=" points") + own
    if verdict == HIGHER:
        return f"{contender} beats {baseline} by {points}"
    if verdict == LOWER:
        flipped = dataclasses.replace(diff, mean=-diff.mean)
        return f"{baseline} beats {contender} by {format_points(flipped, unit=' points')}{own}"
    if verdict == NOISE:
        return f"the difference, {points}, is within seed noise, so neither beats the other"
    return f"the difference is {points}, so no verdict is given"


def lever_comparisons(records: pd.DataFrame, metric: str = "accuracy") -> list[str]:
    """Each lever variant (e.g. ``distributed+fp16-allreduce``) against its plain arm, in every
    cell: all of them one family, adjusted together (Holm's procedure)."""
    found = []
    for variant in ordered_modes(records["mode"]):
        if "+" in variant:
            base = variant.split("+")[0]
            found += [
                (start, diff, variant, base)
                for start, diff in _arm_comparisons(records, metric, base, variant)
            ]
    return _family_sentences(found)


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
