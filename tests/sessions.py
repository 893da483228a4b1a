"""Test sessions side by side: ``make test`` runs the suite on two pytest-xdist workers, and
other runs may share the machine.

Each worker is a session of its own, and two things keep one from reading or disturbing another:

- A **tag** in the environment, inherited by every process a session starts (kernels, controllers,
  engines, undertakers): a test that looks for processes left running looks only for its own.
- A **lock** per test: a test that orphans a cluster on purpose (``@pytest.mark.orphans``) runs
  alone, since a cluster that the other session starts meanwhile reaps every orphan of this host
  (``hiresmed_nb.cluster.undertaker.reap_orphans``), as it should. Every other test that starts
  a cluster or reaps holds the lock shared (``conftest.REAPING_MARKERS``); a test that does
  neither takes no lock and runs beside an ``orphans`` test. A waiting ``orphans`` test holds a
  turnstile that new shared holders must pass, so it is not starved.
"""

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

TAG_VARIABLE = "HIRESMED_TEST_SESSION"
_LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
LOCK, TURNSTILE = (_LOCK_DIR / f"hiresmed-tests.{name}" for name in ("lock", "turnstile"))


def tag_this_session() -> str:
    """Tag this process's environment (its children inherit it); returns the tag."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.environ[TAG_VARIABLE] = tag = f"{worker}-{os.getpid()}"
    return tag


def started_by_this_session(process: psutil.Process) -> bool:
    """Whether ``process`` inherited this session's tag (False once it is gone)."""
    try:
        return process.environ().get(TAG_VARIABLE) == os.environ[TAG_VARIABLE]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def processes_of_this_session(naming: str) -> list[psutil.Process]:
    """The running processes this session started whose command line contains ``naming``
    (``process.info["cmdline"]`` holds the command line as read)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if naming in " ".join(process.info["cmdline"] or []) and started_by_this_session(process):
            found.append(process)
    return found


def exclusive(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the ``with`` block."""
    return _flock(path, fcntl.LOCK_EX)


@contextlib.contextmanager
def _flock(path: Path, operation: int) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, operation)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def machine_share(alone: bool, lock: Path = LOCK, turnstile: Path = TURNSTILE) -> Iterator[None]:
    """Hold this machine's test lock for one test: exclusive if ``alone``, else shared."""
    if alone:
        with _flock(turnstile, fcntl.LOCK_EX), _flock(lock, fcntl.LOCK_EX):
            yield
        return
    with _flock(turnstile, fcntl.LOCK_EX):
        pass  # wait behind an `orphans` test that is waiting
    with _flock(lock, fcntl.LOCK_SH):
        yield


def flock_waiters(path: Path) -> int:
    """How many flock requests on ``path`` wait in the kernel (the ``->`` lines of /proc/locks):
    lets a test wait until a caller is blocked on a lock, without a timed sleep."""
    inode = f":{path.stat().st_ino} "
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and "FLOCK" in line and inode in line)


def until(condition: Callable[[], object], what: str, seconds: float = 60) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
