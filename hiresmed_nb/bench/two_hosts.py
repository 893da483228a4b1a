"""The 2-host launch path: 2 simulated hosts x 1 rank, beside 1 host x 2 ranks.

The hosts are network namespaces on this machine (:mod:`hiresmed_nb.simhosts`), each with its
own sshd and hostname, so both layouts share the same cores: the comparison measures what
crossing hosts costs (engines started over ssh, Gloo over a bridge instead of loopback), not a
speed-up. Each rank gets the TensorFlow threads a rank of 1 host x 2 ranks gets. Where
simulated hosts cannot be built (not root, no sshd ...), :func:`simulated_pair` says why.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from hiresmed_nb import simhosts
from hiresmed_nb.bench.timed import timed_train

HOSTS = "hostA:1,hostB:1"  # HOSTS of the 2-host path; the aliases of the simulated hosts
SPECS = (simhosts.HostSpec("hostA"), simhosts.HostSpec("hostB"))


@contextlib.contextmanager
def ssh_reaches(sim: simhosts.SimHosts) -> Iterator[None]:
    """Within the block, plain ``ssh hostA`` (as the cluster calls it) reaches ``sim``'s hosts:
    its ssh wrappers come first on this process's PATH."""
    previous = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{sim.bin_dir}{os.pathsep}{previous}"
    try:
        yield
    finally:
        os.environ["PATH"] = previous


@contextlib.contextmanager
def simulated_pair() -> Iterator[str | None]:
    """Build hostA and hostB and make ssh reach them for the block; yield None, or (nothing
    built) the reason they cannot be built here. Everything built is removed afterwards."""
    reason = simhosts.unavailable_reason()
    sim = None
    if reason is None:
        try:
            sim = simhosts.SimHosts(SPECS).start()
        except Exception as error:  # start() removed what it built
            reason = f"building the simulated hosts failed: {type(error).__name__}: {error}"
    if sim is None:
        yield reason
        return
    try:
        with ssh_reaches(sim):
            yield None
    finally:
        sim.close()


def rank_threads() -> int:
    """TensorFlow threads of a rank of 1 host x 2 ranks here (training's cores // local ranks)."""
    return max(1, (os.cpu_count() or 1) // 2)


def via_two_hosts(params: dict[str, Any]) -> dict[str, Any]:
    """1 rank on each of 2 hosts, engines started over ssh (``HOSTS=hostA:1,hostB:1``): the
    clock starts just before the cluster is entered; it is stopped on both hosts afterwards.

    Needs ssh to reach hostA and hostB (:func:`simulated_pair`). Returns rank 0's result plus
    ``called``, the ranks' ``hostnames`` and the cluster's ``placement``.
    """
    from hiresmed_nb.cluster import HorovodCluster, Placement, parse_hosts

    placement = Placement(2, hosts=tuple(parse_hosts(HOSTS)))
    config = {"params": params, "threads": rank_threads()}
    started = time.time()
    with HorovodCluster(placement=placement) as cluster:
        results = cluster.run(timed_train, config)
        placement = cluster.description
    return {
        **results[0],
        "called": started,
        "hostnames": [result["hostname"] for result in results],
        "placement": placement,
    }
