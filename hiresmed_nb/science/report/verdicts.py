"""The verdicts of the Answers section: one short answer per question of the paper from the
evidence frames of :mod:`.answers`, and the evidence as display tables.

A headline names a side only from verdicts adjusted over the family of comparisons it summarises
(Holm's step-down, :mod:`.family`); the tables show each row's own interval, labelled as
unadjusted, beside its adjusted verdict.
"""

from __future__ import annotations

import math

import pandas as pd

from hiresmed_nb.science.report.decomposition import (
    decompose,
    decomposition_sentence,
    time_sentence,
)
from hiresmed_nb.science.report.family import (
    UNADJUSTED,
    adjusted_verdicts,
    family_size,
    format_p,
)
from hiresmed_nb.science.report.stats import (
    HIGHER,
    LOWER,
    NO_SPREAD,
    NOISE,
    ONE_SEED,
    Difference,
    format_points,
)

QUESTIONS = {
    "Q1": (
        "Fewer high-resolution images instead of many low-resolution ones?",
        "Can fewer high-resolution images be used to train, rather than a large number of "
        "low-resolution images, and yet achieve comparable / better accuracy?",
    ),
    "Q2": (
        "What does distributed training bring?",
        "What are the advantages of training high-resolution images in a distributed GPU setup?",
    ),
    "Q3": (
        "Is there an optimal resolution?",
        "Can we select an optimal image resolution for training a deep network which provides "
        "us with a better network performance for a medical diagnosis task?",
    ),
}


# --- counting verdicts -----------------------------------------------------------------------


def tally(verdicts: list[str]) -> dict[str, int]:
    """How many verdicts are higher, lower, within seed noise, or without an interval."""
    counts = {HIGHER: 0, LOWER: 0, NOISE: 0, ONE_SEED: 0, NO_SPREAD: 0}
    for verdict in verdicts:
        counts[verdict] += 1
    return counts


def overall(
    diffs: list[Difference],
    yes: str,
    no: str,
    single: str = "one seed",
    adjusted: list[str] | None = None,
) -> str:
    """One phrase for a family of comparisons, from their verdicts adjusted together by Holm's
    procedure (:mod:`.family`; ``adjusted`` gives them when ``diffs`` are part of a larger
    family): ``yes``/``no`` when every adjusted verdict agrees, 'not distinguishable from seed
    noise' when none names a side, '<yes> or not distinguishable' (likewise for ``no``) when the
    others name none, 'mixed' when some say yes and some no; 'no interval can be computed (one
    seed per cell)' when no comparison has two seeds. Pure noise names a side at most 5% of the
    time, however many comparisons there are."""
    if not diffs:
        return "not answerable"
    counts = tally(adjusted_verdicts(diffs) if adjusted is None else adjusted)
    with_interval = len(diffs) - counts[ONE_SEED] - counts[NO_SPREAD]
    if with_interval == 0:
        why = f"{single} per cell" if counts[ONE_SEED] else "no spread over seeds"
        return f"no interval can be computed ({why})"
    for key, word in ((HIGHER, yes), (LOWER, no), (NOISE, NOISE)):
        if counts[key] == with_interval:
            return word
    if counts[HIGHER] and counts[LOWER]:
        return "mixed"
    return f"{yes if counts[HIGHER] else no} or not distinguishable from seed noise"


def count_text(
    diffs: list[Difference],
    higher: str = "higher",
    lower: str = "lower",
    adjusted: list[str] | None = None,
) -> str:
    """'higher in 2 of 3, lower in 0, not distinguishable from seed noise in 1' by the verdicts
    adjusted over the family (as in :func:`overall`); by the sign of the mean alone, and saying
    so, when no comparison has an interval ('by direction only, no significance: higher in 4 of
    5, lower in 1')."""
    counts = tally(adjusted_verdicts(diffs) if adjusted is None else adjusted)
    total = len(diffs)
    if counts[ONE_SEED] + counts[NO_SPREAD] == total:
        up, down = sum(d.mean > 0 for d in diffs), sum(d.mean < 0 for d in diffs)
        text = f"by direction only, no significance: {higher} in {up} of {total}, {lower} in {down}"
        return text + (f", equal in {total - up - down}" if up + down < total else "")
    text = (
        f"{higher} in {counts[HIGHER]} of {total}, {lower} in {counts[LOWER]}, "
        f"not distinguishable from seed noise in {counts[NOISE]}"
    )
    if counts[ONE_SEED]:
        text += f", one seed (no interval) in {counts[ONE_SEED]}"
    if counts[NO_SPREAD]:
        text += f", the same difference in every seed (no interval) in {counts[NO_SPREAD]}"
    return text


