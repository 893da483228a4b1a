"""HorovodCluster: Horovod ranks hosted in ipyparallel engines, started from a notebook cell.

Engines are started here (locally, or over ssh on ``HOSTS``, or with ipyparallel's slurm
launchers) or attached from a running cluster's file. Every :meth:`HorovodCluster.run` starts a
fresh Gloo rendezvous server in this process (new port, new plan), bound to one address, checks
that every engine reaches it, gives each engine its rank's ``HOROVOD_*`` variables and runs one
function on every rank at once. Rank 0's output streams into the cell; an interrupt or a failing
rank stops every rank; a lost rank's error carries that engine's last output.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hiresmed_nb import compat
from hiresmed_nb.cluster import engine_tasks, preflight, scripts
from hiresmed_nb.cluster.devices import RUN_PARAMETERS
from hiresmed_nb.cluster.engines import (
    IPP_PROFILE_DIR,
    Engines,
    attach_engines,
    attached_rendezvous_addr,
)
from hiresmed_nb.cluster.errors import RankLostError, RunTimeoutError, as_rank_failure
from hiresmed_nb.cluster.lifecycle import Started
from hiresmed_nb.cluster.memory import EngineMemory, read_engine_memory
from hiresmed_nb.cluster.ranks import (
    RankSlot,
    assign_ranks,
    horovod_environment,
    host_identities,
    threads_per_rank,
)
from hiresmed_nb.cluster.slots_cluster import SlotsCluster, planned_slots
from hiresmed_nb.cluster.undertaker import reap_orphans
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path
from hiresmed_nb.placement import Placement

LIVENESS_POLL_SECONDS = 1.0
REMOTE_LIVENESS_EVERY = 5  # polls between checks of engines on other hosts (ssh) or in Slurm jobs


def start_rendezvous(addr: str) -> tuple[Any, int]:
    """Start Horovod's Gloo rendezvous server bound to ``addr`` only; returns (server, port).
    Horovod's own ``RendezvousServer.start`` binds every interface."""
    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer(verbose=0)
    return server, compat.bind_rendezvous_server(server, addr)


def stop_rendezvous(server: Any) -> None:
    """Stop a server from :func:`start_rendezvous` and close its socket."""
    compat.close_rendezvous_server(server)


def _plan(slots: list[RankSlot]) -> list[Any]:
    from horovod.runner.common.util.hosts import SlotInfo

    return [
        SlotInfo(s.hostname, s.rank, s.local_rank, s.cross_rank, s.size, s.local_size, s.cross_size)
        for s in slots
    ]


