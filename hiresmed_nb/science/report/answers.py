"""The evidence for the paper's three questions (its section 1), as frames of paired comparisons.

- Q1 :func:`q1_pairs`: in one arm and architecture, every cell with fewer images at a higher
  resolution against every cell with more images at a lower one.
- Q2 :func:`q2_comparisons`: distributed against serial at the same batch per rank, against
  serial-accumulated at the same effective batch, and serial-accumulated against serial (the
  batch alone), in accuracy and in training wall time per run; :func:`best_learning_rates` when
  the study sweeps LEARNING_RATE.
- Q3 :func:`q3_best_resolution`: the best resolution per architecture, arm and data size.

Every comparison pairs seeds (same seed: same split and initialisation) and gives the mean
difference with its own 95% t-interval (:class:`.stats.Difference`); the comparisons of one
question form a family, and each row's ``adjusted`` verdict and ``holm_p`` come from testing the
family together (:mod:`.family`). The same
functions answer from the paper's Table 2 through :func:`.load.paper_records`
(one run per cell, so no interval). Lever variants (``+bfloat16``, ``+fp16-allreduce``) are left
out here; the findings compare them with their plain arm.
"""

from __future__ import annotations

import itertools

import pandas as pd

from hiresmed_nb.science.report.family import FAMILY_LEVEL, adjusted_verdicts, holm_p_values
from hiresmed_nb.science.report.load import MODES, base_rates, check_metric, has_lr_axis
from hiresmed_nb.science.report.stats import (
    HIGHER,
    LOWER,
    mean_ci,
    paired_difference,
)
from hiresmed_nb.science.report.tables import format_lr

Q1_COLUMNS = [
    "dataset",
    "arch",
    "arm",
    "lr",
    "fewer",
    "more",
    "diff",
    "verdict",
    "adjusted",
    "holm_p",
]
Q2_COLUMNS = [
    "dataset",
    "arch",
    "image_size",
    "images_per_class",
    "lr",
    "first",
    "second",
    "diff",
    "first_seconds",
    "second_seconds",
    "time_diff",
    "per_seed",
    "adjusted",
    "holm_p",
]
Q3_COLUMNS = [
    "dataset",
    "arch",
    "arm",
    "images_per_class",
    "lr",
    "best",
    "mean",
    "half",
    "n",
    "runner_up",
    "diff",
    "position",
    "tried",
    "vs_smallest",
    "vs_largest",
    "separated",
    "bracketed",
    "holm_p",
    "bracket_holm_p",
]
LR_COLUMNS = [
    "dataset",
    "arch",
    "arm",
    "images_per_class",
    "image_size",
    "best",
    "mean",
    "half",
    "n",
    "runner_up",
    "diff",
    "position",
    "tried",
    "vs_smallest",
    "vs_largest",
    "separated",
    "bracketed",
    "holm_p",
    "bracket_holm_p",
]
Q1_WORDS = {HIGHER: "yes", LOWER: "no"}


def prepare(records: pd.DataFrame) -> pd.DataFrame:
    """The records of the main arms with two columns for the answers.

    ``arm``: the mode, or ``distributed (k ranks)`` when one cell was run with several rank
    counts. ``lr``: the LEARNING_RATE as text (``1e-3``) when the study sweeps it, else ``""``
    (per-cell rates that differ between cells, as in the paper, are not kept apart).
    """
    data = records[records["mode"].isin(MODES)].copy()
    data["lr"] = base_rates(data).map(format_lr) if has_lr_axis(data) else ""
    keys = ["dataset", "arch", "image_size", "images_per_class", "mode", "lr"]
    several = data.groupby(keys)["n_ranks"].transform("nunique") > 1
    data["arm"] = data["mode"].where(
        ~several, data["mode"] + " (" + data["n_ranks"].astype(str) + " ranks)"
    )
    return data


def _per_seed(group: pd.DataFrame, column: str) -> pd.Series:
    return group.set_index("seed")[column]


def seed_differences(a: pd.Series, b: pd.Series) -> pd.Series:
    """``a - b`` per seed over the seeds both series hold (several values per seed averaged
    first, NaNs dropped): the values whose mean :func:`paired_difference` puts an interval on."""
    a = a.dropna().groupby(level=0).mean()
    b = b.dropna().groupby(level=0).mean()
    common = a.index.intersection(b.index)
    return a[common] - b[common]


