"""Tables for the report: the paper's Table 2 replica and a plain HTML table helper.

Numbers in every table are kept on one line (``white-space: nowrap``) and learning rates are
written as ``1e-3``; Table 2 puts the architecture in the rows so that its width depends only on
the number of arms (it fits a 1280 px page for the three main arms).
"""

from __future__ import annotations

import math

import pandas as pd

from hiresmed_nb.science.report.load import (
    base_rates,
    has_lr_axis,
    is_synthetic,
    load_paper_table,
    ordered_modes,
    paper_accuracy,
)
from hiresmed_nb.science.report.stats import format_value, summarise

# Captions above their table, left-aligned; row labels on one line.
TABLE_STYLES = [
    {"selector": "th.row_heading", "props": [("white-space", "nowrap")]},
    {"selector": "caption", "props": [("caption-side", "top"), ("text-align", "left")]},
]
NOWRAP = "white-space: nowrap"
INDEX = ["dataset", "arch", "image size", "images/class"]


def format_lr(rate: float) -> str:
    """A learning rate as ``1e-3``, ``1.6e-5``, ``8e-5`` (no padded exponent, no wrap)."""
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "—"
    mantissa, exponent = f"{float(rate):e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def frame_html(
    frame: pd.DataFrame,
    caption: str | None = None,
    index: bool = False,
    wrap: tuple[str, ...] = (),
) -> str:
    """``frame`` as an HTML table whose cells stay on one line (``white-space: nowrap``), except
    those of the free-text columns named in ``wrap`` (error messages); caption on top."""
    styler = frame.style.set_table_styles(TABLE_STYLES)
    if wrap:
        keep = [c for c in frame.columns if c not in wrap]
        styler = styler.map(lambda _: NOWRAP, subset=(slice(None), keep))
    else:
        styler = styler.map(lambda _: NOWRAP)
    if not index:
        styler = styler.hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    return styler.to_html()


def _arm_label(arm: str, cells: pd.DataFrame) -> tuple[str, bool]:
    """The column header of an arm (its rank or accumulation count when constant) and whether
    the table needs a ``ranks`` column for it (ranks differ between its cells)."""
    ranks = set(cells["n_ranks"])
    if arm.startswith("distributed") and len(ranks) == 1:
        (k,) = ranks
        return f"{arm} ({k} rank{'s' if k != 1 else ''})", False
    return arm, len(ranks) > 1


def table2(
    records: pd.DataFrame, metric: str = "accuracy", paper: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The Table 2 replica as strings, ready to print.

    Rows: (dataset, arch, image size, images/class), plus ``LEARNING_RATE`` when the study sweeps
    it. Columns: (arm, field) with fields ``ours (%)`` (mean ± 95% CI over seeds), ``paper (%)``
    (only when the paper has any of the study's cells), ``ranks`` (only for an arm whose rank
    count varies; otherwise it is in the arm's header), ``lr`` (as applied) and ``eff. batch``.
    """
    paper = load_paper_table() if paper is None else paper
    if records.empty:
        return pd.DataFrame()
    lr_axis = has_lr_axis(records)
    records = records.assign(base_learning_rate=base_rates(records))
    summary = summarise(records, metric) if not lr_axis else _summarise_by_rate(records, metric)
    long = []
    for row in summary.itertuples(index=False):
        theirs = paper_accuracy(
            paper, row.dataset, row.arch, row.image_size, row.images_per_class, row.mode
        )
        fields = {
            "ours (%)": format_value(row.mean, row.ci, row.n),
            "paper (%)": "—" if theirs is None else f"{theirs:.2f}",
            "ranks": str(row.n_ranks),
            "lr": format_lr(row.learning_rate),
            "eff. batch": str(int(row.effective_batch_size)),
        }
        index = [row.dataset, row.arch, row.image_size, row.images_per_class]
        index += [format_lr(row.base_learning_rate)] if lr_axis else []
        for name, text in fields.items():
            long.append([*index, row.mode, name, text])
    index_names = INDEX + (["LEARNING_RATE"] if lr_axis else [])
    frame = pd.DataFrame(long, columns=[*index_names, "arm", "field", "text"])
    table = frame.pivot_table(
        index=index_names,
        columns=["arm", "field"],
        values="text",
        aggfunc=" / ".join,  # two cells differing only in ranks or lr share a slot
        sort=False,
    )
    any_paper = (frame.loc[frame["field"] == "paper (%)", "text"] != "—").any()
    columns, headers = [], {}
    for arm in ordered_modes(frame["arm"]):
        label, needs_ranks = _arm_label(arm, summary[summary["mode"] == arm])
        headers[arm] = label
        for field in ("ours (%)", "paper (%)", "ranks", "lr", "eff. batch"):
            if (field == "paper (%)" and not any_paper) or (field == "ranks" and not needs_ranks):
                continue
            columns.append((arm, field))
    table = table.reindex(columns=pd.MultiIndex.from_tuples(columns)).fillna("")
    table = _sort_rows(table, lr_axis)
    return table.rename(columns=headers, level=0)


def _summarise_by_rate(records: pd.DataFrame, metric: str) -> pd.DataFrame:
    """:func:`summarise` per LEARNING_RATE value as well (a study sweeping the rate)."""
    parts = []
    for rate, group in records.groupby("base_learning_rate"):
        parts.append(summarise(group, metric).assign(base_learning_rate=rate))
    return pd.concat(parts, ignore_index=True)


def _sort_rows(table: pd.DataFrame, lr_axis: bool) -> pd.DataFrame:
    """Rows by dataset, arch, size, images per class (numerically) and learning rate."""
    index = table.index.to_frame(index=False)
    if lr_axis:
        index["_lr"] = index["LEARNING_RATE"].map(float)
    order = index.sort_values(
        ["dataset", "arch", "image size", "images/class", *(["_lr"] if lr_axis else [])]
    ).index
    return table.iloc[list(order)]


def table2_caption(records: pd.DataFrame, metric: str = "accuracy") -> str:
    """Caption of the Table 2 replica; says 'synthetic data' when it applies (the full warning
    is shown once, at the top of the report)."""
    caption = (
        f"{metric.replace('_', ' ')} (%) as mean ± 95% t-interval over seeds (n=1: one seed, no "
        "interval); 'paper (%)': the paper's Table 2 accuracy for the same dataset, arch, size, "
        "images per class and arm; lr: the learning rate as applied (after LR_SCALING); eff. "
        "batch: images per optimizer step (batch per rank x ranks x accumulation steps)."
    )
    title = "Table 2 replica" + (" (synthetic data)" if is_synthetic(records) else "")
    return f"{title}: {caption}"


def table2_html(records: pd.DataFrame, metric: str = "accuracy") -> str:
    """The Table 2 replica as an HTML table with its caption; numbers never wrap."""
    table = table2(records, metric)
    if table.empty:
        return "<p>No records yet.</p>"
    return frame_html(table, table2_caption(records, metric), index=True)


def banner_html(text: str) -> str:
    """``text`` in a bordered warning box (the synthetic-data warning, shown once at the top)."""
    import html

    return (
        '<div role="alert" style="border: 2px solid #b45309; background: #fff7ed; '
        'padding: 0.6em 1em; margin: 0.5em 0; font-weight: bold">'
        f"⚠ {html.escape(text)}</div>"
    )
