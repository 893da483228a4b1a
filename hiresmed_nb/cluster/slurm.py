"""Engines as a Slurm job, from a login node: ipyparallel's own Slurm launcher, told where to put
its batch script and asked about its job.

``cluster start --slurm N`` (or ``IPP_LAUNCHER="slurm"``) starts the controller here, listening on
this machine's address towards Slurm's controller (the nodes reach it the same way), and submits
the engines as one job of N tasks (``srun ipengine``). Its batch script is written in the profile
folder, named after the cluster, never in the working directory. A job that does not bring its
engines up in time is named in the error with its id and state (``squeue``); ``cluster stop``
cancels it (ipyparallel's launcher runs ``scancel``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from hiresmed_nb.cluster.engine_tasks import route_address
from hiresmed_nb.cluster.processes import state_values
from hiresmed_nb.errors import HiresmedError

SLURM_SECONDS = 30  # bound on one squeue or scontrol call
# A job's states (``scontrol show job``) once it is ending or has ended: its processes are going.
ENDED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "COMPLETING",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)
_CONTROLLER_HOST = re.compile(r"^SlurmctldHost\[0\]\s*=\s*([^\s(]+)(?:\(([^)]+)\))?", re.M)


def configure_launcher(config: Any, profile_dir: Path, cluster_id: str) -> None:
    """Put the Slurm launchers' batch scripts in ``profile_dir``, named after the cluster."""
    for launcher, kind in (
        ("SlurmEngineSetLauncher", "engine"),
        ("SlurmControllerLauncher", "ctl"),
    ):
        config[launcher].batch_file_name = str(profile_dir / f"slurm_{kind}-{cluster_id}.sbatch")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if shutil.which(argv[0]) is None:
        raise HiresmedError(f"IPP_LAUNCHER='slurm': no `{argv[0]}` on PATH (Slurm's clients)")
    return subprocess.run(argv, capture_output=True, text=True, timeout=SLURM_SECONDS)


def controller_address() -> str:
    """This machine's address on the route to Slurm's controller (``scontrol show config``):
    where a login node's ipyparallel controller listens so that the nodes reach it."""
    done = _run(["scontrol", "show", "config"])
    found = _CONTROLLER_HOST.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise HiresmedError(
            "RENDEZVOUS_ADDR='auto' with Slurm: `scontrol show config` names no SlurmctldHost "
            f"({done.stderr.strip() or 'no answer'}); give RENDEZVOUS_ADDR (--rendezvous-addr)"
        )
    host, address = found.group(1), found.group(2)
    import socket

    try:
        destination = address or socket.gethostbyname(host)
    except OSError:
        raise HiresmedError(
            f"RENDEZVOUS_ADDR='auto' with Slurm: its controller's host {host!r} does not "
            "resolve here; give RENDEZVOUS_ADDR (--rendezvous-addr)"
        ) from None
    return route_address(destination)


def job_ids(cluster_state: dict[str, Any]) -> list[str]:
    """The Slurm jobs an ipyparallel cluster's state names (its engine sets, its controller)."""
    return list(dict.fromkeys(state_values(cluster_state, ("job_id",))))


def job_states(ids: list[str]) -> dict[str, str]:
    """Each job's state and reason as squeue shows them ('PENDING (Resources)'); a job squeue no
    longer lists (ended, cancelled) is absent."""
    if not ids:
        return {}
    done = _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"])
    states = {}
    for line in done.stdout.splitlines():
        job, _, state = line.strip().partition(" ")
        if job in ids:
            state, _, reason = state.partition(" ")
            states[job] = f"{state} ({reason})" if reason and reason != "None" else state
    return states


def job_state(job: str) -> str:
    """A job's state as slurmctld keeps it, also for a while after it ended ('CANCELLED'),
    or 'unknown to Slurm'."""
    try:
        done = _run(["scontrol", "-o", "show", "job", job])
    except (HiresmedError, subprocess.SubprocessError, OSError):
        return "unknown (scontrol did not answer)"
    found = re.search(r"\bJobState=(\S+)", done.stdout)
    return found.group(1) if done.returncode == 0 and found else "unknown to Slurm"


def ended_jobs(jobs: list[str]) -> set[str]:
    """The jobs of ``jobs`` that Slurm says are ending or have ended (CANCELLED, COMPLETING...),
    one ``scontrol`` call each. A job Slurm cannot say anything of (no answer, no longer known)
    is not among them."""
    return {job for job in dict.fromkeys(jobs) if job_state(job) in ENDED_STATES}


def cancel_steps(steps: list[str]) -> list[str]:
    """``scancel`` each job step ('12.0': the engines' step, not the allocation around it);
    a line per step saying what Slurm did."""
    lines = []
    for step in steps:
        try:
            done = _run(["scancel", step])
        except (HiresmedError, subprocess.SubprocessError, OSError) as error:
            lines.append(f"Slurm job step {step}: scancel failed ({error})")
            continue
        failed = done.returncode != 0
        said = done.stderr.strip()
        lines.append(
            f"Slurm job step {step}: " + (f"scancel failed ({said})" if failed else "cancelled")
        )
    return lines


def describe_jobs(cluster_state: dict[str, Any]) -> str:
    """'Slurm job 12: PENDING (Resources)' for each job of a cluster, or ''."""
    ids = job_ids(cluster_state)
    try:
        states = job_states(ids)
    except (HiresmedError, subprocess.SubprocessError, OSError):
        states = {}
    return "; ".join(f"Slurm job {job}: {states.get(job, 'no longer queued')}" for job in ids)


def after_cancel(ids: list[str], timeout: float = SLURM_SECONDS) -> list[str]:
    """A line per job once its cluster was stopped: 'Slurm job 12: cancelled' when squeue no
    longer lists it (polled up to ``timeout``: a job takes Slurm a moment to end), else what
    squeue still shows of it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            states = job_states(ids)
        except (HiresmedError, subprocess.SubprocessError, OSError) as error:
            return [
                f"Slurm job {job}: scancel sent; squeue did not answer ({error})" for job in ids
            ]
        if not states or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # poll interval
    lines = []
    for job in ids:
        lines.append(
            f"Slurm job {job}: scancel sent, still {states[job]}"
            if job in states
            else f"Slurm job {job}: cancelled"
        )
    return lines
