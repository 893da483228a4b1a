"""Starting something that must be stopped also when its start fails half-way (a controller up,
some engines not): :class:`Started` gives ``with`` to the clusters, and the undertaker that stops
a cluster whose owner (this process) dies without stopping it."""

from __future__ import annotations

import subprocess
from typing import Protocol, Self, TypeVar


class Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


StartableT = TypeVar("StartableT", bound=Startable)


def start_or_stop(thing: StartableT) -> StartableT:
    """``thing.start()`` and return it; if the start fails, ``thing.stop()`` then the failure."""
    try:
        thing.start()
    except BaseException:
        thing.stop()
        raise
    return thing


class Started:
    """``with Cluster(...) as cluster``: started on entry (stopped if that fails), stopped on
    exit. Subclasses define ``start`` and ``stop``; an owned cluster calls :meth:`watch_owner`
    once started and :meth:`stop_watching` when it stops."""

    _undertaker: subprocess.Popen | None = None

    def watch_owner(self, cluster_id: str, cluster_file: str) -> None:
        """Start the undertaker (:mod:`.undertaker`): idle between runs, the cluster must not
        outlive this process, also when it is killed before it can stop the cluster."""
        from hiresmed_nb.cluster.processes import process_identity
        from hiresmed_nb.cluster.undertaker import start_undertaker

        self._undertaker = start_undertaker(process_identity(), cluster_id, cluster_file)

    def stop_watching(self) -> None:
        """End the undertaker now (its watch would end on its own within a poll once the cluster
        file is gone), so that nothing outlives ``stop()``."""
        if self._undertaker is not None:
            self._undertaker.terminate()
            self._undertaker.wait()
            self._undertaker = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return start_or_stop(self)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
