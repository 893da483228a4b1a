"""Executing a study: ``notebooks/01_train.ipynb`` once per run, then the report.

The runner executes the notebook into ``outputs/<STUDY>/runs/<run_id>.ipynb``; the notebook writes
``<run_id>.json`` beside it. A run whose record exists is skipped (``force`` reruns it); a run that
fails leaves ``<run_id>.failed.json`` (the error and the cell it failed in) and is retried next
time. Distributed runs attach to a warm cluster the runner keeps per placement (its
:class:`~hiresmed_nb.cluster.pool.Pool`); a run whose rank fails or is lost is retried once, from
its last epoch's checkpoint, on a new cluster, and its record says so (``retry``). A run past its
time limit (``RUN_TIMEOUT``) gives up its engines and is not retried; engines that cannot be
replaced fail their run with that error (and a packed study's slots leave it).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiresmed_nb import params as P
from hiresmed_nb.cluster.devices import Slot
from hiresmed_nb.cluster.pool import Pool
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.science.records import write_json_atomic
from hiresmed_nb.study.executor import papermill_executor
from hiresmed_nb.study.grid import Run
from hiresmed_nb.study.kernels import SpareKernels, kill_running_kernels
from hiresmed_nb.study.packed import (
    SlotRequest,
    run_on_slots,
    slot_engines,
    study_slots,
)
from hiresmed_nb.study.packing import check_fits

TRAIN_NOTEBOOK = "notebooks/01_train.ipynb"
REPORT_NOTEBOOK = "notebooks/02_report.ipynb"

RANK_FAILURES = ("RankFailedError", "RankLostError")
# Failures after which the run's engines may be stuck or gone: they are replaced (retired).
ENGINE_FAILURES = (*RANK_FAILURES, "RunTimeoutError")
# An executor runs one notebook: (input notebook, output notebook, parameters, cwd, *, kernels)
# -> None, where ``kernels`` holds the study's spare kernels (SpareKernels) it may take one from.
# It raises (papermill's PapermillExecutionError or anything else) when the notebook fails.
Executor = Callable[..., None]


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
    occupancy: Any = None  # a packed study's slots account (study.occupancy.Occupancy)

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
    slots: SlotRequest | None = None,
) -> StudyResult:
    """Execute the runs whose record is missing, isolate failures, then render the report.

    Records land in ``study_dir/runs/<run_id>.json`` (written by the notebook), executed notebooks
    beside them, failures in ``<run_id>.failed.json``. Returns a :class:`StudyResult`; it never
    raises for a failing run (``KeyboardInterrupt`` still stops it, after stopping the study's
    pool's clusters). ``executor`` defaults to :func:`hiresmed_nb.study.executor.papermill_executor`
    (``verbose`` as given); tests pass a fake one.

    Distributed runs share one warm cluster per placement (a
    :class:`~hiresmed_nb.cluster.pool.Pool`). A run whose rank fails or is lost replaces that
    cluster and is retried once: it resumes from its last complete epoch's checkpoint, and its
    record gets ``retry`` (the first error, the epoch).

    ``slots`` (``--slots``, ``--hosts``, an attached cluster's file), or GPUs found on this
    machine, pack the study: as many runs at once as the free slots allow, each on its own
    slots' engines (:mod:`.packed`); a run wider than the slots is an error before
    anything starts. Without them the runs execute one at a time.

    The console shows one progress bar over the runs (the current run id, runs done and left, an
    estimate of the time left) and one line per finished or failed run; the details of a run are
    in its executed notebook. A packed study adds a line per change of which runs are on which
    slots, and the slots' utilisation at the end.
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
    slots = slots or SlotRequest()
    planned = study_slots(slots) if pending and not slots.cluster_file else None
    if planned is not None:
        check_fits(pending, planned)  # before any engine starts or any file is written
    from hiresmed_nb.science.tensorboard_logs import write_experiment

    # TensorBoard's HParams dashboard lists every axis and metric before the runs finish.
    write_experiment(runs_dir.resolve(), [run.params for run in runs])
    echo(
        f"study {study_dir.name}: {len(runs)} runs, {len(result.skipped)} already recorded, "
        f"{len(pending)} to execute"
    )

    bar = tqdm(
        total=len(pending),
        desc=_runs_done(0, len(pending)),
        unit="run",
        disable=not progress or not pending,
        position=0,
        bar_format="{desc} |{bar:20}| {elapsed} elapsed, ETA {remaining}{postfix}",
    )
    # Lines above the bar; without a bar, to ``echo``.
    write = bar.write if progress and pending else echo
    # The next run's kernel starts and imports while the run before it trains.
    kernels = SpareKernels(
        root / TRAIN_NOTEBOOK, root, runs=len(pending), log_dir=runs_dir, verbose=verbose
    )
    run_executor = functools.partial(executor, kernels=kernels)
    try:
        if pending and (planned is not None or slots.cluster_file):
            execute = functools.partial(
                _execute_run, runs_dir=runs_dir, root=root, executor=run_executor, force=force
            )
            _run_packed(pending, runs_dir, slots, planned, execute, result, bar, write)
        else:
            _run_one_at_a_time(pending, runs_dir, root, run_executor, force, result, bar, write)
    finally:
        kernels.close()
    bar.close()

    if report:
        try:
            result.report_html = render_report(study_dir, executor=executor, root=root)
        except Exception as error:
            result.report_error = f"{type(error).__name__}: {error}"
    for line in summary_lines(result):
        echo(line)
    return result


def _runs_done(done: int, total: int) -> str:
    return f"runs {done}/{total} done, {total - done} left"


def _run_one_at_a_time(
    pending: list[Run],
    runs_dir: Path,
    root: Path,
    executor: Executor,
    force: bool,
    result: StudyResult,
    bar: Any,
    write: Callable[[str], None],
) -> None:
    """Execute the runs in order, distributed ones on the warm clusters of a :class:`Pool`."""
    with Pool() as pool:
        for done, run in enumerate(pending):
            bar.set_postfix_str(f"now {run.run_id}")
            _execute_run(run, runs_dir, root, executor, pool, force, result, write)
            bar.set_description_str(_runs_done(done + 1, len(pending)), refresh=False)
            bar.update(1)
            if done + 1 == len(pending):
                bar.set_postfix_str("", refresh=False)


def _run_packed(
    pending: list[Run],
    runs_dir: Path,
    slots: SlotRequest,
    planned: list[Slot] | None,
    execute: Callable[..., bool],
    result: StudyResult,
    bar: Any,
    write: Callable[[str], None],
) -> None:
    """Execute the runs packed onto slots, each notebook in its own thread (and kernel)."""
    finished: list[str] = []
    lock = threading.Lock()

    def execute_one(run: Run, pool: Any) -> bool:
        ok = execute(run, pool=pool, result=result, write=write)
        with lock:  # runs end in their own threads
            finished.append(run.run_id)
            bar.set_description_str(_runs_done(len(finished), len(pending)), refresh=False)
            bar.update(1)
        return ok

    with slot_engines(slots, planned) as engines:  # stopped also on Ctrl-C or an error
        if planned is None:  # an attached cluster: its engines are the slots
            check_fits(pending, engines.slots)
        packed = run_on_slots(
            pending, engines, execute_one, echo=write, on_interrupt=kill_running_kernels
        )
        result.occupancy = packed.occupancy
    # A run that failed without recording it (no slots left wide enough for it, or its thread
    # raised): its failure is recorded here, so every run ends as a record or a failure.
    for run, error in packed.failed:
        if run.run_id not in result.failed and run.run_id not in result.executed:
            failed_path = runs_dir / f"{run.run_id}.failed.json"
            notebook = runs_dir / f"{run.run_id}.ipynb"
            record_failure(result, failure_record(run, error, notebook), failed_path)


def _execute_run(
    run: Run,
    runs_dir: Path,
    root: Path,
    executor: Executor,
    pool: Any,
    force: bool,
    result: StudyResult,
    write: Callable[[str], None],
) -> bool:
    """Execute one run (retried once after a rank failure); record its outcome in ``result``.
    Returns whether it succeeded. ``pool``: a :class:`Pool`, or a packed run's slots."""
    record = runs_dir / f"{run.run_id}.json"
    failed_path = runs_dir / f"{run.run_id}.failed.json"
    output = runs_dir / f"{run.run_id}.ipynb"
    parameters = dict(run.params, RESULTS_DIR=str(runs_dir.resolve()))
    if force and record.exists():
        record.unlink()
    started = time.monotonic()
    first_error: BaseException | None = None
    while True:
        try:
            executor(root / TRAIN_NOTEBOOK, output, pool.attach_parameters(parameters), root)
            if not record.exists():
                raise HiresmedError(f"the notebook finished but wrote no record {record.name}")
        except Exception as error:
            retire_error = _retire(pool, parameters) if _name(error) in ENGINE_FAILURES else None
            if is_rank_failure(error) and first_error is None and retire_error is None:
                first_error = error
                write(f"RETRY  {run.run_id}: {_one_line(error)}; resuming on a new cluster")
                continue
            # Isolate: record the failure, go on with the other runs. Engines that could not be
            # replaced (or an attached cluster's engine that is gone) are why the run cannot go
            # on: that is its error, after the run's own.
            failure = failure_record(run, retire_error or error, output)
            if retire_error is not None:
                failure["run_error"] = _one_line(error)
            record_failure(result, failure, failed_path)
            cell = failure["cell_index"]
            where = f" in cell {cell}" if cell is not None else ""
            write(f"FAILED {run.run_id}{where}: {failure['ename']}")
            return False
        break
    if first_error is not None:
        mark_retry(record, first_error)
    failed_path.unlink(missing_ok=True)
    result.executed.append(run.run_id)
    write(f"done   {run.run_id} ({time.monotonic() - started:.0f} s)")
    return True


def _retire(pool: Any, parameters: dict[str, Any]) -> Exception | None:
    """Replace the engines a failed run used; the error if that failed (None: replaced)."""
    try:
        pool.retire_parameters(parameters)
    except Exception as error:
        return error
    return None


def record_failure(result: StudyResult, failure: dict[str, Any], failed_path: Path) -> None:
    """Keep a failed run's record in ``result`` and in its ``.failed.json``."""
    result.failed[failure["run_id"]] = failure
    write_json_atomic(failure, failed_path)


def _name(error: BaseException) -> str:
    """The name of the exception a notebook raised (papermill gives it as ``ename``)."""
    return getattr(error, "ename", None) or type(error).__name__


def is_rank_failure(error: BaseException) -> bool:
    """Whether a notebook failed because a rank raised or was lost (papermill names the
    exception the cell raised in ``ename``)."""
    return _name(error) in RANK_FAILURES


def _one_line(error: BaseException) -> str:
    ename = getattr(error, "ename", None) or type(error).__name__
    evalue = str(getattr(error, "evalue", None) or error).strip().splitlines()
    return f"{ename}: {evalue[0] if evalue else ''}"


def mark_retry(record_file: Path, first_error: BaseException) -> None:
    """Add ``retry`` to a record written by a retried run: the first attempt's error and the
    epoch the retry resumed from (the report lists retried runs)."""
    import json

    record = json.loads(record_file.read_text())
    record["retry"] = {
        "first_error": _one_line(first_error),
        "resumed_from_epoch": record.get("resumed_from_epoch", 0),
    }
    write_json_atomic(record, record_file)


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
