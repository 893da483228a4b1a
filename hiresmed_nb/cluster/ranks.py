"""Where each rank sits: Horovod's rank numbers, host identities and environment variables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from hiresmed_nb.placement import THREADS_VARIABLE

GLOO_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class RankSlot:
    """Where one rank sits: Horovod's rank, local and cross coordinates, and its host."""

    hostname: str
    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int


def assign_ranks(hostnames: list[str]) -> list[RankSlot]:
    """Give engine ``i`` (on ``hostnames[i]``) rank ``i``, with Horovod's local/cross numbers.

    local_rank counts engines on the same host; cross_rank counts hosts among those holding
    the same local_rank (Horovod's definitions, as in ``horovod.runner.common.util.hosts``).
    """
    local_ranks, seen = [], {}
    for host in hostnames:
        local_ranks.append(seen.get(host, 0))
        seen[host] = local_ranks[-1] + 1
    slots = []
    for rank, (host, local_rank) in enumerate(zip(hostnames, local_ranks, strict=True)):
        peers = [h for h, lr in zip(hostnames, local_ranks, strict=True) if lr == local_rank]
        slots.append(
            RankSlot(
                host, rank, len(hostnames), local_rank, seen[host], peers.index(host), len(peers)
            )
        )
    return slots


@dataclass(frozen=True)
class EngineFacts:
    """What an engine reports of itself (see :func:`.engine_tasks.describe_engine`).

    ``machine`` tells machines apart (its address on the route to the rendezvous address, or
    'localhost' when that route is loopback); ``hostname_addresses`` is what the engine's own
    host name resolves to on that engine.
    """

    engine_id: int
    hostname: str
    pid: int
    launch_id: str
    route_address: str
    interface: str
    hostname_addresses: tuple[str, ...]
    addresses: tuple[str, ...]
    cpu_count: int
    slot_threads: int = 0  # a packed study's slot engine: its share of the cores; 0: none
    slurm_job: str = ""  # 'JOB.STEP' of a Slurm job step, 'JOB' outside a step, '' outside Slurm

    @property
    def machine(self) -> str:
        return "localhost" if self.route_address.startswith("127.") else self.route_address


def host_identities(engines: Sequence[EngineFacts]) -> tuple[list[str], str]:
    """One Horovod host identity per engine, and a sentence saying how they were chosen.

    Engines on one machine share an identity and so get consecutive local ranks; engines on
    different machines never do. All on this machine: 'localhost'. Otherwise each machine's
    host name, unless two machines report the same name (cloned images, containers) or a name
    does not resolve (on its machine) to that machine's own address: then every machine is
    named by its address on the route to the rendezvous server, which is unique.
    """
    machines = {facts.machine for facts in engines}
    if machines == {"localhost"}:
        return ["localhost"] * len(engines), "all ranks on this machine"
    names: dict[str, str] = {}
    trouble = []
    for facts in engines:
        names.setdefault(facts.machine, facts.hostname)
        if facts.route_address not in facts.hostname_addresses:
            shown = ", ".join(facts.hostname_addresses) or "nothing"
            trouble.append(
                f"{facts.hostname} resolves to {shown} on {facts.route_address}, not to it"
            )
    if len(set(names.values())) < len(names):
        trouble.append("two machines report the same host name")
    if trouble:
        reason = "; ".join(sorted(set(trouble)))
        return [f.machine for f in engines], f"hosts named by address ({reason})"
    return [names[f.machine] for f in engines], "hosts named by their host names"


def horovod_environment(
    slot: RankSlot, rendezvous_addr: str, rendezvous_port: int, network_interface: str, threads: int
) -> dict[str, str]:
    """The variables a rank needs to join Horovod's Gloo rendezvous (as ``horovodrun`` sets).

    ``network_interface`` is this rank's own: Gloo binds the address of that interface, so the
    host name's resolution does not matter.
    """
    return {
        "HOROVOD_HOSTNAME": slot.hostname,
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
        "HOROVOD_GLOO_RENDEZVOUS_ADDR": rendezvous_addr,
        "HOROVOD_GLOO_RENDEZVOUS_PORT": str(rendezvous_port),
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_GLOO_IFACE": network_interface,
        "HOROVOD_GLOO_TIMEOUT_SECONDS": str(GLOO_TIMEOUT_SECONDS),
        "NCCL_SOCKET_IFNAME": network_interface,
        "OMP_NUM_THREADS": str(threads),
        THREADS_VARIABLE: str(threads),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


def threads_per_rank(cpu_count: int, local_size: int) -> int:
    """The one rule for a rank's TensorFlow threads: the cores it may run on (its CPU affinity)
    split evenly between the engines that share them, at least one each. A slot's engine
    gets its share when the slot is planned, any other engine when its cluster places ranks;
    the rank receives it as ``HIRESMED_THREADS``."""
    return max(1, cpu_count // max(1, local_size))
