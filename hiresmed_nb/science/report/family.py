"""Families of comparisons: a verdict that names a side holds at 95% for the whole family of
comparisons its headline summarises, not only for its own interval.

With k comparisons of pure seed noise, each 95% interval excludes zero by chance 5% of the time,
so at least one of them does with probability 1 − 0.95^k: 40% at k = 10, 64% at k = 20. A
headline that names a side as soon as one interval excludes zero would therefore often name one
from noise. The comparisons of one family are instead tested together by Holm's step-down
procedure at a family-wise level of 5%: of the m comparisons with an interval, sorted by their
paired t-test p-values p(1) ≤ … ≤ p(m), the i-th names a side (the sign of its mean) only when
p(j) ≤ 0.05 / (m − j + 1) for every j ≤ i. Whatever the dependence between the comparisons (a
grid's comparisons share cells and seeds), the chance that a family of pure noise names any side
is then at most 5% (Holm, 1979). Holm rather than Bonferroni because it names every side
Bonferroni names and more, with the same guarantee; rather than simultaneous intervals because
it needs no model of that dependence. Comparisons without an interval (one seed, the same
difference in every seed) are not tested and do not count in m.

The families: Q1's pairs; Q2's arm comparisons in the metric (distributed − serial, distributed
− serial-accumulated and serial-accumulated − serial, over all cells); Q2's decomposed cells;
Q2's highest-mean learning rates (separated from the runner-up, bracketed); Q3's highest-mean
resolutions (likewise); the lever comparisons of one study. Each row keeps its own 95% interval,
shown and labelled as unadjusted (what that cell alone shows), beside its verdict, which is the
adjusted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hiresmed_nb.science.report.stats import HIGHER, LOWER, NO_INTERVAL, NOISE, Difference

FAMILY_LEVEL = 0.05  # family-wise error: the chance that a family of noise names any side
ADJUSTMENT_SENTENCE = (
    "Verdicts and headlines are adjusted for the number of comparisons they summarise: the "
    "comparisons of one question (Q1's pairs; Q2's arm comparisons, its decomposed cells, its "
    "learning rates; Q3's resolutions) and the lever comparisons are each tested together by "
    "Holm's step-down procedure, so that pure seed noise names a side in at most 5% of studies, "
    "while the intervals shown in the rows are each comparison's own interval, unadjusted."
)
UNADJUSTED = "own 95% CI, unadjusted"


def holm_p_values(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given: a comparison names a side at family-wise
    level ``a`` exactly when its adjusted value is at most ``a``. NaN (no test) stays NaN and
    does not count in the family's size."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(tested)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))  # step-down: never below an earlier one
        adjusted[i] = running
    return adjusted


def family_size(diffs: Sequence[Difference]) -> int:
    """How many comparisons of a family have an interval, and so are tested."""
    return sum(d.verdict not in NO_INTERVAL for d in diffs)


def adjusted_verdicts(diffs: Sequence[Difference], level: float = FAMILY_LEVEL) -> list[str]:
    """Each comparison's verdict within its family: :data:`HIGHER` or :data:`LOWER` where Holm's
    procedure names a side (the sign of the mean), :data:`NOISE` where it does not, and the
    no-interval verdicts unchanged."""
    adjusted = holm_p_values([d.p for d in diffs])
    verdicts = []
    for diff, p in zip(diffs, adjusted, strict=True):
        if diff.verdict in NO_INTERVAL:
            verdicts.append(diff.verdict)
        elif p <= level:
            verdicts.append(HIGHER if diff.mean > 0 else LOWER)
        else:
            verdicts.append(NOISE)
    return verdicts


def format_p(p: float) -> str:
    """A p-value for a table: '0.012', '<0.001', or '—' without a test."""
    if math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