def _wall_seconds(data: pd.DataFrame) -> pd.Series:
    """train_seconds of runs that trained every epoch in one go (NaN for resumed or retried
    runs, whose time covers only the resumed part)."""
    whole = (data["resumed_from_epoch"].fillna(0) == 0) & data["retry_error"].isna()
    return data["train_seconds"].astype(float).where(whole)


def q1_pairs(records: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Q1: fewer images at a higher resolution against more images at a lower one.

    One row per pair of cells in the same dataset, arch, arm (and swept learning rate) with
    size_a > size_b and images_a < images_b that share at least one seed. ``fewer``/``more`` are
    (image size, images per class); ``diff`` is the paired :class:`Difference` fewer - more,
    with its own (unadjusted) interval. All rows are one family: ``adjusted`` is the stats
    verdict of Holm's procedure over them, ``holm_p`` the adjusted p-value (NaN without an
    interval), and ``verdict`` the adjusted one in words: 'yes' (fewer higher), 'no' (lower), or
    the stats verdict for noise or no interval.
    """
    check_metric(metric)
    data = prepare(records)
    rows = []
    for (dataset, arch, arm, lr), group in data.groupby(["dataset", "arch", "arm", "lr"]):
        cells = {
            key: _per_seed(cell, metric)
            for key, cell in group.groupby(["image_size", "images_per_class"])
        }
        for (high, fewer), (low, more) in itertools.permutations(cells, 2):
            if high > low and fewer < more:
                diff = paired_difference(cells[(high, fewer)], cells[(low, more)])
                if diff is not None:
                    rows.append([dataset, arch, arm, lr, (high, fewer), (low, more), diff])
    pairs = pd.DataFrame(rows, columns=Q1_COLUMNS[:7])
    _adjust(pairs)
    pairs["verdict"] = pairs["adjusted"].map(lambda v: Q1_WORDS.get(v, v))
    return pairs[Q1_COLUMNS]


def _adjust(family: pd.DataFrame) -> None:
    """Add ``adjusted`` (the verdict of Holm's procedure over all rows' ``diff``) and
    ``holm_p`` to a frame whose rows are one family."""
    diffs = list(family["diff"])
    family["adjusted"] = pd.Series(adjusted_verdicts(diffs), index=family.index, dtype=object)
    family["holm_p"] = pd.Series(
        holm_p_values([d.p for d in diffs]), index=family.index, dtype=float
    )


def q2_comparisons(records: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Q2: per cell (dataset, arch, size, images per class, swept lr), ``first - second`` for
    distributed - serial (same batch per rank), distributed - serial-accumulated (same effective
    batch) and serial-accumulated - serial (the effective batch alone).

    ``diff`` is the paired :class:`Difference` in the metric, ``time_diff`` in training seconds
    per run (None when no seed has whole-run times on both sides); ``*_seconds`` are the mean
    training seconds per run of each side (NaN when unknown); ``per_seed`` holds the metric's
    ``first - second`` per seed (index: seed), from which the batch and distribution parts are
    compared seed by seed. All rows are one family (the metric's comparisons; the times are
    reported, not tested): ``adjusted`` and ``holm_p`` as in :func:`q1_pairs`.
    """
    check_metric(metric)
    data = prepare(records)
    data["seconds"] = _wall_seconds(data)
    keys = ["dataset", "arch", "image_size", "images_per_class", "lr"]
    rows = []
    for cell, group in data.groupby(keys):
        arms = dict(tuple(group.groupby("arm")))
        pairs = [
            (d, base)
            for d in sorted(a for a in arms if a.startswith("distributed"))
            for base in ("serial", "serial-accumulated")
        ]
        pairs.append(("serial-accumulated", "serial"))
        for first, second in pairs:
            if first not in arms or second not in arms:
                continue
            a, b = arms[first], arms[second]
            diff = paired_difference(_per_seed(a, metric), _per_seed(b, metric))
            if diff is None:
                continue
            time_diff = paired_difference(_per_seed(a, "seconds"), _per_seed(b, "seconds"))
            per_seed = seed_differences(_per_seed(a, metric), _per_seed(b, metric))
            seconds = [a["seconds"].mean(), b["seconds"].mean()]
            rows.append([*cell, first, second, diff, *seconds, time_diff, per_seed])
    comparisons = pd.DataFrame(rows, columns=Q2_COLUMNS[:-2])
    _adjust(comparisons)
    return comparisons


