"""Finding and ending a cluster's processes on this host: only the processes the project started.

Every process the project starts for a cluster (its controller, its engines and what they start,
such as their nannies, and the undertaker) carries ``HIRESMED_CLUSTER_ID`` in its environment;
those of a cluster owned by a kernel also carry its owner's identity, its host, pid and start time
(``HIRESMED_CLUSTER_OWNER_HOST`` and ``HIRESMED_CLUSTER_OWNER``, ``pid@start``). A cluster's
processes are the processes of this user whose environment (``/proc/PID/environ``) holds its id.
Command lines are never matched: a ``tail -f`` of the cluster's log, or the shell that runs
``cluster stop FILE``, mentions the id but is not ours. The calling process and its ancestors
are never signalled.

Engines started over ssh carry their owner's identity to other hosts, and a profile folder in a
shared home holds the files of clusters owned on several hosts. Only the owner's own host can tell
whether the owner is gone (another host's process table does not hold it): every other host
leaves such processes and files alone. An owned cluster's id names its owner, so that its files
can be judged without its processes.

:class:`EngineLaunch` is where an engine of a cluster was launched (from the cluster's state or
file): enough to reach its process from this machine, through ssh for another host's engine.

``python -m hiresmed_nb.cluster.processes CLUSTER_ID`` ends a cluster's processes on the host it
runs on (``cluster stop`` runs it over ssh on every host of the cluster) and prints what it ended.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiresmed_nb.errors import HiresmedError

CLUSTER_PREFIX = "hiresmed-"
CLUSTER_ID_VARIABLE = "HIRESMED_CLUSTER_ID"
# The owner's ``pid@start`` and its host, in two variables: an earlier version of this package,
# still running in a kernel started before an upgrade, reads the first alone and reaps a cluster
# whose owner it cannot read.
OWNER_VARIABLE = "HIRESMED_CLUSTER_OWNER"
OWNER_HOST_VARIABLE = "HIRESMED_CLUSTER_OWNER_HOST"
STOP_GRACE_SECONDS = 10
PROBE_SECONDS = 30  # how long an engine, or its controller, has to answer a question


@dataclass(frozen=True)
class EngineLaunch:
    """How one engine was launched, as the cluster file records it: enough to find its output
    and check its process from this machine (through ssh for an engine on another host)."""

    identifier: str
    pid: int
    location: str = ""  # ssh destination; '' for an engine on this machine
    ssh_args: tuple[str, ...] = ()
    output_file: str = ""  # on this machine, or on ``location``
    remote_folder: str = ""  # the engine's folder on ``location`` (ssh engines)
    remote_python: str = ""  # the interpreter on ``location`` (ssh engines)


def state_values(state: Any, keys: tuple[str, ...]) -> Iterator[str]:
    """Every non-empty string under one of ``keys`` anywhere in an ipyparallel cluster's state
    (``Cluster.to_dict()``: its controller's and engine sets' launchers), in order."""
    if isinstance(state, dict):
        for key, value in state.items():
            if key in keys and isinstance(value, str) and value:
                yield value
            else:
                yield from state_values(value, keys)
    elif isinstance(state, list):
        for item in state:
            yield from state_values(item, keys)


def engine_launches(cluster_state: dict[str, Any]) -> list[EngineLaunch]:
    """Every engine launch in a cluster's state (``Cluster.to_dict()`` or its cluster file)."""
    found = []
    for engine_set in cluster_state.get("engines", {}).get("sets", {}).values():
        for identifier, state in engine_set.get("engines", {}).items():
            host = state.get("hostname", "")
            user = state.get("user", "")
            found.append(
                EngineLaunch(
                    identifier=str(identifier),
                    pid=int(state.get("pid", -1)),
                    location=f"{user}@{host}" if user and host else host,
                    ssh_args=tuple(state.get("ssh_args", ())),
                    output_file=state.get("remote_output_file") or state.get("output_file", ""),
                    remote_folder=state.get("remote_profile_dir", "") if host else "",
                    remote_python=state.get("remote_python", "") if host else "",
                )
            )
    return found


