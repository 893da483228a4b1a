"""Horovod ranks hosted in ipyparallel engines, started from a notebook cell.

:class:`HorovodCluster` starts ``n_ranks`` engines (any ipyparallel launcher: local, mpi, ssh,
slurm), runs Horovod's Gloo rendezvous server in the calling kernel, gives each engine its
``HOROVOD_*`` environment, and runs one function on every rank at once. Rank 0's output streams
into the cell; an interrupt or a failing rank stops every rank; leaving the ``with`` block always
stops the server and the cluster and reaps the engine processes it started.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiresmed_nb.params import resolve_path

IPP_PROFILE_DIR = ".ipyparallel/profile_hiresmed"
CLUSTER_PREFIX = "hiresmed-"
GLOO_TIMEOUT_SECONDS = 60
STOP_GRACE_SECONDS = 10
LIVENESS_POLL_SECONDS = 1.0


def _process_alive(pid: int, psutil: Any) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class RankFailedError(RuntimeError):
    """A Horovod rank raised: carries the rank number and the rank's own traceback."""

    def __init__(self, rank: int, ename: str, evalue: str, traceback_text: str):
        self.rank, self.ename, self.evalue = rank, ename, evalue
        super().__init__(
            f"rank {rank} failed with {ename}: {evalue}\n\n"
            f"--- traceback on rank {rank} ---\n{traceback_text}"
        )


class RankLostError(RankFailedError):
    """A rank's engine died (killed, out of memory, node lost) while the ranks were running."""

    def __init__(self, rank: int, pid: int):
        super().__init__(
            rank,
            "RankLost",
            f"the engine process of rank {rank} (pid {pid}) is gone; the other ranks were stopped",
            "(no traceback: the process ended without one, e.g. killed or out of memory)",
        )


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


def horovod_environment(
    slot: RankSlot, rendezvous_addr: str, rendezvous_port: int, network_interface: str, threads: int
) -> dict[str, str]:
    """The variables a rank needs to join Horovod's Gloo rendezvous (as ``horovodrun`` sets)."""
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
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


