"""An attached cluster's engines as a packed study's slots (``-p IPP_CLUSTER_FILE``).

Engines started elsewhere (the Slurm recipe with one engine per GPU, ``cluster start``) keep the
``CUDA_VISIBLE_DEVICES`` they were started with; each reports what it sees
(:mod:`.engine_slots`), which makes one slot per engine, and is then told its slot's name and
thread share (``HIRESMED_SLOT*``) so its ranks take that share and its one GPU, and its runs'
records say where they ran. The cluster is not ours: it is never stopped, changed or replaced
here. A run whose rank fails is retried on the same engines while they are all still there; an
engine that is gone (killed, its job cancelled) is an :class:`EngineLostError` naming it and its
host, and its slots leave the study while the other slots go on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from hiresmed_nb.cluster.devices import Slot, slot_environment
from hiresmed_nb.cluster.engine_slots import engine_devices, slots_of_engines
from hiresmed_nb.cluster.engines import PROBE_SECONDS, attached_engine_count
from hiresmed_nb.cluster.errors import EngineLostError
from hiresmed_nb.cluster.horovod_cluster import HorovodCluster
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path
from hiresmed_nb.placement import Placement

SLOT_VARIABLES = ("HIRESMED_SLOT", "HIRESMED_SLOT_GPU", "HIRESMED_SLOT_THREADS")


def adopt_slot(variables: dict[str, str]) -> None:
    """Run on an engine: take the name and thread share of its slot (its GPU is already set)."""
    os.environ.update(variables)


class AttachedSlots:
    """One slot per engine of the running cluster of ``cluster_file``; nothing is started."""

    def __init__(self, cluster_file: str):
        self._file = cluster_file
        engines = attached_engine_count(cluster_file)  # the controller's: job steps count too
        self._cluster = HorovodCluster(placement=Placement(engines, cluster_file=cluster_file))
        try:
            self._cluster.start()  # attaches, and names each engine's host as ranks would
            self.slots, self.engine_of = self._slots()
        except BaseException:
            self._cluster.stop()
            raise

    def _slots(self) -> tuple[list[Slot], dict[str, int]]:
        engines = self._cluster.engines
        futures = [
            view.apply_async(engine_devices, engine_id)
            for view, engine_id in zip(engines.views, engines.engine_ids, strict=True)
        ]
        devices = [future.get(timeout=PROBE_SECONDS) for future in futures]
        hosts = [rank.hostname for rank in self._cluster.slots]
        by_engine = slots_of_engines(devices, hosts)
        slots = [by_engine[engine_id] for engine_id in engines.engine_ids]
        adopted = []
        for view, slot in zip(engines.views, slots, strict=True):
            variables = slot_environment(slot)
            chosen = {name: variables[name] for name in SLOT_VARIABLES}
            adopted.append(view.apply_async(adopt_slot, chosen))
        for engine_id, future in zip(engines.engine_ids, adopted, strict=True):
            try:
                future.get(timeout=PROBE_SECONDS)
            except TimeoutError:
                raise HiresmedError(
                    f"IPP_CLUSTER_FILE={self._file!r}: engine {engine_id} did not answer within "
                    f"{PROBE_SECONDS} s: it is busy or its host is unreachable"
                ) from None
        return slots, {slot.key: e for slot, e in zip(slots, engines.engine_ids, strict=True)}

    @property
    def cluster_file(self) -> str:
        return str(resolve_path(self._file))

    def engine_ids(self, slots: Sequence[Slot]) -> list[int]:
        return [self.engine_of[slot.key] for slot in slots]

    def replace(self, slots: Sequence[Slot]) -> None:
        """Engines of a cluster we did not start are not ours to replace: only :meth:`check`
        that they are all still there (a retry then runs on them)."""
        self.check(slots)

    def check(self, slots: Sequence[Slot]) -> None:
        """Raise :class:`EngineLostError` for the first engine of ``slots`` that is gone."""
        engines = self._cluster.engines
        lost = set(engines.lost(check_remote=True))
        for slot in slots:
            index = engines.engine_ids.index(self.engine_of[slot.key])
            if index in lost:
                raise EngineLostError(
                    self.engine_of[slot.key], engines.host_of(index), self.cluster_file
                )

    def recycle_outgrown(self, slots: Sequence[Slot]) -> str | None:
        """An attached cluster's engines are not this study's to replace, whatever their memory."""
        return None

    def stop(self) -> None:
        """Let the cluster go (it keeps running)."""
        self._cluster.stop()
