"""The kernel's warm cluster: kept between runs of the training cell, replaced when the ranks'
layout changes, stopped when the kernel exits.

A second distributed run with the same :class:`Placement` reuses the running engines, which
already imported TensorFlow and Horovod; a different placement, a failed or interrupted run, or a
lost engine replaces it. The kernel's exit stops it (``atexit``); if the kernel is killed instead,
the cluster's undertaker (:mod:`.undertaker`) stops it on every host.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import Any

from hiresmed_nb.cluster.horovod_cluster import HorovodCluster
from hiresmed_nb.placement import Placement

_warm: HorovodCluster | None = None
_atexit_registered = False


def warm_cluster(placement: Placement) -> HorovodCluster:
    """The kernel's cluster for ``placement``: the running one when it matches and is usable, else
    a new one (the old one is stopped first)."""
    global _warm, _atexit_registered
    if _warm is not None and (_warm.placement != placement or not _warm.usable()):
        stop_warm_cluster()
    if _warm is None:
        cluster = HorovodCluster(placement=placement)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        _warm = cluster
        if not _atexit_registered:
            atexit.register(stop_warm_cluster)
            _atexit_registered = True
    return _warm


def run_warm(
    placement: Placement, function: Callable, *args: Any, recycle: bool = True
) -> list[Any]:
    """``function(*args)`` on every rank of the kernel's warm cluster for ``placement``.

    A run that fails or is interrupted leaves its ranks in an unknown state: the cluster is
    stopped (or, attached, let go) and the next run starts a fresh one. So does a run after
    which the engines' memory has grown too much (:mod:`.memory`) on a cluster this kernel
    started (an attached cluster's owner decides when to replace it), unless ``recycle`` is
    False (the benchmark that measures that growth).
    """
    cluster = warm_cluster(placement)
    print(f"{cluster.description}; run {cluster.runs + 1} on these engines", flush=True)
    try:
        results = cluster.run(function, *args)
    except BaseException:
        stop_warm_cluster()
        raise
    if recycle and not placement.cluster_file:
        try:
            cluster.observe_memory()
        except Exception as error:  # the run is done; its engines are not fit for another
            print(f"engines did not report their memory ({error!r}): replacing them", flush=True)
            stop_warm_cluster()
            return results
        if cluster.memory.outgrown():
            print(f"{cluster.memory.describe()}: the next run starts fresh engines", flush=True)
    return results


def current_warm_cluster() -> HorovodCluster | None:
    """The kernel's warm cluster, if one is running."""
    return _warm


def stop_warm_cluster() -> None:
    """Stop the kernel's warm cluster (an attached one is only let go)."""
    global _warm
    cluster, _warm = _warm, None
    if cluster is not None:
        cluster.stop()