def family_text(m: int, what: str) -> str:
    """' (verdicts adjusted together over the 12 comparisons of Q1 with an interval, Holm)', or
    nothing for a family of one, where Holm's procedure changes nothing."""
    if m < 2:
        return ""
    return (
        f" (verdicts adjusted together over the {m} comparisons of {what} with an interval, Holm)"
    )


def verdict_header(m: int) -> str:
    """The header of an adjusted verdict column."""
    return "verdict" if m < 2 else f"verdict (Holm, family of {m})"


def capitalised(text: str) -> str:
    """``text`` with its first letter in upper case."""
    return text[:1].upper() + text[1:]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _mean_text(mean: float, half: float | None, n: int) -> str:
    if half is None or math.isnan(half):
        return f"{100 * mean:.1f} (n={n})"
    return f"{100 * mean:.1f} ± {100 * half:.1f} (n={n})"


def _optional_points(diff: Difference | None) -> str:
    return "—" if diff is None else format_points(diff)


# --- Q1 --------------------------------------------------------------------------------------


def _cell_text(size_images: tuple[int, int]) -> str:
    size, images = size_images
    return f"{images}/class at {size} px"


def q1_sentence(pairs: pd.DataFrame, single: str = "one seed") -> str:
    """The Q1 verdict: yes / no / not distinguishable from seed noise / mixed, with counts and
    the largest difference (``single`` names one sample: 'one seed', or 'one run' for the
    paper)."""
    if pairs.empty:
        return (
            "Not answerable: no arm was run at two data sizes and two resolutions with fewer "
            "images at the higher one."
        )
    diffs = list(pairs["diff"])
    top = pairs.loc[pairs["diff"].map(lambda d: d.mean).idxmax()]
    own = "" if family_size(diffs) < 2 else " (its own interval, unadjusted)"
    return (
        f"{capitalised(q1_headline(pairs, single))}. Fewer images at a higher resolution "
        f"against more images at a lower one, {_plural(len(diffs), 'comparison')}: "
        f"{count_text(diffs, adjusted=list(pairs['adjusted']))}"
        f"{family_text(family_size(diffs), 'Q1')}. Highest mean difference{own}: "
        f"{format_points(top['diff'], unit=' points', single=single)}, "
        f"{_cell_text(top['fewer'])} against {_cell_text(top['more'])} ({top['arch']}, "
        f"{top['arm']})."
    )


def q1_headline(pairs: pd.DataFrame, single: str = "one seed") -> str:
    """Q1 in a few words: yes / no / not distinguishable from seed noise / mixed / no interval."""
    if pairs.empty:
        return "not answerable"
    return overall(list(pairs["diff"]), "yes", "no", single, adjusted=list(pairs["adjusted"]))


