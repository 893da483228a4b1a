"""A real Slurm on simulated nodes, for tests: munged, slurmctld on the head, one slurmd per node.

The nodes are :class:`simhosts.SimHosts` hosts (network namespaces on a bridge; the head holds the
bridge's ``.1`` address). Each node's ``slurmd`` runs as a real cluster node would: its own network
(``nsenter --net``), host name, ``/etc/hosts``, mount namespace with its own ``/tmp`` (a tmpfs) and
its own process table (``unshare --pid --fork --mount-proc``); the rest of the filesystem is
shared, as a cluster's shared filesystem is. ``slurmd`` is not started under ``ip netns exec``,
which remounts ``/sys`` and leaves it without cgroups: with ``proctrack/linuxproc`` and
``task/none`` Slurm then needs none.

Everything (configuration, state, spools, logs, the munge key and socket) lives in one temporary
folder, bound at the same path on every node; ``shared`` is a folder in it for a test's files.
Nothing is started system-wide; :meth:`SimSlurm.close` cancels every job, ends every daemon by the
process (group) it started and removes the namespaces and the folder, also after a failed start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import simhosts
from simhosts import HostSpec

DAEMONS = ("munged", "slurmctld", "slurmd")
# A job's states once it has ended and its processes are gone (scontrol shows COMPLETING before).
FINAL_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY"}
    | {"PREEMPTED", "TIMEOUT"}
)
CLIENTS = ("srun", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
SLURMD_PORT = 6818  # every node has its own network namespace, so one port serves all
SLURM_CONF = """ClusterName=hiresmedsim
SlurmctldHost={head}({head_address})
SlurmctldPort={controller_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool/%n
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/spool/%n/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
InactiveLimit=0
KillWait=5
MinJobAge=300
SlurmctldTimeout=60
SlurmdTimeout=60
{nodes}
PartitionName=sim Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def node_script(node: str, rig: Path) -> str:
    """What runs inside a node's new namespaces: its host name, a tmpfs on /tmp with the rig's
    folder (and a project under /tmp) bound back at its own path, its own /etc/hosts (``$1``);
    then slurmd (the rest of the arguments), as a child, so that this shell (pid 1 of the node)
    reaps whatever Slurm leaves orphaned."""
    steps = ["set -eu", f"hostname {shlex.quote(node)}"]
    steps += simhosts.own_tmp_steps([rig], f"tmp-{node}")
    steps += ['mount --bind "$1" /etc/hosts', "shift", '"$@" &', "wait $!"]
    return "\n".join(steps) + "\n"


def unavailable_reason() -> str | None:
    """Why a simulated Slurm cannot run here (the exact missing thing), or None."""
    for tool in ("nsenter", *CLIENTS):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (Debian: apt-get install slurm-client util-linux)"
    for daemon in DAEMONS:
        if shutil.which(daemon, path=f"/usr/sbin:{os.defpath}") is None:
            return f"no `{daemon}` (Debian: apt-get install slurmctld slurmd munge)"
    return simhosts.unavailable_reason()


class SimSlurm:
    """A Slurm cluster of ``nodes`` (host names), each with ``cpus`` CPUs; ``start()``/``close()``.

    After ``start()``, :attr:`env` holds ``SLURM_CONF`` for the clients (``srun``, ``sbatch``...),
    which run from the head as from a login node.
    """

    def __init__(
        self, nodes: Sequence[str] = ("nodeA", "nodeB"), *, cpus: int = 1, timeout: float = 60
    ) -> None:
        self.nodes = list(nodes)
        self.cpus = cpus
        self.timeout = timeout
        self.hosts = simhosts.SimHosts([HostSpec(n, knows_head=True) for n in self.nodes])
        self.directory = Path()
        self._daemons: list[subprocess.Popen] = []
        self._slurmctld: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def shared(self) -> Path:
        """A folder at the same path on the head and every node (the nodes' /tmp is their own)."""
        return self.directory / "shared"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for Slurm's clients."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> SimSlurm:
        """Build the nodes and start munged, slurmctld and every slurmd; wait until all are idle."""
        try:
            self.hosts.start()
            self.directory = self.hosts.directory / "slurm"
            for sub in ("state", "spool", "munge", "shared"):
                (self.directory / sub).mkdir(parents=True)
            os.chmod(self.directory / "munge", 0o755)
            self._start_munged()
            self._write_conf()
            self._slurmctld = self._daemon(["slurmctld", "-D", "-c", "-f", str(self.conf)], "ctld")
            for node in self.nodes:
                self._start_slurmd(node)
            self._wait_until_idle()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise
        return self

    def _start_munged(self) -> None:
        munge = self.directory / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        argv = ["munged", "-F", "-f", f"--socket={munge / 'socket'}", f"--key-file={key}"]
        argv += [f"--pid-file={munge / 'pid'}", f"--seed-file={munge / 'seed'}"]
        self._daemon(argv, "munged")
        self._wait_for(lambda: (munge / "socket").exists(), "munged's socket")

    def _write_conf(self) -> None:
        nodes = "\n".join(
            f"NodeName={n} NodeAddr={self.hosts.address(n)} CPUs={self.cpus} State=UNKNOWN"
            for n in self.nodes
        )
        with socket.socket() as probe:  # a free port for slurmctld, found on the head's address
            probe.bind((self.hosts.head_address, 0))
            controller_port = probe.getsockname()[1]
        self.conf.write_text(
            SLURM_CONF.format(
                head=socket.gethostname(),
                head_address=self.hosts.head_address,
                controller_port=controller_port,
                slurmd_port=SLURMD_PORT,
                munge_socket=self.directory / "munge" / "socket",
                directory=self.directory,
                nodes=nodes,
            )
        )

    def _start_slurmd(self, node: str) -> None:
        (self.directory / "spool" / node).mkdir()
        netns = self.hosts.netns(node)
        own_ns = ["unshare", "--uts", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc"]
        script = node_script(node, self.directory)
        argv = ["nsenter", f"--net=/run/netns/{netns}", "--", *own_ns, "sh", "-c", script]
        argv += ["sh", str(simhosts.NETNS_ETC / netns / "hosts")]
        argv += ["slurmd", "-D", "-N", node, "-f", str(self.conf)]
        self._daemon(argv, f"slurmd-{node}")

    def _daemon(self, argv: list[str], name: str) -> subprocess.Popen:
        """Start a daemon in a session of its own (so its group can be ended), logging to a file."""
        with open(self.directory / f"{name}.out", "wb") as out:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env, "PATH": f"/usr/sbin:{os.environ['PATH']}"},
                start_new_session=True,
            )
        self._daemons.append(process)
        return process

    def _wait_until_idle(self) -> None:
        def idle() -> bool:
            done = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
            states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
            return all(states.get(n) == "idle" for n in self.nodes)

        self._wait_for(idle, "every node idle in sinfo")

    def _wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not condition():
            dead = [p.args for p in self._daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"exited: {dead}" if dead else f"not after {self.timeout} s"
                raise RuntimeError(f"simulated Slurm: waiting for {what}: {why}\n{self.logs()}")
            time.sleep(0.2)  # poll interval, not a wait for an event of known length

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 120, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command on the head (as from a login node)."""
        env = {**os.environ, **self.env}
        done = subprocess.run(
            list(argv), capture_output=True, text=True, env=env, timeout=timeout, **kw
        )  # type: ignore[call-overload]
        if check and done.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr}")
        return done

    def jobs(self) -> list[str]:
        """Every job Slurm still knows as pending or running: 'id state name' lines."""
        done = self.run(["squeue", "-h", "-o", "%i %T %j"], check=False)
        return [line for line in done.stdout.splitlines() if line.strip()]

    def node_processes(self, node: str) -> dict[int, str]:
        """Processes on the node other than its sshd, slurmd and the shell that started slurmd."""
        found = self.hosts.leftover_processes(node)
        return {
            pid: cmd
            for pid, cmd in found.items()
            if not cmd.startswith(("slurmd ", "nsenter ", "unshare ", "sh -c set -eu"))
        }

    def wait_for_idle_nodes(self, timeout: float = 30) -> dict[str, dict[int, str]]:
        """What each node still runs of a job (see :meth:`node_processes`) once nothing is left,
        or at once when anything but Slurm's step daemons (``slurmstepd``) is: those may end a
        moment after the job did, so they are polled for, up to ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            left = {node: self.node_processes(node) for node in self.nodes}
            commands = [command for found in left.values() for command in found.values()]
            stepds_only = all(command.startswith("slurmstepd") for command in commands)
            if not commands or not stepds_only or time.monotonic() > deadline:
                return left
            time.sleep(0.2)  # poll interval

    def wait_for_no_jobs(self, timeout: float = 60) -> list[str]:
        """Poll until Slurm has no pending or running job, or ``timeout`` passes; return them."""
        deadline = time.monotonic() + timeout
        while (jobs := self.jobs()) and time.monotonic() < deadline:
            time.sleep(0.2)  # poll interval
        return jobs

    def wait_for_job_end(self, job: str, timeout: float) -> str:
        """Poll until ``job`` has ended (its processes too: no longer COMPLETING) and return its
        final state (COMPLETED, FAILED...); RuntimeError naming its state after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.run(["scontrol", "-o", "show", "job", job]).stdout
            state = re.search(r"\bJobState=(\S+)", shown).group(1)
            if state in FINAL_STATES:
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm job {job} is still {state} after {timeout} s")
            time.sleep(0.2)  # poll interval

    def logs(self) -> str:
        """The tail of every daemon's log, for an error message."""
        parts = []
        if self.directory != Path() and self.directory.exists():
            for log in sorted(self.directory.glob("*.log")) + sorted(self.directory.glob("*.out")):
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
        return "\n".join(parts)

    def close(self) -> None:
        """Cancel every job, end every daemon (TERM, then KILL), remove the nodes and the folder."""
        if self._slurmctld is not None and self._slurmctld.poll() is None:
            with contextlib.suppress(Exception):
                self.run(["scancel", "--full", "--user=root"], check=False, timeout=30)
                self.wait_for_no_jobs(timeout=30)
        for process in reversed(self._daemons):  # slurmds, then slurmctld, then munged
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if process.poll() is not None:  # reaped: its group id may belong to another
                    break
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                    break
        self.hosts.close()  # also removes the folder holding ours
