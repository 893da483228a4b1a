"""A study: parameter files expanded into a grid of runs, each run one execution of 01_train.

Parameter files are flat YAML. A key whose value is a list is a grid axis (``CLASSES`` only when its
value is a list of lists, since one ``CLASSES`` value is already a list). Later files override
earlier ones, and ``-p KEY VALUE`` overrides last. Besides the notebook parameters of
:data:`hiresmed_nb.params.PARAMETERS` a file may hold three runner keys:

- ``STUDY``: the study's name; its outputs go to ``outputs/<STUDY>/``.
- ``SEEDS``: the list of seeds, i.e. the ``SEED`` axis.
- ``CELLS``: per-cell overrides, a list of ``{match: {KEY: value, ...}, set: {KEY: value, ...}}``.
  After the grid is expanded, every entry whose ``match`` equals a run (a list in ``match`` means
  "any of these") applies its ``set`` to that run, in file order, so a later entry wins.

Every expanded run is checked with :func:`hiresmed_nb.params.validate` before anything executes,
so a bad grid is one :class:`HiresmedError` and nothing runs.

The runner executes ``notebooks/01_train.ipynb`` once per run into
``outputs/<STUDY>/runs/<run_id>.ipynb``; the notebook writes ``<run_id>.json`` beside it. A run
whose record exists is skipped (``force`` reruns it); a run that fails leaves
``<run_id>.failed.json`` (the error and the cell it failed in) and is retried next time.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hiresmed_nb import params as P
from hiresmed_nb.executor import papermill_executor
from hiresmed_nb.params import HiresmedError
from hiresmed_nb.records import write_json_atomic

RUNNER_KEYS = ("STUDY", "SEEDS", "CELLS")
TRAIN_NOTEBOOK = "notebooks/01_train.ipynb"
REPORT_NOTEBOOK = "notebooks/02_report.ipynb"
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# An executor runs one notebook: (input notebook, output notebook, parameters, cwd) -> None.
# It raises (papermill's PapermillExecutionError or anything else) when the notebook fails.
Executor = Callable[[Path, Path, dict[str, Any], Path], None]


# ---------------------------------------------------------------------------------------------
# Reading parameter files and overrides
# ---------------------------------------------------------------------------------------------


def load_param_files(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Merge flat YAML parameter files, a later file's keys replacing an earlier file's.

    Raises :class:`HiresmedError` naming the file when one is missing, is not YAML, or is not a
    flat mapping of UPPER_SNAKE keys.
    """
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise HiresmedError(f"parameter file {str(path)!r} does not exist")
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise HiresmedError(
                f"parameter file {str(path)!r} is not valid YAML: {error}"
            ) from None
        if content is None:
            continue
        if not isinstance(content, dict):
            raise HiresmedError(
                f"parameter file {str(path)!r} must be a mapping of KEY: value, "
                f"not a {type(content).__name__}"
            )
        for key, value in content.items():
            if not isinstance(key, str):
                raise HiresmedError(f"parameter file {str(path)!r}: key {key!r} is not a name")
            merged[key] = value
    return merged