class HorovodCluster(Started):
    """``with HorovodCluster(n) as cluster: results = cluster.run(fn, *args)``.

    ``run`` calls ``fn`` on every rank at once and returns the ranks' results in rank order; it
    can be called again and again on the same (warm) engines. Leaving the ``with`` block stops
    a cluster this object started, and only closes the connection to an attached one.
    """

    def __init__(
        self,
        n_ranks: int | None = None,
        launcher: str = "local",
        rendezvous_addr: str = "auto",
        network_interface: str = "auto",
        *,
        placement: Placement | None = None,
        profile_dir: str | Path = IPP_PROFILE_DIR,
        detached: bool = False,
    ):
        if placement is None:
            if n_ranks is None:
                raise TypeError("give n_ranks or placement")
            placement = Placement(
                n_ranks,
                launcher=launcher,
                rendezvous_addr=rendezvous_addr,
                network_interface=network_interface,
            )
        self.placement = placement
        self.n_ranks = placement.n_ranks
        self.profile_dir = resolve_path(profile_dir)
        self.detached = detached
        self.rendezvous_addr = ""
        self.slots: list[RankSlot] = []
        self.interfaces: list[str] = []
        self.threads: list[int] = []
        self.engine_pids: list[int] = []
        self.description = ""
        self.runs = 0
        self.broken = False
        self.memory = EngineMemory()
        self.engines: Engines | None = None
        self.slots_cluster: SlotsCluster | None = None  # the engines, when started here
        self._polls = 0

    @property
    def cluster_id(self) -> str:
        """The id of the engines' cluster: the one started here (its slots cluster's) or the
        attached one; '' before the start."""
        if self.slots_cluster is not None:
            return self.slots_cluster.cluster_id
        return self.engines.cluster_id if self.engines is not None else ""

    @property
    def cluster_file(self) -> str:
        """The ipyparallel cluster file (attach to it with ``IPP_CLUSTER_FILE``)."""
        if self.placement.cluster_file:
            return str(resolve_path(self.placement.cluster_file))
        if self.slots_cluster is not None:
            return self.slots_cluster.cluster_file
        return ""

    # Starting -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or attach) the engines, then place the ranks; see the module docstring."""
        placement = self.placement
        if placement.cluster_file:
            reap_orphans(self.profile_dir)
            self.engines = attach_engines(
                placement.cluster_file, placement.n_ranks, placement.engine_ids
            )
            self.rendezvous_addr = attached_rendezvous_addr(self.engines, placement.rendezvous_addr)
        else:  # one engine per slot, here or over ssh; or started by ipyparallel's launcher
            self.check_hosts()
            launched = placement.launcher not in ("local", "ssh")  # ssh: engines on HOSTS
            slots = (
                []
                if launched
                else planned_slots(
                    placement.n_ranks, placement.hosts, placement.remote_python, RUN_PARAMETERS
                )
            )
            self.slots_cluster = SlotsCluster(
                slots,
                remote_python=placement.remote_python,
                rendezvous_addr=placement.rendezvous_addr,
                profile_dir=self.profile_dir,
                detached=self.detached,
                launcher=placement.launcher if launched else "local",
                launched=placement.n_ranks if launched else 0,
            )
            self.slots_cluster.start()
            self.engines = self.slots_cluster.gang()
            self.rendezvous_addr = self.slots_cluster.controller
        self._place_ranks()

    def check_hosts(self) -> None:
        """N_RANKS must be the total of the slots of HOSTS (when given)."""
        placement = self.placement
        slots = sum(entry.slots for entry in placement.hosts)
        if placement.hosts and slots != placement.n_ranks:
            raise HiresmedError(
                f"N_RANKS={placement.n_ranks} does not match the {slots} slots of HOSTS: "
                "give N_RANKS equal to the total, or 0 for that total"
            )

    def _place_ranks(self) -> None:
        """Ask the engines where they are, check their routes, give them ranks and interfaces."""
        facts = self.engines.describe(self.rendezvous_addr)
        preflight.check_routes(facts, self.rendezvous_addr)
        preflight.check_host_names(facts)
        identities, how = host_identities(facts)
        self.slots = assign_ranks(identities)
        self.interfaces = preflight.check_interface(facts, self.placement.network_interface)
        # A slot's engine has its share of the cores; other engines split their host's.
        self.threads = [
            f.slot_threads or threads_per_rank(f.cpu_count, slot.local_size)
            for f, slot in zip(facts, self.slots, strict=True)
        ]
        self.engine_pids = [f.pid for f in facts]
        hosts = ", ".join(dict.fromkeys(self.engines.host_of(i) for i in range(len(facts))))
        self.description = f"{self.n_ranks} ranks on {hosts} ({how})"

    # Running --------------------------------------------------------------------------------

    def check_results_dir(self, results_dir: Path) -> None:
        """RESULTS_DIR must be visible from rank 0's host (see :mod:`.preflight`)."""
        preflight.check_results_dir(self.engines.views[0], self.engines.facts[0], results_dir)

    def run(
        self,
        function: Callable,
        *args: Any,
        stream_rank: int = 0,
        timeout: float | None = None,
    ) -> list[Any]:
        """Run ``function(*args)`` on every rank at once; stream ``stream_rank``'s output.

        A fresh rendezvous (new port, new plan) per call. The first rank to fail, or to be lost
        (its engine process gone), ends the wait with :class:`RankFailedError` /
        :class:`RankLostError` naming that rank, and interrupts the others; KeyboardInterrupt
        interrupts every rank. ``timeout`` (seconds; default: the ``RUN_TIMEOUT`` of a
        :class:`~hiresmed_nb.params.RunConfig` among ``args``, else none) bounds the wait: past
        it every rank is interrupted and :class:`RunTimeoutError` is raised. After any of these,
        :attr:`broken` is set: start a new cluster.
        """
        if timeout is None:
            timeout = run_timeout_of(args)
        server, port = start_rendezvous(self.rendezvous_addr)
        try:
            server.init(_plan(self.slots))
            views = self.engines.views
            preflight.check_rendezvous_reachable(
                views, self.engines.facts, self.rendezvous_addr, port
            )
            futures = [
                view.apply_async(
                    engine_tasks.run_as_rank, self._environment(i, port), function, *args
                )
                for i, view in enumerate(views)
            ]
            try:
                with futures[stream_rank].stream_output():
                    self._wait(futures, timeout)
            except BaseException:
                self.broken = True
                self.engines.interrupt()
                raise
            self.runs += 1
            return [
                with_engine_id(future.get(), engine_id)
                for future, engine_id in zip(futures, self.engines.engine_ids, strict=True)
            ]
        finally:
            stop_rendezvous(server)

    def run_script(self, path: str | Path, argv: Sequence[str] = (), cwd: str = "") -> None:
        """Run a Horovod script on every rank as ``horovodrun`` would (as ``__main__``, with
        ``sys.argv[1:]`` = ``argv``, in ``cwd``, default this process's working directory); see
        :mod:`.scripts`."""
        arguments = scripts.script_arguments(path, argv, cwd)
        scripts.check_ranks_see(self, [arguments[0], arguments[2]])
        self.run(scripts.run_file_as_main, *arguments)

    def _environment(self, index: int, port: int) -> dict[str, str]:
        return horovod_environment(
            self.slots[index],
            self.rendezvous_addr,
            port,
            self.interfaces[index],
            self.threads[index],
        )

    def _wait(self, futures: list[Any], timeout: float | None = None) -> None:
        """Wait for every rank, checking every LIVENESS_POLL_SECONDS that none was lost, for at
        most ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = set(futures)
        while pending:
            poll = LIVENESS_POLL_SECONDS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    ranks = sorted(futures.index(f) for f in pending)
                    raise RunTimeoutError(
                        timeout,
                        f"rank(s) {', '.join(map(str, ranks))} still running; every rank was "
                        "interrupted and these engines are not reused",
                    )
                poll = min(poll, left)
            done, pending = concurrent.futures.wait(
                pending, timeout=poll, return_when=concurrent.futures.FIRST_EXCEPTION
            )
            self._polls += 1
            failed = [f for f in done if f.exception() is not None]
            remote_due = self._polls % REMOTE_LIVENESS_EVERY == 0
            self._raise_if_lost(futures, check_remote=bool(failed) or remote_due)
            if failed:
                rank = futures.index(failed[0])
                error = failed[0].exception()
                if _engine_gone(error):  # the controller dropped the engine: it is lost
                    raise self._lost_error(futures, rank) from None
                raise as_rank_failure(rank, error) from None

    def _raise_if_lost(self, futures: list[Any], check_remote: bool) -> None:
        lost = self.engines.lost(check_remote)
        if lost:
            raise self._lost_error(futures, lost[0])

    def _lost_error(self, futures: list[Any], rank: int) -> RankLostError:
        return RankLostError(
            rank,
            self.engine_pids[rank],
            self.engines.host_of(rank),
            _task_output(futures[rank]) + self.engines.output_tail(rank),
            self.engines.lost_cause(rank),
        )

    def usable(self) -> bool:
        """Whether another run can use these engines: not broken, not grown past the memory
        bound (:mod:`.memory`), every engine still here."""
        return (
            self.engines is not None
            and not self.broken
            and not self.memory.outgrown()
            and not self.engines.lost(check_remote=True)  # on other hosts too
        )

    def observe_memory(self) -> int:
        """Read every engine's RSS after a run (the first reading is the baseline); returns the
        largest growth in bytes. Past :data:`~.memory.RECYCLE_GROWTH_BYTES` the cluster is no
        longer :meth:`usable`."""
        return self.memory.observe(self.engine_memory())

    def engine_memory(self) -> list[int]:
        """Every engine's resident memory now, in bytes, in rank order."""
        return read_engine_memory(self.engines.client, self.engines.engine_ids)

    # Stopping -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the engines this object started (on every host); let an attached cluster go
        (its engines run on)."""
        engines, self.engines = self.engines, None
        if self.slots_cluster is not None:
            self.slots_cluster.stop()
        elif engines is not None:
            engines.close()


def run_timeout_of(args: Sequence[Any]) -> float | None:
    """The ``RUN_TIMEOUT`` of the first run configuration among a run's arguments, or None."""
    for argument in args:
        seconds = getattr(argument, "RUN_TIMEOUT", None)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            return float(seconds)
    return None


def _engine_gone(error: BaseException | None) -> bool:
    """Whether a task failed because its engine left the controller (killed, job cancelled):
    ipyparallel then fails the task with its EngineError, wrapped as a RemoteError."""
    from ipyparallel.error import EngineError

    return isinstance(error, EngineError) or getattr(error, "ename", None) == "EngineError"


def with_engine_id(result: Any, engine_id: int) -> Any:
    """A rank's result with its engine id added to its ``slot`` (see
    :func:`.engine_tasks.run_as_rank`), so its record says where it ran."""
    if isinstance(result, dict) and isinstance(result.get("slot"), dict):
        result["slot"] = {"engine": engine_id, **result["slot"]}
    return result


def _task_output(future: Any, lines: int = 40) -> str:
    """The last lines a rank's task wrote to stdout and stderr (the engine forwards them, also
    what C++ code such as Gloo writes to file descriptor 2)."""
    text = (getattr(future, "stdout", "") or "") + (getattr(future, "stderr", "") or "")
    tail = "".join(text.splitlines(True)[-lines:])
    return f"{tail.rstrip()}\n--- engine log ---\n" if tail.strip() else ""
