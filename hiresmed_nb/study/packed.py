"""A packed study: as many of its notebooks at once as the free slots allow.

The slots come from ``--slots``/the GPUs found (this machine), ``--hosts`` or an attached cluster
(``IPP_CLUSTER_FILE``); :func:`study_slots` chooses. One engine per slot
(:class:`~hiresmed_nb.cluster.slots_cluster.SlotsCluster`, started or attached) hosts the runs:
:func:`run_packed` reserves each run's whole set of slots, and a thread executes its notebook
with the engine ids of those slots (``POOL_ENGINES``), so a serial run trains on its slot's engine
and a distributed run places its ranks on its gang's engines, each with its own rendezvous in its
kernel.

:func:`run_packed` is generic over how a run executes: ``start(run, slots)`` begins it and
returns a handle, ``wait(handles)`` blocks until at least one has ended and returns each ended
handle with its error (None: it succeeded). :class:`ThreadedRuns` gives both for a function
``execute(run, slots)`` that runs one run to its end (the runner's notebook execution), one
thread per running run; tests pass a simulated clock and executor instead.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from hiresmed_nb.cluster.devices import (
    LOCAL_HOST,
    Slot,
    available_cores,
    check_slot_count,
    describe_slots,
    installed_gpus,
    parse_slot_hosts,
)
from hiresmed_nb.cluster.slots_cluster import SlotsCluster, planned_slots
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.study.grid import Run
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


# The runner's side: slots, their engines, one notebook per run --------------------------------


@dataclass(frozen=True)
class SlotRequest:
    """How the user asked for slots: ``--slots``, ``--hosts``, an attached cluster's file."""

    slots: int | None = None
    hosts: str = ""
    cluster_file: str = ""

    @property
    def given(self) -> bool:
        return self.slots is not None or bool(self.hosts) or bool(self.cluster_file)


def study_slots(request: SlotRequest) -> list[Slot] | None:
    """The slots of a study started here (None: no slots asked for and no GPU found, so the
    study runs one run at a time as without packing). An attached cluster's slots are its
    engines': see :class:`SlotsCluster`."""
    if request.hosts:
        hosts = parse_slot_hosts(request.hosts)
        check_slot_count(request.slots)
        return planned_slots(request.slots, hosts)
    if request.slots is None and not installed_gpus():
        return None
    return planned_slots(request.slots, [])


def slot_engines(request: SlotRequest, slots: list[Slot] | None) -> SlotsCluster:
    """The engines of a packed study, one per slot, not started yet (``with`` starts them, and
    stops them however the study ends): attached (a cluster file) or started here. A run fails
    when its slots cannot have engines again: ``replace`` and ``check`` then raise."""
    if request.cluster_file:
        return SlotsCluster(cluster_file=request.cluster_file)
    if slots is None:
        raise ValueError("no slots to start engines for")
    return SlotsCluster(slots)


class RunOnSlots:
    """The runner's pool for one run of a packed study: its notebook attaches to the engines of
    its slots; after a rank failure those slots get fresh engines (the retry runs there). When
    that replacement raises, :attr:`lost` keeps the error: the slots leave the study."""

    def __init__(self, engines: SlotsCluster, slots: Sequence[Slot]):
        self.engines = engines
        self.slots = tuple(slots)
        self.lost: BaseException | None = None

    def attach_parameters(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        return {
            **parameters,
            "POOL_CLUSTER_FILE": self.engines.cluster_file,
            "POOL_ENGINES": self.engines.engine_ids(self.slots),
        }

    def retire_parameters(self, parameters: Mapping[str, Any]) -> None:
        try:
            self.engines.replace(self.slots)
        except Exception as error:
            self.lost = error
            raise


class RunFailed(Exception):
    """A packed run that failed (its failure is recorded): the slot lines say so."""


def run_on_slots(
    runs: Sequence[Run],
    engines: SlotsCluster,
    execute: Callable[[Run, RunOnSlots], bool],
    *,
    echo: Callable[[str], None],
    on_interrupt: Callable[[], None],
) -> PackedResult[Run]:
    """Execute ``runs`` packed onto ``engines``' slots; ``execute(run, pool)`` runs one
    notebook to its end and returns whether it succeeded (it records its failure itself).
    Ctrl-C: ``on_interrupt`` (stop the running notebooks), then the interrupt propagates."""
    lock = threading.Lock()
    not_started = [len(runs)]  # runs no thread has begun yet: a later one may take these slots

    def locked_echo(line: str) -> None:
        with lock:
            echo(line)

    def execute_on(run: Run, slots: tuple[Slot, ...]) -> None:
        with lock:
            not_started[0] -= 1
        pool = RunOnSlots(engines, slots)
        if not execute(run, pool):
            if pool.lost is None:
                try:  # a run can fail because an engine went away between runs
                    engines.check(slots)
                except Exception as error:
                    pool.lost = error
            if pool.lost is not None:
                raise SlotsLost(slots, f"{type(pool.lost).__name__}: {pool.lost}")
            raise RunFailed(run.run_id)
        with lock:
            if not not_started[0]:  # no run will use these slots again: they stop with the study
                return
        try:  # before the slots go to the next run
            replaced = engines.recycle_outgrown(slots)
        except Exception as error:  # the run is done; its slots have no engines now
            raise SlotsLost(slots, f"{type(error).__name__}: {error}", run_ok=True) from error
        if replaced:
            locked_echo(replaced)

    echo(describe_slots(engines.slots, {LOCAL_HOST: available_cores()}))
    with ThreadedRuns(execute_on, len(engines.slots), poll_seconds=0.2) as threaded:
        result = run_packed(
            runs,
            engines.slots,
            threaded.start,
            threaded.wait,
            echo=locked_echo,
            on_interrupt=lambda _running: on_interrupt(),
        )
    echo(result.occupancy.summary())
    return result
