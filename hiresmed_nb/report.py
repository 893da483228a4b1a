"""The study report: records into a table, the paper's Table 2 and Figure 2 replicas, findings.

Pure functions over the JSON records that ``notebooks/01_train.ipynb`` writes to
``<study>/runs/<run_id>.json`` (and the ``<run_id>.failed.json`` the runner writes); the report
notebook ``notebooks/02_report.ipynb`` calls them. Records hold fractions in [0, 1]; everything
shown to a reader is in percent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from hiresmed_nb.params import HiresmedError

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")
# Serial runs with gradient accumulation form their own arm: one device, the effective batch of
# several ranks. It answers whether the effective batch or the distribution helps.
MODES = ("serial", "serial-accumulated", "distributed")
# Columns that older records may lack, with the value they mean.
OPTIONAL_COLUMNS = {
    "macro_auroc": math.nan,
    "accumulation_steps": 1,
    "precision": "float32",
    "compression": "none",
    "data_locality_ok": None,
}
SETTING = ["dataset", "arch", "images_per_class", "mode"]
CELL = ["dataset", "arch", "image_size", "images_per_class", "mode"]
RECORD_COLUMNS = (
    "run_id",
    "dataset",
    "arch",
    "image_size",
    "images_per_class",
    "mode",
    "n_ranks",
    "seed",
    "learning_rate",
    "batch_size_per_rank",
    "effective_batch_size",
    "epochs",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "n_train",
    "n_test",
    "train_seconds",
    "synthetic",
)
PAPER_TABLE = Path(__file__).parent / "reference" / "paper_table2.csv"
SYNTHETIC_WARNING = (
    "SYNTHETIC DATA: these numbers come from the embedded synthetic dataset, not patient data."
)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise HiresmedError(f"record {str(path)!r} is not readable JSON: {error}") from None
    if not isinstance(content, dict):
        raise HiresmedError(f"record {str(path)!r} is not a JSON object")
    return content


def load_records(study_dir: str | Path) -> pd.DataFrame:
    """Return one row per successful run record in ``study_dir/runs/*.json``.

    Columns are :data:`RECORD_COLUMNS`, sorted by cell and seed. An empty frame (with those
    columns) when there is no record yet. Raises :class:`HiresmedError` naming the file when a
    record is not JSON or lacks a column.
    """
    runs_dir = Path(study_dir) / "runs"
    if not Path(study_dir).is_dir():
        raise HiresmedError(f"STUDY_DIR {str(study_dir)!r} is not a folder")
    rows = []
    for path in sorted(runs_dir.glob("*.json")):
        if path.name.endswith(".failed.json"):
            continue
        record = _read_json(path)
        if record.get("status", "ok") != "ok":
            continue
        missing = [c for c in RECORD_COLUMNS if c not in record]
        if missing:
            raise HiresmedError(f"record {str(path)!r} lacks {', '.join(missing)}")
        row = {c: record[c] for c in RECORD_COLUMNS}
        locality = record.get("data_locality")
        record["data_locality_ok"] = None if locality is None else bool(locality["ok"])
        for column, absent in OPTIONAL_COLUMNS.items():
            value = record.get(column)
            row[column] = absent if value is None else value
        row["precision"] = record["params"].get("PRECISION", "float32")
        row["compression"] = record["params"].get("COMPRESSION", "none")
        row["mode"] = arm(row)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*RECORD_COLUMNS, *OPTIONAL_COLUMNS])
    if frame.empty:
        return frame
    frame["synthetic"] = frame["synthetic"].astype(bool)
    return frame.sort_values([*CELL, "seed"], ignore_index=True)


def arm(row: dict[str, Any]) -> str:
    """The run's arm: its mode, '-accumulated' for serial accumulation, then any lever that is
    not the default (``+bfloat16``, ``+fp16-allreduce``), so such runs never pool with others."""
    name = row["mode"]
    if name == "serial" and row["accumulation_steps"] > 1:
        name = "serial-accumulated"
    if row["precision"] != "float32":
        name += "+" + row["precision"].removeprefix("mixed_")
    if row["compression"] != "none":
        name += f"+{row['compression']}-allreduce"
    return name


def ordered_modes(present: Iterable[str]) -> list[str]:
    """The arms present, the three main ones first, then lever variants by name."""
    present = set(present)
    return [m for m in MODES if m in present] + sorted(present - set(MODES))


def load_failures(study_dir: str | Path) -> pd.DataFrame:
    """Return the failed runs (``runs/*.failed.json``): run_id, cell_index, ename, evalue."""
    columns = ["run_id", "cell_index", "ename", "evalue"]
    rows = [
        {c: _read_json(path).get(c) for c in columns}
        for path in sorted((Path(study_dir) / "runs").glob("*.failed.json"))
    ]
    return pd.DataFrame(rows, columns=columns)


def load_paper_table(path: str | Path = PAPER_TABLE) -> pd.DataFrame:
    """Return the paper's Table 2: dataset, arch, image_size, images_per_class, mode, num_nodes,
    learning_rate, accuracy_pct (percent)."""
    return pd.read_csv(path)


def paper_accuracy(
    paper: pd.DataFrame, dataset: str, arch: str, image_size: int, images_per_class: int, mode: str
) -> float | None:
    """Return the paper's accuracy in percent for one cell, or None when the paper has none."""
    rows = paper[
        (paper["dataset"] == dataset)
        & (paper["arch"] == arch)
        & (paper["image_size"] == image_size)
        & (paper["images_per_class"] == images_per_class)
        & (paper["mode"] == mode)
    ]
    return float(rows["accuracy_pct"].iloc[0]) if len(rows) else None


def is_synthetic(records: pd.DataFrame) -> bool:
    """True when any record comes from an embedded synthetic dataset."""
    return bool(len(records)) and bool(records["synthetic"].any())


def check_metric(metric: str) -> str:
    """Return ``metric`` when it is one of :data:`METRICS`, else raise naming METRIC."""
    if metric not in METRICS:
        raise HiresmedError(f"METRIC={metric!r} must be one of {', '.join(METRICS)}")
    return metric


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Table 2
# ---------------------------------------------------------------------------------------------


def table2(
    records: pd.DataFrame, metric: str = "accuracy", paper: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The Table 2 replica as strings, ready to print.

    Rows: (dataset, image size, images per class). Columns: (mode, arch, field) with fields
    ``ours (%)`` (mean ± 95% CI over seeds), ``paper (%)``, ``ranks``, ``lr``, ``eff. batch``.
    """
    paper = load_paper_table() if paper is None else paper
    summary = summarise(records, metric)
    long = []
    for row in summary.itertuples(index=False):
        theirs = paper_accuracy(
            paper, row.dataset, row.arch, row.image_size, row.images_per_class, row.mode
        )
        fields = {
            "ours (%)": format_value(row.mean, row.ci, row.n),
            "paper (%)": "—" if theirs is None else f"{theirs:.2f}",
            "ranks": str(row.n_ranks),
            "lr": f"{row.learning_rate:.1e}",
            "eff. batch": str(row.effective_batch_size),
        }
        for name, text in fields.items():
            long.append(
                {
                    "dataset": row.dataset,
                    "image size": row.image_size,
                    "images per class": row.images_per_class,
                    "mode": row.mode,
                    "arch": row.arch,
                    "field": name,
                    "text": text,
                }
            )
    if not long:
        return pd.DataFrame()
    frame = pd.DataFrame(long)
    table = frame.pivot_table(
        index=["dataset", "image size", "images per class"],
        columns=["mode", "arch", "field"],
        values="text",
        aggfunc=" / ".join,  # two cells differing only in ranks or lr share a slot
        sort=False,
    )
    modes = ordered_modes(table.columns.get_level_values(0))
    order = list(dict.fromkeys(fields))
    columns = [
        (m, a, f)
        for m in modes
        for a in sorted(set(table[m].columns.get_level_values(0)))
        for f in order
    ]
    return table.reindex(columns=columns).sort_index().fillna("")


def table2_caption(records: pd.DataFrame, metric: str = "accuracy") -> str:
    """Caption of the Table 2 replica, with the synthetic-data warning when it applies."""
    caption = (
        f"Table 2 replica: {metric.replace('_', ' ')} (%) as mean ± 95% t-interval over seeds "
        "(n=1: one seed, no interval); 'paper (%)' is the paper's Table 2 accuracy for the same "
        "dataset, arch, size, images per class and mode."
    )
    return (SYNTHETIC_WARNING + " " + caption) if is_synthetic(records) else caption


def table2_html(records: pd.DataFrame, metric: str = "accuracy") -> str:
    """The Table 2 replica as an HTML table with its caption."""
    table = table2(records, metric)
    if table.empty:
        return "<p>No records yet.</p>"
    return table.style.set_caption(table2_caption(records, metric)).to_html()


# ---------------------------------------------------------------------------------------------
# Figure 2
# ---------------------------------------------------------------------------------------------


def plot_figure2(records: pd.DataFrame, metric: str = "accuracy"):
    """The Figure 2 replica: metric (%) against resolution, serial and distributed as hue.

    One panel per architecture (columns) and data size (rows); points are seed means, error bars
    one standard deviation over seeds. Returns the seaborn ``FacetGrid``.
    """
    import seaborn as sns

    check_metric(metric)
    if records.empty:
        raise HiresmedError("no records to plot: the study has no successful run yet")
    data = records.assign(
        **{
            "percent": 100 * records[metric],
            "data size": records["dataset"]
            + ", "
            + records["images_per_class"].astype(str)
            + " images/class",
        }
    )
    grid = sns.relplot(
        data=data,
        x="image_size",
        y="percent",
        hue="mode",
        hue_order=ordered_modes(data["mode"]),
        col="arch",
        row="data size",
        kind="line",
        marker="o",
        errorbar="sd",
        err_style="bars",
        height=3.2,
        aspect=1.3,
        facet_kws={"sharey": False},
    )
    grid.set_titles("{col_name}\n{row_name}")
    sizes = sorted(data["image_size"].unique())
    for ax in grid.axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
    grid.set_axis_labels("resolution (px)", f"{metric.replace('_', ' ')} (%)")
    title = f"Figure 2 replica: {metric.replace('_', ' ')} against resolution"
    if is_synthetic(records):
        title = SYNTHETIC_WARNING + "\n" + title
    grid.figure.suptitle(
        title, y=1.0, va="bottom", fontweight="bold" if is_synthetic(records) else None
    )
    return grid


# ---------------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------------


def best_resolution(records: pd.DataFrame, metric: str = "accuracy") -> list[str]:
    """One sentence per setting (dataset, arch, images per class, mode): its best resolution.

    Says whether the best is the smallest, the largest, or an interior size (accuracy rising, then
    falling, as the paper reports), and by how much it beats the next best size.
    """
    summary = summarise(records, metric)
    sentences = []
    for setting, group in summary.groupby(SETTING, sort=True):
        dataset, arch, ipc, mode = setting
        by_size = group.groupby("image_size")["mean"].max().sort_index()
        best = int(by_size.idxmax())
        where = f"{arch} on {dataset}, {ipc} images per class, {mode}"
        if len(by_size) == 1:
            sentences.append(
                f"{where}: only {best} px was run ({100 * by_size[best]:.1f}%), so there is "
                "no best resolution to pick."
            )
            continue
        tied = [int(size) for size, value in by_size.items() if value >= by_size[best] - 1e-12]
        if len(tied) > 1:
            sizes = ", ".join(f"{size} px" for size in tied)
            sentences.append(
                f"{where}: no single best resolution; {sizes} tie at {100 * by_size[best]:.1f}%."
            )
            continue
        runner_up = by_size.drop(best)
        second = int(runner_up.idxmax())
        margin = 100 * (by_size[best] - runner_up.max())
        if best == by_size.index.min():
            shape = "the smallest size tried"
        elif best == by_size.index.max():
            shape = "the largest size tried"
        else:
            shape = "an interior optimum: accuracy is lower at both smaller and larger sizes"
        sentences.append(
            f"{where}: best at {best} px ({100 * by_size[best]:.1f}%), {shape}; "
            f"{margin:.1f} points above the next best, {second} px."
        )
    return sentences


def distributed_vs_serial(
    records: pd.DataFrame,
    metric: str = "accuracy",
    baseline: str = "serial",
    contender: str = "distributed",
) -> list[str]:
    """One sentence per cell run both ways: does ``contender`` beat ``baseline`` beyond the spread?

    ``baseline`` is e.g. ``serial`` or ``serial-accumulated`` (one device at the effective batch
    of several ranks); ``contender`` an arm such as ``distributed`` or a lever variant. The seed
    spread is the larger of the two cells' standard deviations over seeds; a difference of means
    larger than it counts. With one seed on either side, no verdict is given.
    """
    summary = summarise(records, metric)
    sentences = []
    for cell, group in summary.groupby(["dataset", "arch", "image_size", "images_per_class"]):
        dataset, arch, size, ipc = cell
        serial = group[group["mode"] == baseline]
        distributed = group[group["mode"] == contender]
        if serial.empty or distributed.empty:
            continue
        s, d = serial.iloc[0], distributed.iloc[0]
        diff = 100 * (d["mean"] - s["mean"])
        where = f"{arch} on {dataset} at {size} px, {ipc} images per class"
        ranks = f"{d['n_ranks']} rank" + ("s" if d["n_ranks"] != 1 else "")
        numbers = (
            f"{contender} ({ranks}) {100 * d['mean']:.1f}% vs {baseline} {100 * s['mean']:.1f}%"
        )
        if s["n"] < 2 or d["n"] < 2:
            sentences.append(
                f"{where}: {numbers}; one seed only, so the seed spread is unknown and no "
                "verdict is given."
            )
            continue
        spread = 100 * max(s["sd"], d["sd"])
        if diff > spread:
            verdict = (
                f"{contender} beats {baseline} by {diff:.1f} points, more than the seed spread"
            )
        elif -diff > spread:
            verdict = (
                f"{baseline} beats {contender} by {-diff:.1f} points, more than the seed spread"
            )
        else:
            verdict = (
                f"the difference ({diff:+.1f} points) is within the seed spread, so neither "
                "beats the other"
            )
        sentences.append(f"{where}: {numbers}; {verdict} ({spread:.1f} points).")
    return sentences


def lever_comparisons(records: pd.DataFrame, metric: str = "accuracy") -> list[str]:
    """Each lever variant (e.g. ``distributed+fp16-allreduce``) against its plain arm."""
    sentences = []
    for variant in ordered_modes(records["mode"]):
        if "+" in variant:
            base = variant.split("+")[0]
            sentences += distributed_vs_serial(records, metric, baseline=base, contender=variant)
    return sentences


def data_locality(records: pd.DataFrame) -> str:
    """One sentence on the data-locality check of the distributed runs."""
    distributed = records[records["mode"] == "distributed"]
    if distributed.empty:
        return "No distributed run, so no data-locality check."
    checked = distributed[distributed["data_locality_ok"].notna()]
    failed = checked[~checked["data_locality_ok"].astype(bool)]
    unchecked = len(distributed) - len(checked)
    sentence = (
        f"Data locality: {len(checked) - len(failed)} of {len(checked)} checked distributed runs "
        "passed (each rank's training pipeline opened only the images of its own shard, the "
        "shards were disjoint and together the training set; only model parameters crossed "
        "ranks)."
    )
    if len(failed):
        sentence += " FAILED: " + ", ".join(failed["run_id"]) + "."
    if unchecked:
        sentence += f" {unchecked} runs predate the check and carry no verdict."
    return sentence


def usage(records: pd.DataFrame) -> str:
    """One sentence on what the study used: runs, training images, image passes, train time."""
    if records.empty:
        return "No run has finished yet."
    seconds = float(records["train_seconds"].sum())
    passes = int((records["n_train"] * records["epochs"]).sum())
    return (
        f"{len(records)} runs trained on {int(records['n_train'].sum())} training images in all "
        f"({passes} image passes over the epochs) and tested on {int(records['n_test'].sum())} "
        f"images, in {seconds / 60:.1f} minutes of training ({seconds:.0f} s)."
    )
