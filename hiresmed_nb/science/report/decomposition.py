"""Q2's decomposition: which part of distributed − serial is larger, the effective batch or the
distribution, each cell judged by paired intervals over the seeds that ran all three arms.

Per seed, the batch part is ``b = serial-accumulated − serial`` (a larger effective batch on one
device) and the distribution part ``d = distributed − serial-accumulated`` (the same effective
batch, spread over ranks); ``b + d = distributed − serial``.

"Larger" means larger in magnitude: the part that moves the metric more, whichever way. The two
parts can point in opposite directions (a larger batch helps, spreading it hurts), so comparing
``b − d`` alone would rank a part that helps a little above one that hurts a lot. Since
``b² − d² = (b − d)(b + d)``, the batch part is the larger in magnitude exactly when ``b − d`` and
``b + d`` have the same sign, the distribution part when their signs differ. A part is named only
when the t-intervals of both ``b − d`` and ``b + d`` exclude zero; each interval is at 97.5% so
that the two hold together at 95% at least (Bonferroni). Otherwise the parts are not
distinguishable from each other; a mean ``b − d`` of exactly zero is a tie, and one seed (or the
same ``b − d`` in every seed) gives no interval and no verdict.
"""

from __future__ import annotations

import math

import pandas as pd

from hiresmed_nb.science.report.stats import (
    HIGHER,
    LOWER,
    NO_INTERVAL,
    NO_SPREAD,
    ONE_SEED,
    Difference,
    format_points,
    paired_difference,
)

# Each of the two intervals behind a "larger" verdict, so that both hold at 95% together.
JOINT_CONFIDENCE = 0.975
BATCH, DISTRIBUTION, NOT_DISTINGUISHABLE, TIE = (
    "the batch part",
    "the distribution part",
    "not distinguishable from each other",
    "a tie",
)
KEYS = ["dataset", "arch", "image_size", "images_per_class", "lr"]
COLUMNS = [*KEYS, "arm", "batch", "distribution", "batch_minus", "total", "larger"]
SURE = (HIGHER, LOWER)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def larger_part(batch_minus: Difference, total: Difference) -> str:
    """Which part is larger in magnitude, from ``b − d`` and ``b + d`` (see the module's rule):
    :data:`BATCH`, :data:`DISTRIBUTION`, :data:`NOT_DISTINGUISHABLE`, :data:`TIE`, or the stats
    verdict saying why there is no interval."""
    if ONE_SEED in (batch_minus.verdict, total.verdict):
        return ONE_SEED
    if abs(batch_minus.mean) < 1e-12:  # equal parts on average, up to float rounding
        return TIE
    for diff in (batch_minus, total):
        if diff.verdict == NO_SPREAD:
            return NO_SPREAD
    if batch_minus.verdict in SURE and total.verdict in SURE:
        return BATCH if batch_minus.verdict == total.verdict else DISTRIBUTION
    return NOT_DISTINGUISHABLE


