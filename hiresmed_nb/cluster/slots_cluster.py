"""A packed study's cluster: one ipyparallel engine per slot, started with its slot's environment.

Each engine starts with :func:`~hiresmed_nb.cluster.devices.slot_environment` of its slot (only
its GPU visible, its share of the cores), so TensorFlow in it never sees another slot's GPU.
Every slot's engine is an engine set of its own: after a rank failure the engines of that run's
slots are replaced while the other slots' engines go on with their runs. Runs attach to the
cluster with its file and the engine ids of the slots reserved for them (the notebook's
``POOL_CLUSTER_FILE`` and ``POOL_ENGINES``); each run has its own Gloo rendezvous in its kernel.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hiresmed_nb.cluster.devices import LOCAL_HOST, Slot, slot_environment
from hiresmed_nb.cluster.engines import (
    PROBE_SECONDS,
    REGISTRATION_SECONDS,
    controller_address,
    make_profile_private,
    new_cluster,
    private_files,
    stop_cluster,
)
from hiresmed_nb.cluster.horovod_cluster import IPP_PROFILE_DIR
from hiresmed_nb.cluster.lifecycle import Started
from hiresmed_nb.cluster.memory import EngineMemory, resident_bytes
from hiresmed_nb.cluster.processes import (
    marker_environment,
    owned_cluster_id,
    process_identity,
)
from hiresmed_nb.cluster.undertaker import reap_orphans
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path
from hiresmed_nb.placement import HostSlots

POLL_SECONDS = 0.2
MEMORY_READ_SECONDS = 10  # an idle engine answers in milliseconds


def engine_slot_key() -> str:
    """Run on an engine: the key of the slot it was started for ('' for another engine)."""
    return os.environ.get("HIRESMED_SLOT", "")


def slot_hosts(slots: Sequence[Slot]) -> list[HostSlots]:
    """The ``--hosts`` entries the slots are on (none when every slot is on this machine)."""
    counts: dict[str, int] = {}
    for slot in slots:
        if slot.host != LOCAL_HOST:
            counts[slot.host] = counts.get(slot.host, 0) + 1
    return [HostSlots(host, count) for host, count in counts.items()]


class SlotsCluster(Started):
    """``with SlotsCluster(slots) as cluster: cluster.engine_ids(some_slots)``.

    Started and owned by this process (stopped on every host when it stops, and by its
    undertaker if this process is killed). ``replace(slots)`` gives those slots fresh engines.
    """

    def __init__(
        self,
        slots: Sequence[Slot],
        *,
        remote_python: str = "",
        rendezvous_addr: str = "auto",
        profile_dir: str | Path = IPP_PROFILE_DIR,
    ):
        self.slots = list(slots)
        self.hosts = slot_hosts(self.slots)
        self.remote_python = remote_python or sys.executable
        self.rendezvous_addr = rendezvous_addr
        self.profile_dir = resolve_path(profile_dir)
        self.cluster_id = owned_cluster_id(os.getpid(), secrets.token_hex(4))
        self.engine_of: dict[str, int] = {}  # slot key -> its engine's id
        self.replaced = 0  # engines replaced after failures
        self._sets: dict[str, str] = {}  # slot key -> its engine set id
        self._memory: dict[int, EngineMemory] = {}  # engine id -> its memory since its first run
        self._seen: set[int] = set()
        self._cluster: Any = None
        self._client: Any = None
        # Held only for bookkeeping and for starting or stopping engines, never while waiting
        # for them to register: other slots' runs go on meanwhile.
        self._lock = threading.Lock()
        self._awaited: set[str] = set()  # slot keys whose new engine has not registered yet
        self._probing: set[int] = set()  # engine ids being asked for their slot now
        self._stopped = False

    @property
    def cluster_file(self) -> str:
        return str(getattr(self._cluster, "cluster_file", ""))

    def engine_ids(self, slots: Sequence[Slot]) -> list[int]:
        """The engine ids of ``slots`` now, in slot order (a run's ranks)."""
        with self._lock:
            return [self.engine_of[slot.key] for slot in slots]

    # Starting ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the controller and one engine per slot; wait until every slot's engine is up."""
        reap_orphans(self.profile_dir)
        controller = controller_address(
            self.rendezvous_addr,
            self.cluster_id,
            hosts=self.hosts,
            remote_python=self.remote_python,
        )
        # Loopback for slots on this machine; with hosts, where every host sees us. The
        # engines are started one engine set per slot below, not by the cluster itself.
        self._cluster = new_cluster(
            1,
            cluster_id=self.cluster_id,
            profile_dir=self.profile_dir,
            controller_address=controller,
            owner=process_identity(),
            hosts=self.hosts,
            remote_python=self.remote_python,
        )
        with private_files():
            try:
                self._cluster.start_controller_sync()
                for slot in self.slots:
                    self._start_engine(slot)
                self._client = self._cluster.connect_client_sync()
                self._await_engines(self.slots, "start")
            except HiresmedError:
                raise
            except Exception as error:
                raise HiresmedError(
                    f"the slots' cluster did not start its {len(self.slots)} engine(s) with a "
                    f"controller on {controller}: {type(error).__name__}: {error}"
                ) from None
            finally:
                make_profile_private(self.profile_dir, self.cluster_id)
        self.watch_owner(self.cluster_id, self.cluster_file)

    def _start_engine(self, slot: Slot) -> None:
        """Start ``slot``'s engine, an engine set of its own, with the slot's environment; from
        now on an engine that registers for the slot is its engine (:meth:`_await_engines`)."""
        environment = {
            **marker_environment(self.cluster_id, process_identity()),
            **slot_environment(slot),
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        }
        extra: dict[str, Any] = {"environment": environment}
        if self.hosts:
            extra["engines"] = {slot.host: 1}
        self._awaited.add(slot.key)
        self._sets[slot.key] = self._cluster.start_engines_sync(n=1, **extra)

    def _await_engines(self, slots: Sequence[Slot], why: str) -> None:
        """Wait (without the lock) until the engine started for every slot of ``slots`` has
        registered. Engines new to us are asked for their slot; several callers may wait at
        once, each engine is asked once and counts for whichever slot it names."""
        keys = {slot.key for slot in slots}
        deadline = time.monotonic() + REGISTRATION_SECONDS
        while True:
            with self._lock:
                if self._client is None:
                    raise HiresmedError(f"the slots' cluster was stopped during the {why}")
                waiting = keys & self._awaited
                if not waiting:
                    return
                new = sorted(set(self._client.ids) - self._seen - self._probing)
                self._probing.update(new)
            try:
                for engine_id in new:
                    key = self._client[engine_id].apply_async(engine_slot_key).get(PROBE_SECONDS)
                    with self._lock:
                        self._seen.add(engine_id)
                        if key in self._awaited:
                            self.engine_of[key] = engine_id
                            self._awaited.discard(key)
            finally:
                with self._lock:
                    self._probing.difference_update(new)
            if time.monotonic() > deadline:
                raise HiresmedError(
                    f"no engine registered within {REGISTRATION_SECONDS} s for slot(s) "
                    f"{', '.join(sorted(waiting))} ({why}); see the engine logs in "
                    f"{self.profile_dir}/log"
                )
            time.sleep(POLL_SECONDS)

    # Replacing and stopping -------------------------------------------------------------------

    def replace(self, slots: Sequence[Slot]) -> None:
        """Give ``slots`` fresh engines (after a rank failure: the old ones may be stuck or
        gone; or grown too large). Same slots, same environment, new engine ids. The lock is
        held while engines stop and start, not while the new ones register."""
        with self._lock:
            if self._stopped:
                raise HiresmedError("the slots' cluster was stopped: no engine is replaced")
            for slot in slots:
                self._memory.pop(self.engine_of[slot.key], None)
                self._cluster.stop_engines_sync(self._sets.pop(slot.key))
                self._start_engine(slot)
        self._await_engines(slots, "replacement")
        with self._lock:
            self.replaced += len(slots)

    def check(self, slots: Sequence[Slot]) -> None:
        """Give fresh engines to the slots of ``slots`` whose engine has left the controller
        (e.g. killed between runs), so the next run there does not target it."""
        with self._lock:
            if self._client is None:
                return
            registered = set(self._client.ids)
            gone = [slot for slot in slots if self.engine_of[slot.key] not in registered]
        if gone:
            self.replace(gone)

    def recycle_outgrown(self, slots: Sequence[Slot]) -> str | None:
        """After a run on ``slots``: read their engines' memory (an engine's first reading is its
        baseline) and give fresh engines to the slots whose engine has grown past the bound of
        :mod:`.memory`, as the pool does for a warm cluster. Returns the console line saying
        which were replaced, or None."""
        with self._lock:
            if self._client is None:  # stopped (Ctrl-C): nothing to read or replace
                return None
            engine_ids = [self.engine_of[slot.key] for slot in slots]
            reading = self._client[engine_ids].apply_async(resident_bytes)
        try:  # bounded: a study stopped meanwhile must not leave this thread waiting forever
            rss = reading.get(timeout=MEMORY_READ_SECONDS)
        except Exception:  # engines stopped or unreachable: no reading, nothing replaced
            return None
        outgrown: list[tuple[Slot, EngineMemory]] = []
        for slot, engine_id, now in zip(slots, engine_ids, rss, strict=True):
            memory = self._memory.setdefault(engine_id, EngineMemory())
            memory.observe([now])
            if memory.outgrown():
                outgrown.append((slot, memory))
        if not outgrown:
            return None
        self.replace([slot for slot, _ in outgrown])
        return "; ".join(
            f"slots  {slot.key}: {memory.describe()}, replaced" for slot, memory in outgrown
        )

    def stop(self) -> None:
        """Stop the controller and every slot's engine, on every host; leave no file behind.
        Under the lock: an engine being started meanwhile is started first, then stopped with
        the others, and no engine starts after (:meth:`replace` raises)."""
        with self._lock:
            self._stopped = True
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
            if client is not None:
                client.close()
            if cluster is not None:
                stop_cluster(cluster, self.cluster_id, self.profile_dir)
        self.stop_watching()