def ssh(launch: EngineLaunch, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", *launch.ssh_args, launch.location, *command],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def host_key(launch: EngineLaunch) -> EngineLaunch:
    """The host of ``launch``, as a key: its ssh destination and arguments, no engine."""
    return EngineLaunch("", -1, launch.location, launch.ssh_args)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine (a zombie counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# A machine's own id (systemd's, or D-Bus's where systemd is absent): the same across reboots.
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def host_identity() -> str:
    """This host as an owner's identity names it: its host name and, where the machine has one,
    the first 12 digits of its machine id (``vm+3d1219c7c4c5``). Machines cloned from one image
    report one host name; with the id each judges only its own owners. The id outlives a reboot,
    so after one the host still finds its owners from before gone."""
    name = socket.gethostname()
    for path in MACHINE_ID_FILES:
        try:
            machine = path.read_text().strip()[:12]
        except OSError:
            continue
        if machine:
            return f"{name}+{machine}"
    return name


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as its host knows it: a pid alone is ambiguous (reused, or another host's)."""

    host: str  # host_identity() of the process's host
    pid: int
    started: str  # its start time with 3 decimals (:func:`start_mark`)

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}@{self.started}"

    @property
    def here(self) -> bool:
        """Whether the process belongs to this host (the only one that can judge it)."""
        return self.host == host_identity()


_IDENTITY = re.compile(r"(?P<host>[^/\s]+)/(?P<pid>\d+)@(?P<started>\d+\.\d{3})")


def process_identity(pid: int | None = None) -> str:
    """``HOST/PID@START`` of ``pid`` (default: this process), on this host: a reused pid has
    another start time, another host's process another :func:`host_identity`."""
    import psutil

    process = psutil.Process(pid)
    return str(ProcessIdentity(host_identity(), process.pid, start_mark(process)))


def start_mark(process: Any) -> str:
    """When ``process`` (a psutil Process) started, with 3 decimals: in seconds since its host
    booted where ``/proc/PID/stat`` tells (Linux: clock ticks, which no clock step, NTP
    correction or VM pause changes), else psutil's seconds since the epoch. psutil's epoch time
    is the boot time now plus those ticks: after a clock step every identity made before it would
    name no running process, and each cluster's undertaker would stop a live owner's cluster."""
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except OSError:
        return f"{process.create_time():.3f}"
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; comm may hold spaces
    return f"{ticks / os.sysconf('SC_CLK_TCK'):.3f}"


def parse_identity(identity: str) -> ProcessIdentity | None:
    """The parts of a :func:`process_identity`, or None for anything else."""
    found = _IDENTITY.fullmatch(identity)
    if found is None:
        return None
    return ProcessIdentity(found["host"], int(found["pid"]), found["started"])


def _runs(owner: ProcessIdentity) -> bool:
    """Whether ``owner`` (a process of this host) still runs: not a zombie, not another process
    that reuses its pid."""
    import psutil

    try:
        process = psutil.Process(owner.pid)
        same = start_mark(process) == owner.started
        return same and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def owner_gone(identity: str) -> bool:
    """Whether the owner ``identity`` is known to be gone. Only its own host can say so: an owner
    of another host, or an identity that cannot be read, is never gone here."""
    owner = parse_identity(identity)
    return owner is not None and owner.here and not _runs(owner)


def owned_cluster_id(owner_pid: int, token: str) -> str:
    """A cluster id that names its owner, the process ``owner_pid`` of this host (host, pid and
    start time): ``hiresmed-HOST_PID_START_TOKEN``. Its files are removed once that host finds the
    owner gone (:func:`local_owner_in_name`)."""
    owner = parse_identity(process_identity(owner_pid))
    assert owner is not None  # process_identity always gives a readable identity
    return f"{CLUSTER_PREFIX}{owner.host}_{owner.pid}_{owner.started}_{token}"


def local_owner_in_name(name: str) -> ProcessIdentity | None:
    """The owner named by an owned cluster's id in ``name`` (a file name), when that owner is of
    this host; None for another host's cluster, a detached one, or no cluster id. This host's
    identity is matched whole, so no host name (with dashes, dots or underscores) is misread."""
    host = host_identity()
    found = re.search(
        rf"{CLUSTER_PREFIX}{re.escape(host)}_(?P<pid>\d+)_(?P<started>\d+\.\d{{3}})_[0-9a-f]+",
        name,
    )
    if found is None:
        return None
    return ProcessIdentity(host, int(found["pid"]), found["started"])


def named_owner_gone(name: str) -> bool:
    """Whether ``name`` (a file or folder name) holds an owned cluster's id whose owner, a
    process of this host, is gone (:func:`local_owner_in_name`, :func:`owner_gone`)."""
    owner = local_owner_in_name(name)
    return owner is not None and owner_gone(str(owner))


def detached_cluster_id(token: str) -> str:
    """A cluster id for a cluster meant to outlive the process that started it (never reaped
    as an orphan; ``python -m hiresmed_nb cluster stop`` stops it)."""
    return f"{CLUSTER_PREFIX}detached-{token}"


def marker_environment(cluster_id: str, owner: str = "") -> dict[str, str]:
    """The variables that mark a process as started for ``cluster_id`` (``owner``: the
    :func:`process_identity` of the process that owns the cluster; '' when detached)."""
    marker = {CLUSTER_ID_VARIABLE: cluster_id}
    parsed = parse_identity(owner)
    if owner and parsed is None:
        raise HiresmedError(f"owner: {owner!r} is not a process identity (HOST/PID@START)")
    if parsed is not None:
        marker[OWNER_VARIABLE] = f"{parsed.pid}@{parsed.started}"
        marker[OWNER_HOST_VARIABLE] = parsed.host
    return marker


def marked_owner(environment: dict[str, str]) -> ProcessIdentity | None:
    """The owner a marked process's environment names, or None (detached, or unreadable)."""
    host = environment.get(OWNER_HOST_VARIABLE, "")
    return parse_identity(f"{host}/{environment.get(OWNER_VARIABLE, '')}") if host else None


def _spared_pids() -> set[int]:
    """This process and its ancestors: never signalled, whatever they carry."""
    import psutil

    me = psutil.Process()
    return {me.pid, *(parent.pid for parent in me.parents())}


def _marked_processes() -> list[tuple[Any, dict[str, str]]]:
    """(process, environment) of this user's processes that carry a cluster marker, but this
    process and its ancestors."""
    import psutil

    spared = _spared_pids()
    found = []
    for process in psutil.process_iter(["uids"]):
        try:
            if process.pid in spared or process.info["uids"].real != os.getuid():
                continue
            environment = process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if CLUSTER_ID_VARIABLE in environment:
            found.append((process, environment))
    return found


def cluster_processes(cluster_id: str) -> list[Any]:
    """The processes of ``cluster_id`` on this host (engines, controller, nannies, undertaker)."""
    return [
        process
        for process, environment in _marked_processes()
        if environment[CLUSTER_ID_VARIABLE] == cluster_id
    ]


def process_role(process: Any) -> str:
    """What a cluster process is ('controller', 'engine', 'nanny', 'undertaker' or 'child'),
    for messages only."""
    import psutil

    try:
        words = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        words = ""
    roles = {  # the first that the command line names
        "ipyparallel.engine.nanny": "nanny",
        "ipyparallel.engine": "engine",
        "ipyparallel.controller": "controller",
        "cluster.undertaker": "undertaker",
    }
    return next((name for key, name in roles.items() if key in words), "child")


def describe_process(process: Any) -> str:
    """'engine 123': a cluster process's role and pid."""
    return f"{process_role(process)} {process.pid}"


def summarize(described: list[str]) -> str:
    """'controller (pids 1, 2), engine (pids 3, 4)' from :func:`describe_process` lines."""
    pids: dict[str, list[str]] = {}
    for line in dict.fromkeys(described):
        role, _, pid = line.rpartition(" ")
        pids.setdefault(role, []).append(pid)
    return ", ".join(
        f"{role} (pid{'s' if len(found) > 1 else ''} {', '.join(found)})"
        for role, found in pids.items()
    )


def cluster_folder(cluster_id: str) -> Path:
    """A cluster's own folder in the temporary folder of each host it runs on: its engines'
    ``TMPDIR`` (TensorFlow's autograph writes a file there per traced function and removes it
    only at a clean exit, which a stopped engine never has) and an ssh engine's profile. Removed
    with the cluster's processes (:func:`reap_processes`)."""
    return Path(tempfile.gettempdir()) / cluster_id


def reap_processes(cluster_id: str, grace_seconds: float = STOP_GRACE_SECONDS) -> list[str]:
    """Terminate, then kill, what is left of ``cluster_id`` on this host, and wait for it; then
    remove its :func:`cluster_folder` here. Returns what was ended (see
    :func:`describe_process`)."""
    import psutil

    leftovers = cluster_processes(cluster_id)
    ended = [describe_process(process) for process in leftovers]
    for process in leftovers:
        try:
            process.terminate()  # psutil checks the start time: a reused pid is not signalled
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(leftovers, timeout=grace_seconds)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_seconds)
    if cluster_id.startswith(CLUSTER_PREFIX):  # only a folder the project named (never /tmp)
        shutil.rmtree(cluster_folder(cluster_id), ignore_errors=True)
    return ended


def orphaned_cluster_ids(profile_dir: Path | None = None) -> set[str]:
    """Ids of owned clusters whose owner this host finds gone: from this host's marked processes
    and cluster folders (:func:`cluster_folder`), and (given ``profile_dir``) from the cluster
    files there. Another host's clusters and detached ones (no owner) are never among them."""
    orphaned = {
        environment[CLUSTER_ID_VARIABLE]
        for _, environment in _marked_processes()
        if owner_gone(str(marked_owner(environment)))
    }
    for folder in Path(tempfile.gettempdir()).glob(f"{CLUSTER_PREFIX}*"):
        if folder.is_dir() and named_owner_gone(folder.name):
            orphaned.add(folder.name)
    if profile_dir is not None:
        for path in (profile_dir / "security").glob(f"cluster-{CLUSTER_PREFIX}*.json"):
            if named_owner_gone(path.name):
                orphaned.add(path.stem.removeprefix("cluster-"))
    return orphaned


def remove_orphaned_files(profile_dir: Path) -> None:
    """Remove the log and connection files of owned clusters whose owner, a process of this
    host, is gone."""
    for folder in ("log", "security"):
        for path in (profile_dir / folder).glob(f"*{CLUSTER_PREFIX}*"):
            if named_owner_gone(path.name):
                path.unlink(missing_ok=True)


if __name__ == "__main__":
    for line in reap_processes(sys.argv[1]):
        print(line)
