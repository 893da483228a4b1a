"""Statistics over seeds: means with Student-t intervals, per-cell summaries, paired differences.

Seeds are paired: two cells run with the same seed share the split and the initialisation, so a
comparison takes the per-seed differences and puts a t-interval on their mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.science.report.load import CELL, check_metric

HIGHER, LOWER, NOISE, ONE_SEED, NO_SPREAD = (
    "higher",
    "lower",
    "not distinguishable from seed noise",
    "one seed: no interval",
    # every seed differs by the same amount (accuracies are multiples of 1/n_test, so this
    # happens by chance with few seeds): a zero-width interval would claim certainty
    "same difference in every seed: no interval",
)
NO_INTERVAL = (ONE_SEED, NO_SPREAD)


def mean_ci(
    values: list[float] | pd.Series, confidence: float = 0.95
) -> tuple[float, float | None]:
    """Return the mean and the half-width of its Student-t confidence interval.

    The half-width is None for a single value (no interval from one seed). Raises
    :class:`HiresmedError` for no values.
    """
    from scipy import stats

    values = [float(v) for v in values]
    if not values:
        raise HiresmedError("mean_ci needs at least one value")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean, half


def summarise(records: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """One row per cell (dataset, arch, size, images per class, mode, ranks, lr, batch).

    Columns: the cell keys, ``n`` (seeds), ``mean``, ``sd`` (NaN for one seed), ``ci`` (95%
    half-width, NaN for one seed), all in the record's units (fractions).
    """
    check_metric(metric)
    keys = [*CELL, "n_ranks", "learning_rate", "effective_batch_size"]
    rows = []
    for cell, group in records.groupby(keys, sort=True, dropna=False):
        mean, half = mean_ci(group[metric])
        sd = float(group[metric].std(ddof=1)) if len(group) > 1 else math.nan
        rows.append(
            {
                **dict(zip(keys, cell, strict=True)),
                "n": len(group),
                "mean": mean,
                "sd": sd,
                "ci": math.nan if half is None else half,
            }
        )
    return pd.DataFrame(rows, columns=[*keys, "n", "mean", "sd", "ci"])


def format_value(mean: float, ci: float, n: int) -> str:
    """'63.2 ± 4.1 (n=3)' in percent, or '63.2 (n=1)' without an interval."""
    if n < 2 or math.isnan(ci):
        return f"{100 * mean:.1f} (n={n})"
    return f"{100 * mean:.1f} ± {100 * ci:.1f} (n={n})"


@dataclass(frozen=True)
class Difference:
    """Mean of the per-seed differences ``a - b`` over the ``n`` seeds both sides ran.

    ``half`` is the t half-width at ``confidence`` (95% unless told; None for one seed).
    ``verdict`` is :data:`HIGHER` when the whole interval is above zero, :data:`LOWER` when below,
    :data:`NOISE` when it holds zero; :data:`ONE_SEED` (one seed) and :data:`NO_SPREAD` (every
    seed gave the same difference, a zero-width interval) give no verdict. Units are those of the
    inputs.
    """

    mean: float
    half: float | None
    n: int
    verdict: str
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return math.nan if self.half is None else self.mean - self.half

    @property
    def high(self) -> float:
        return math.nan if self.half is None else self.mean + self.half

    @property
    def p(self) -> float:
        """The two-sided p-value of the paired t-test of ``mean == 0`` that the interval
        inverts (the interval holds zero exactly when ``p >= 1 - confidence``); NaN without an
        interval (one seed, or the same difference in every seed)."""
        from scipy import stats

        if self.half is None or self.verdict == NO_SPREAD:
            return math.nan
        critical = float(stats.t.ppf(0.5 + self.confidence / 2, self.n - 1))
        t = self.mean / (self.half / critical)
        return float(2 * stats.t.sf(abs(t), self.n - 1))


def paired_difference(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> Difference | None:
    """The paired difference ``a - b`` of two per-seed series (index: seed; NaNs dropped), with
    its t-interval at ``confidence``.

    None when the two share no seed. Several values for one seed are averaged first.
    """
    a = a.dropna().groupby(level=0).mean()
    b = b.dropna().groupby(level=0).mean()
    common = a.index.intersection(b.index)
    if common.empty:
        return None
    mean, half = mean_ci(a[common] - b[common], confidence)
    if half is None:
        verdict = ONE_SEED
    elif half < 1e-9:  # zero up to float rounding of k/n_test differences
        verdict = NO_SPREAD
    elif mean - half > 0:
        verdict = HIGHER
    elif mean + half < 0:
        verdict = LOWER
    else:
        verdict = NOISE
    return Difference(mean, half, len(common), verdict, confidence)


def format_points(
    diff: Difference, scale: float = 100.0, unit: str = "", single: str = "one seed"
) -> str:
    """'+4.2 (95% CI +1.0 to +7.4, n=3)', or '+4.2 (one seed: no interval)' (``single`` names
    what there is one of, e.g. 'one run' for the paper); ``scale`` 100 turns fractions into
    percentage points; ``unit`` follows the mean ('+4.2 points (95% CI ...)')."""
    text = f"{scale * diff.mean:+.1f}{unit}"
    if diff.half is None:
        return f"{text} ({single}: no interval)"
    if diff.verdict == NO_SPREAD:
        return f"{text} (the same in all {diff.n} seeds: no interval)"
    low, high = scale * diff.low, scale * diff.high
    return f"{text} ({100 * diff.confidence:g}% CI {low:+.1f} to {high:+.1f}, n={diff.n})"
