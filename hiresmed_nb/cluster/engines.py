"""The engines that host the ranks: started here (locally or over ssh on ``HOSTS``), or attached
from a running cluster's file (``IPP_CLUSTER_FILE``).

A started cluster is owned: stopping it stops the controller and the engines on every host,
the ssh sessions that watch them, and removes their files. An attached cluster is not: leaving
it stops nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiresmed_nb.cluster import launchers, probes
from hiresmed_nb.cluster.hosts import SSH_OPTIONS, HostSlots
from hiresmed_nb.cluster.processes import process_alive, reap_processes
from hiresmed_nb.cluster.ranks import EngineFacts
from hiresmed_nb.params import HiresmedError

REGISTRATION_SECONDS = 120
PROBE_SECONDS = 30
OUTPUT_TAIL_LINES = 40


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Create files owner-only (umask 077) while a cluster starts: its cluster and connection
    files carry keys and addresses, and must be private even when the start fails."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def remote_profile_dir(cluster_id: str) -> str:
    """The folder ssh engines use on their host (logs, IPython profile): one per cluster, never
    the project's profile, removed when the cluster stops."""
    return str(Path(tempfile.gettempdir()) / cluster_id)


@dataclass
class Engines:
    """A running set of engines and the client that talks to them."""

    client: Any
    engine_ids: list[int]
    cluster: Any
    owned: bool
    cluster_id: str
    profile_dir: Path
    facts: list[EngineFacts] = field(default_factory=list)

    @property
    def views(self) -> list[Any]:
        return [self.client[engine_id] for engine_id in self.engine_ids]

    def describe(self, rendezvous_addr: str) -> list[EngineFacts]:
        """Ask every engine for its :class:`EngineFacts` (at most PROBE_SECONDS)."""
        futures = [view.apply_async(probes.describe_engine, rendezvous_addr) for view in self.views]
        described = []
        for engine_id, future in zip(self.engine_ids, futures, strict=True):
            try:
                facts = future.get(timeout=PROBE_SECONDS)
            except TimeoutError:
                raise HiresmedError(
                    f"engine {engine_id} did not answer within {PROBE_SECONDS} s: it is busy or "
                    "its host is unreachable; restart the cluster"
                ) from None
            facts["hostname_addresses"] = tuple(facts["hostname_addresses"])
            facts["addresses"] = tuple(facts["addresses"])
            described.append(EngineFacts(engine_id=engine_id, **facts))
        self.facts = described
        return described

    # Which launcher started which engine: its output file and its host ---------------------

    def _launcher_of(self, facts: EngineFacts) -> Any:
        sets = getattr(self.cluster, "engines", {}) or {}
        for engine_set in sets.values():
            for identifier, launcher in getattr(engine_set, "launchers", {}).items():
                if identifier == facts.launch_id or getattr(launcher, "pid", None) == facts.pid:
                    return launcher
        return None

    def output_tail(self, index: int, lines: int = OUTPUT_TAIL_LINES) -> str:
        """The last ``lines`` lines engine ``index`` wrote (stdout and stderr), or ''."""
        facts = self.facts[index]
        launcher = self._launcher_of(facts)
        try:
            if isinstance(launcher, launchers.ipp_launcher.SSHLauncher):
                command = [
                    "ssh",
                    *launcher.ssh_args,
                    launcher.location,
                    "tail",
                    f"-n{lines}",
                    launcher.remote_output_file,
                ]
                done = subprocess.run(command, capture_output=True, text=True, timeout=15)
                return done.stdout
            if launcher is not None and getattr(launcher, "output_file", ""):
                text = Path(launcher.output_file).read_text(errors="replace")
                return "".join(text.splitlines(True)[-lines:])
        except (OSError, subprocess.SubprocessError):
            return ""
        return ""

    def host_of(self, index: int) -> str:
        """Where engine ``index`` runs, as the user named it (the ssh host) or its host name."""
        launcher = self._launcher_of(self.facts[index])
        return getattr(launcher, "location", "") or self.facts[index].hostname

    # Liveness -------------------------------------------------------------------------------

    def lost(self, check_remote: bool) -> list[int]:
        """Indexes of engines that are gone: left the controller, or their process ended.

        Local processes are checked every call; engines on other hosts only when
        ``check_remote`` (one ssh per host).
        """
        registered = set(self.client.ids)
        gone = [i for i, engine_id in enumerate(self.engine_ids) if engine_id not in registered]
        remote: dict[Any, list[int]] = {}
        for index, facts in enumerate(self.facts):
            if index in gone:
                continue
            launcher = self._launcher_of(facts)
            if isinstance(launcher, launchers.ipp_launcher.SSHLauncher):
                remote.setdefault((launcher.location, tuple(launcher.ssh_args)), []).append(index)
            elif facts.machine == "localhost" and not process_alive(facts.pid):
                gone.append(index)
        if check_remote:
            for (location, ssh_args), indexes in remote.items():
                gone.extend(self._remote_dead(location, list(ssh_args), indexes))
        return sorted(gone)

    def _remote_dead(self, location: str, ssh_args: list[str], indexes: list[int]) -> list[int]:
        pids = " ".join(str(self.facts[i].pid) for i in indexes)
        script = f"for p in {pids}; do kill -0 $p 2>/dev/null || echo $p; done"
        try:
            done = subprocess.run(
                ["ssh", *ssh_args, location, script], capture_output=True, text=True, timeout=15
            )
        except subprocess.TimeoutExpired:
            return []  # an unreachable host is noticed by the controller's heartbeat
        if done.returncode != 0:
            return []
        dead = {int(word) for word in done.stdout.split() if word.isdigit()}
        return [i for i in indexes if self.facts[i].pid in dead]

    # Stopping -------------------------------------------------------------------------------

    def watch_owner(self, owner_pid: int) -> None:
        """Make this machine's engines end when ``owner_pid`` ends (see probes.watch_owner)."""
        for view, facts in zip(self.views, self.facts, strict=True):
            if facts.machine == "localhost":
                view.apply_sync(probes.watch_owner, owner_pid)

    def interrupt(self) -> None:
        """Send SIGINT to every engine's running task (through the controller: any host)."""
        import signal

        with contextlib.suppress(Exception):
            self.client.send_signal(signal.SIGINT, targets=self.engine_ids, block=False)

    def stop(self) -> None:
        """Owned: stop controller and engines on every host, remove their files. Attached: only
        close the client."""
        with contextlib.suppress(Exception):
            self.client.close()
        if self.owned:
            stop_cluster(self.cluster, self.cluster_id, self.profile_dir)


