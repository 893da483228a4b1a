"""Executing one notebook with papermill on a kernel that keeps the runner's console quiet
(:mod:`.kernels`): a spare one, already warmed up, when the study has one for it.

A notebook whose parameters hold ``RUN_TIMEOUT`` is bounded as a whole: past that limit plus
:data:`NOTEBOOK_GRACE_SECONDS` its kernel (the one this execution started, no other) is killed
and the execution raises :class:`~hiresmed_nb.cluster.errors.RunTimeoutError`. Training itself
is bounded sooner, in the wait for its ranks; this catches a notebook that hangs anywhere else.

ipykernel copies whatever a cell writes, also at the file-descriptor level (TensorFlow's C++
logs, subprocesses), into the notebook and echoes it to the kernel process's own stdout and
stderr. Quietly, those go to a log file beside the executed notebook (which also keeps what a
kernel prints outside any cell, e.g. as it dies); verbosely, to the runner's console.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path
from typing import Any

from hiresmed_nb.cluster.errors import RunTimeoutError
from hiresmed_nb.study.kernels import (
    KERNEL_NAME,
    RunnerKernelManager,
    SpareKernels,
    kill_running_kernels,
)

# Beyond RUN_TIMEOUT for the cells around training (the split, starting or attaching engines,
# the plots and the record): the ranks' own bound fires first and gives the named error.
NOTEBOOK_GRACE_SECONDS = 300
WATCHDOG_RETRY_SECONDS = 1.0  # a kernel not yet started when the limit passed: look again
# A run's kernel starts while a packed study's other runs keep every core busy: papermill's 60 s
# failed a run on a loaded 2-core VM (its kernel answered later), so the bound is 180 s.
KERNEL_START_SECONDS = 180


def kernel_log_path(output: Path) -> Path:
    """Where the quiet executor puts the kernel's own output for the notebook ``output``."""
    return output.with_name(output.stem + ".kernel.log")


def papermill_executor(
    notebook: Path,
    output: Path,
    parameters: dict[str, Any],
    cwd: Path,
    *,
    verbose: bool = False,
    grace_seconds: float = NOTEBOOK_GRACE_SECONDS,
    kernels: SpareKernels | None = None,
) -> None:
    """Execute ``notebook`` into ``output`` with papermill on the ``hiresmed`` kernel.

    Writes to a temporary name beside ``output`` and renames it when papermill stops (also after
    a failure, so the failing cell's traceback is kept in ``output``). Quiet (the default): no
    cell progress bar, and the kernel's own output goes to :func:`kernel_log_path` (replaced each
    time). ``verbose``: papermill's cell progress bar, and the kernel's output on this console.
    With ``RUN_TIMEOUT`` in ``parameters``, a notebook still running ``grace_seconds`` past it
    has its kernel killed and raises :class:`RunTimeoutError`. ``kernels``: the study's spare
    kernels; the execution takes one (warmed up for ``notebook``) and shuts it down at the end.
    """
    import papermill
    from traitlets.config import Config

    partial = output.with_name(output.stem + ".partial.ipynb")
    spare = kernels.take() if kernels is not None and kernels.serves(notebook) else None
    config = Config()
    if not verbose:
        log = kernel_log_path(output)
        log.unlink(missing_ok=True)
        config.RunnerKernelManager.output_file = str(log)
        if spare is not None and spare.output_file:
            os.replace(spare.output_file, log)  # the kernel keeps writing to it
            spare.output_file = str(log)
    limit = parameters.get("RUN_TIMEOUT")
    watchdog = None
    if limit is not None:
        config.RunnerKernelManager.execution = secrets.token_hex(8)
        if spare is not None:
            spare.execution = config.RunnerKernelManager.execution
        watchdog = Watchdog(limit + grace_seconds, config.RunnerKernelManager.execution)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(partial),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            cwd=str(cwd),
            progress_bar={"position": 1, "leave": False, "desc": "  cells"} if verbose else False,
            start_timeout=KERNEL_START_SECONDS,
            # Both passed on to nbclient's NotebookClient, which starts a kernel when km is None.
            kernel_manager_class=RunnerKernelManager,
            km=spare,
            config=config,
        )
    except Exception as error:
        if watchdog is not None and watchdog.fired.is_set():
            raise RunTimeoutError(
                limit,
                f"the notebook was still running {limit + grace_seconds:g} s after it started "
                f"(the limit plus {grace_seconds:g} s for the cells around training), so its "
                f"kernel was killed ({type(error).__name__})",
            ) from None
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if partial.exists():
            os.replace(partial, output)
        if spare is not None:
            spare.end()  # nbclient ends only the kernels it started


class Watchdog:
    """Kill the kernel of one execution (and no other) if it still runs after ``seconds``; if
    that kernel has not started yet by then, kill it as soon as it has."""

    def __init__(self, seconds: float, execution: str):
        self.fired = threading.Event()
        self._cancelled = threading.Event()
        self._execution = execution
        self._thread = threading.Thread(
            target=self._watch, args=(seconds,), name="watchdog", daemon=True
        )
        self._thread.start()

    def _watch(self, seconds: float) -> None:
        if self._cancelled.wait(seconds):
            return
        self.fired.set()
        while not kill_running_kernels(self._execution):
            if self._cancelled.wait(WATCHDOG_RETRY_SECONDS):
                return

    def cancel(self) -> None:
        self._cancelled.set()
        self._thread.join()
