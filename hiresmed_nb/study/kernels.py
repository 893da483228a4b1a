"""The runner's kernels: how they start and end, and spares warmed up ahead of the runs.

The kernels the runner starts talk to it over IPC (Unix sockets in a private temporary folder)
rather than TCP on loopback: nothing else on the machine can reach them, and ipykernel has no
cause for its "Kernel is running over TCP without encryption" warning. They start with
``TF_CPP_MIN_LOG_LEVEL=2`` unless the environment or the kernelspec says otherwise, so
TensorFlow's INFO lines (oneDNN, CPU features) are not printed; ipyparallel engines inherit it.

A study's runs all execute one notebook, so the next run's kernel need not wait for the run
before it to end: :class:`SpareKernels` starts it while that run trains and runs the notebook's
own import statements in it (silently: no cell, no history, no names left behind). The run then
begins at its parameters cell. Its kernel is new to it, as a kernel papermill starts would be;
only the kernel start and the imports have already happened.
"""

from __future__ import annotations

import ast
import asyncio
import os
import queue
import secrets
import shutil
import tempfile
import threading
import time
import typing
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from traitlets import CaselessStrEnum, Unicode

KERNEL_NAME = "hiresmed"
TF_LOG_LEVEL = "2"  # TensorFlow's C++ logs: warnings and errors only
# As nbclient starts a kernel: IPython's history in memory, not in the user's profile.
KERNEL_ARGUMENTS = ["--HistoryManager.hist_file=:memory:"]
WARM_UP_SECONDS = 120  # a spare's start and imports; past it the run starts its own kernel
WARM_UP_POLL_SECONDS = 1.0  # how often a warm-up waiting for its reply checks its kernel lives
WARM_UP_FUNCTION = "_hiresmed_warm_up"


class RunnerKernelManager(AsyncKernelManager):
    """A kernel manager for the runner: IPC transport, quiet TensorFlow, optional output log.

    It overrides private coroutines of jupyter_client (:data:`hiresmed_nb.compat.
    KERNEL_MANAGER_HOOKS`, checked against the version compat names).

    nbclient (through papermill) creates it with the traitlets config it was given, so the log
    file is set as ``RunnerKernelManager.output_file``; a spare's is set when it is created.
    """

    transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)
    output_file = Unicode(
        "", config=True, help="file for the kernel process's stdout and stderr; empty: inherit"
    )
    execution = Unicode("", config=True, help="the execution that started this kernel")
    _socket_dir: str | None = None
    running: typing.ClassVar[set[RunnerKernelManager]] = set()  # kernels started, not yet ended

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._clients: list[Any] = []

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

    def client(self, **kwargs: Any) -> Any:
        """A client of this kernel (nbclient's, for the execution), kept to close it at the end:
        nbclient leaves the client of a kernel it did not start open."""
        client = super().client(**kwargs)
        self._clients.append(client)
        return client

    def process_alive(self) -> bool:
        """Whether the kernel process this manager started still runs."""
        process = getattr(self.provisioner, "process", None)
        return process is not None and process.poll() is None

    def end(self, *, now: bool = False) -> None:
        """Close the clients made of this kernel, shut it down (``now``: kill it) and remove its
        files, as nbclient does for a kernel it started; from a thread with no running loop."""
        for client in self._clients:
            client.stop_channels()
        self._clients.clear()
        asyncio.run(self._shut_down(now))

    async def _shut_down(self, now: bool) -> None:
        try:
            if self.has_kernel:
                await self.shutdown_kernel(now=now)
        finally:  # shutdown_kernel skips this class's cleanup_resources (socket folder, running)
            await self.cleanup_resources()


def live_kernels() -> list[RunnerKernelManager]:
    """The kernels the runner's executions (and spares) started whose process still runs."""
    return [manager for manager in list(RunnerKernelManager.running) if manager.process_alive()]


def kill_running_kernels(execution: str = "") -> int:
    """Kill every kernel the runner's executions started that still runs (Ctrl-C of a packed
    study: notebooks execute in other threads; spares too), or only that of ``execution``;
    returns how many were running."""
    killed = [kernel for kernel in live_kernels() if not execution or kernel.execution == execution]
    for kernel in killed:
        kernel.provisioner.process.kill()
    return len(killed)


