"""A packed study: as many of its notebooks at once as the free slots allow.

The slots come from ``--slots``/the GPUs found (this machine), ``--hosts`` or an attached cluster
(``IPP_CLUSTER_FILE``); :func:`study_slots` chooses. One engine per slot (:class:`SlotsCluster`,
or the attached cluster's engines) hosts the runs: :func:`~hiresmed_nb.study.packed.run_packed`
reserves each run's whole set of slots, and a thread executes its notebook with the engine ids
of those slots (``POOL_ENGINES``), so a serial run trains on its slot's engine and a distributed
run places its ranks on its gang's engines, each with its own rendezvous in its kernel.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hiresmed_nb.cluster.devices import (
    LOCAL_HOST,
    Slot,
    available_cores,
    check_slot_count,
    describe_slots,
    installed_gpus,
    parse_slot_hosts,
    plan_slots,
    plan_this_machine,
)
from hiresmed_nb.cluster.hosts import ask_devices
from hiresmed_nb.cluster.lifecycle import start_or_stop
from hiresmed_nb.cluster.slots_cluster import SlotsCluster
from hiresmed_nb.study.grid import Run
from hiresmed_nb.study.packed import PackedResult, SlotsLost, ThreadedRuns, run_packed
from hiresmed_nb.study.packing import check_fits

__all__ = ["SlotRequest", "check_fits", "run_on_slots", "start_slot_engines", "study_slots"]


class SlotEngines(Protocol):
    """What a packed study needs of its engines: their cluster file, the engine ids of some
    slots, fresh engines for slots whose run failed (``replace``) or whose engine is gone
    (``check``; both raise when the slots cannot have engines again), and stopping."""

    slots: list[Slot]

    @property
    def cluster_file(self) -> str: ...

    def engine_ids(self, slots: Sequence[Slot]) -> list[int]: ...

    def replace(self, slots: Sequence[Slot]) -> None: ...

    def check(self, slots: Sequence[Slot]) -> None: ...

    def recycle_outgrown(self, slots: Sequence[Slot]) -> str | None: ...

    def stop(self) -> None: ...


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
        found = ask_devices(hosts, sys.executable)  # each host's GPUs and cores, over ssh
        gpus = {host: gpus for host, (gpus, _) in found.items()}
        cores = {host: cores for host, (_, cores) in found.items()}
        return plan_slots(request.slots, hosts, gpus, cores)
    if request.slots is None and not installed_gpus():
        return None
    return plan_this_machine(request.slots)


def start_slot_engines(request: SlotRequest, slots: list[Slot] | None) -> SlotEngines:
    """The engines of a packed study: attached (a cluster file) or started, one per slot."""
    if request.cluster_file:
        return start_or_stop(SlotsCluster(cluster_file=request.cluster_file))
    if slots is None:
        raise ValueError("no slots to start engines for")
    return start_or_stop(SlotsCluster(slots))


class RunOnSlots:
    """The runner's pool for one run of a packed study: its notebook attaches to the engines of
    its slots; after a rank failure those slots get fresh engines (the retry runs there). When
    that replacement raises, :attr:`lost` keeps the error: the slots leave the study."""

    def __init__(self, engines: SlotEngines, slots: Sequence[Slot]):
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
    engines: SlotEngines,
    execute: Callable[[Run, RunOnSlots], bool],
    *,
    echo: Callable[[str], None],
    on_interrupt: Callable[[], None],
) -> PackedResult[Run]:
    """Execute ``runs`` packed onto ``engines``' slots; ``execute(run, pool)`` runs one
    notebook to its end and returns whether it succeeded (it records its failure itself).
    Ctrl-C: ``on_interrupt`` (stop the running notebooks), then the interrupt propagates."""
    lock = threading.Lock()

    def locked_echo(line: str) -> None:
        with lock:
            echo(line)

    def execute_on(run: Run, slots: tuple[Slot, ...]) -> None:
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