def _best_of(by_value: dict, values: list) -> tuple:
    """The value with the highest seed mean among ``values`` (keys of ``by_value``: per-seed
    series), its mean, half-width and seeds, the runner-up, best - runner-up, where the best
    lies by the means ('interior', 'largest', 'smallest', 'only one' or 'tie'), how many values
    were tried, and best - smallest and best - largest value (None where the best is that value):
    an interior best is bracketed only when both of these are above zero beyond seed noise."""
    means = {v: float(by_value[v].mean()) for v in values}
    best = max(values, key=lambda v: means[v])
    mean, half = mean_ci(by_value[best])
    n = len(by_value[best])
    if len(values) == 1:
        return best, mean, half, n, None, None, "only one", 1, None, None
    runner_up = max((v for v in values if v != best), key=lambda v: means[v])
    diff = paired_difference(by_value[best], by_value[runner_up])
    if means[runner_up] >= means[best] - 1e-12:
        position = "tie"
    elif best == max(values):
        position = "largest"
    elif best == min(values):
        position = "smallest"
    else:
        position = "interior"
    edges = [
        None if edge == best else paired_difference(by_value[best], by_value[edge])
        for edge in (min(values), max(values))
    ]
    return best, mean, half, n, runner_up, diff, position, len(values), *edges


def _adjust_optimum(best: pd.DataFrame) -> pd.DataFrame:
    """Add the claims of a frame of optima, adjusted together as one family by Holm's procedure
    (:mod:`.family`): ``separated`` (the highest mean beats the runner-up: the p-value of
    best − runner-up) and ``bracketed`` (an interior highest beats both the smallest and the
    largest value tried: an intersection-union test, whose p-value is the larger of the two),
    with their adjusted p-values ``holm_p`` and ``bracket_holm_p`` (NaN where there is no test).
    """
    nan = float("nan")
    separate = [nan if d is None else d.p for d in best["diff"]]
    bracket = [
        max(r.vs_smallest.p, r.vs_largest.p)
        if r.position == "interior" and not any(pd.isna([r.vs_smallest.p, r.vs_largest.p]))
        else nan
        for r in best.itertuples()
    ]
    adjusted = holm_p_values(separate + bracket)
    best["holm_p"] = pd.Series(adjusted[: len(best)], index=best.index, dtype=float)
    best["bracket_holm_p"] = pd.Series(adjusted[len(best) :], index=best.index, dtype=float)
    best["separated"] = best["holm_p"] <= FAMILY_LEVEL
    best["bracketed"] = best["bracket_holm_p"] <= FAMILY_LEVEL
    return best


def q3_best_resolution(records: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Q3: per dataset, arch, arm, images per class (and swept lr), the resolution with the
    highest mean metric over seeds; its mean, 95% half-width (None for one seed) and seeds; the
    next best size and the paired :class:`Difference` best - next; ``position`` says whether the
    highest mean is at an interior size, the largest or smallest size tried, the only size, or
    tied; ``tried`` counts the sizes; ``vs_smallest``/``vs_largest`` are best - smallest and
    best - largest size (None where the best is that size); ``separated``, ``bracketed`` and
    their Holm-adjusted p-values over all settings' claims (:func:`_adjust_optimum`)."""
    check_metric(metric)
    data = prepare(records)
    rows = []
    keys = ["dataset", "arch", "arm", "images_per_class", "lr"]
    for setting, group in data.groupby(keys):
        by_size = {size: _per_seed(cell, metric) for size, cell in group.groupby("image_size")}
        rows.append([*setting, *_best_of(by_size, sorted(by_size))])
    return _adjust_optimum(pd.DataFrame(rows, columns=Q3_COLUMNS[:-4]))


def best_learning_rates(records: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Q2, when the study sweeps LEARNING_RATE: per dataset, arch, arm, images per class and
    image size, the rate (the LEARNING_RATE parameter, before LR_SCALING) with the highest mean
    metric; its mean, half-width and seeds, the runner-up rate, best - runner-up, and whether the
    best is interior or the largest/smallest rate tried, and the claims adjusted over all rows
    as in :func:`q3_best_resolution`. Empty without a learning-rate axis."""
    check_metric(metric)
    if not has_lr_axis(records):
        return pd.DataFrame(columns=LR_COLUMNS)
    data = records[records["mode"].isin(MODES)].assign(rate=base_rates(records)).copy()
    data["arm"] = prepare(records)["arm"]
    rows = []
    keys = ["dataset", "arch", "arm", "images_per_class", "image_size"]
    for setting, group in data.groupby(keys):
        by_rate = {rate: _per_seed(cell, metric) for rate, cell in group.groupby("rate")}
        rows.append([*setting, *_best_of(by_rate, sorted(by_rate))])
    return _adjust_optimum(pd.DataFrame(rows, columns=LR_COLUMNS[:-4]))
