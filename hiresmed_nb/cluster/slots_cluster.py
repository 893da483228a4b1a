"""Every cluster of engines the project starts, and an attached cluster's engines as slots: one
ipyparallel engine per slot, for a packed study (its ``--slots``/``--hosts``) and for the pool's
runs alike (a run's ``N_RANKS``/``HOSTS``; :class:`~.horovod_cluster.HorovodCluster` runs its
ranks on a gang of them, :meth:`SlotsCluster.gang`).

Started (owned): each engine starts with :func:`~hiresmed_nb.cluster.devices.slot_environment` of
its slot (only its GPU visible, its share of the cores), so TensorFlow in it never sees another
slot's GPU. Every slot's engine is an engine set of its own: after a rank failure the engines of
that run's slots are replaced while the other slots' engines go on with their runs.

Attached (``cluster_file``: ``-p IPP_CLUSTER_FILE``): engines started elsewhere (the Slurm recipe
with one engine per GPU, ``cluster start``) keep the ``CUDA_VISIBLE_DEVICES`` they were started
with; each reports what it sees (:func:`~hiresmed_nb.cluster.devices.engine_devices`), which
makes one slot per engine, and is then told its slot's name and thread share (``HIRESMED_SLOT*``).
The cluster is not ours: it is never stopped, changed or replaced here. A run whose rank fails
is retried on the same engines while they are all still there; an engine that is gone (killed,
its job cancelled) is an :class:`EngineLostError` naming it and its host, and its slots leave the
study while the other slots go on.

Launched (``launched``: ``IPP_LAUNCHER=slurm``, ``cluster start --slurm N``): that many engines
started by ipyparallel's launcher as one set (one Slurm job). They keep the devices their job
gives them, so no slot is planned for them; they are owned and stopped as started ones are.

A packed study's runs attach to the cluster with its file and the engine ids of the slots
reserved for them (the notebook's ``POOL_CLUSTER_FILE`` and ``POOL_ENGINES``); each run has its
own Gloo rendezvous in its kernel.
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

from hiresmed_nb.cluster.devices import (
    LOCAL_HOST,
    STUDY_OPTIONS,
    Slot,
    engine_devices,
    plan_slots,
    plan_this_machine,
    slot_environment,
    slots_of_engines,
)
from hiresmed_nb.cluster.engine_tasks import set_environment
from hiresmed_nb.cluster.engines import (
    IPP_PROFILE_DIR,
    PROBE_SECONDS,
    REGISTRATION_SECONDS,
    Engines,
    attach_engines,
    attached_engine_count,
    attached_rendezvous_addr,
    connect_client_first,
    controller_address,
    engine_outputs,
    make_profile_private,
    new_cluster,
    private_files,
    start_failure,
)
from hiresmed_nb.cluster.errors import EngineLostError
from hiresmed_nb.cluster.hosts import ask_devices
from hiresmed_nb.cluster.lifecycle import Started
from hiresmed_nb.cluster.memory import EngineMemory, read_engine_memory
from hiresmed_nb.cluster.processes import (
    detached_cluster_id,
    engine_launches,
    marker_environment,
    owned_cluster_id,
    process_identity,
)
from hiresmed_nb.cluster.ranks import host_identities
from hiresmed_nb.cluster.stopping import stop_cluster
from hiresmed_nb.cluster.undertaker import reap_orphans
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path
from hiresmed_nb.placement import HostSlots

POLL_SECONDS = 0.2
SLOT_VARIABLES = ("HIRESMED_SLOT", "HIRESMED_SLOT_GPU", "HIRESMED_SLOT_THREADS")


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


def planned_slots(
    count: int | None,
    hosts: Sequence[HostSlots],
    remote_python: str = "",
    names: tuple[str, str] = STUDY_OPTIONS,
) -> list[Slot]:
    """The slots of this machine (``count`` of them, default one per GPU) or, with ``hosts``,
    of those hosts, whose GPUs and cores are asked over ssh (:func:`.devices.plan_slots`;
    errors name ``names``)."""
    if not hosts:
        return plan_this_machine(count, names=names)
    found = ask_devices(list(hosts), remote_python or sys.executable)
    gpus = {host: gpus for host, (gpus, _) in found.items()}
    cores = {host: cores for host, (_, cores) in found.items()}
    return plan_slots(count, hosts, gpus, cores, names)


class SlotsCluster(Started):
    """``with SlotsCluster(slots) as cluster: cluster.engine_ids(some_slots)``.

    Given ``slots``: started and owned by this process (stopped on every host when it stops,
    and by its undertaker if this process is killed); ``replace(slots)`` gives those slots fresh
    engines. Given ``cluster_file`` instead: attached, one slot per engine of that running
    cluster (:attr:`slots` once started); nothing is started, replaced or stopped. Given
    ``launched`` (with ``launcher``): that many engines started by the launcher, owned, without
    planned slots. ``detached``: owned by nobody (``cluster start``), no undertaker.
    """

    def __init__(
        self,
        slots: Sequence[Slot] = (),
        *,
        cluster_file: str = "",
        remote_python: str = "",
        rendezvous_addr: str = "auto",
        profile_dir: str | Path = IPP_PROFILE_DIR,
        detached: bool = False,
        launcher: str = "local",
        launched: int = 0,
    ):
        if [bool(slots), bool(cluster_file), launched > 0].count(True) != 1:
            raise ValueError("give SlotsCluster one of slots, cluster_file or launched")
        self.attached_file = cluster_file
        self.launcher = launcher
        self.launched = launched
        self._attached: Engines | None = None  # the attached cluster's engines
        self.slots = list(slots)
        self.hosts = slot_hosts(self.slots)
        self.remote_python = remote_python or sys.executable
        self.rendezvous_addr = rendezvous_addr
        self.profile_dir = resolve_path(profile_dir)
        # The owner's identity ('' for a cluster that outlives this process: ``cluster start``)
        # is in the id, so a later cluster on this host can remove its files if it is killed.
        self.owner = "" if detached else process_identity()
        token = secrets.token_hex(4)
        self.cluster_id = (
            detached_cluster_id(token) if detached else owned_cluster_id(os.getpid(), token)
        )
        self.controller = ""  # the address the controller (and the ranks' rendezvous) listen on
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
        if self.attached_file:
            return str(resolve_path(self.attached_file))
        return str(getattr(self._cluster, "cluster_file", ""))

    def engine_ids(self, slots: Sequence[Slot]) -> list[int]:
        """The engine ids of ``slots`` now, in slot order (a run's ranks)."""
        with self._lock:
            return self._ids_of(slots)

    def _ids_of(self, slots: Sequence[Slot]) -> list[int]:
        return [self.engine_of[slot.key] for slot in slots]

    def gang(self, slots: Sequence[Slot] | None = None) -> Engines:
        """The engines of ``slots`` (default: all) now as one run's ranks use them, in engine
        id order (so ipyparallel's ``[stdout:0]`` is rank 0's output). A view: stopping it
        stops nothing, only :meth:`stop` does."""
        with self._lock:
            chosen = self.engine_of.values() if slots is None else self._ids_of(slots)
            ids = sorted(chosen)
            if self._attached is not None:
                client, launches = self._attached.client, self._attached.launches
            else:
                client, launches = self._client, engine_launches(self._cluster.to_dict())
        return Engines(client, ids, self.cluster_id, self.profile_dir, launches)

    # Starting ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the controller and one engine per slot; wait until every slot's engine is up.
        Attached: find the engines' slots and tell each engine its slot. Launched: start the
        engines with the launcher as one set (:meth:`_start_launched`)."""
        if self.attached_file:
            self._attach()
            return
        reap_orphans(self.profile_dir)
        controller = self.controller = controller_address(
            self.rendezvous_addr,
            self.cluster_id,
            launcher=self.launcher,
            hosts=self.hosts,
            remote_python=self.remote_python,
        )
        # Loopback for slots on this machine; with hosts, where every host sees us. The
        # engines are started one engine set per slot below, not by the cluster itself.
        self._cluster = new_cluster(
            self.launched or 1,
            cluster_id=self.cluster_id,
            profile_dir=self.profile_dir,
            controller_address=controller,
            owner=self.owner,
            launcher=self.launcher,
            hosts=self.hosts,
            remote_python=self.remote_python,
        )
        count = self.launched or len(self.slots)
        with private_files():
            try:
                self._client = connect_client_first(self._cluster)
                if self.launched:
                    self._start_launched()
                for slot in self.slots:
                    self._start_engine(slot)
                self._await_engines(self.slots, "start")
            except Exception as error:  # with what the engines said (stop() then ends them)
                message = start_failure(self._cluster, count, controller, error)
                raise HiresmedError(message) from None
            finally:
                make_profile_private(self.profile_dir, self.cluster_id)
        if self.owner:
            self.watch_owner(self.cluster_id, self.cluster_file)

    def _attach(self) -> None:
        count = attached_engine_count(self.attached_file)  # the controller's: job steps count
        reap_orphans(self.profile_dir)
        engines = self._attached = attach_engines(self.attached_file, count)
        meeting = attached_rendezvous_addr(engines, self.rendezvous_addr)
        hostnames, _ = host_identities(engines.describe(meeting))  # as a run's ranks name them
        devices = engines.ask(engine_devices, each=[(e,) for e in engines.engine_ids])
        by_engine = slots_of_engines(devices, hostnames)
        self.slots = [by_engine[engine_id] for engine_id in engines.engine_ids]
        variables = [slot_environment(slot) for slot in self.slots]
        # Each engine takes its slot's name and thread share (its GPU is set already).
        engines.ask(set_environment, each=[({k: v[k] for k in SLOT_VARIABLES},) for v in variables])
        self.engine_of = {
            slot.key: engine_id
            for slot, engine_id in zip(self.slots, engines.engine_ids, strict=True)
        }

    def _start_launched(self) -> None:
        """Start ``launched`` engines with ipyparallel's launcher as one set (Slurm: one job).
        They keep the devices their job gives them (a rank then takes the GPU at its local
        rank) and split their CPUs as the ranks of any engine do; no slot is planned for them."""
        self._cluster.start_engines_sync(self.launched)
        self._client.wait_for_engines(
            self.launched, timeout=REGISTRATION_SECONDS, interactive=False
        )
        ids = sorted(self._client.ids)[: self.launched]
        self.engine_of = {f"engine/{engine_id}": engine_id for engine_id in ids}

    def _start_engine(self, slot: Slot) -> None:
        """Start ``slot``'s engine, an engine set of its own, with the slot's environment; from
        now on an engine that registers for the slot is its engine (:meth:`_await_engines`)."""
        environment = {
            **marker_environment(self.cluster_id, self.owner),
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
                    f"{', '.join(sorted(waiting))} ({why})"
                )
            time.sleep(POLL_SECONDS)

    # Replacing and stopping -------------------------------------------------------------------

    def replace(self, slots: Sequence[Slot]) -> None:
        """Give ``slots`` fresh engines (after a rank failure: the old ones may be stuck or
        gone; or grown too large). Same slots, same environment, new engine ids. The lock is
        held while engines stop and start, not while the new ones register.

        Attached: the engines are not ours to replace, only :meth:`check` that they are all
        still there (a retry then runs on them)."""
        if self.attached_file:
            self.check(slots)
            return
        with self._lock:
            if self._stopped:
                raise HiresmedError("the slots' cluster was stopped: no engine is replaced")
            for slot in slots:
                self._memory.pop(self.engine_of[slot.key], None)
                self._cluster.stop_engines_sync(self._sets.pop(slot.key))
                self._start_engine(slot)
        try:
            self._await_engines(slots, "replacement")
        except HiresmedError as error:
            raise HiresmedError(f"{error}\n{self._outputs_of(slots)}") from None
        with self._lock:
            self.replaced += len(slots)

    def _outputs_of(self, slots: Sequence[Slot]) -> str:
        """What the engines last started for ``slots`` said (:func:`engine_outputs`)."""
        with self._lock:  # not while reading them (over ssh for a remote engine)
            started = getattr(self._cluster, "engines", None) or {}
            ids = [self._sets.get(slot.key) for slot in slots]
            sets = [started[i] for i in ids if i in started]
        return engine_outputs(sets)

    def check(self, slots: Sequence[Slot]) -> None:
        """Give fresh engines to the slots of ``slots`` whose engine has left the controller
        (e.g. killed between runs), so the next run there does not target it. Attached: raise
        :class:`EngineLostError` for the first engine of ``slots`` that is gone."""
        if self._attached is not None:
            engines = self._attached
            lost = set(engines.lost(check_remote=True))
            for slot in slots:
                index = engines.engine_ids.index(self.engine_of[slot.key])
                if index in lost:
                    raise EngineLostError(
                        self.engine_of[slot.key], engines.host_of(index), self.cluster_file
                    )
            return
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
        which were replaced, or None. An attached cluster's engines are not this study's to
        replace, whatever their memory."""
        with self._lock:
            if self._client is None:  # stopped (Ctrl-C): nothing to read or replace
                return None
            engine_ids = [self.engine_of[slot.key] for slot in slots]
            client = self._client
        try:  # bounded: a study stopped meanwhile must not leave this thread waiting forever
            rss = read_engine_memory(client, engine_ids)
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
        the others, and no engine starts after (:meth:`replace` raises). Attached: let the
        cluster go (it keeps running)."""
        if self._attached is not None:
            self._attached.close()
        with self._lock:
            self._stopped = True
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
            if client is not None:
                client.close()
            if cluster is not None:
                stop_cluster(cluster, self.cluster_id, self.profile_dir)
        self.stop_watching()
