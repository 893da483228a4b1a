"""Packing a study onto slots: whole gangs or nothing, no starvation, failure isolation, Ctrl-C,
the slots' account, and the check that no slot ever ran two runs at once (simulated runs, no
processes, no sleeps)."""

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from hiresmed_nb.cluster import devices
from hiresmed_nb.cluster.devices import Slot
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.study.grid import Run
from hiresmed_nb.study.occupancy import Occupancy, slot_overlaps
from hiresmed_nb.study.packed import ThreadedRuns, run_packed
from hiresmed_nb.study.packing import (
    Ticket,
    check_fits,
    choose_slots,
    in_given_order,
    largest_first,
    next_assignments,
    slots_needed,
)

EPOCH = 1_780_000_000.0  # simulated clock seconds are offsets from this instant


@dataclass(frozen=True)
class FakeRun:
    run_id: str
    width: int = 1
    seconds: float = 1.0
    fails: bool = False


def width(run: FakeRun) -> int:
    return run.width


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(EPOCH + seconds, UTC).isoformat()


class SimulatedRuns:
    """start, wait and clock for run_packed: a run ends ``seconds`` after it starts, on a
    simulated clock that jumps to the next end; each ended run leaves a record with its ranks'
    slots, as a packed notebook would."""

    def __init__(self, cannot_start: tuple[str, ...] = ()):
        self.now = 0.0
        self.cannot_start = cannot_start
        self.running: dict[str, tuple[float, FakeRun, tuple[Slot, ...]]] = {}
        self.started_at: dict[str, float] = {}
        self.records: list[dict] = []
        self.engines: dict[str, int] = {}  # slot key -> its engine's id

    def clock(self) -> float:
        return self.now

    def rank_on(self, rank: int, key: str) -> dict:
        """A rank's part of a record: its slot, that slot's one engine and engine process."""
        engine = self.engines.setdefault(key, len(self.engines))
        return {
            "rank": rank,
            "host": "h",
            "pid": 1000 + engine,
            "slot": {"key": key, "engine": engine},
        }

    def start(self, run: FakeRun, slots: tuple[Slot, ...]) -> str:
        if run.run_id in self.cannot_start:
            raise RuntimeError(f"{run.run_id} cannot start")
        self.started_at[run.run_id] = self.now
        self.running[run.run_id] = (self.now, run, slots)
        return run.run_id

    def wait(self, handles):
        end = min(self.running[h][0] + self.running[h][1].seconds for h in handles)
        self.now = end
        ended = []
        for handle in handles:
            start, run, slots = self.running[handle]
            if start + run.seconds == end:
                del self.running[handle]
                ranks = [self.rank_on(i, s.key) for i, s in enumerate(slots)]
                self.records.append(
                    {"run_id": run.run_id, "started_at": iso(start), "finished_at": iso(end)}
                    | {"ranks": ranks}
                )
                ended.append((handle, RuntimeError("rank 0 failed") if run.fails else None))
        return ended


def cpu_slots(count: int, host: str = "localhost") -> list[Slot]:
    return [Slot(host, index, "", None, 1) for index in range(count)]