def q1_table(pairs: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The Q1 evidence: one row per pair, the paired difference with its own (unadjusted)
    interval, and the verdict and p-value adjusted over all pairs (Holm)."""
    if pairs.empty:
        return pd.DataFrame()
    m = family_size(list(pairs["diff"]))
    return pd.DataFrame(
        {
            "dataset": pairs["dataset"],
            "arch": pairs["arch"],
            "arm": pairs["arm"],
            "LEARNING_RATE": pairs["lr"],
            "fewer, higher res.": pairs["fewer"].map(_cell_text),
            "more, lower res.": pairs["more"].map(_cell_text),
            f"{metric} difference, points ({UNADJUSTED})": pairs["diff"].map(format_points),
            "Holm p": pairs["holm_p"].map(format_p),
            verdict_header(m): pairs["verdict"],
        }
    )


# --- Q2 --------------------------------------------------------------------------------------


def _rows(comparisons: pd.DataFrame, first_prefix: str, second: str) -> pd.DataFrame:
    chosen = comparisons["first"].str.startswith(first_prefix) & (comparisons["second"] == second)
    return comparisons[chosen]


def _seconds(rows: pd.DataFrame) -> tuple[float, float] | None:
    """Mean training seconds per run of each side over the rows that have both, or None."""
    timed = rows.dropna(subset=["first_seconds", "second_seconds"])
    if timed.empty:
        return None
    return float(timed["first_seconds"].mean()), float(timed["second_seconds"].mean())


def q2_sentences(comparisons: pd.DataFrame, single: str = "one seed") -> list[str]:
    """The Q2 verdict: distributed vs serial (this study: same batch per rank) and vs
    serial-accumulated (same effective batch) in the metric and in wall time, and which part,
    batch or distribution, is larger in magnitude, named only where paired intervals separate
    them (:mod:`.decomposition`)."""
    if comparisons.empty:
        return ["Not answerable: no cell was run both distributed and serially."]
    family = family_size(list(comparisons["diff"]))
    sentences = []
    for second in ("serial", "serial-accumulated"):
        rows = _rows(comparisons, "distributed", second)
        if rows.empty:
            if second == "serial-accumulated":
                sentences.append(
                    "No serial-accumulated arm, so the effective batch cannot be told apart "
                    "from the distribution."
                )
            continue
        diffs, adjusted = list(rows["diff"]), list(rows["adjusted"])
        mean = 100 * sum(d.mean for d in diffs) / len(diffs)
        text = (
            f"Distributed − {second}, {_plural(len(diffs), 'cell')}: "
            f"{overall(diffs, 'distributed higher', f'{second} higher', single, adjusted)}; "
            f"{count_text(diffs, adjusted=adjusted)}{family_text(family, 'Q2')}; "
            f"mean {mean:+.1f} points"
        )
        seconds = _seconds(rows)
        if seconds:
            first, other = seconds
            text += (
                f"; training wall time {first:.0f} s against {other:.0f} s per run "
                f"(×{first / other:.2f})"
            )
        sentences.append(text + ".")
    parts = decompose(comparisons)
    sentences += [
        text for text in (decomposition_sentence(parts), time_sentence(comparisons, parts)) if text
    ]
    return sentences


def q2_headline(comparisons: pd.DataFrame, single: str = "one seed") -> str:
    """Q2 in a few words: distributed − serial at the same batch per rank, by the verdicts
    adjusted over all of Q2's comparisons."""
    rows = _rows(comparisons, "distributed", "serial") if not comparisons.empty else comparisons
    if rows.empty:
        return "not answerable"
    diffs, adjusted = list(rows["diff"]), list(rows["adjusted"])
    return overall(diffs, "distributed higher", "serial higher", single, adjusted)


def q2_table(comparisons: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The Q2 evidence: one row per cell and comparison, the metric's difference with its own
    (unadjusted) interval, the verdict and p-value adjusted over all rows (Holm), and wall
    time."""
    if comparisons.empty:
        return pd.DataFrame()
    m = family_size(list(comparisons["diff"]))

    def seconds(row: pd.Series) -> str:
        if math.isnan(row["first_seconds"]) or math.isnan(row["second_seconds"]):
            return "—"
        ratio = row["first_seconds"] / row["second_seconds"]
        return f"{row['first_seconds']:.0f} vs {row['second_seconds']:.0f} (×{ratio:.2f})"

    def verdict(row: pd.Series) -> str:
        if row["adjusted"] == HIGHER:
            return f"{row['first']} higher"
        if row["adjusted"] == LOWER:
            return f"{row['second']} higher"
        return row["adjusted"]

    return pd.DataFrame(
        {
            "dataset": comparisons["dataset"],
            "arch": comparisons["arch"],
            "size": comparisons["image_size"].map(lambda s: f"{s} px"),
            "images/class": comparisons["images_per_class"],
            "LEARNING_RATE": comparisons["lr"],
            "comparison": comparisons["first"] + " − " + comparisons["second"],
            f"{metric}, points ({UNADJUSTED})": comparisons["diff"].map(format_points),
            "Holm p": comparisons["holm_p"].map(format_p),
            verdict_header(m): comparisons.apply(verdict, axis=1),
            "train s per run": comparisons.apply(seconds, axis=1),
        }
    )