def warm_up_code(notebook: Path) -> str:
    """The import statements at the top level of ``notebook``'s code cells, as one function that
    runs them and is deleted: the modules load, and no name is left in the kernel's namespace.
    Cells that are not plain Python (magics) are left out; no imports gives an empty string."""
    import nbformat

    imports: list[ast.stmt] = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        imports += [
            node
            for node in tree.body
            if isinstance(node, ast.Import)
            or (isinstance(node, ast.ImportFrom) and node.module != "__future__")
        ]
    if not imports:
        return ""
    body = "\n".join("    " + ast.unparse(node) for node in imports)
    return f"def {WARM_UP_FUNCTION}():\n{body}\n\n{WARM_UP_FUNCTION}()\ndel {WARM_UP_FUNCTION}\n"


class SpareKernels:
    """Kernels for the runs of one notebook, each started and warmed up (:func:`warm_up_code`)
    while the run before it executes.

    ``runs``: how many executions will ask; a spare is started only for a run still to come.
    Nothing starts before the first :meth:`take`, which has no spare to give: the first run
    starts its own kernel, as without spares. ``log_dir``: where a spare's own output goes until
    a run takes it (``verbose``: to this console instead). :meth:`close` ends the spares no run
    took.
    """

    def __init__(self, notebook: Path, cwd: Path, *, runs: int, log_dir: Path, verbose: bool):
        self.notebook = notebook.resolve()
        self._cwd = cwd
        self._code: str | None = None  # read at the first spare's start
        self._left = runs
        self._log_dir = log_dir
        self._verbose = verbose
        self._waiting: list[Future[RunnerKernelManager | None]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spare-kernel")

    def serves(self, notebook: Path) -> bool:
        return notebook.resolve() == self.notebook

    def take(self) -> RunnerKernelManager | None:
        """A warmed-up kernel for the execution about to start, or None (no spare was started
        for it, or its warm-up failed: the execution starts its own kernel). Starts the spare
        for the next run, if one is still to come."""
        with self._lock:
            if self._closed:
                return None
            self._left = max(self._left - 1, 0)
            spare = self._waiting.pop(0) if self._waiting else None
            if self._left > len(self._waiting):
                self._waiting.append(self._threads.submit(self._start))
        return spare.result() if spare is not None else None

    def close(self) -> None:
        """End the spares no run took (also one still warming up), and start no more."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, []
        for spare in waiting:
            manager = spare.result()
            if manager is not None:
                _discard(manager)
        self._threads.shutdown(wait=True)

    def _start(self) -> RunnerKernelManager | None:
        manager = RunnerKernelManager(kernel_name=KERNEL_NAME)
        if not self._verbose:
            manager.output_file = str(self._log_dir / f".spare-{secrets.token_hex(4)}.kernel.log")
        try:
            asyncio.run(manager.start_kernel(cwd=str(self._cwd), extra_arguments=KERNEL_ARGUMENTS))
            if self._code is None:
                self._code = warm_up_code(self.notebook)
            if self._code:
                _run_silently(manager, self._code)
        except Exception:  # the run starts its own kernel, which meets the same cause in a cell
            _discard(manager)
            return None
        return manager


def _discard(manager: RunnerKernelManager) -> None:
    """Kill a spare no run took, and remove its log."""
    manager.end(now=True)
    if manager.output_file:
        Path(manager.output_file).unlink(missing_ok=True)


def _run_silently(manager: RunnerKernelManager, code: str) -> None:
    """Execute ``code`` in the kernel without output, history or an execution count; raises
    if it fails, the kernel dies, or it is not ready and done within :data:`WARM_UP_SECONDS`."""
    deadline = time.monotonic() + WARM_UP_SECONDS  # one bound for the wait and the imports
    client = manager.blocking_client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=deadline - time.monotonic())
        request = client.execute(code, silent=True, store_history=False, allow_stdin=False)
        while True:
            if not manager.process_alive() or time.monotonic() > deadline:
                raise RuntimeError("the spare kernel died or did not finish its imports")
            try:
                reply = client.get_shell_msg(timeout=WARM_UP_POLL_SECONDS)
            except queue.Empty:
                continue
            if reply["parent_header"].get("msg_id") == request:
                break
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the warm-up imports failed: {reply['content'].get('ename')}")
    finally:
        client.stop_channels()
