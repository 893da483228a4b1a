"""The paper's own answers: what its text says, what its Table 2 says when read by the report's
rules, where the two disagree, and this study's answer beside them.

The table is read whole (all its cells, whatever this study ran) by the code that answers for
this study (:func:`.load.paper_records`). It holds one run per cell, so no
comparison has an interval: its answers count directions only and claim no significance.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from hiresmed_nb.science.report.answers import q1_pairs, q2_comparisons, q3_best_resolution
from hiresmed_nb.science.report.load import (
    is_synthetic,
    load_paper_table,
    paper_cells_covered,
    paper_records,
)
from hiresmed_nb.science.report.optimum import q3_headline, q3_sentence
from hiresmed_nb.science.report.verdicts import (
    q1_headline,
    q1_sentence,
    q2_headline,
    q2_sentences,
)

# The paper's text, kept with the package (Markdown, as transcribed): the quotations below are
# checked against it word for word.
PAPER_TEXT_FILE = Path(__file__).parent.parent / "reference" / "data-efficient-hires-medical.md"
# What the paper's text answers, in its own words: where, and the quotations.
PAPER_TEXT = {
    "Q1": (
        "abstract",
        (
            "we demonstrate that training can be made more data-efficient by using a distributed "
            "training setup with high-resolution images and larger effective batch sizes",
        ),
    ),
    "Q2": (
        "section 4",
        (
            "distributing tasks across multiple GPUs enables a larger effective batch size which "
            "boosts the accuracy, as is evident in Table 2",
            "distributed training usually attains a higher accuracy as compared to serial "
            "training, with a few exceptions",
        ),
    ),
    "Q3": (
        "section 4",
        (
            "there is an optimal resolution at which the model will deliver the best performance "
            "on the current task. Any resolution that is higher or lower, will affect performance "
            "adversely",
        ),
    ),
}
ONE_RUN = "one run per cell, so no intervals: direction counts only, no significance"


def _directions(diffs: list) -> tuple[int, int, int]:
    """How many differences are above zero, below zero, and in all."""
    return sum(d.mean > 0 for d in diffs), sum(d.mean < 0 for d in diffs), len(diffs)


def _q1_text_and_table(pairs: pd.DataFrame) -> str:
    up, down, total = _directions(list(pairs["diff"]))
    if not total:
        return "Its Table 2 has no pair of cells to compare with its text."
    if up > down:
        return (
            f"Its text and its Table 2 agree in direction: fewer images at a higher resolution "
            f"have the higher accuracy in {up} of {total} comparisons (lower in {down})."
        )
    return (
        "Its text and its own Table 2 disagree: the text claims that high-resolution images make "
        f"training data-efficient, yet in the table fewer images at a higher resolution have the "
        f"higher accuracy in only {up} of {total} comparisons and the lower in {down}."
    )


def _q2_text_and_table(comparisons: pd.DataFrame, paper: pd.DataFrame) -> str:
    rows = comparisons[comparisons["second"] == "serial"]
    up, down, total = _directions(list(rows["diff"]))
    if not total:
        return "Its Table 2 has no cell run both ways to compare with its text."
    mean = 100 * sum(d.mean for d in rows["diff"]) / total
    agree = "agree" if up > down else "disagree"
    text = (
        f"Its text and its Table 2 {agree} in direction: distributed is higher than serial in "
        f"{up} of {total} cells (lower in {down}; mean {mean:+.1f} points)."
    )
    if (comparisons["second"] == "serial-accumulated").any():
        return text
    rates = (
        paper.pivot_table(
            index=["dataset", "arch", "image_size", "images_per_class"],
            columns="mode",
            values="learning_rate",
        )
        .reindex(columns=["serial", "distributed"])
        .dropna()
    )
    differ = int((rates["serial"] != rates["distributed"]).sum())
    return text + (
        " The table cannot attribute that gain to the effective batch, as the text does: it has "
        "no serial run at the distributed runs' effective batch, and the distributed runs used "
        f"another learning rate than the serial ones in {differ} of {len(rates)} cells."
    )


def _q3_text_and_table(best: pd.DataFrame) -> str:
    ranked = best[best["position"] != "only one"]
    counts = ranked["position"].value_counts()
    interior, total = int(counts.get("interior", 0)), len(ranked)
    if not total:
        return "Its Table 2 has no setting run at several resolutions to compare with its text."
    if interior == total:
        return (
            f"Its text and its Table 2 agree in direction: the highest accuracy is at an "
            f"interior size in all {total} settings."
        )
    return (
        f"Its text and its Table 2 disagree in part: the highest accuracy is at an interior size "
        f"in {interior} of {total} settings, but at the largest size tried in "
        f"{int(counts.get('largest', 0))} and the smallest in {int(counts.get('smallest', 0))}, "
        "where the grid holds no worse resolution beyond it, so the table does not show the "
        "optimum the text describes."
    )


def _reading(paper: pd.DataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """The whole table's answer to each question, and where the paper's text and table agree."""
    theirs = paper_records(paper)
    pairs, comparisons = q1_pairs(theirs), q2_comparisons(theirs)
    best = q3_best_resolution(theirs)
    whole = {
        "Q1": q1_sentence(pairs, single="one run"),
        "Q2": " ".join(q2_sentences(comparisons, single="one run")),
        "Q3": q3_sentence(best, single="one run"),
    }
    against = {
        "Q1": _q1_text_and_table(pairs),
        "Q2": _q2_text_and_table(comparisons, paper),
        "Q3": _q3_text_and_table(best),
    }
    return whole, against


@functools.lru_cache(maxsize=1)
def _packaged_reading() -> tuple[dict[str, str], dict[str, str]]:
    """:func:`_reading` of the packaged table, once per process (it never changes)."""
    return _reading(load_paper_table())


def study_headlines(records: pd.DataFrame, metric: str = "accuracy") -> dict[str, str]:
    """This study's answer to each question in a few words (from its intervals)."""
    return {
        "Q1": q1_headline(q1_pairs(records, metric)),
        "Q2": q2_headline(q2_comparisons(records, metric)),
        "Q3": q3_headline(q3_best_resolution(records, metric)),
    }