def resolve_value(text: str) -> Any:
    """Turn a ``-p KEY VALUE`` string into a value, as papermill's ``-p`` does.

    "True"/"False" become bools, "None" None, integers int, other numbers float, anything else
    stays a string. One addition: a value written as a YAML list or mapping (starting with ``[``
    or ``{``) is parsed as YAML, so ``-p SEEDS "[0, 1]"`` gives a grid axis.
    """
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError as error:
            raise HiresmedError(
                f"value {text!r} looks like a YAML list but is not: {error}"
            ) from None
    if text == "True":
        return True
    if text == "False":
        return False
    if text == "None":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def apply_overrides(config: dict[str, Any], overrides: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Return ``config`` with each ``(KEY, VALUE)`` string pair applied in order (last wins)."""
    merged = dict(config)
    for key, text in overrides:
        merged[key] = resolve_value(text) if isinstance(text, str) else text
    return merged


# ---------------------------------------------------------------------------------------------
# Expanding the grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run of the study: its id and its validated notebook parameters."""

    run_id: str
    params: dict[str, Any]


def _check_key(key: str, where: str) -> None:
    known = (*P.PARAMETERS, *RUNNER_KEYS)
    if key not in P.PARAMETERS and key not in RUNNER_KEYS:
        raise HiresmedError(f"unknown key {key!r} in {where}" + P.suggest(key, known))


def _is_axis(key: str, value: Any) -> bool:
    if key == "CLASSES":
        return isinstance(value, list) and (
            len(value) == 0 or all(isinstance(v, list) for v in value)
        )
    return isinstance(value, list)


def study_name(config: dict[str, Any]) -> str:
    """Return the ``STUDY`` name of a merged config; it names the folder ``outputs/<STUDY>``."""
    name = config.get("STUDY")
    if name is None:
        raise HiresmedError(
            "STUDY is not set: add 'STUDY: <name>' to a parameter file or pass -p STUDY <name>"
        )
    if not isinstance(name, str) or not _STUDY_NAME.match(name):
        raise HiresmedError(
            f"STUDY={name!r} must be a folder name of letters, digits, '_', '-' or '.'"
        )
    return name


def _parse_cells(cells: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    if cells is None:
        return []
    if not isinstance(cells, list):
        raise HiresmedError("CELLS must be a list of {match: {...}, set: {...}} entries")
    parsed = []
    for index, entry in enumerate(cells):
        where = f"CELLS[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"match", "set"} or "set" not in entry:
            raise HiresmedError(f"{where} must be a mapping with keys 'match' and 'set'")
        match = entry.get("match") or {}
        to_set = entry["set"]
        if not isinstance(match, dict) or not isinstance(to_set, dict):
            raise HiresmedError(f"{where}: 'match' and 'set' must each be a mapping of KEY: value")
        for key in (*match, *to_set):
            if key not in P.PARAMETERS:
                raise HiresmedError(
                    f"unknown parameter {key!r} in {where}" + P.suggest(key, tuple(P.PARAMETERS))
                )
        parsed.append((match, to_set))
    return parsed


def _matches(run: dict[str, Any], match: dict[str, Any]) -> bool:
    for key, wanted in match.items():
        value = run.get(key, P.PARAMETERS[key][0])
        options = wanted if isinstance(wanted, list) and key != "CLASSES" else [wanted]
        if value not in options:
            return False
    return True


def expand(config: dict[str, Any]) -> list[Run]:
    """Expand a merged config into its runs, every one validated, in grid order.

    Axes vary in the order their keys first appear (the last axis fastest). Raises one
    :class:`HiresmedError` for an unknown key (with the nearest name), an empty axis, a malformed
    ``CELLS`` entry, any run that :func:`hiresmed_nb.params.validate` rejects, or two runs that
    share a run id but differ in another parameter (the run id would not tell them apart).
    """
    for key in config:
        _check_key(key, "the study parameters")
    study_name(config)
    cells = _parse_cells(config.get("CELLS"))
    notebook = {k: v for k, v in config.items() if k not in RUNNER_KEYS}
    if "SEEDS" in config:
        if "SEED" in config:
            raise HiresmedError("give SEEDS (the seed axis) or SEED, not both")
        seeds = config["SEEDS"]
        notebook["SEED"] = seeds if isinstance(seeds, list) else [seeds]
    if "RESULTS_DIR" in notebook:
        raise HiresmedError(
            "RESULTS_DIR is chosen by the runner (outputs/<STUDY>/runs): remove it from the "
            "parameter files and set STUDY (or --outputs) instead"
        )

    axes: list[tuple[str, list[Any]]] = []
    fixed: dict[str, Any] = {}
    for key, value in notebook.items():
        if _is_axis(key, value):
            if not value:
                name = "SEEDS" if key == "SEED" and "SEEDS" in config else key
                raise HiresmedError(
                    f"{name} is an empty list: a grid axis needs at least one value"
                )
            axes.append((key, value))
        else:
            fixed[key] = value

    runs: dict[str, Run] = {}
    for combination in itertools.product(*(values for _, values in axes)):
        raw = dict(fixed)
        raw.update(zip((key for key, _ in axes), combination, strict=True))
        for match, to_set in cells:
            if _matches(raw, match):
                raw.update(to_set)
        try:
            checked = P.validate(raw)
        except HiresmedError as error:
            shown = ", ".join(f"{k}={raw[k]!r}" for k, _ in axes)
            raise HiresmedError(
                f"{error} (in the run with {shown})" if shown else str(error)
            ) from None
        rid = P.run_id(checked)
        if rid in runs and runs[rid].params != checked:
            differ = sorted(k for k in checked if checked[k] != runs[rid].params[k])
            raise HiresmedError(
                f"two runs share run id {rid!r} but differ in {', '.join(differ)}, which the run "
                "id does not spell: put them in separate studies"
            )
        runs[rid] = Run(rid, checked)
    return list(runs.values())


def plan(
    files: Iterable[str | Path], overrides: Iterable[tuple[str, str]] = ()
) -> tuple[str, list[Run]]:
    """Read parameter files and overrides; return the study name and its validated runs."""
    config = apply_overrides(load_param_files(files), overrides)
    runs = expand(config)
    return study_name(config), runs


# ---------------------------------------------------------------------------------------------
# Executing
# ---------------------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def failure_record(run: Run, error: BaseException, notebook: Path) -> dict[str, Any]:
    """Describe a failed run: the error, and the cell it failed in when papermill says so."""
    return {
        "run_id": run.run_id,
        "status": "failed",
        "params": run.params,
        "cell_index": getattr(error, "cell_index", None),  # in the notebook as executed
        "cell_source": getattr(error, "source", None),
        "ename": getattr(error, "ename", None) or type(error).__name__,
        "evalue": getattr(error, "evalue", None) or str(error),
        "notebook": str(notebook),
        "traceback": "".join(traceback.format_exception_only(type(error), error))[-4000:],
        "failed_at": _now(),
    }


@dataclass
class StudyResult:
    """What one invocation of the runner did."""

    study_dir: Path
    executed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)
    report_html: Path | None = None
    report_error: str | None = None

    @property
    def ok(self) -> bool:
        """True when no run failed and the report rendered (or was not asked for)."""
        return not self.failed and self.report_error is None


def run_study(
    runs: list[Run],
    study_dir: Path,
    *,
    executor: Executor | None = None,
    force: bool = False,
    report: bool = True,
    root: Path | None = None,
    progress: bool = True,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Execute the runs whose record is missing, isolate failures, then render the report.

    Records land in ``study_dir/runs/<run_id>.json`` (written by the notebook), executed notebooks
    beside them, failures in ``<run_id>.failed.json``. Returns a :class:`StudyResult`; it never
    raises for a failing run (``KeyboardInterrupt`` still stops it). ``executor`` defaults to
    :func:`hiresmed_nb.executor.papermill_executor` (``verbose`` as given); tests pass a fake one.

    The console shows one progress bar over the runs (the current run id, runs done and left, an
    estimate of the time left) and one line per finished or failed run; the details of a run are
    in its executed notebook.
    """
    from tqdm.auto import tqdm

    executor = executor or functools.partial(papermill_executor, verbose=verbose)
    root = root or P.project_root()
    runs_dir = study_dir / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    result = StudyResult(study_dir=study_dir)
    pending = []
    for run in runs:
        if (runs_dir / f"{run.run_id}.json").exists() and not force:
            result.skipped.append(run.run_id)
        else:
            pending.append(run)
    echo(
        f"study {study_dir.name}: {len(runs)} runs, {len(result.skipped)} already recorded, "
        f"{len(pending)} to execute"
    )

    def runs_done(done: int) -> str:
        return f"runs {done}/{len(pending)} done, {len(pending) - done} left"

    bar = tqdm(
        pending,
        desc=runs_done(0),
        unit="run",
        disable=not progress or not pending,
        position=0,
        bar_format="{desc} |{bar:20}| {elapsed} elapsed, ETA {remaining}{postfix}",
    )
    for done, run in enumerate(bar):
        bar.set_postfix_str(f"now {run.run_id}")
        record = runs_dir / f"{run.run_id}.json"
        failed_path = runs_dir / f"{run.run_id}.failed.json"
        output = runs_dir / f"{run.run_id}.ipynb"
        parameters = dict(run.params, RESULTS_DIR=str(runs_dir.resolve()))
        if force and record.exists():
            record.unlink()
        started = time.monotonic()
        try:
            executor(root / TRAIN_NOTEBOOK, output, parameters, root)
            if not record.exists():
                raise HiresmedError(f"the notebook finished but wrote no record {record.name}")
        except Exception as error:  # isolate: record the failure, go on with the other runs
            result.failed[run.run_id] = failure_record(run, error, output)
            write_json_atomic(result.failed[run.run_id], failed_path)
            cell = result.failed[run.run_id]["cell_index"]
            where = f" in cell {cell}" if cell is not None else ""
            bar.write(f"FAILED {run.run_id}{where}: {result.failed[run.run_id]['ename']}")
        else:
            failed_path.unlink(missing_ok=True)
            result.executed.append(run.run_id)
            bar.write(f"done   {run.run_id} ({time.monotonic() - started:.0f} s)")
        bar.set_description_str(runs_done(done + 1), refresh=False)
        if done + 1 == len(pending):
            bar.set_postfix_str("", refresh=False)  # the bar closes itself after the last run
    bar.close()

    if report:
        try:
            result.report_html = render_report(study_dir, executor=executor, root=root)
        except Exception as error:
            result.report_error = f"{type(error).__name__}: {error}"
    for line in summary_lines(result):
        echo(line)
    return result


def render_report(
    study_dir: Path, *, executor: Executor | None = None, root: Path | None = None
) -> Path:
    """Execute 02_report into ``study_dir/report.ipynb`` and render ``report.html`` (no code)."""
    import nbformat
    from nbconvert import HTMLExporter

    executor = executor or papermill_executor
    root = root or P.project_root()
    notebook = study_dir / "report.ipynb"
    executor(root / REPORT_NOTEBOOK, notebook, {"STUDY_DIR": str(study_dir.resolve())}, root)
    exporter = HTMLExporter(exclude_input=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    html = study_dir / "report.html"
    tmp = html.with_name(html.name + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html)
    return html


def summary_lines(result: StudyResult) -> list[str]:
    """The closing summary: counts, each failure with its cell and error, where the report is."""
    lines = [
        f"executed {len(result.executed)}, skipped {len(result.skipped)} (already recorded), "
        f"failed {len(result.failed)}"
    ]
    for rid, failure in result.failed.items():
        cell = failure.get("cell_index")
        where = f"in cell {cell}" if cell is not None else "before any cell"
        evalue = str(failure.get("evalue", "")).strip().splitlines()
        lines.append(
            f"  FAILED {rid}: {failure['ename']} {where}: {evalue[0] if evalue else ''}"
            f" (see runs/{rid}.failed.json)"
        )
    if result.report_html is not None:
        lines.append(f"report: {result.report_html}")
    if result.report_error is not None:
        lines.append(f"report FAILED: {result.report_error}")
    return lines