def overlapping_pairs(records: list[dict]) -> int:
    spans = [(r["started_at"], r["finished_at"]) for r in records]
    return sum(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


# --- The scheduler ---------------------------------------------------------------------------


def test_grid_runs_take_one_slot_serial_and_n_ranks_distributed():
    serial = Run("s", {"MODE": "serial", "N_RANKS": 1})
    distributed = Run("d", {"MODE": "distributed", "N_RANKS": 3})
    assert [slots_needed(serial), slots_needed(distributed)] == [1, 3]


def test_largest_first_keeps_grid_order_within_a_width():
    runs = [FakeRun("a"), FakeRun("b", 2), FakeRun("c"), FakeRun("d", 4), FakeRun("e", 2)]
    assert [t.run.run_id for t in largest_first(runs, width)] == ["d", "b", "e", "a", "c"]
    assert [t.position for t in largest_first(runs, width)] == [0, 1, 2, 3, 4]


def test_a_gang_is_reserved_whole_or_not_at_all():
    queue = in_given_order([FakeRun("gang", 3)], width)
    assert next_assignments(queue, cpu_slots(2)) == []
    (assignment,) = next_assignments(queue, cpu_slots(3))
    assert len(set(assignment.slots)) == 3


def test_a_gang_goes_on_one_host_when_it_fits_there_and_spans_hosts_otherwise():
    a, b = cpu_slots(2, "a"), cpu_slots(3, "b")
    assert {s.host for s in choose_slots(2, [a[0], *b])} == {"b"}
    assert choose_slots(1, [a[0], *b]) == (a[0],)  # the fullest host that fits: b stays whole
    spanning = choose_slots(3, [a[0], a[1], b[0]])
    assert [s.key for s in spanning] == ["a/0", "a/1", "b/0"]
    assert choose_slots(4, [a[0], a[1], b[0]]) is None


def test_a_run_wider_than_the_study_is_one_named_error_before_anything_starts():
    sim = SimulatedRuns()
    runs = [FakeRun("fits", 2), FakeRun("wide-run", 4), FakeRun("wider-run", 5)]
    with pytest.raises(HiresmedError, match=r"2 runs need more .*\(3, .*wide-run.*N_RANKS"):
        run_packed(runs, cpu_slots(3), sim.start, sim.wait, width=width, echo=lambda _: None)
    assert sim.started_at == {}
    check_fits(runs[:1], cpu_slots(2), width)


def test_runs_behind_a_waiting_gang_never_take_the_slots_it_needs():
    slots = cpu_slots(3)
    tickets = in_given_order([FakeRun(f"s{i}") for i in range(3)] + [FakeRun("gang", 2)], width)
    running, (gang,) = tickets[:3], tickets[3:]
    later = [Ticket(FakeRun(f"later{i}"), 1, 4 + i) for i in range(5)]
    # s0 ends: one slot free, the gang cannot fit; one later run may start (2 slots stay with
    # the runs ahead of the gang, which is its width) ...
    first = next_assignments([gang, *later], slots[:1], running[1:])
    assert [a.run.run_id for a in first] == ["later0"]
    # ... s1 ends: that slot is held for the gang, not given to the next later run ...
    assert next_assignments([gang, *later[1:]], slots[1:2], [running[2], later[0]]) == []
    # ... s2 ends: the gang starts.
    (started,) = next_assignments([gang, *later[1:]], slots[1:], [later[0]])
    assert started.run.run_id == "gang"


# --- The driver, on a simulated clock --------------------------------------------------------


def test_a_grid_of_serial_and_two_rank_runs_is_packed_onto_three_slots():
    runs = [FakeRun(f"serial-{i}", 1, 1.25 + i % 3) for i in range(6)]
    runs += [FakeRun(f"gang-{i}", 2, 2.5) for i in range(3)]
    sim, lines = SimulatedRuns(), []
    result = run_packed(
        runs, cpu_slots(3), sim.start, sim.wait, width=width, echo=lines.append, clock=sim.clock
    )
    assert sorted(r.run_id for r in result.done) == sorted(r.run_id for r in runs)
    assert overlapping_pairs(sim.records) >= 2
    assert slot_overlaps(sim.records) == []
    for run in runs:  # every rank on its own slot
        assert len({s.key for s in result.placed[run.run_id]}) == run.width
    serial_total = sum(run.seconds for run in runs)
    assert sim.now < serial_total
    assert 0.5 < result.occupancy.utilisation() <= 1.0
    assert len(lines) == 2 * len(runs)  # one line per start and per end


def test_one_slot_runs_one_run_at_a_time():
    sim = SimulatedRuns()
    runs = [FakeRun(f"r{i}", 1, 1.5) for i in range(4)]
    run_packed(runs, cpu_slots(1), sim.start, sim.wait, width=width, echo=lambda _: None)
    assert overlapping_pairs(sim.records) == 0


def test_a_failing_run_frees_its_slots_and_the_others_finish():
    runs = [FakeRun("broken", 2, 1.0, fails=True), FakeRun("unstartable", 2)]
    runs += [FakeRun(f"ok-{i}", 1, 2.0) for i in range(4)]
    sim = SimulatedRuns(cannot_start=("unstartable",))
    result = run_packed(
        runs, cpu_slots(2), sim.start, sim.wait, width=width, echo=lambda _: None, clock=sim.clock
    )
    assert sorted(run.run_id for run, _ in result.failed) == ["broken", "unstartable"]
    assert sorted(run.run_id for run in result.done) == [f"ok-{i}" for i in range(4)]
    assert sim.now == 1.0 + 2.0 + 2.0  # the broken gang's slots went to the next runs
    assert slot_overlaps(sim.records) == []


def test_a_gang_is_not_starved_by_a_stream_of_one_slot_runs():
    ahead = [FakeRun(f"ahead-{i}", 1, 10.0 + i) for i in range(3)]
    stream = [FakeRun(f"stream-{i}", 1, 3.0) for i in range(30)]
    runs = [*ahead, FakeRun("gang", 2, 5.0), *stream]
    sim = SimulatedRuns()
    run_packed(
        runs, cpu_slots(3), sim.start, sim.wait, width=width, order=in_given_order,
        echo=lambda _: None, clock=sim.clock,
    )  # fmt: skip
    ahead_ends = max(run.seconds for run in ahead)
    assert sim.started_at["gang"] == ahead_ends  # as soon as the runs ahead of it ended
    assert max(sim.started_at[run.run_id] for run in stream) > ahead_ends + 10
    assert slot_overlaps(sim.records) == []


def test_ctrl_c_stops_handing_out_work_and_hands_back_what_runs():
    sim, stopped = SimulatedRuns(), []

    def interrupted_wait(handles):
        raise KeyboardInterrupt

    runs = [FakeRun(f"r{i}") for i in range(5)]
    with pytest.raises(KeyboardInterrupt):
        run_packed(
            runs, cpu_slots(2), sim.start, interrupted_wait, width=width,
            echo=lambda _: None, on_interrupt=stopped.extend,
        )  # fmt: skip
    assert sorted(sim.started_at) == ["r0", "r1"]
    assert sorted(stopped) == ["r0", "r1"]


# --- Threads: runs really run at once --------------------------------------------------------


def test_threaded_runs_overlap_and_a_failure_does_not_stop_the_others():
    both_running = threading.Barrier(2, timeout=30)  # passes only when both runs run at once
    seen: list[tuple[str, tuple[str, ...]]] = []

    def execute(run: FakeRun, slots: tuple[Slot, ...]) -> None:
        if run.fails:
            raise ValueError(f"{run.run_id} failed")
        if run.run_id in ("first", "second"):
            both_running.wait()
        seen.append((run.run_id, tuple(slot.key for slot in slots)))

    runs = [FakeRun("first"), FakeRun("second"), FakeRun("bad", fails=True), FakeRun("last")]
    slots = devices.plan_this_machine(2, {}, [], cores=2)
    with ThreadedRuns(execute, len(slots), poll_seconds=0.05) as threaded:
        result = run_packed(
            runs, slots, threaded.start, threaded.wait, width=width, echo=lambda _: None
        )
    assert sorted(run.run_id for run in result.done) == ["first", "last", "second"]
    assert [(run.run_id, type(error)) for run, error in result.failed] == [("bad", ValueError)]
    assert {keys for name, keys in seen if name in ("first", "second")} == {
        ("localhost/0",),
        ("localhost/1",),
    }


# --- The account of the slots, and the check on records -------------------------------------


def test_utilisation_and_the_gap_between_runs_on_a_slot():
    now = [0.0]
    occupancy = Occupancy(cpu_slots(2), clock=lambda: now[0])
    a, b = cpu_slots(2)
    occupancy.started("long", [a])
    occupancy.started("short", [b])
    now[0] = 5.0
    assert occupancy.finished("short") == "slots  localhost/1 free, short done (1/2 slots busy)"
    now[0] = 7.0
    occupancy.started("next", [b])
    assert occupancy.snapshot() == "localhost/0 long | localhost/1 next"
    now[0] = 10.0
    occupancy.finished("long")
    occupancy.finished("next")
    assert occupancy.utilisation() == pytest.approx((10 + 5 + 3) / (10 * 2))
    assert occupancy.gaps == {"localhost/0": [], "localhost/1": [2.0]}
    assert "slot utilisation 0.90" in occupancy.summary()
    with pytest.raises(RuntimeError, match="localhost/0 given to other while"):
        occupancy.started("again", [a])
        occupancy.started("other", [a])


def record(run_id: str, start: float, end: float, *slots: str, engines: tuple = ()) -> dict:
    """A packed run's record: rank i on ``slots[i]``, whose engine is ``engines[i]`` (default:
    the slot's number, one engine per slot) with pid 1000 + engine."""
    engines = engines or tuple(int(key.rsplit("/", 1)[1]) for key in slots)
    ranks = [
        {"rank": i, "host": "h", "pid": 1000 + engine, "slot": {"key": key, "engine": engine}}
        for i, (key, engine) in enumerate(zip(slots, engines, strict=True))
    ]
    return {"run_id": run_id, "started_at": iso(start), "finished_at": iso(end), "ranks": ranks}


def test_records_show_two_runs_on_one_slot_at_once():
    records = [
        record("a", 0.0, 2.5, "h/0", "h/1"),
        record("b", 2.5, 3.0, "h/0"),  # starts as a ends: no overlap
        record("c", 2.75, 4.0, "h/0"),  # overlaps b by a quarter second
        record("d", 0.0, 1.0, "h/2", "h/2"),  # two ranks of one run on one slot
    ]
    found = {(o.slot, o.first, o.second): o.seconds for o in slot_overlaps(records)}
    assert found.keys() == {
        *(("h/0", "b", "c"), ("engine 0", "b", "c"), ("pid 1000 on h", "b", "c")),
        *(("h/2", "d", "d"), ("engine 2", "d", "d"), ("pid 1002 on h", "d", "d")),
    }
    assert found[("h/0", "b", "c")] == pytest.approx(0.25)


def test_records_show_two_runs_on_one_engine_at_once_on_distinct_slots():
    """After a replacement, a slot's new engine must not be another slot's engine: the runs'
    slot keys differ, so only the engine ids and pids can show the overlap."""
    records = [
        record("a", 0.0, 2.0, "h/0", "h/1", engines=(3, 4)),  # a's engines replaced h/0, h/1
        record("b", 1.0, 3.0, "h/2", engines=(4,)),  # h/2 handed a's engine 4 while a runs
        record("c", 2.0, 3.0, "h/0", engines=(3,)),  # after a, on a's engine: no overlap
    ]
    found = {(o.slot, o.first, o.second): o.seconds for o in slot_overlaps(records)}
    assert found.keys() == {("engine 4", "a", "b"), ("pid 1004 on h", "a", "b")}
    assert found[("engine 4", "a", "b")] == pytest.approx(1.0)
    # One engine id but two processes (on two hosts) is still one engine run twice.
    other_host = record("d", 1.0, 3.0, "g/2", engines=(3,))
    other_host["ranks"][0]["host"] = "g"
    found = {(o.slot, o.first, o.second) for o in slot_overlaps([records[0], other_host])}
    assert found == {("engine 3", "a", "d")}
    # Two engines but one process (an engine id re-registered) is one process run twice.
    same_process = record("e", 1.0, 3.0, "h/2", engines=(9,))
    same_process["ranks"][0]["pid"] = 1003
    found = {(o.slot, o.first, o.second) for o in slot_overlaps([records[0], same_process])}
    assert found == {("pid 1003 on h", "a", "e")}


def test_records_without_slots_or_times_are_named_errors():
    with pytest.raises(HiresmedError, match="record x: a rank has no 'slot'"):
        slot_overlaps([{"run_id": "x", "started_at": iso(0), "finished_at": iso(1), "ranks": [{}]}])
    no_engine = record("z", 0, 1, "h/0")
    del no_engine["ranks"][0]["slot"]["engine"]
    with pytest.raises(HiresmedError, match=r"record z: a rank's slot .* names no engine id"):
        slot_overlaps([no_engine])
    no_pid = record("w", 0, 1, "h/0")
    del no_pid["ranks"][0]["pid"]
    with pytest.raises(HiresmedError, match=r"record w: a rank has no engine process id"):
        slot_overlaps([no_pid])
    with pytest.raises(HiresmedError, match="record y: started_at"):
        slot_overlaps([{"run_id": "y", "started_at": "yesterday", "finished_at": iso(1)}])