def paper_answers(
    records: pd.DataFrame,
    paper: pd.DataFrame | None = None,
    metric: str = "accuracy",
    ours: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    """Per question, sentences on the paper's answer: its text (quoted), its whole Table 2 read
    by the same rules, the cells of it this study also ran (real data only), and whether text and
    table agree, with this study's answer beside them (``ours``, :func:`study_headlines` unless
    given; labelled synthetic when it is)."""
    whole, against = _packaged_reading() if paper is None else _reading(paper)
    paper = load_paper_table() if paper is None else paper
    cells = f"(all {len(paper)} cells, {ONE_RUN}): "
    study = "This study" + (" (synthetic data)" if is_synthetic(records) else "")
    ours = study_headlines(records, metric) if ours is None else ours
    shared = _shared_cells(records, paper)
    answers = {}
    for key, (where, quotes) in PAPER_TEXT.items():
        quoted = " and “".join(f"{quote}”" for quote in quotes)
        answers[key] = [
            f"Its text ({where}): “{quoted}.",
            f"Its Table 2 read by the same rules {cells}{whole[key]}",
            *([shared[key]] if shared else []),
            f"{against[key]} {study}: {ours[key]}.",
        ]
    return answers


def _shared_cells(records: pd.DataFrame, paper: pd.DataFrame) -> dict[str, str]:
    """The paper's answers on the cells of its Table 2 this study also ran (none for synthetic
    data, which the paper never used)."""
    if is_synthetic(records):
        return {}
    covered = paper_cells_covered(records, paper)
    if covered.empty:
        return {}
    theirs = paper_records(covered)
    scope = f"On the {len(covered)} cells of its Table 2 this study also ran, one run each: "
    return {
        "Q1": scope + q1_sentence(q1_pairs(theirs), single="one run"),
        "Q2": scope + " ".join(q2_sentences(q2_comparisons(theirs), single="one run")),
        "Q3": scope + q3_sentence(q3_best_resolution(theirs), single="one run"),
    }
