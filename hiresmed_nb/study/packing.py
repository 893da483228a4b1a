"""Packing a study's runs onto slots: which runs start now, and on which slots.

A slot (:class:`hiresmed_nb.cluster.devices.Slot`) is one engine's place: one GPU, or a CPU
share of a host. A serial run takes 1 slot, a distributed run ``N_RANKS`` slots, reserved all
at once (a gang) or not at all: no run ever holds some slots while it waits for more, so no two
runs can wait on each other. This module is pure logic; :mod:`.packed` drives it, and
:mod:`.occupancy` keeps the account of who ran where and when.

Order: largest gang first, grid order within a width, with a reservation for the first run that
does not fit (the head). Largest first because a study's queue is known in full before it starts:
gangs then start while many slots are still busy with other gangs, and the study's tail is made of
one-slot runs, which leave at most one run's length of idle slots at the end (a gang left for
the end would wait for its k slots to drain together). The reservation keeps the head from being
starved by narrower runs behind it: they may start on free slots only while the slots they hold,
with the slots every other run behind the head holds, leave the head's width to the runs ahead
of it. Those runs all started before it and end in bounded time, so once they have finished at
least the head's width of slots is free and the head starts (no durations need to be known).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from hiresmed_nb.cluster.devices import Slot
from hiresmed_nb.errors import HiresmedError

RunT = TypeVar("RunT")


def slots_needed(run: Any) -> int:
    """Slots a run of the grid takes: 1 when serial, its ``N_RANKS`` when distributed."""
    if run.params["MODE"] != "distributed":
        return 1
    return max(1, int(run.params["N_RANKS"]))


def run_name(run: Any) -> str:
    """How the console and errors name a run: its ``run_id`` when it has one."""
    return str(getattr(run, "run_id", run))


@dataclass(frozen=True)
class Ticket(Generic[RunT]):
    """A run in the queue: its width (slots it takes) and its place in the order (lower first)."""

    run: RunT
    width: int
    position: int


@dataclass(frozen=True)
class Assignment(Generic[RunT]):
    """A run reserved onto its whole set of slots, to start now."""

    ticket: Ticket[RunT]
    slots: tuple[Slot, ...]

    @property
    def run(self) -> RunT:
        return self.ticket.run


def largest_first(
    runs: Sequence[RunT], width: Callable[[RunT], int] = slots_needed
) -> list[Ticket[RunT]]:
    """The runs as tickets, widest first and in the given order within one width."""
    widths = [width(run) for run in runs]
    order = sorted(range(len(runs)), key=lambda i: (-widths[i], i))
    return [Ticket(runs[i], widths[i], position) for position, i in enumerate(order)]


def in_given_order(
    runs: Sequence[RunT], width: Callable[[RunT], int] = slots_needed
) -> list[Ticket[RunT]]:
    """The runs as tickets in the order given (first come, first served, with reservation)."""
    return [Ticket(run, width(run), position) for position, run in enumerate(runs)]


def check_fits(
    runs: Sequence[RunT], slots: Sequence[Slot], width: Callable[[RunT], int] = slots_needed
) -> None:
    """Raise one :class:`HiresmedError` naming every run that needs more slots than exist,
    before anything starts."""
    too_wide = [(run_name(run), width(run)) for run in runs if width(run) > len(slots)]
    if too_wide:
        shown = ", ".join(f"{name} ({needed} slots)" for name, needed in too_wide[:5])
        more = f" and {len(too_wide) - 5} more" if len(too_wide) > 5 else ""
        raise HiresmedError(
            f"{len(too_wide)} run{'s' * (len(too_wide) != 1)} need more slots than the study has "
            f"({len(slots)}, from --slots / --hosts / the cluster): {shown}{more}; "
            "lower N_RANKS or give more slots"
        )


def choose_slots(width: int, free: Sequence[Slot]) -> tuple[Slot, ...] | None:
    """``width`` of the ``free`` slots for one run, or None when too few are free.

    On one host when one host has enough: the host with the fewest free slots that fits
    (so hosts with many free slots stay whole for wider gangs). Otherwise across hosts, the
    hosts with most free slots first (so the gang spans as few hosts as possible).
    """
    if width > len(free):
        return None
    by_host: dict[str, list[Slot]] = {}
    for slot in free:
        by_host.setdefault(slot.host, []).append(slot)
    for host_slots in by_host.values():
        host_slots.sort(key=lambda slot: slot.index)
    hosts = list(by_host)
    fitting = [host for host in hosts if len(by_host[host]) >= width]
    if fitting:
        best = min(fitting, key=lambda host: (len(by_host[host]), hosts.index(host)))
        return tuple(by_host[best][:width])
    chosen: list[Slot] = []
    for host in sorted(hosts, key=lambda host: (-len(by_host[host]), hosts.index(host))):
        chosen.extend(by_host[host][: width - len(chosen)])
    return tuple(chosen)


def next_assignments(
    queue: Sequence[Ticket[RunT]],
    free: Sequence[Slot],
    running: Sequence[Ticket[RunT]] = (),
) -> list[Assignment[RunT]]:
    """The runs of ``queue`` (waiting) to start now on ``free`` slots, each on its whole set.

    ``running`` are the runs on the other slots. Tickets are taken in order; the first that does
    not fit becomes the head, and a later run starts only if the slots held by runs behind the
    head (counting itself) leave the head's width to the runs ahead of it (module docstring).
    """
    free = list(free)
    total = len(free) + sum(ticket.width for ticket in running)
    started = list(running)
    head: Ticket[RunT] | None = None
    assignments: list[Assignment[RunT]] = []
    for ticket in sorted(queue, key=lambda ticket: ticket.position):
        if head is not None:
            behind = sum(t.width for t in started if t.position > head.position)
            if behind + ticket.width > total - head.width:
                continue
        chosen = choose_slots(ticket.width, free)
        if chosen is None:
            head = head or ticket
            continue
        assignments.append(Assignment(ticket, chosen))
        started.append(ticket)
        free = [slot for slot in free if slot not in chosen]
    return assignments
