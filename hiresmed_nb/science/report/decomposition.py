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
that the two hold together at 95% at least (Bonferroni). Over several cells, the cells form one
family (:mod:`.family`): a cell's claim has the p-value ``2 · max(p(b − d), p(b + d))`` (both
97.5% intervals exclude zero exactly when it is below 0.05), and a part is named only in the cells
that Holm's step-down procedure keeps over all decomposed cells, so that seed noise names a part
in at most 5% of studies however many cells there are. In one cell this is the rule above.

Otherwise the parts are not distinguishable from each other, unless they are shown equal: a tie
is the verdict only where the whole 97.5% interval of ``b − d`` lies within ±:data:`TIE_TOLERANCE`
(one point of the metric), which bounds ``| |b| − |d| |`` too. A mean ``b − d`` of zero with a
wide interval is no tie. One seed (or the same ``b − d`` in every seed) gives no interval and no
verdict.
"""

from __future__ import annotations

import math

import pandas as pd

from hiresmed_nb.science.report.family import FAMILY_LEVEL, format_p, holm_p_values
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
# The parts tie when the whole interval of b − d lies within this distance of zero (in the
# metric's units: one percentage point of accuracy).
TIE_TOLERANCE = 0.01
BATCH, DISTRIBUTION, NOT_DISTINGUISHABLE, TIE = (
    "the batch part",
    "the distribution part",
    "not distinguishable from each other",
    "a tie",
)
KEYS = ["dataset", "arch", "image_size", "images_per_class", "lr"]
COLUMNS = [
    *KEYS,
    "arm",
    "batch",
    "distribution",
    "batch_minus",
    "total",
    "batch_adjusted",
    "distribution_adjusted",
    "larger",
    "holm_p",
]
SURE = (HIGHER, LOWER)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def claim_p(batch_minus: Difference, total: Difference) -> float:
    """The p-value of naming a part in one cell: ``2 · max`` of the two tests' p-values, below
    0.05 exactly when both 97.5% intervals exclude zero; NaN without intervals."""
    ps = (batch_minus.p, total.p)
    return math.nan if any(math.isnan(p) for p in ps) else min(1.0, 2 * max(ps))


def larger_part(batch_minus: Difference, total: Difference, named: bool | None = None) -> str:
    """Which part is larger in magnitude, from ``b − d`` and ``b + d`` (see the module's rule):
    :data:`BATCH`, :data:`DISTRIBUTION`, :data:`NOT_DISTINGUISHABLE`, :data:`TIE`, or the stats
    verdict saying why there is no interval. ``named`` says whether the family's procedure keeps
    this cell's claim (default: the cell alone, both intervals excluding zero)."""
    if ONE_SEED in (batch_minus.verdict, total.verdict):
        return ONE_SEED
    for diff in (batch_minus, total):
        if diff.verdict == NO_SPREAD:
            return NO_SPREAD
    sure = batch_minus.verdict in SURE and total.verdict in SURE
    if sure and (named is None or named):
        return BATCH if batch_minus.verdict == total.verdict else DISTRIBUTION
    if -TIE_TOLERANCE <= batch_minus.low and batch_minus.high <= TIE_TOLERANCE:
        return TIE
    return NOT_DISTINGUISHABLE


def decompose(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per cell and distributed arm that also ran serial and serial-accumulated: the batch part
    and the distribution part (paired :class:`Difference` at 95%, over their own seeds),
    ``batch_minus`` (b − d) and ``total`` (b + d, distributed − serial) at 97.5% over the seeds
    of all three arms, the two parts' verdicts within Q2's family (``batch_adjusted``,
    ``distribution_adjusted``), ``larger`` (:func:`larger_part`, with the cells adjusted together
    by Holm's procedure) and ``holm_p``, the cell's adjusted p-value for naming a part.
    ``comparisons`` is :func:`.answers.q2_comparisons`' frame."""
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
            rows.append(
                {
                    **dict(zip(KEYS, cell, strict=True)),
                    "arm": d.first,
                    "batch": b["diff"],
                    "distribution": d.diff,
                    "batch_minus": minus,
                    "total": total,
                    "batch_adjusted": b["adjusted"],
                    "distribution_adjusted": d.adjusted,
                }
            )
    adjusted = holm_p_values([claim_p(row["batch_minus"], row["total"]) for row in rows])
    for row, p in zip(rows, adjusted, strict=True):
        named = p <= FAMILY_LEVEL
        row.update(larger=larger_part(row["batch_minus"], row["total"], named), holm_p=p)
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
    # whether each part is beyond seed noise: its verdict within Q2's family of comparisons
    sure_b = sum(v in SURE for v in parts["batch_adjusted"])
    sure_d = sum(v in SURE for v in parts["distribution_adjusted"])
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
    family = (
        ""
        if sum(not math.isnan(p) for p in parts["holm_p"]) < 2
        else ", and the cells are adjusted together by Holm's procedure"
    )
    return (
        text + " (a part is named only where the 97.5% intervals of batch − distribution part "
        f"and of distributed − serial both exclude zero, together 95%{family}; a tie only where "
        f"the interval of batch − distribution part lies within ±{100 * TIE_TOLERANCE:g} point)."
    )


def decomposition_table(parts: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The decomposition's evidence: one row per cell and distributed arm; the parts' means,
    the two 97.5% intervals behind the verdict (each cell's own, unadjusted), the cell's
    Holm-adjusted p-value for naming a part, and the verdict (the parts' own intervals are in
    :func:`q2_table` of :mod:`.verdicts`, which keeps this table narrow)."""
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
            "batch − distribution part (own 97.5% CI, unadjusted)": parts["batch_minus"].map(
                format_points
            ),
            "distributed − serial (own 97.5% CI, unadjusted)": parts["total"].map(format_points),
            "Holm p": parts["holm_p"].map(format_p),
            "larger in magnitude (Holm over the cells)": parts["larger"].map(_larger_text),
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
