"""The Answers section of the report: per question of the paper, its wording, our verdict, the
paper's own answer computed by the same code from its Table 2, and the evidence table."""

from __future__ import annotations

import html

import pandas as pd

from hiresmed_nb.science.report.answers import (
    best_learning_rates,
    q1_pairs,
    q2_comparisons,
    q3_best_resolution,
)
from hiresmed_nb.science.report.load import (
    is_synthetic,
    load_paper_table,
    paper_cells_covered,
    paper_records,
)
from hiresmed_nb.science.report.tables import frame_html
from hiresmed_nb.science.report.verdicts import (
    QUESTIONS,
    capitalised,
    lr_sentences,
    lr_table,
    q1_sentence,
    q1_table,
    q2_sentences,
    q2_table,
    q3_sentence,
    q3_table,
)

OPEN_ROWS = 12  # evidence tables up to this many rows are shown open


def paper_answers(records: pd.DataFrame, paper: pd.DataFrame | None = None) -> dict[str, str]:
    """The paper's own answer to each question from its Table 2, computed by the same code on
    the cells this study also ran; says why there is none (synthetic data, no shared cell)."""
    if is_synthetic(records):
        none = "no paper value: this study runs on synthetic data, which the paper never used."
        return dict.fromkeys(QUESTIONS, none)
    covered = paper_cells_covered(records, load_paper_table() if paper is None else paper)
    if covered.empty:
        none = "no paper value: the paper's Table 2 has none of this study's cells."
        return dict.fromkeys(QUESTIONS, none)
    theirs = paper_records(covered)
    scope = f"from the {len(covered)} cells of its Table 2 this study also ran, one run each: "
    q2 = q2_sentences(q2_comparisons(theirs), single="one run")
    return {
        "Q1": scope + q1_sentence(q1_pairs(theirs), single="one run"),
        "Q2": scope + " ".join(q2),
        "Q3": scope + q3_sentence(q3_best_resolution(theirs), single="one run"),
    }


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


def _evidence(table: pd.DataFrame, title: str) -> str:
    """The evidence table under its caption; longer than :data:`OPEN_ROWS` rows, folded into a
    closed ``<details>`` so that the verdicts stay together."""
    if table.empty:
        return ""
    table, note = _compact(table.reset_index(drop=True))
    body = frame_html(table, f"{title}.{note}")
    if len(table) <= OPEN_ROWS:
        return body
    return f"<details><summary>{html.escape(title)}: {len(table)} rows</summary>{body}</details>"


def answers_html(
    records: pd.DataFrame, metric: str = "accuracy", paper: pd.DataFrame | None = None
) -> str:
    """The Answers section's body: per question, the paper's wording, our verdict, the paper's
    own answer, and the evidence table (numbers on one line, constant columns folded into the
    caption)."""
    if records.empty:
        return "<p>No records yet: nothing to answer.</p>"
    pairs = q1_pairs(records, metric)
    comparisons = q2_comparisons(records, metric)
    rates = best_learning_rates(records, metric)
    best = q3_best_resolution(records, metric)
    theirs = paper_answers(records, paper)
    ours = {
        "Q1": [q1_sentence(pairs)],
        "Q2": q2_sentences(comparisons) + lr_sentences(rates),
        "Q3": [q3_sentence(best)],
    }
    evidence = {
        "Q1": _evidence(q1_table(pairs, metric), "Q1 evidence: fewer − more, paired over seeds"),
        "Q2": _evidence(
            q2_table(comparisons, metric), "Q2 evidence: first − second arm, paired over seeds"
        )
        + _evidence(lr_table(rates, metric), "Q2: best LEARNING_RATE per size and arm"),
        "Q3": _evidence(q3_table(best, metric), "Q3 evidence: best resolution per setting"),
    }
    parts = []
    for key, (short, question) in QUESTIONS.items():
        items = "".join(f"<li>{html.escape(s)}</li>" for s in ours[key])
        parts.append(
            f'<h3 id="answer-{key.lower()}">{key}. {html.escape(short)}</h3>'
            f"<p><i>The paper asks: “{html.escape(question)}”</i></p>"
            f"<p><b>Our answer</b> ({metric.replace('_', ' ')}):</p><ul>{items}</ul>"
            f"<p><b>The paper's answer:</b> {html.escape(capitalised(theirs[key]))}</p>"
            f"{evidence[key]}"
        )
    return "\n".join(parts)
