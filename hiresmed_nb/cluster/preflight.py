"""Checks before ``hvd.init()``: every failure is one HiresmedError naming the host and the fix.

A rank that cannot reach the rendezvous server, has no interface towards it, or (rank 0) cannot
see ``RESULTS_DIR`` would otherwise hang in ``hvd.init()`` or die with a bare lost rank.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hiresmed_nb.cluster import engine_tasks
from hiresmed_nb.cluster.ranks import EngineFacts
from hiresmed_nb.errors import HiresmedError

CONNECT_SECONDS = 5.0
ANSWER_SECONDS = 30


def check_routes(facts: Sequence[EngineFacts], rendezvous_addr: str) -> None:
    """Every engine has a route and an interface towards ``rendezvous_addr``; loopback only
    when every engine is on this machine."""
    remote = sorted({f.hostname for f in facts if f.machine != "localhost"})
    if remote and rendezvous_addr.startswith("127."):
        raise HiresmedError(
            f"RENDEZVOUS_ADDR={rendezvous_addr} is loopback, but ranks run on "
            f"{', '.join(remote)}: set RENDEZVOUS_ADDR to this machine's address that those "
            "hosts reach, or to 'auto'"
        )
    for f in facts:
        if not f.route_address or not f.interface:
            raise HiresmedError(
                f"host {f.hostname} (engine {f.engine_id}) has no route to the rendezvous "
                f"address {rendezvous_addr}: set RENDEZVOUS_ADDR to an address of this machine "
                "that host can reach"
            )


def check_host_names(facts: Sequence[EngineFacts]) -> None:
    """When ranks span hosts, each host's own name must resolve, on it, to its address.

    Measured with Horovod 0.28.1 on simulated hosts: Gloo advertises to the other ranks the
    address the host's own name resolves to, whatever HOROVOD_GLOO_IFACE says; where that is
    not the host's address (Debian's default 127.0.1.1, a stale /etc/hosts line), the peers'
    connections are refused and hvd.init() aborts. Hosts that share one name are fine as long
    as it resolves, on each, to its own address.
    """
    if {f.machine for f in facts} == {"localhost"}:
        return
    for f in facts:
        if f.route_address not in f.hostname_addresses:
            shown = ", ".join(f.hostname_addresses) or "nothing"
            raise HiresmedError(
                f"host {f.hostname}: its own name '{f.hostname}' resolves there to {shown}, not "
                f"to its address {f.route_address} on the route to this machine. Horovod's Gloo "
                "gives the other ranks the address that name resolves to, so hvd.init() would "
                f"abort. Fix: on {f.hostname}, map '{f.hostname}' to {f.route_address} in "
                "/etc/hosts (Debian's default line maps it to 127.0.1.1)"
            )


def check_interface(facts: Sequence[EngineFacts], network_interface: str) -> list[str]:
    """Each rank's Gloo interface: its own (``auto``), or the one given for all ranks."""
    if network_interface == "auto":
        return [f.interface for f in facts]
    return [network_interface] * len(facts)


def _gather(views: Sequence[Any], function: Any, *args: Any) -> list[Any]:
    futures = [view.apply_async(function, *args) for view in views]
    return [future.get(timeout=ANSWER_SECONDS) for future in futures]


def check_rendezvous_reachable(
    views: Sequence[Any], facts: Sequence[EngineFacts], address: str, port: int
) -> None:
    """Each engine opens a TCP connection to the rendezvous server (a firewall, a wrong address
    or a missing route would otherwise hang ``hvd.init()``)."""
    for f, problem in zip(
        facts, _gather(views, engine_tasks.can_connect, address, port, CONNECT_SECONDS), strict=True
    ):
        if problem:
            raise HiresmedError(
                f"host {f.hostname} (engine {f.engine_id}) cannot open a TCP connection to the "
                f"rendezvous server at {address}:{port} ({problem}): allow TCP from that host "
                "to this machine, or set RENDEZVOUS_ADDR to an address it can reach"
            )


def check_results_dir(view: Any, facts: EngineFacts, results_dir: Path) -> None:
    """Rank 0 checkpoints into ``results_dir`` and this kernel resumes from and clears them: the
    folder must be the same on both (a shared filesystem). Checked with a probe file."""
    if facts.machine == "localhost":
        return
    results_dir.mkdir(parents=True, exist_ok=True)
    probe = results_dir / f".hiresmed-visible-{secrets.token_hex(4)}"
    probe.touch()
    try:
        seen = view.apply_async(engine_tasks.sees_file, str(probe)).get(timeout=ANSWER_SECONDS)
    finally:
        probe.unlink(missing_ok=True)
    if not seen:
        raise HiresmedError(
            f"RESULTS_DIR={str(results_dir)!r} is not visible from rank 0's host "
            f"{facts.hostname}: its checkpoints could not be resumed or cleared from here. Fix: "
            "put RESULTS_DIR on a filesystem shared with that host, at the same path"
        )
