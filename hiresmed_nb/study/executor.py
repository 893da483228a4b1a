"""Executing one notebook with papermill on a kernel that keeps the runner's console quiet.

The kernels the runner starts talk to it over IPC (Unix sockets in a private temporary folder)
rather than TCP on loopback: nothing else on the machine can reach them, and ipykernel has no
cause for its "Kernel is running over TCP without encryption" warning. They start with
``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment or the kernelspec says otherwise, so
TensorFlow's INFO lines (oneDNN, CPU features) are not printed; ipyparallel engines inherit it.

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
import shutil
import tempfile
import threading
import typing
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import CaselessStrEnum, Unicode

from hiresmed_nb.cluster.errors import RunTimeoutError

KERNEL_NAME = "hiresmed"
# Beyond RUN_TIMEOUT for the cells around training (the split, starting or attaching engines,
# the plots and the record): the ranks' own bound fires first and gives the named error.
NOTEBOOK_GRACE_SECONDS = 300
WATCHDOG_RETRY_SECONDS = 1.0  # a kernel not yet started when the limit passed: look again
TF_LOG_LEVEL = "2"  # TensorFlow's C++ logs: warnings and errors only


class RunnerKernelManager(AsyncKernelManager):
    """A kernel manager for the runner: IPC transport, quiet TensorFlow, optional output log.

    It overrides private coroutines of jupyter_client (:data:`hiresmed_nb.compat.
    KERNEL_MANAGER_HOOKS`, checked against the version compat names).

    nbclient (through papermill) creates it with the traitlets config it was given, so the log
    file is set as ``RunnerKernelManager.output_file``.
    """

    transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)
    output_file = Unicode(
        "", config=True, help="file for the kernel process's stdout and stderr; empty: inherit"
    )
    execution = Unicode("", config=True, help="the execution that started this kernel")
    _socket_dir: str | None = None
    running: typing.ClassVar[set[RunnerKernelManager]] = set()  # kernels started, not yet ended

    async def _async_pre_start_kernel(self, **kw: Any) -> tuple[list[str], dict[str, Any]]:
        if self.transport == "ipc" and self._socket_dir is None:
            # Without an explicit path the sockets would be "kernel-ipc-N" in the current folder.
            self._socket_dir = tempfile.mkdtemp(prefix="hiresmed-kernel-")  # mode 0700
            self.ip = os.path.join(self._socket_dir, "kernel")
        return await super()._async_pre_start_kernel(**kw)

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        env = dict(kw.get("env") or os.environ)  # already holds the kernelspec's env
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
        kw["env"] = env
        RunnerKernelManager.running.add(self)
        if not self.output_file:
            await super()._async_launch_kernel(kernel_cmd, **kw)
            return
        with open(self.output_file, "ab") as log:  # the kernel process holds its own copy
            kw.update(stdout=log, stderr=log)
            await super()._async_launch_kernel(kernel_cmd, **kw)

    async def cleanup_resources(self, restart: bool = False) -> None:  # type: ignore[override]
        """Remove the connection and socket files; after the last use, the socket folder too."""
        await super()._async_cleanup_resources(restart=restart)
        if not restart:
            RunnerKernelManager.running.discard(self)
        if not restart and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None


def kill_running_kernels(execution: str = "") -> int:
    """Kill every kernel the runner's executions started that still runs (Ctrl-C of a packed
    study: notebooks execute in other threads), or only that of ``execution``; returns how many
    were running."""
    killed = 0
    for manager in list(RunnerKernelManager.running):
        if execution and manager.execution != execution:
            continue
        process = getattr(manager.provisioner, "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            killed += 1
    return killed


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
) -> None:
    """Execute ``notebook`` into ``output`` with papermill on the ``hiresmed`` kernel.

    Writes to a temporary name beside ``output`` and renames it when papermill stops (also after
    a failure, so the failing cell's traceback is kept in ``output``). Quiet (the default): no
    cell progress bar, and the kernel's own output goes to :func:`kernel_log_path` (replaced each
    time). ``verbose``: papermill's cell progress bar, and the kernel's output on this console.
    With ``RUN_TIMEOUT`` in ``parameters``, a notebook still running ``grace_seconds`` past it
    has its kernel killed and raises :class:`RunTimeoutError`.
    """
    import papermill
    from traitlets.config import Config

    partial = output.with_name(output.stem + ".partial.ipynb")
    config = Config()
    if not verbose:
        log = kernel_log_path(output)
        log.unlink(missing_ok=True)
        config.RunnerKernelManager.output_file = str(log)
    limit = parameters.get("RUN_TIMEOUT")
    watchdog = None
    if limit is not None:
        config.RunnerKernelManager.execution = secrets.token_hex(8)
        watchdog = Watchdog(limit + grace_seconds, config.RunnerKernelManager.execution)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(partial),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            cwd=str(cwd),
            progress_bar={"position": 1, "leave": False, "desc": "  cells"} if verbose else False,
            kernel_manager_class=RunnerKernelManager,  # passed on to nbclient's NotebookClient
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
