"""Who runs on which slot, and when: the console's slot lines, slot utilisation, the gap between
one run freeing a slot and the next starting on it, and the check, from records alone, that no
slot, engine or engine process ever ran two runs at once.

Utilisation is busy slot-seconds / (wall seconds x slots), the wall running from the first run's
start to the last run's end (so engine start-up before the first run is not counted).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hiresmed_nb.cluster.devices import Slot
from hiresmed_nb.errors import HiresmedError


@dataclass(frozen=True)
class Busy:
    """One run on one slot, from ``start`` to ``end`` (clock seconds)."""

    run: str
    slot: str
    start: float
    end: float


class Occupancy:
    """The account of a packed study's slots, kept by the driver as runs start and end."""

    def __init__(self, slots: Sequence[Slot], clock: Callable[[], float] = time.monotonic):
        self.slot_keys = [slot.key for slot in slots]
        self.clock = clock
        self.on_slot: dict[str, tuple[str, float]] = {}  # slot key -> (run, its start)
        self.spans: list[Busy] = []
        self.gaps: dict[str, list[float]] = {key: [] for key in self.slot_keys}
        self._freed_at: dict[str, float] = {}
        self._first_start: float | None = None

    def started(self, run: str, slots: Sequence[Slot]) -> str:
        """Note ``run`` starting on ``slots`` now; returns the console line."""
        now = self.clock()
        for slot in slots:
            if slot.key in self.on_slot:
                raise RuntimeError(f"{slot.key} given to {run} while {self.on_slot[slot.key][0]}")
            if slot.key in self._freed_at:
                self.gaps[slot.key].append(now - self._freed_at.pop(slot.key))
            self.on_slot[slot.key] = (run, now)
        self._first_start = now if self._first_start is None else self._first_start
        return f"slots  {run} on {', '.join(s.key for s in slots)} ({self.busy_line()})"

    def finished(self, run: str, outcome: str = "done") -> str:
        """Note ``run`` ending now (``outcome``: 'done', 'failed'); frees its slots."""
        now = self.clock()
        freed = [key for key, (holder, _) in self.on_slot.items() if holder == run]
        for key in freed:
            _, start = self.on_slot.pop(key)
            self.spans.append(Busy(run, key, start, now))
            self._freed_at[key] = now
        return f"slots  {', '.join(freed)} free, {run} {outcome} ({self.busy_line()})"

    def busy_line(self) -> str:
        return f"{len(self.on_slot)}/{len(self.slot_keys)} slots busy"

    def snapshot(self) -> str:
        """Every slot and its run now ('-': free), e.g. ``a/0 run1 | a/1 -``."""
        return " | ".join(f"{key} {self.on_slot.get(key, ('-',))[0]}" for key in self.slot_keys)

    def _until(self) -> float:
        if self.on_slot or not self.spans:
            return self.clock()
        return max(span.end for span in self.spans)

    def busy_slot_seconds(self) -> float:
        until = self._until()
        ended = sum(span.end - span.start for span in self.spans)
        return ended + sum(until - start for _, start in self.on_slot.values())

    def wall_seconds(self) -> float:
        return 0.0 if self._first_start is None else self._until() - self._first_start

    def utilisation(self) -> float:
        """Busy slot-seconds / (wall seconds x slots); 0.0 before any run has started."""
        wall = self.wall_seconds()
        return self.busy_slot_seconds() / (wall * len(self.slot_keys)) if wall > 0 else 0.0

    def all_gaps(self) -> list[float]:
        return [gap for gaps in self.gaps.values() for gap in gaps]

    def summary(self) -> str:
        """The closing line: utilisation, and the gaps between runs on one slot."""
        line = (
            f"slot utilisation {self.utilisation():.2f} ({self.busy_slot_seconds():.1f} busy "
            f"slot-seconds over {self.wall_seconds():.1f} s x {len(self.slot_keys)} slots)"
        )
        gaps = self.all_gaps()
        if gaps:
            line += (
                f"; slot freed to next run started: median {statistics.median(gaps):.2f} s, "
                f"max {max(gaps):.2f} s"
            )
        return line


# ---------------------------------------------------------------------------------------------
# Checking records: no slot ever ran two runs at once
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Overlap:
    """Two runs (or two ranks of one run) on ``slot`` at once, for ``seconds``: a slot key, or
    ``engine <id>`` or ``pid <pid> on <host>`` when they shared an engine."""

    slot: str
    first: str
    second: str
    seconds: float


def slot_key_of(entry: Any) -> str:
    """A rank's slot in a record: the ``key`` of its ``slot`` mapping, or the slot's name."""
    if isinstance(entry, Mapping) and "key" in entry:
        return str(entry["key"])
    if isinstance(entry, str) and entry:
        return entry
    raise HiresmedError(f"a rank's slot {entry!r} names no slot (expected {{'key': 'host/i'}})")


def _seconds(record: Mapping[str, Any], field: str) -> float:
    try:
        return datetime.fromisoformat(record[field]).timestamp()
    except (KeyError, TypeError, ValueError):
        raise HiresmedError(
            f"record {record.get('run_id', '?')}: {field}={record.get(field)!r} is not an ISO "
            "timestamp"
        ) from None


Span = tuple[float, float, str]  # start, end (epoch seconds), run id


def _rank_places(run: str, rank: Mapping[str, Any]) -> list[str]:
    """Where a rank ran, each a place no two ranks may hold at once: its slot, its engine (by
    id), and its engine process (host and pid). Two runs on one engine after a replacement
    show here even when the runner's own account of slots says nothing is wrong."""
    if "slot" not in rank:
        raise HiresmedError(f"record {run}: a rank has no 'slot' (not a packed run)")
    slot = rank["slot"]
    engine = slot.get("engine") if isinstance(slot, Mapping) else None
    if not isinstance(engine, int) or isinstance(engine, bool):
        raise HiresmedError(f"record {run}: a rank's slot {slot!r} names no engine id ('engine')")
    pid = rank.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise HiresmedError(f"record {run}: a rank has no engine process id ('pid')")
    host = rank.get("host") or rank.get("hostname") or "?"
    return [slot_key_of(slot), f"engine {engine}", f"pid {pid} on {host}"]


def slot_intervals(records: Iterable[Mapping[str, Any]]) -> dict[str, list[Span]]:
    """Per place (slot key, ``engine <id>``, ``pid <pid> on <host>``), the (start, end, run id)
    of every rank that ran there, by start."""
    per_place: dict[str, list[Span]] = {}
    for record in records:
        run = str(record.get("run_id", "?"))
        start, end = _seconds(record, "started_at"), _seconds(record, "finished_at")
        for rank in record.get("ranks", []):
            for place in _rank_places(run, rank):
                per_place.setdefault(place, []).append((start, end, run))
    return {place: sorted(spans) for place, spans in per_place.items()}


def slot_overlaps(records: Iterable[Mapping[str, Any]]) -> list[Overlap]:
    """Every pair of runs (or ranks of one run) that held one slot, one engine or one engine
    process at the same time (``Overlap.slot`` names which).

    Intervals that only touch (one ends as the next starts) do not overlap. Empty: no slot,
    engine or engine process ever ran two runs at once.
    """
    overlaps = []
    for place, spans in slot_intervals(records).items():
        for i, (_, end, run) in enumerate(spans):
            for later_start, later_end, later_run in spans[i + 1 :]:
                if later_start >= end:
                    break
                shared = min(end, later_end) - later_start
                overlaps.append(Overlap(place, run, later_run, shared))
    return overlaps
