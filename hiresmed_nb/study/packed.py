"""The packed study's loop: as many runs at once as the free slots allow.

:func:`run_packed` is generic over how a run executes: ``start(run, slots)`` begins it and
returns a handle, ``wait(handles)`` blocks until at least one has ended and returns each ended
handle with its error (None: it succeeded). :class:`ThreadedRuns` gives both for a function
``execute(run, slots)`` that runs one run to its end (the runner's notebook execution), one
thread per running run; tests pass a simulated clock and executor instead.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hiresmed_nb.cluster.devices import Slot
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.study.occupancy import Occupancy
from hiresmed_nb.study.packing import (
    Assignment,
    Ticket,
    check_fits,
    largest_first,
    next_assignments,
    run_name,
    slots_needed,
)

RunT = TypeVar("RunT")
HandleT = TypeVar("HandleT", bound=Hashable)

Order = Callable[[Sequence[RunT], Callable[[RunT], int]], list[Ticket[RunT]]]


class SlotsLost(Exception):
    """A run ended and its slots cannot take another (their engines are gone and could not be
    replaced): they leave the study, the other slots go on."""

    def __init__(self, slots: Sequence[Slot], reason: str, *, run_ok: bool = False):
        self.slots, self.reason, self.run_ok = tuple(slots), reason, run_ok
        super().__init__(f"slots {', '.join(slot.key for slot in self.slots)} lost: {reason}")


@dataclass
class PackedResult(Generic[RunT]):
    """What :func:`run_packed` did: runs ended well, runs failed (with their error), and the
    slots' account (utilisation, gaps)."""

    occupancy: Occupancy
    done: list[RunT] = field(default_factory=list)
    failed: list[tuple[RunT, BaseException]] = field(default_factory=list)
    placed: dict[str, tuple[Slot, ...]] = field(default_factory=dict)  # run name -> its slots


def run_packed(
    runs: Sequence[RunT],
    slots: Sequence[Slot],
    start: Callable[[RunT, tuple[Slot, ...]], HandleT],
    wait: Callable[[Sequence[HandleT]], Iterable[tuple[HandleT, BaseException | None]]],
    *,
    width: Callable[[RunT], int] = slots_needed,
    order: Order = largest_first,
    echo: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    on_interrupt: Callable[[list[HandleT]], None] | None = None,
) -> PackedResult[RunT]:
    """Run every run on its slots, as many at once as the free slots allow.

    A run that needs more slots than exist is a :class:`HiresmedError` before anything starts.
    A run whose ``start`` raises, or that ends with an error, is in ``failed`` and frees its
    slots; the others go on. A run that ends with :class:`SlotsLost` takes its slots out of the
    study: the waiting runs wider than the slots left fail with a :class:`HiresmedError`.
    ``echo`` gets one short line per start and end (which runs are on which slots). On
    ``KeyboardInterrupt`` no further run starts: ``on_interrupt`` gets the handles of the runs
    still running (for the caller to stop them), and the interrupt propagates.
    """
    check_fits(runs, slots, width)
    result: PackedResult[RunT] = PackedResult(Occupancy(slots, clock))
    queue = order(runs, width)
    running: dict[HandleT, Assignment[RunT]] = {}
    usable = list(slots)
    try:
        while queue or running:
            busy = {slot for assignment in running.values() for slot in assignment.slots}
            free = [slot for slot in usable if slot not in busy]
            held = [assignment.ticket for assignment in running.values()]
            for assignment in next_assignments(queue, free, held):
                queue.remove(assignment.ticket)
                handle = _start(assignment, start, result, echo)
                if handle is not None:
                    running[handle] = assignment
            if running:
                for handle, error in wait(list(running)):
                    _end(running.pop(handle), error, result, echo)
                    if isinstance(error, SlotsLost):
                        usable = [slot for slot in usable if slot not in error.slots]
                        echo(f"{error}; {len(usable)} slot(s) left")
                        _fail_too_wide(queue, len(usable), result, echo)
    except KeyboardInterrupt:
        if on_interrupt is not None:
            on_interrupt(list(running))
        raise
    return result


def _start(
    assignment: Assignment[RunT],
    start: Callable[[RunT, tuple[Slot, ...]], HandleT],
    result: PackedResult[RunT],
    echo: Callable[[str], None],
) -> HandleT | None:
    """Start one run on its slots; a run that cannot start is failed at once (None)."""
    name = run_name(assignment.run)
    result.placed[name] = assignment.slots
    echo(result.occupancy.started(name, assignment.slots))
    try:
        return start(assignment.run, assignment.slots)
    except Exception as error:
        _end(assignment, error, result, echo)
        return None


def _fail_too_wide(
    queue: list[Ticket[RunT]], slots_left: int, result: PackedResult[RunT], echo: Callable
) -> None:
    """Fail (and take out of ``queue``) the waiting runs wider than the slots left."""
    for ticket in [ticket for ticket in queue if ticket.width > slots_left]:
        queue.remove(ticket)
        error = HiresmedError(
            f"{run_name(ticket.run)} needs {ticket.width} slot(s) and only {slots_left} are left "
            "after slots left the study (their engines were lost)"
        )
        result.failed.append((ticket.run, error))
        echo(f"FAILED {run_name(ticket.run)}: {error}")


def _end(
    assignment: Assignment[RunT],
    error: BaseException | None,
    result: PackedResult[RunT],
    echo: Callable[[str], None],
) -> None:
    succeeded = error is None or (isinstance(error, SlotsLost) and error.run_ok)
    if succeeded:
        result.done.append(assignment.run)
    else:
        result.failed.append((assignment.run, error))
    outcome = "done" if succeeded else f"failed ({type(error).__name__})"
    echo(result.occupancy.finished(run_name(assignment.run), outcome))


class ThreadedRuns(Generic[RunT]):
    """``start`` and ``wait`` for :func:`run_packed` over threads: ``execute(run, slots)`` runs
    one run to its end in its own thread (it drives notebooks and engines, so the threads
    mostly wait).

    ``with ThreadedRuns(execute, len(slots)) as runs: run_packed(..., runs.start, runs.wait)``.
    Leaving the block cancels nothing that runs; it stops the pool taking new work.
    """

    def __init__(
        self,
        execute: Callable[[RunT, tuple[Slot, ...]], None],
        workers: int,
        poll_seconds: float = 1.0,
    ):
        self._execute = execute
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="slot")
        self._poll_seconds = poll_seconds  # how often a waiting main thread wakes (Ctrl-C)

    def __enter__(self) -> ThreadedRuns[RunT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def start(self, run: RunT, slots: tuple[Slot, ...]) -> concurrent.futures.Future[None]:
        return self._pool.submit(self._execute, run, slots)

    def wait(
        self, futures: Sequence[concurrent.futures.Future[None]]
    ) -> list[tuple[concurrent.futures.Future[None], BaseException | None]]:
        """The futures that have ended (none after ``poll_seconds``), each with its error."""
        ended, _ = concurrent.futures.wait(
            futures, timeout=self._poll_seconds, return_when=concurrent.futures.FIRST_COMPLETED
        )
        return [(future, future.exception()) for future in ended]
