"""The 2-host launch path: 2 hosts x 1 rank, beside 1 host x 2 ranks.

The two hosts are named by ``HIRESMED_BENCH_HOSTS`` (``HOSTS`` syntax, one slot each, reached
over ssh as a distributed run reaches them); without it the path is skipped, saying so. On one
machine (the project's tests build such hosts as network namespaces with their own sshd, see
``tests/simhosts.py``) both layouts share the same cores, so the comparison measures what
crossing hosts costs (engines started over ssh, Gloo over a bridge instead of loopback), not a
speed-up. Each rank gets the TensorFlow threads a rank of 1 host x 2 ranks gets.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from hiresmed_nb.bench.timed import timed_train
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.placement import parse_hosts

HOSTS_VARIABLE = "HIRESMED_BENCH_HOSTS"


def bench_hosts() -> str:
    """The ``HOSTS`` of the 2-host path, from ``HIRESMED_BENCH_HOSTS`` ('' when unset)."""
    return os.environ.get(HOSTS_VARIABLE, "").strip()


@contextlib.contextmanager
def host_pair() -> Iterator[str | None]:
    """Yield None when two hosts of one slot each are named, else the reason the path is
    skipped."""
    hosts = bench_hosts()
    if not hosts:
        yield f"no hosts: set {HOSTS_VARIABLE}='hostA:1,hostB:1' (two ssh hosts) to measure it"
        return
    try:
        parsed = parse_hosts(hosts)
    except HiresmedError as error:
        yield f"{HOSTS_VARIABLE}: {error}"
        return
    if len(parsed) != 2 or any(entry.slots != 1 for entry in parsed):
        yield f"{HOSTS_VARIABLE}={hosts!r}: give two hosts of one slot each, 'a:1,b:1'"
        return
    yield None


def rank_threads() -> int:
    """TensorFlow threads of a rank of 1 host x 2 ranks here (training's cores // local ranks)."""
    return max(1, (os.cpu_count() or 1) // 2)


def via_two_hosts(params: dict[str, Any]) -> dict[str, Any]:
    """1 rank on each of 2 hosts, engines started over ssh (:func:`bench_hosts`): the
    clock starts just before the cluster is entered; it is stopped on both hosts afterwards.

    Needs ssh to reach the hosts of :func:`bench_hosts`. Returns rank 0's result plus
    ``called``, the ranks' ``hostnames`` and the cluster's ``placement``.
    """
    from hiresmed_nb.cluster import HorovodCluster, Placement

    placement = Placement(2, hosts=tuple(parse_hosts(bench_hosts())))
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
