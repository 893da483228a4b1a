"""Functions that run on the engines (engines import them: closures do not pickle).

They describe the engine's machine, check what a rank needs before ``hvd.init()``, and wrap
the function each rank runs so warm engines start every run from a clean Horovod state.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hiresmed_nb import compat

LAUNCH_ID_VARIABLE = "HIRESMED_LAUNCH_ID"


def route_address(destination: str) -> str:
    """This machine's source address on the route to ``destination`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((destination, 9))
        return probe.getsockname()[0]


def interface_of(address: str) -> str:
    """The network interface holding ``address`` ('lo' for any 127.x address), or ''."""
    import psutil

    if address.startswith("127."):
        return "lo"
    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.address.split("%")[0] == address for entry in addresses):
            return name
    return ""


def hostname_addresses(hostname: str) -> list[str]:
    """What ``hostname`` resolves to here (IPv4 and IPv6), or [] when it does not resolve."""
    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return sorted({info[4][0] for info in infos})


def own_addresses() -> list[str]:
    """Every address of this machine's interfaces but loopback (IPv4 and IPv6)."""
    import psutil

    found = set()
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                address = entry.address.split("%")[0]
                if not (address.startswith("127.") or address == "::1"):
                    found.add(address)
    return sorted(found)


def describe_engine(rendezvous_addr: str) -> dict[str, Any]:
    """The engine's host name, pid, launch id, addresses, the cores it may run on, its route and
    interface towards the rendezvous address, and its Slurm job step if it runs as one."""
    from hiresmed_nb.cluster.devices import available_cores

    hostname = socket.gethostname()
    try:
        address = route_address(rendezvous_addr)
    except OSError:
        address = ""
    return {
        "hostname": hostname,
        "pid": os.getpid(),
        "launch_id": os.environ.get(LAUNCH_ID_VARIABLE, ""),
        "route_address": address,
        "interface": interface_of(address) if address else "",
        "hostname_addresses": hostname_addresses(hostname),
        "addresses": own_addresses(),
        "cpu_count": available_cores(),
        "slot_threads": int(os.environ.get("HIRESMED_SLOT_THREADS") or 0),
        "slurm_job": slurm_step(),
    }


def slurm_step() -> str:
    """'JOB.STEP' when this engine runs as a Slurm job step (``srun``), 'JOB' inside a job but
    outside a step (a batch script's own process), else ''."""
    job = os.environ.get("SLURM_JOB_ID", "")
    step = os.environ.get("SLURM_STEP_ID", "")
    return f"{job}.{step}" if job and step else job


def can_connect(address: str, port: int, timeout_seconds: float) -> str:
    """'' when a TCP connection to ``address:port`` opens from here, else the reason."""
    try:
        with socket.create_connection((address, port), timeout=timeout_seconds):
            return ""
    except OSError as error:
        return f"{type(error).__name__}: {error}"


def sees_file(path: str) -> bool:
    """Whether ``path`` exists on this engine's filesystem."""
    return Path(path).exists()


def set_environment(variables: dict[str, str]) -> int:
    """Set environment variables in the engine process; returns the engine's pid."""
    os.environ.update(variables)
    return os.getpid()


def leave_horovod() -> None:
    """Shut Horovod down if a previous run on this engine left it initialised."""
    import sys

    if "horovod.tensorflow" not in sys.modules:
        return
    import horovod.tensorflow as hvd

    if hvd.is_initialized():
        hvd.shutdown()  # Horovod: a fresh rendezvous (new port, new plan) needs a new init.


def custom_gradient_names() -> set[str]:
    """The ``CustomGradient-*`` entries of TensorFlow's gradient table now."""
    registry = compat.gradient_registry()
    return {name for name in registry or () if name.startswith("CustomGradient-")}


def release_memory(custom_gradients_before: set[str]) -> None:
    """Free what the finished run held, so warm engines do not grow run after run.

    TensorFlow registers a ``CustomGradient-<uid>`` entry in a global table each time a graph
    using ``tf.custom_gradient`` is traced (Keras' train step does, through
    ``ReplicaContext.all_reduce``), and never removes it; each entry keeps its whole traced
    graph alive (BENCHMARKS.md, warm engines' memory). The entries this run added are dropped
    once its graphs are gone (``clear_session``).
    Then glibc returns free heap pages to the system (``malloc_trim``).
    """
    import ctypes
    import gc
    import sys

    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].keras.backend.clear_session()
    registry = compat.gradient_registry()
    for name in custom_gradient_names() - custom_gradients_before:
        del registry[name]
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc (e.g. musl, macOS): nothing to trim


def _exit_now(signum: int, frame: Any) -> None:
    """SIGTERM handler: end this engine and its children (ipyparallel's nanny) at once."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:
            pass
    os._exit(0)


def exit_promptly_on_terminate() -> None:
    """Make SIGTERM end this engine at once.

    ipyparallel stops an engine with SIGTERM, then SIGKILL after 5 s. An engine that has loaded
    TensorFlow never finishes its graceful shutdown, so every stop would wait for the SIGKILL,
    and a SIGKILLed engine leaves its nanny running for a while (README, "faults").
    A rank holds nothing worth a graceful exit between runs (records and checkpoints are written
    atomically during the run), so TERM ends the engine and its nanny immediately.
    """
    import signal

    try:
        signal.signal(signal.SIGTERM, _exit_now)
    except ValueError:  # not the engine's main thread: keep ipyparallel's own handling
        pass


def native_errors_to_engine_log() -> None:
    """Let C and C++ code (Gloo, Horovod, TensorFlow) write straight to the engine's log file.

    An engine relays file descriptor 2 to the client through a pipe and a thread; a process that
    aborts (e.g. Gloo's "Unable to find address") dies before the thread relays its last words.
    Writing them to the log file directly keeps them for RankLostError, and Python tracebacks of
    a crash (faulthandler) go there too. Python-level output still streams to the notebook.
    """
    import faulthandler
    import sys

    log_fd = compat.engine_log_descriptor()
    if log_fd is not None and not os.path.sameopenfile(log_fd, 2):
        os.dup2(log_fd, 2)
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.__stderr__ if log_fd is None else os.fdopen(os.dup(2), "w"))


def engine_slot() -> dict[str, Any]:
    """This engine's slot (a packed study's: its key, GPU and threads), or its host's thread
    share on another engine; the cluster adds the engine id."""
    from hiresmed_nb.cluster.devices import slot_of_this_process

    found = slot_of_this_process()
    if found is not None:
        return found
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0) or None
    return {"key": None, "gpu": None, "threads": threads}


def run_as_rank(environment: dict[str, str], function: Callable, *args: Any) -> Any:
    """Run ``function(*args)`` as the rank ``environment`` describes, from a clean Horovod.

    Warm engines run many trainings in one process: Horovod is shut down before (a previous
    run's rendezvous is gone) and after (so an idle engine holds no Gloo connections), and the
    rank's ``HOROVOD_*`` variables are this run's.
    """
    native_errors_to_engine_log()
    exit_promptly_on_terminate()
    leave_horovod()
    os.environ.update(environment)
    custom_gradients_before = custom_gradient_names()
    try:
        result = function(*args)
        if isinstance(result, dict) and "weights_digest" in result:  # a training rank's result
            result["slot"] = engine_slot()
        return result
    finally:
        leave_horovod()
        release_memory(custom_gradients_before)