def threads_per_rank(cpu_count: int, local_size: int) -> int:
    """Split a host's cores evenly between its ranks, at least one each."""
    return max(1, cpu_count // max(1, local_size))


# Engine-side helpers: engines import these from the package (closures do not pickle).
def engine_hostname() -> str:
    """The engine's host name, as Horovod's rendezvous will know it."""
    return socket.gethostname()


def set_environment(variables: dict[str, str]) -> int:
    """Set environment variables in the engine process; returns the engine's pid."""
    os.environ.update(variables)
    return os.getpid()


def engine_cpu_count() -> int:
    return os.cpu_count() or 1


def start_rendezvous(addr: str) -> tuple[Any, int]:
    """Start Horovod's Gloo rendezvous server bound to ``addr`` only; returns (server, port).

    Horovod's own ``RendezvousServer.start`` binds every interface; we bind the given address
    (loopback by default) with the same request handler.
    """
    from horovod.runner.http.http_server import (
        RendezvousHandler,
        RendezvousHTTPServer,
        RendezvousServer,
    )
    from horovod.runner.util.threads import in_thread

    server = RendezvousServer(verbose=0)
    server._httpd = RendezvousHTTPServer((addr, 0), RendezvousHandler, 0)
    server._listen_thread = in_thread(target=server._httpd.serve_forever)
    return server, server._httpd.server_address[1]


def _rendezvous_hostnames(hostnames: list[str], launcher: str) -> list[str]:
    """One name per host that every rank agrees on; 'localhost' when all engines are local."""
    if launcher == "local" or len(set(hostnames)) == 1:
        return ["localhost"] * len(hostnames)
    return hostnames


class HorovodCluster:
    """``with HorovodCluster(n) as cluster: results = cluster.run(fn, *args)``.

    ``run`` calls ``fn`` on every rank at once and returns the ranks' results in rank order.
    """

    def __init__(
        self,
        n_ranks: int,
        launcher: str = "local",
        rendezvous_addr: str = "127.0.0.1",
        network_interface: str = "lo",
        profile_dir: str | Path = IPP_PROFILE_DIR,
    ):
        self.n_ranks = n_ranks
        self.launcher = launcher
        self.rendezvous_addr = rendezvous_addr
        self.network_interface = network_interface
        self.profile_dir = resolve_path(profile_dir)
        # The owner's pid in the id lets a later cluster reap this one if its kernel is killed.
        self.cluster_id = f"{CLUSTER_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.slots: list[RankSlot] = []
        self._cluster = None
        self._client = None
        self._server = None
        self.engine_pids: list[int] = []

    def __enter__(self) -> HorovodCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        import ipyparallel as ipp

        reap_orphans()
        self.profile_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cluster = ipp.Cluster(
            n=self.n_ranks,
            engines=self.launcher,
            profile_dir=str(self.profile_dir),
            cluster_id=self.cluster_id,
            controller_ip="127.0.0.1" if self.launcher == "local" else "*",
            log_level=40,
        )
        self._client = self._cluster.start_and_connect_sync(activate=False)
        self._client.wait_for_engines(self.n_ranks, timeout=120)
        self._make_files_private()
        self._engine_ids = sorted(self._client.ids)[: self.n_ranks]
        self._engines = [self._client[i] for i in self._engine_ids]
        hostnames = [view.apply_sync(engine_hostname) for view in self._engines]
        self.slots = assign_ranks(_rendezvous_hostnames(hostnames, self.launcher))
        self._server, port = start_rendezvous(self.rendezvous_addr)
        self._init_rendezvous()
        for view, slot in zip(self._engines, self.slots, strict=True):
            threads = threads_per_rank(view.apply_sync(engine_cpu_count), slot.local_size)
            env = horovod_environment(
                slot, self.rendezvous_addr, port, self.network_interface, threads
            )
            self.engine_pids.append(view.apply_sync(set_environment, env))

    def _make_files_private(self) -> None:
        """Connection and cluster files carry keys and addresses: owner-only, as is the folder."""
        security = self.profile_dir / "security"
        security.chmod(0o700)
        for path in security.glob(f"*{self.cluster_id}*"):
            path.chmod(0o600)

    def _init_rendezvous(self) -> None:
        from horovod.runner.common.util.hosts import SlotInfo

        plan = [
            SlotInfo(
                s.hostname, s.rank, s.local_rank, s.cross_rank, s.size, s.local_size, s.cross_size
            )
            for s in self.slots
        ]
        self._server.init(plan)

    def run(self, function: Callable, *args: Any, stream_rank: int = 0) -> list[Any]:
        """Run ``function(*args)`` on every rank at once; stream ``stream_rank``'s output.

        The first rank to fail, or to be lost (its engine process gone), ends the wait with
        :class:`RankFailedError` naming that rank; KeyboardInterrupt interrupts every engine.
        Either way, leaving the ``with`` block stops the whole cluster.
        """
        futures = [view.apply_async(function, *args) for view in self._engines]
        try:
            with futures[stream_rank].stream_output():
                self._wait(futures)
        except KeyboardInterrupt:
            try:
                self._client.send_signal(signal.SIGINT, block=False)
            finally:
                raise
        return [future.get() for future in futures]

    def _wait(self, futures: list[Any]) -> None:
        """Wait for every rank, checking every LIVENESS_POLL_SECONDS that none was lost."""
        pending = set(futures)
        while pending:
            done, pending = concurrent.futures.wait(
                pending,
                timeout=LIVENESS_POLL_SECONDS,
                return_when=concurrent.futures.FIRST_EXCEPTION,
            )
            lost = self.lost_ranks()
            if lost:
                raise RankLostError(lost[0], self.engine_pids[lost[0]])
            for future in done:
                if future.exception() is not None:
                    raise _as_rank_failure(futures.index(future), future.exception()) from None

    def lost_ranks(self) -> list[int]:
        """Ranks whose engine is gone: its local process exited, or it left the controller."""
        import psutil

        registered = set(self._client.ids)
        lost = []
        for rank, (engine_id, pid) in enumerate(
            zip(self._engine_ids, self.engine_pids, strict=True)
        ):
            local_and_dead = self.launcher == "local" and not _process_alive(pid, psutil)
            if local_and_dead or engine_id not in registered:
                lost.append(rank)
        return lost

    def stop(self) -> None:
        """Stop the rendezvous server and the cluster; reap any engine process left behind."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            try:
                self._cluster.stop_cluster_sync()
            finally:
                self._cluster = None
                reap_processes(self.cluster_id)


def _as_rank_failure(rank: int, error: BaseException) -> RankFailedError:
    """Turn ipyparallel's RemoteError into a RankFailedError that keeps the remote traceback."""
    ename = getattr(error, "ename", type(error).__name__)
    evalue = getattr(error, "evalue", str(error))
    traceback_text = getattr(error, "traceback", None) or str(error)
    return RankFailedError(rank, ename, evalue, traceback_text)


def cluster_processes(cluster_id: str) -> list[Any]:
    """Processes of this user started for ``cluster_id`` (engines, controller, nannies)."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if process.pid == os.getpid():
                continue
            if cluster_id in " ".join(process.info["cmdline"] or []) or (
                process.environ().get("IPP_CLUSTER_ID") == cluster_id
            ):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def reap_processes(cluster_id: str, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
    """Terminate, then kill, what is left of ``cluster_id`` on this host, and wait for it."""
    import psutil

    leftovers = cluster_processes(cluster_id)
    for process in leftovers:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(leftovers, timeout=grace_seconds)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_seconds)


def reap_orphans() -> list[str]:
    """Stop clusters left behind by a kernel that was killed (papermill, OOM, kill -9).

    A cluster's id carries its owner's pid; any local engine or controller whose owner is gone is
    reaped. Returns the ids reaped.
    """
    import psutil

    orphaned = set()
    for process in psutil.process_iter(["pid"]):
        try:
            cluster_id = process.environ().get("IPP_CLUSTER_ID", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        owner = cluster_id.removeprefix(CLUSTER_PREFIX).split("-")[0]
        if cluster_id.startswith(CLUSTER_PREFIX) and owner.isdigit():
            if not _process_alive(int(owner), psutil):
                orphaned.add(cluster_id)
    for cluster_id in sorted(orphaned):
        reap_processes(cluster_id)
    return sorted(orphaned)