def stop_cluster(cluster: Any, cluster_id: str, profile_dir: Path) -> None:
    """Stop an ipyparallel cluster everywhere and leave nothing of it: processes on this machine,
    engines and their folders on ssh hosts, engine logs, connection and cluster files."""
    ssh_sites = _ssh_sites(cluster)
    try:
        cluster.stop_cluster_sync()
    except Exception:  # a half-started cluster: what is left is reaped below
        pass
    finally:
        for location, ssh_args, folder in ssh_sites:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(
                    ["ssh", *ssh_args, location, "rm", "-rf", folder],
                    capture_output=True,
                    timeout=15,
                )
        reap_processes(cluster_id)
        for leftover in (profile_dir / "log").glob(f"*{cluster_id}*"):
            leftover.unlink(missing_ok=True)
        for leftover in (profile_dir / "security").glob(f"*{cluster_id}*"):
            leftover.unlink(missing_ok=True)


def _ssh_sites(cluster: Any) -> list[tuple[str, list[str], str]]:
    """(location, ssh args, remote folder) of every ssh engine, once per host."""
    sites: dict[str, tuple[str, list[str], str]] = {}
    for engine_set in (getattr(cluster, "engines", {}) or {}).values():
        for launcher in getattr(engine_set, "launchers", {}).values():
            if isinstance(launcher, launchers.ipp_launcher.SSHLauncher) and launcher.location:
                folder = launcher.remote_profile_dir
                if Path(folder).name.startswith("hiresmed-"):  # only the folders we made
                    sites[launcher.location] = (launcher.location, list(launcher.ssh_args), folder)
    return list(sites.values())


def _make_profile_private(profile_dir: Path, cluster_id: str) -> None:
    security = profile_dir / "security"
    security.mkdir(parents=True, exist_ok=True, mode=0o700)
    security.chmod(0o700)
    for path in security.glob(f"*{cluster_id}*"):
        path.chmod(0o600)


