"""Reading a study: run records, failure records, the paper's Table 2, and the arms of the runs.

Records are the JSON files ``notebooks/01_train.ipynb`` writes to ``<study>/runs/<run_id>.json``
(the runner writes ``<run_id>.failed.json`` for a run that raised). They hold fractions in [0, 1].
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from hiresmed_nb.errors import HiresmedError

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
    "resumed_from_epoch": 0,
    # the LEARNING_RATE parameter, before LR_SCALING; NaN: same as ``learning_rate``
    "base_learning_rate": math.nan,
    # from the runner's ``retry`` key: the first attempt's error and the epoch resumed from
    "retry_error": None,
    "retry_epoch": None,
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
PAPER_TABLE = Path(__file__).parent.parent / "reference" / "paper_table2.csv"
SYNTHETIC_WARNING = (
    "SYNTHETIC DATA: these numbers come from the embedded synthetic dataset, not patient data."
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise HiresmedError(f"record {str(path)!r} is not readable JSON: {error}") from None
    if not isinstance(content, dict):
        raise HiresmedError(f"record {str(path)!r} is not a JSON object")
    return content


def _row(record: dict[str, Any], path: Path) -> dict[str, Any]:
    """One frame row from one successful record (see :func:`load_records`)."""
    missing = [c for c in RECORD_COLUMNS if c not in record]
    if missing:
        raise HiresmedError(f"record {str(path)!r} lacks {', '.join(missing)}")
    row = {c: record[c] for c in RECORD_COLUMNS}
    params = record.get("params") or {}
    locality = record.get("data_locality")
    row["data_locality_ok"] = None if locality is None else bool(locality["ok"])
    for column in ("macro_auroc", "accumulation_steps", "resumed_from_epoch"):
        value = record.get(column)
        row[column] = OPTIONAL_COLUMNS[column] if value is None else value
    row["precision"] = params.get("PRECISION", "float32")
    row["compression"] = params.get("COMPRESSION", "none")
    row["base_learning_rate"] = float(params.get("LEARNING_RATE", record["learning_rate"]))
    retry = record.get("retry")
    if retry is not None and not (isinstance(retry, dict) and "first_error" in retry):
        raise HiresmedError(
            f"record {str(path)!r}: 'retry' must be an object with first_error and "
            f"resumed_from_epoch, not {retry!r}"
        )
    row["retry_error"] = None if retry is None else str(retry["first_error"])
    row["retry_epoch"] = None if retry is None else retry.get("resumed_from_epoch")
    row["mode"] = arm(row)
    return row


def load_records(study_dir: str | Path) -> pd.DataFrame:
    """Return one row per successful run record in ``study_dir/runs/*.json``.

    Columns are :data:`RECORD_COLUMNS` then :data:`OPTIONAL_COLUMNS`, sorted by cell and seed;
    ``mode`` is the run's arm (:func:`arm`). An empty frame (with those columns) when there is no
    record yet. Raises :class:`HiresmedError` naming the file when a record is not JSON, lacks a
    column or has a malformed ``retry``.
    """
    if not Path(study_dir).is_dir():
        raise HiresmedError(f"STUDY_DIR {str(study_dir)!r} is not a folder")
    rows = []
    for path in sorted((Path(study_dir) / "runs").glob("*.json")):
        if path.name.endswith(".failed.json"):
            continue
        record = _read_json(path)
        if record.get("status", "ok") == "ok":
            rows.append(_row(record, path))
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


def retried_runs(records: pd.DataFrame) -> pd.DataFrame:
    """The runs the runner retried: run id, the first attempt's error, the epoch resumed from.

    Empty (same columns) when no record carries ``retry``; older records never do.
    """
    retried = records[records["retry_error"].notna()]
    return pd.DataFrame(
        {
            "run": retried["run_id"],
            "first error": retried["retry_error"],
            "resumed from epoch": retried["retry_epoch"].map(
                lambda e: "—" if e is None or pd.isna(e) else str(int(e))
            ),
        }
    ).reset_index(drop=True)


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


def paper_records(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2 as records: one run (seed 0) per cell, accuracy as a fraction.

    The paper reports neither seeds, batch sizes nor times: those columns are NaN, and every
    comparison built on these records has one run a side (no interval).
    """
    frame = pd.DataFrame(
        {
            "run_id": "paper",
            "dataset": paper["dataset"],
            "arch": paper["arch"],
            "image_size": paper["image_size"].astype(int),
            "images_per_class": paper["images_per_class"].astype(int),
            "mode": paper["mode"],
            "n_ranks": paper["num_nodes"].astype(int),
            "seed": 0,
            "learning_rate": paper["learning_rate"].astype(float),
            "batch_size_per_rank": math.nan,
            "effective_batch_size": math.nan,
            "epochs": math.nan,
            "accuracy": paper["accuracy_pct"].astype(float) / 100,
            "balanced_accuracy": math.nan,
            "macro_f1": math.nan,
            "n_train": math.nan,
            "n_test": math.nan,
            "train_seconds": math.nan,
            "synthetic": False,
        }
    )
    for column, absent in OPTIONAL_COLUMNS.items():
        frame[column] = absent
    frame["base_learning_rate"] = frame["learning_rate"]
    return frame.sort_values([*CELL, "seed"], ignore_index=True)


def paper_cells_covered(records: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's Table 2 rows whose cell (dataset, arch, size, images per class, mode) this
    study also ran; empty for synthetic studies, whose cells the paper never has."""
    ours = records[list(CELL)].drop_duplicates()
    return paper.merge(ours, on=list(CELL), how="inner")[paper.columns]


def is_synthetic(records: pd.DataFrame) -> bool:
    """True when any record comes from an embedded synthetic dataset."""
    return bool(len(records)) and bool(records["synthetic"].any())


def has_lr_axis(records: pd.DataFrame) -> bool:
    """True when some cell (dataset, arch, size, images per class, arm, ranks) was run at more
    than one ``LEARNING_RATE``: the study sweeps the learning rate. Per-cell rates that differ
    between cells (as in the paper's grid) are not an axis."""
    if records.empty:
        return False
    rates = base_rates(records)
    counts = records.assign(_lr=rates).groupby([*CELL, "n_ranks"])["_lr"].nunique()
    return bool((counts > 1).any())


def base_rates(records: pd.DataFrame) -> pd.Series:
    """The LEARNING_RATE parameter of each record (the applied rate where it is unknown)."""
    return records["base_learning_rate"].astype(float).fillna(records["learning_rate"])


def check_metric(metric: str) -> str:
    """Return ``metric`` when it is one of :data:`METRICS`, else raise naming METRIC."""
    if metric not in METRICS:
        raise HiresmedError(f"METRIC={metric!r} must be one of {', '.join(METRICS)}")
    return metric
