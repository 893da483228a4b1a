"""The Answers section of the report: per question of the paper, its wording, our verdict, the
paper's own answer (its text, and its Table 2 read by the same code), and the evidence tables."""

from __future__ import annotations

import html

import pandas as pd

from hiresmed_nb.science.report.answers import (
    best_learning_rates,
    q1_pairs,
    q2_comparisons,
    q3_best_resolution,
)
from hiresmed_nb.science.report.decomposition import decompose, decomposition_table
from hiresmed_nb.science.report.family import ADJUSTMENT_SENTENCE
from hiresmed_nb.science.report.load import is_synthetic
from hiresmed_nb.science.report.optimum import (
    lr_sentences,
    lr_table,
    q3_headline,
    q3_sentence,
    q3_table,
)
from hiresmed_nb.science.report.paper import paper_answers
from hiresmed_nb.science.report.tables import frame_html
from hiresmed_nb.science.report.verdicts import (
    QUESTIONS,
    q1_headline,
    q1_sentence,
    q1_table,
    q2_headline,
    q2_sentences,
    q2_table,
)

OPEN_ROWS = 12  # evidence tables up to this many rows are shown open


def _compact(table: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Drop empty columns; in a table of several rows also the columns with one value in every
    row, returned as 'All rows: ...' for the caption."""
    text = table.astype(str)
    empty = [c for c in table.columns if (text[c] == "").all()]
    constant = [c for c in table.columns if c not in empty and text[c].nunique() == 1]
    if len(table) < 2:
        return table.drop(columns=empty), ""
    note = ", ".join(f"{c} {text[c].iloc[0]}" for c in constant)
    return table.drop(columns=empty + constant), f" All rows: {note}." if note else ""


def _evidence(table: pd.DataFrame, title: str, synthetic: bool = False) -> str:
    """The evidence table under its caption (labelled synthetic data when it is); longer than
    :data:`OPEN_ROWS` rows, folded into a closed ``<details>`` so that the verdicts stay
    together."""
    if table.empty:
        return ""
    if synthetic:
        title = title.replace(":", " (synthetic data):", 1)
    table, note = _compact(table.reset_index(drop=True))
    body = frame_html(table, f"{title}.{note}")
    if len(table) <= OPEN_ROWS:
        return body
    return f"<details><summary>{html.escape(title)}: {len(table)} rows</summary>{body}</details>"


def answers_html(
    records: pd.DataFrame, metric: str = "accuracy", paper: pd.DataFrame | None = None
) -> str:
    """The Answers section's body: one sentence on which intervals are adjusted and how
    (:data:`.family.ADJUSTMENT_SENTENCE`), then per question, the paper's wording, our verdict,
    the paper's own answer (its text, its whole Table 2 read by the same rules, where the two
    disagree, and ours beside them), and the evidence tables (numbers on one line, constant
    columns folded into the caption)."""
    if records.empty:
        return "<p>No records yet: nothing to answer.</p>"
    pairs = q1_pairs(records, metric)
    comparisons = q2_comparisons(records, metric)
    rates = best_learning_rates(records, metric)
    best = q3_best_resolution(records, metric)
    headlines = {
        "Q1": q1_headline(pairs),
        "Q2": q2_headline(comparisons),
        "Q3": q3_headline(best),
    }
    theirs = paper_answers(records, paper, metric, headlines)
    ours = {
        "Q1": [q1_sentence(pairs)],
        "Q2": q2_sentences(comparisons) + lr_sentences(rates),
        "Q3": [q3_sentence(best)],
    }
    label = is_synthetic(records)
    evidence = {
        "Q1": _evidence(
            q1_table(pairs, metric), "Q1 evidence: fewer − more, paired over seeds", label
        ),
        "Q2": _evidence(
            q2_table(comparisons, metric),
            "Q2 evidence: first − second arm, paired over seeds",
            label,
        )
        + _evidence(
            decomposition_table(decompose(comparisons), metric),
            "Q2 evidence: batch part against distribution part, paired over the seeds of all "
            "three arms (97.5% intervals for the two tests behind 'larger in magnitude')",
            label,
        )
        + _evidence(
            lr_table(rates, metric),
            "Q2: highest-mean LEARNING_RATE per size and arm; separated: it beats the runner-up "
            "beyond seed noise (Holm over the rows)",
            label,
        ),
        "Q3": _evidence(
            q3_table(best, metric),
            "Q3 evidence: the size with the highest mean per setting; separated: it beats the "
            "next highest beyond seed noise; bracketed: it beats both the smallest and the "
            "largest size tried beyond seed noise (both claims Holm-adjusted over the settings)",
            label,
        ),
    }
    synthetic = ", synthetic data" if label else ""
    parts = [f"<p>{html.escape(ADJUSTMENT_SENTENCE)}</p>"]
    for key, (short, question) in QUESTIONS.items():
        items = "".join(f"<li>{html.escape(s)}</li>" for s in ours[key])
        paper_items = "".join(f"<li>{html.escape(s)}</li>" for s in theirs[key])
        parts.append(
            f'<h3 id="answer-{key.lower()}">{key}. {html.escape(short)}</h3>'
            f"<p><i>The paper asks: “{html.escape(question)}”</i></p>"
            f"<p><b>Our answer</b> ({metric.replace('_', ' ')}{synthetic}):</p><ul>{items}</ul>"
            f"<p><b>The paper's answer</b> (accuracy):</p><ul>{paper_items}</ul>"
            f"{evidence[key]}"
        )
    return "\n".join(parts)