def start_engines(
    n_engines: int,
    *,
    cluster_id: str,
    profile_dir: Path,
    controller_address: str,
    launcher: str = "local",
    hosts: list[HostSlots] | None = None,
    remote_python: str = "",
    detached: bool = False,
) -> Engines:
    """Start a controller listening on ``controller_address`` only, and ``n_engines`` engines:
    locally, over ssh on ``hosts``, or with ipyparallel's ``launcher`` (mpi, slurm).

    ``detached``: the cluster outlives this process (``cluster start``). On failure the engines'
    last output is in the :class:`HiresmedError`; the caller stops what was started.
    """
    import ipyparallel as ipp
    from traitlets.config import Config

    profile_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = Config()
    if hosts:
        engine_class = launchers.SSH
        settings = config.SSHEngineSetLauncher
        settings.engines = {entry.host: entry.slots for entry in hosts}
        settings.remote_python = remote_python
        settings.remote_profile_dir = remote_profile_dir(cluster_id)
        settings.ssh_args = list(SSH_OPTIONS)
        settings.scp_args = list(SSH_OPTIONS)
    elif launcher == "local":
        engine_class = launchers.LOCAL
    else:
        engine_class = launcher
    cluster = ipp.Cluster(
        n=n_engines,
        engines=engine_class,
        profile_dir=str(profile_dir),
        cluster_id=cluster_id,
        controller_ip=controller_address,
        controller_location=controller_address,
        shutdown_atexit=not detached,
        log_level=40,
        config=config,
    )
    with private_files():
        try:
            client = cluster.start_and_connect_sync(activate=False)
            client.wait_for_engines(n_engines, timeout=REGISTRATION_SECONDS)
        except Exception as error:
            message = _start_failure(cluster, n_engines, controller_address, error)
            stop_cluster(cluster, cluster_id, profile_dir)
            raise HiresmedError(message) from None
        finally:
            _make_profile_private(profile_dir, cluster_id)
    engine_ids = sorted(client.ids)[:n_engines]
    return Engines(client, engine_ids, cluster, True, cluster_id, profile_dir)


def _start_failure(cluster: Any, n_engines: int, controller_address: str, error: Exception) -> str:
    outputs = []
    for engine_set in (getattr(cluster, "engines", {}) or {}).values():
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
    shown = "\n".join(dict.fromkeys(outputs)) or "(no engine output)"
    return (
        f"the cluster did not start {n_engines} engine(s) with a controller on "
        f"{controller_address}: {type(error).__name__}: {error}\n{shown}"
    )


def attach_engines(cluster_file: str, n_engines: int) -> Engines:
    """Connect to the running cluster of ``cluster_file`` and take ``n_engines`` of its engines.

    Raises :class:`HiresmedError` naming IPP_CLUSTER_FILE when the file is missing, unreadable,
    its controller does not answer, or it has fewer engines than asked.
    """
    import ipyparallel as ipp

    path = Path(cluster_file).expanduser()
    if not path.is_file():
        raise HiresmedError(f"IPP_CLUSTER_FILE={cluster_file!r} does not exist")
    try:
        cluster = ipp.Cluster.from_file(str(path), log_level=40)
        client = cluster.connect_client_sync()
        client.wait_for_engines(n_engines, timeout=PROBE_SECONDS)
    except Exception as error:
        raise HiresmedError(
            f"IPP_CLUSTER_FILE={cluster_file!r}: cannot use {n_engines} engine(s) of that "
            f"cluster ({type(error).__name__}: {error}); is it running? "
            "(`python -m hiresmed_nb cluster start` prints a fresh file)"
        ) from None
    engine_ids = sorted(client.ids)[:n_engines]
    profile_dir = Path(cluster.profile_dir)
    return Engines(client, engine_ids, cluster, False, cluster.cluster_id, profile_dir)


def stop_cluster_file(cluster_file: str) -> str:
    """Stop the cluster of ``cluster_file`` everywhere (``cluster stop``); returns its id."""
    import ipyparallel as ipp

    path = Path(cluster_file).expanduser()
    if not path.is_file():
        raise HiresmedError(f"cluster file {cluster_file!r} does not exist")
    cluster = ipp.Cluster.from_file(str(path), log_level=40)
    stop_cluster(cluster, cluster.cluster_id, Path(cluster.profile_dir))
    path.unlink(missing_ok=True)
    return cluster.cluster_id


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
