"""Engines and the cluster they belong to: the controller and engine start every cluster shares
(:func:`new_cluster`, :func:`controller_address`), attaching to a running cluster's file
(``IPP_CLUSTER_FILE``), and :class:`Engines`, a view of some engines (a run's ranks): questions
with a bound, liveness, each engine's host and last output.

A cluster started here is owned: :class:`~.slots_cluster.SlotsCluster` starts it and stopping it
(:mod:`.stopping`) stops the controller and the engines on every host, the ssh sessions that
watch them, and removes their files. An attached cluster is not: leaving it stops nothing. Every
process started for a cluster carries its marker variables (:mod:`.processes`), on every host,
so stopping it ends those processes and no others.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiresmed_nb.cluster import engine_tasks, launchers, slurm
from hiresmed_nb.cluster.hosts import SSH_OPTIONS, HostSlots, ask_hosts, head_address
from hiresmed_nb.cluster.processes import (
    PROBE_SECONDS,
    EngineLaunch,
    cluster_folder,
    engine_launches,
    host_key,
    marker_environment,
    process_alive,
    ssh,
)
from hiresmed_nb.cluster.ranks import EngineFacts
from hiresmed_nb.cluster.stopping import connect
from hiresmed_nb.errors import HiresmedError

IPP_PROFILE_DIR = ".ipyparallel/profile_hiresmed"
REGISTRATION_SECONDS = 120  # for every engine to register; then a failure names what it found
OUTPUT_TAIL_LINES = 40
# ipyparallel watches each ssh engine with an ssh session that waits up to this long for the
# engine to exit (its default, 60 s, would keep sessions open that long after a stop).
SSH_POLL_SECONDS = 10
# The controller finishes an engine's registration at its next heartbeat: every 0.5 s instead of
# ipyparallel's 3 s. An engine still counts as lost after 30 s of silence, as by default.
CONTROLLER_ARGS = ("--HeartMonitor.period=500", "--HeartMonitor.max_heartmonitor_misses=60")


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Create files owner-only (umask 077) while a cluster starts: its cluster and connection
    files carry keys and addresses, and must be private even when the start fails."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


@dataclass
class Engines:
    """Some running engines (a run's ranks, in rank order) and the client that talks to them; a
    view: closing it stops nothing."""

    client: Any
    engine_ids: list[int]
    cluster_id: str
    profile_dir: Path
    launches: list[EngineLaunch] = field(default_factory=list)
    facts: list[EngineFacts] = field(default_factory=list)

    @property
    def views(self) -> list[Any]:
        return [self.client[engine_id] for engine_id in self.engine_ids]

    def ask(self, function: Any, *args: Any, each: Sequence[tuple[Any, ...]] = ()) -> list[Any]:
        """``function(*args, *each[i])`` on every engine ``i`` at once; their answers in engine
        order. One HiresmedError naming the first engine that has not answered within
        PROBE_SECONDS (busy, or its host unreachable)."""
        extra = each or [()] * len(self.engine_ids)
        futures = [
            view.apply_async(function, *args, *more)
            for view, more in zip(self.views, extra, strict=True)
        ]
        answers = []
        for engine_id, future in zip(self.engine_ids, futures, strict=True):
            try:
                answers.append(future.get(timeout=PROBE_SECONDS))
            except TimeoutError:
                raise HiresmedError(
                    f"engine {engine_id} of cluster {self.cluster_id} did not answer within "
                    f"{PROBE_SECONDS} s: it is busy or its host is unreachable; restart the cluster"
                ) from None
        return answers

    def describe(self, rendezvous_addr: str) -> list[EngineFacts]:
        """Ask every engine for its :class:`EngineFacts` (at most PROBE_SECONDS)."""
        described = []
        answers = self.ask(engine_tasks.describe_engine, rendezvous_addr)
        for engine_id, facts in zip(self.engine_ids, answers, strict=True):
            facts["hostname_addresses"] = tuple(facts["hostname_addresses"])
            facts["addresses"] = tuple(facts["addresses"])
            described.append(EngineFacts(engine_id=engine_id, **facts))
        self.facts = described
        return described

    def launch_of(self, index: int) -> EngineLaunch | None:
        """The launch record of engine ``index`` (by its launch id, else by pid), or None.

        A packed study's engines are each an engine set of its own, so several share a launch
        id ('0'): among those, the pid tells."""
        facts = self.facts[index]
        named = [
            launch
            for launch in self.launches
            if facts.launch_id and launch.identifier == facts.launch_id
        ]
        if len(named) == 1:
            return named[0]
        for launch in named or self.launches:
            if launch.pid == facts.pid and (launch.location or facts.machine == "localhost"):
                return launch
        return None

    def host_of(self, index: int) -> str:
        """Where engine ``index`` runs: the ssh host as given in HOSTS, else its host name."""
        launch = self.launch_of(index)
        return launch.location if launch and launch.location else self.facts[index].hostname

    def lost_cause(self, index: int) -> str:
        """What Slurm says of engine ``index``'s job step ('Slurm job 12.0: CANCELLED'), or ''
        for an engine Slurm did not start."""
        step = self.facts[index].slurm_job if index < len(self.facts) else ""
        return f"Slurm job {step}: {slurm.job_state(step.split('.')[0])}" if step else ""

    def output_tail(self, index: int, lines: int = OUTPUT_TAIL_LINES) -> str:
        """The last ``lines`` lines engine ``index`` wrote (stdout and stderr), or ''."""
        launch = self.launch_of(index)
        if launch is None or not launch.output_file:
            return ""
        try:
            if launch.location:
                return ssh(launch, "tail", f"-n{lines}", launch.output_file).stdout
            text = Path(launch.output_file).read_text(errors="replace")
        except (OSError, subprocess.SubprocessError):
            return ""
        return "".join(text.splitlines(True)[-lines:])

    # Liveness -------------------------------------------------------------------------------

    def lost(self, check_remote: bool) -> list[int]:
        """Indexes of engines that are gone: left the controller, their process ended, or the
        Slurm job they run in ended (cancelled, timed out...).

        Processes on this machine are checked every call; engines on other hosts only when
        ``check_remote`` (one ssh per host), and so are Slurm jobs (one ``scontrol`` per job):
        the controller notices a dead engine only after its heartbeat's 30 s of silence.
        """
        registered = set(self.client.ids)
        gone = {i for i, engine_id in enumerate(self.engine_ids) if engine_id not in registered}
        remote: dict[EngineLaunch, list[int]] = {}
        in_job: dict[str, list[int]] = {}
        for index, facts in enumerate(self.facts):
            launch = self.launch_of(index)
            if index in gone:
                continue
            if facts.slurm_job:
                in_job.setdefault(facts.slurm_job.split(".")[0], []).append(index)
            if launch is not None and launch.location:
                remote.setdefault(host_key(launch), []).append(index)
            elif facts.machine == "localhost" and not process_alive(facts.pid):
                gone.add(index)
        if check_remote:
            for launch, indexes in remote.items():
                gone.update(self._remote_dead(launch, indexes))
            for job in slurm.ended_jobs(list(in_job)):
                gone.update(in_job[job])
        return sorted(gone)

    def _remote_dead(self, launch: EngineLaunch, indexes: list[int]) -> list[int]:
        pids = " ".join(str(self.facts[i].pid) for i in indexes)
        try:
            done = ssh(launch, f"for p in {pids}; do kill -0 $p 2>/dev/null || echo $p; done")
        except subprocess.TimeoutExpired:
            return []  # an unreachable host: the controller's heartbeat will drop its engines
        if done.returncode != 0:
            return []
        dead = {int(word) for word in done.stdout.split() if word.isdigit()}
        return [i for i in indexes if self.facts[i].pid in dead]

    # Stopping -------------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Send SIGINT to every engine's running task (through the controller: any host)."""
        import signal

        with contextlib.suppress(Exception):
            self.client.send_signal(signal.SIGINT, targets=self.engine_ids, block=False)

    def close(self) -> None:
        """Close the client: the engines run on (a view stops nothing; their cluster does)."""
        with contextlib.suppress(Exception):
            self.client.close()


def make_profile_private(profile_dir: Path, cluster_id: str) -> None:
    security = profile_dir / "security"
    security.mkdir(parents=True, exist_ok=True, mode=0o700)
    security.chmod(0o700)
    for path in security.glob(f"*{cluster_id}*"):
        path.chmod(0o600)


def controller_address(
    rendezvous_addr: str,
    cluster_id: str,
    *,
    launcher: str = "local",
    hosts: Sequence[HostSlots] = (),
    remote_python: str = "",
) -> str:
    """Where a cluster's controller (and the rendezvous server) listen: one address, never all.

    ``rendezvous_addr`` when given (not 'auto'); else, with ``hosts``, the address every host
    sees this machine at (each host is asked over ssh, also when the address is given: that
    checks them); loopback for local engines; for Slurm's launcher this machine's address on
    the route to Slurm's controller. Another launcher needs RENDEZVOUS_ADDR (a HiresmedError).
    """
    if hosts:
        answers = ask_hosts(list(hosts), remote_python, str(cluster_folder(cluster_id)))
        found = head_address(answers)
        return found if rendezvous_addr == "auto" else rendezvous_addr
    if rendezvous_addr != "auto":
        return rendezvous_addr
    if launcher == "local":
        return "127.0.0.1"
    if launcher == "slurm":
        return slurm.controller_address()  # where the nodes reach this machine
    raise HiresmedError(
        f"IPP_LAUNCHER={launcher!r} starts engines this machine cannot ask for its address: set "
        "RENDEZVOUS_ADDR to this machine's address that the engines reach (or use HOSTS, or "
        "attach to a running cluster with IPP_CLUSTER_FILE)"
    )


def new_cluster(
    n_engines: int,
    *,
    cluster_id: str,
    profile_dir: Path,
    controller_address: str,
    owner: str,
    launcher: str = "local",
    hosts: Sequence[HostSlots] = (),
    remote_python: str = "",
) -> Any:
    """The ipyparallel ``Cluster`` (not started) of every cluster the project starts: its
    controller on ``controller_address`` only, its processes marked (:mod:`.processes`), its
    engines local, over ssh on ``hosts`` (each cluster its own folder there) or started by
    ipyparallel's ``launcher`` (slurm).

    ``owner``: the identity of the process the cluster must not outlive; '' for a cluster that
    outlives this process (``cluster start``).
    """
    import ipyparallel as ipp
    from traitlets.config import Config

    profile_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = Config()
    # Every launcher (controller, engines, here or over ssh) marks what it starts.
    config.BaseLauncher.environment = marker_environment(cluster_id, owner)
    if hosts:
        engine_class = launchers.SSH
        settings = config.SSHEngineSetLauncher
        settings.engines = {entry.host: entry.slots for entry in hosts}
        settings.remote_python = remote_python
        settings.remote_profile_dir = str(cluster_folder(cluster_id))
        settings.poll_seconds = SSH_POLL_SECONDS
        settings.ssh_args = list(SSH_OPTIONS)
        settings.scp_args = list(SSH_OPTIONS)
    elif launcher == "local":
        engine_class = launchers.LOCAL
    else:
        engine_class = launcher
        if launcher == "slurm":
            slurm.configure_launcher(config, profile_dir, cluster_id)
    return ipp.Cluster(
        n=n_engines,
        engines=engine_class,
        profile_dir=str(profile_dir),
        cluster_id=cluster_id,
        controller_ip=controller_address,
        controller_location=controller_address,
        shutdown_atexit=bool(owner),
        log_level=40,
        config=config,
        controller_args=list(CONTROLLER_ARGS),
    )


def connect_client_first(cluster: Any) -> Any:
    """Start ``cluster``'s controller and return a client connected to it, before any engine
    is started: ipyparallel's client learns of engines from the controller's answer when it
    connects, then only from notifications, so an engine that registers while the client
    subscribes is in neither and the client waits out its timeout one engine short (what
    ``Cluster.start_and_connect`` risks: it connects while the engines register). Connecting
    also waits for the controller's files, in place of ipyparallel's fixed 1 s delay."""
    cluster.start_controller_sync()
    return cluster.connect_client_sync()


def engine_outputs(engine_sets: Iterable[Any]) -> str:
    """The last output of every engine of ``engine_sets`` (ipyparallel engine set launchers; here
    or fetched from its host), each under its name; '(no engine output)' when there is none."""
    outputs = []
    for engine_set in engine_sets:
        for identifier, launcher in getattr(engine_set, "launchers", {}).items():
            with contextlib.suppress(Exception):
                text = launcher.get_output()
                tail = "".join(text.splitlines(True)[-OUTPUT_TAIL_LINES:]).strip()
                if tail:
                    outputs.append(f"--- engine {identifier} ---\n{tail}")
        outputs.extend(
            f"--- engine {identifier} ---\n{text.strip()}"
            for identifier, text in getattr(engine_set, "outputs", {}).items()
            if text.strip()
        )
    return "\n".join(dict.fromkeys(outputs)) or "(no engine output)"


def start_failure(cluster: Any, n_engines: int, controller_address: str, error: Exception) -> str:
    """What a failed start says: the error, then every engine's last output
    (:func:`engine_outputs`) and, for Slurm's launcher, its jobs' states."""
    shown = engine_outputs((getattr(cluster, "engines", {}) or {}).values())
    with contextlib.suppress(Exception):
        jobs = slurm.describe_jobs(cluster.to_dict())
        shown = f"{jobs}\n{shown}" if jobs else shown
    return (
        f"the cluster did not start {n_engines} engine(s) with a controller on "
        f"{controller_address}: {type(error).__name__}: {error}\n{shown}"
    )


def attach_engines(cluster_file: str, n_engines: int, engine_ids: tuple[int, ...] = ()) -> Engines:
    """Connect to the running cluster of ``cluster_file`` and take ``n_engines`` of its engines:
    exactly ``engine_ids`` when given (a packed study's reserved slots), else the first ones.

    Raises :class:`HiresmedError` naming IPP_CLUSTER_FILE when the file is missing or
    unreadable, its controller does not answer, or it has fewer engines than asked.
    """
    client, state, cluster_id, profile_dir = connect(cluster_file)
    try:
        client.wait_for_engines(n_engines, timeout=PROBE_SECONDS, interactive=False)
    except Exception as error:
        client.close()
        raise HiresmedError(
            f"IPP_CLUSTER_FILE={cluster_file!r}: cannot use {n_engines} engine(s) of that "
            f"cluster ({type(error).__name__}: {error}); is it running? "
            "(`python -m hiresmed_nb cluster start` prints a fresh file)"
        ) from None
    missing = sorted(set(engine_ids) - set(client.ids))
    if missing:
        client.close()
        raise HiresmedError(
            f"IPP_CLUSTER_FILE={cluster_file!r}: engines {missing} are not in that cluster "
            f"(it has {sorted(client.ids)})"
        )
    chosen = list(engine_ids) if engine_ids else sorted(client.ids)[: n_engines or None]
    launches = engine_launches(state)
    return Engines(client, chosen, cluster_id, profile_dir, launches)


def attached_rendezvous_addr(engines: Engines, given: str = "auto") -> str:
    """Where ranks on an attached cluster's ``engines`` meet: ``given`` unless 'auto'; else
    loopback when the engines are on this machine, else this machine's address on the route
    to them."""
    if given != "auto":
        return given
    mine = set(engine_tasks.own_addresses())
    facts = engines.describe("127.0.0.1")
    remote = [f for f in facts if f.addresses and not mine.intersection(f.addresses)]
    if not remote:
        return "127.0.0.1"
    return engine_tasks.route_address(remote[0].addresses[0])


def attached_engine_count(cluster_file: str) -> int:
    """How many engines the controller of ``cluster_file`` has now: what the file lists and
    engines started elsewhere (``srun ipengine --file=...`` job steps, an admin's pool) alike.

    One HiresmedError naming IPP_CLUSTER_FILE when the file is not one or the controller does
    not answer within PROBE_SECONDS."""
    client = connect(cluster_file)[0]
    try:
        return len(client.ids)
    finally:
        client.close()
