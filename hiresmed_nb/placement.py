"""Where a run's ranks run: the ``HOSTS`` syntax and the :class:`Placement` of a run.

A placement is what the placement parameters (``PLACEMENT_PARAMETERS``: ``N_RANKS``, ``HOSTS``,
``IPP_CLUSTER_FILE``, ...) describe: where a run trains, not what it computes. On CPU it also sets
each rank's thread count, which changes the order of floating-point sums, so a run placed
otherwise may end with other weights and metrics. Two runs with equal placements can share one
warm cluster.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hiresmed_nb.errors import HiresmedError

# A rank's TensorFlow thread count, set by its cluster (``cluster.ranks.threads_per_rank``).
THREADS_VARIABLE = "HIRESMED_THREADS"
_HOST_NAME = re.compile(r"^[A-Za-z0-9_.@\[\]:-]+$")


@dataclass(frozen=True)
class HostSlots:
    """One entry of ``HOSTS``: an ssh destination and how many ranks it runs."""

    host: str
    slots: int


def parse_hosts(text: str) -> list[HostSlots]:
    """Parse ``"hostA:2,hostB:2"`` (``horovodrun -H`` syntax; a bare name means 1 slot).

    Raises :class:`HiresmedError` naming ``HOSTS`` for an empty name, a slot count that is not a
    positive integer, or a host listed twice. An empty string means this machine: [].
    """
    entries = [entry.strip() for entry in text.split(",")] if text.strip() else []
    parsed: list[HostSlots] = []
    for entry in entries:
        host, _, slots = entry.rpartition(":") if ":" in entry else (entry, "", "1")
        if not host or not _HOST_NAME.match(host):
            raise HiresmedError(f"HOSTS={text!r}: {entry!r} is not 'host' or 'host:slots'")
        if not slots.isdigit() or int(slots) < 1:
            raise HiresmedError(
                f"HOSTS={text!r}: {entry!r} must give a positive number of slots, e.g. {host}:2"
            )
        if host in (other.host for other in parsed):
            raise HiresmedError(f"HOSTS={text!r} lists {host} twice: give it once with its slots")
        parsed.append(HostSlots(host, int(slots)))
    return parsed


def total_slots(hosts: list[HostSlots]) -> int:
    return sum(entry.slots for entry in hosts)


@dataclass(frozen=True)
class Placement:
    """Where the ranks run. Two runs with equal placements can share one warm cluster.

    ``hosts``: ``HOSTS`` entries (empty: this machine); ``cluster_file``: attach to that running
    cluster instead of starting one; ``remote_python``: the interpreter on the hosts (default
    this one's path); ``rendezvous_addr`` and ``network_interface``: 'auto' or explicit;
    ``engine_ids``: with a cluster file, exactly these engines (a packed study's slots), in rank
    order; empty: the first ``n_ranks`` engines.
    """

    n_ranks: int
    hosts: tuple[HostSlots, ...] = ()
    launcher: str = "local"
    cluster_file: str = ""
    remote_python: str = ""
    rendezvous_addr: str = "auto"
    network_interface: str = "auto"
    engine_ids: tuple[int, ...] = ()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Placement:
        """The placement of a run's parameters. A serial run is one rank on one engine of this
        machine (or of the attached cluster): ``HOSTS`` does not place it."""
        if params.get("MODE", "distributed") != "distributed" and not params.get(
            "POOL_CLUSTER_FILE"
        ):
            return cls(
                n_ranks=1,
                launcher=params["IPP_LAUNCHER"],
                cluster_file=params["IPP_CLUSTER_FILE"],
                remote_python=params["REMOTE_PYTHON"],
                rendezvous_addr=params["RENDEZVOUS_ADDR"],
                network_interface=params["NETWORK_INTERFACE"],
            )
        if params.get("POOL_CLUSTER_FILE"):  # a study's run: on the runner's warm cluster
            return cls(
                n_ranks=params["N_RANKS"],
                cluster_file=params["POOL_CLUSTER_FILE"],
                engine_ids=tuple(params.get("POOL_ENGINES") or ()),
            )
        return cls(
            n_ranks=params["N_RANKS"],
            hosts=tuple(parse_hosts(params["HOSTS"])),
            launcher=params["IPP_LAUNCHER"],
            cluster_file=params["IPP_CLUSTER_FILE"],
            remote_python=params["REMOTE_PYTHON"],
            rendezvous_addr=params["RENDEZVOUS_ADDR"],
            network_interface=params["NETWORK_INTERFACE"],
        )