def decompose(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per cell and distributed arm that also ran serial and serial-accumulated: the batch part
    and the distribution part (paired :class:`Difference` at 95%, over their own seeds),
    ``batch_minus`` (b − d) and ``total`` (b + d, distributed − serial) at 97.5% over the seeds
    of all three arms, and ``larger`` (:func:`larger_part`). ``comparisons`` is
    :func:`.answers.q2_comparisons`' frame."""
    rows = []
    if comparisons.empty:
        return pd.DataFrame(columns=COLUMNS)
    for cell, group in comparisons.groupby(KEYS, sort=True):
        batch = group[(group["first"] == "serial-accumulated") & (group["second"] == "serial")]
        spread = group[
            group["first"].str.startswith("distributed") & (group["second"] == "serial-accumulated")
        ]
        if batch.empty:
            continue
        b = batch.iloc[0]
        for d in spread.itertuples():
            minus = paired_difference(b["per_seed"], d.per_seed, JOINT_CONFIDENCE)
            total = paired_difference(b["per_seed"], -d.per_seed, JOINT_CONFIDENCE)
            if minus is None or total is None:
                continue
            larger = larger_part(minus, total)
            rows.append([*cell, d.first, b["diff"], d.diff, minus, total, larger])
    return pd.DataFrame(rows, columns=COLUMNS)


def _headline(larger: list[str]) -> str:
    """One phrase for all cells, named only as far as every cell with an interval agrees."""
    named = [v for v in larger if v not in NO_INTERVAL]
    if not named:
        why = "one seed per cell" if ONE_SEED in larger else "no spread over seeds"
        return f"not decidable: no interval can be computed ({why})"
    batch, spread = named.count(BATCH), named.count(DISTRIBUTION)
    if batch and spread:
        return "mixed: the batch part in some cells, the distribution part in others"
    if not batch and not spread:
        return f"neither: the two parts are {NOT_DISTINGUISHABLE}"
    part, count = (BATCH, batch) if batch else (DISTRIBUTION, spread)
    if count == len(named):
        return part
    return f"{part} in {count} of {len(named)} cells, in the others {NOT_DISTINGUISHABLE}"


def _mean_points(diffs: list[Difference]) -> str:
    return f"{100 * sum(d.mean for d in diffs) / len(diffs):+.1f} points"


def decomposition_sentence(parts: pd.DataFrame) -> str | None:
    """The decomposition verdict in one sentence, with the numbers; None without a cell that ran
    all three arms."""
    if parts.empty:
        return None
    larger = list(parts["larger"])
    batch, spread = list(parts["batch"]), list(parts["distribution"])
    sure_b = sum(d.verdict in SURE for d in batch)
    sure_d = sum(d.verdict in SURE for d in spread)
    cells = len(parts)
    headline = _headline(larger)
    if sure_b == sure_d == 0 and headline.startswith("neither"):
        headline += ", nor either part from seed noise"
    text = (
        f"Which part of distributed − serial is larger in magnitude: {headline}. "
        f"The batch part (serial-accumulated − serial) has mean {_mean_points(batch)}, beyond "
        f"seed noise in {sure_b} of {_plural(cells, 'cell')}; the distribution part (distributed "
        f"− serial-accumulated) {_mean_points(spread)}, beyond seed noise in {sure_d} of {cells}"
    )
    if cells == 1:
        text += f"; batch − distribution part {format_points(parts['batch_minus'].iloc[0])}"
    counts = {v: larger.count(v) for v in (BATCH, DISTRIBUTION, NOT_DISTINGUISHABLE, TIE)}
    text += (
        f". The batch part is the larger in {counts[BATCH]} of {_plural(cells, 'cell')}, the "
        f"distribution part in {counts[DISTRIBUTION]}, {NOT_DISTINGUISHABLE} in "
        f"{counts[NOT_DISTINGUISHABLE]}, a tie in {counts[TIE]}"
    )
    no_interval = sum(v in NO_INTERVAL for v in larger)
    if no_interval:
        text += f", no interval in {no_interval}"
    return (
        text + " (a part is named only where the 97.5% intervals of batch − distribution part "
        "and of distributed − serial both exclude zero, together 95%)."
    )


def decomposition_table(parts: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The decomposition's evidence: one row per cell and distributed arm; the parts' means, and
    the two 97.5% intervals behind the verdict (the parts' own intervals are in :func:`q2_table`
    of :mod:`.verdicts`, which keeps this table narrow)."""
    if parts.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "dataset": parts["dataset"],
            "arch": parts["arch"],
            "size": parts["image_size"].map(lambda s: f"{s} px"),
            "images/class": parts["images_per_class"],
            "LEARNING_RATE": parts["lr"],
            "arm": parts["arm"],
            f"batch part, {metric} (mean, points)": parts["batch"].map(_mean_points_of),
            "distribution part (mean)": parts["distribution"].map(_mean_points_of),
            "batch − distribution part": parts["batch_minus"].map(format_points),
            "distributed − serial": parts["total"].map(format_points),
            "larger in magnitude": parts["larger"].map(_larger_text),
        }
    )


def _mean_points_of(diff: Difference) -> str:
    """The mean alone: the parts' own 95% intervals are in the Q2 evidence table."""
    return f"{100 * diff.mean:+.1f}"


def _larger_text(larger: str) -> str:
    if larger == ONE_SEED:
        return "one seed: no interval"
    if larger == NO_SPREAD:
        return "same in every seed: no interval"
    return larger


def time_sentence(comparisons: pd.DataFrame, parts: pd.DataFrame) -> str | None:
    """The wall-time ratios of the two steps over the decomposed cells, or None without times."""
    if parts.empty:
        return None
    keys = set(map(tuple, parts[KEYS].itertuples(index=False)))
    in_parts = comparisons[[tuple(r) in keys for r in comparisons[KEYS].itertuples(index=False)]]
    ratios = []
    for first, second in (("serial-accumulated", "serial"), ("distributed", "serial-accumulated")):
        rows = in_parts[in_parts["first"].str.startswith(first) & (in_parts["second"] == second)]
        timed = rows.dropna(subset=["first_seconds", "second_seconds"])
        if timed.empty or math.isclose(timed["second_seconds"].mean(), 0):
            return None
        ratios.append(timed["first_seconds"].mean() / timed["second_seconds"].mean())
    return (
        f"In wall time, accumulation takes ×{ratios[0]:.2f} the serial time and distribution "
        f"×{ratios[1]:.2f} the accumulated time."
    )
