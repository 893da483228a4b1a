"""Stopping a cluster the project started, everywhere, and leaving nothing of it.

:func:`stop_cluster` ends an ipyparallel cluster's controller and engines, its processes on this
machine and on its ssh hosts (found by their marker, never by name; its undertaker too), the
engines' folders on those hosts, and its files; :func:`stop_cluster_file` does it from a cluster
file (``cluster stop``, the undertaker), also ending engines started into it as Slurm job steps.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from hiresmed_nb.cluster import engine_tasks, slurm
from hiresmed_nb.cluster.processes import (
    PROBE_SECONDS,
    EngineLaunch,
    cluster_processes,
    describe_process,
    engine_launches,
    host_key,
    process_alive,
    reap_processes,
    ssh,
    state_values,
    summarize,
)
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path


def stop_cluster(
    cluster: Any, cluster_id: str, profile_dir: Path, recorded: dict[str, Any] | None = None
) -> list[str]:
    """Stop an ipyparallel cluster everywhere and leave nothing of it: its processes on this
    machine and on ssh hosts (found by their marker, never by name; its undertaker too), the
    engines' folders on those hosts, engine logs, connection and cluster files. ``recorded``: the
    state its cluster file holds (its hosts are visited even if an engine there has ended).
    Returns what it stopped, a line per host ('this host: controller (pid 12), engine (pids 13,
    14)')."""
    launches = engine_launches(recorded or cluster.to_dict())
    # ipyparallel's Slurm launchers scancel these jobs
    jobs = slurm.job_ids(recorded or cluster.to_dict())
    here = [describe_process(process) for process in cluster_processes(cluster_id)]
    stopped: dict[str, list[str]] = {}
    try:
        cluster.stop_cluster_sync()
    except Exception:  # a half-started cluster: what is left is reaped below
        pass
    finally:
        for launch in launches:  # engines on ssh hosts, which ipyparallel stopped by pid
            if launch.location:
                stopped.setdefault(launch.location, []).append(f"engine {launch.pid}")
        remote_hosts = {host_key(launch): launch for launch in launches if launch.location}
        for host, launch in remote_hosts.items():
            stopped[host.location].extend(_stop_on_host(launch, cluster_id))
        here.extend(reap_processes(cluster_id))
        stopped = {"this host": list(dict.fromkeys(here)), **stopped}
        for leftover in cluster_files(profile_dir, cluster_id, cluster.to_dict()):
            leftover.unlink(missing_ok=True)
    return [
        f"{host}: {summarize(ended) or 'nothing was running'}" for host, ended in stopped.items()
    ] + slurm.after_cancel(jobs)


def cluster_files(profile_dir: Path, cluster_id: str, cluster_state: dict[str, Any]) -> list[Path]:
    """The files of one cluster in its profile folder: connection files, the logs and batch
    scripts its launchers name, and, when it has an id, every file of the folder, ``log/`` and
    ``security/`` whose name holds it. ``ipcluster start`` without ``--cluster-id`` leaves the
    id empty: then only the files ipyparallel names for an id-less cluster, never another
    cluster's files."""
    prefix = f"ipcontroller-{cluster_id}" if cluster_id else "ipcontroller"
    found = [profile_dir / "security" / f"{prefix}-{kind}.json" for kind in ("client", "engine")]
    named = state_values(cluster_state, ("output_file", "batch_file_name"))  # logs, batch scripts
    found += [Path(p) for p in named if Path(p).is_absolute()]
    if cluster_id:  # the profile folder itself holds the Slurm launcher's batch scripts
        for folder in ("", "log", "security"):
            found.extend((profile_dir / folder).glob(f"*{cluster_id}*"))
    inside = [p for p in found if p.resolve().is_relative_to(profile_dir.resolve())]
    return [p for p in dict.fromkeys(inside) if p.is_file()]


def _stop_on_host(launch: EngineLaunch, cluster_id: str) -> list[str]:
    """End what is left of ``cluster_id`` on an ssh host (its engines' nannies, say) and remove
    the engines' folder there if the project made it, in one ssh session. Returns what was
    ended there; an unreachable host or a host without this package ends nothing."""
    steps = []
    if launch.remote_python:  # the reaper's exit status is the session's
        reaper = [launch.remote_python, "-m", __package__ + ".processes", cluster_id]
        steps.append(f"{shlex.join(reaper)}; status=$?")
    if Path(launch.remote_folder).name.startswith("hiresmed-"):  # only folders we made
        steps.append(shlex.join(["rm", "-rf", launch.remote_folder]))
    if not steps:
        return []
    script = "; ".join(steps) + ("; exit $status" if launch.remote_python else "")
    try:
        done = ssh(launch, script)
    except (subprocess.SubprocessError, OSError):
        return []
    if not launch.remote_python or done.returncode != 0:
        return []
    return [line for line in done.stdout.split("\n") if line.strip()]


def read_cluster_file(cluster_file: str) -> tuple[dict[str, Any], str, Path, Path]:
    """A cluster file's state, cluster id, profile folder and client connection file; one
    HiresmedError naming IPP_CLUSTER_FILE when it is missing or not a cluster file."""
    path = resolve_path(cluster_file)
    try:
        state = json.loads(path.read_text())
        cluster_id = state["cluster"]["cluster_id"]
        profile_dir = Path(state["cluster"]["profile_dir"])
    except FileNotFoundError:
        raise HiresmedError(f"IPP_CLUSTER_FILE={cluster_file!r} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise HiresmedError(
            f"IPP_CLUSTER_FILE={cluster_file!r} is not an ipyparallel cluster file"
        ) from None
    # ipyparallel names connection files after the cluster id ('ipcluster start' without
    # --cluster-id leaves it empty).
    prefix = f"ipcontroller-{cluster_id}" if cluster_id else "ipcontroller"
    return state, cluster_id, profile_dir, profile_dir / "security" / f"{prefix}-client.json"


def connect(cluster_file: str) -> tuple[Any, dict[str, Any], str, Path]:
    """A client of the running cluster of ``cluster_file`` (only a client: nothing of the
    cluster runs in this process), with the file's state, cluster id and profile folder. One
    HiresmedError naming IPP_CLUSTER_FILE when the file is not one or its controller does not
    answer within PROBE_SECONDS."""
    import ipyparallel as ipp

    state, cluster_id, profile_dir, client_file = read_cluster_file(cluster_file)
    try:
        client = ipp.Client(str(client_file), timeout=PROBE_SECONDS)
    except Exception as error:
        raise HiresmedError(
            f"IPP_CLUSTER_FILE={cluster_file!r}: its controller does not answer "
            f"({type(error).__name__}: {error}); is the cluster running? "
            "(`python -m hiresmed_nb cluster start` prints a fresh file)"
        ) from None
    return client, state, cluster_id, profile_dir


def stop_cluster_file(cluster_file: str, *, owner_gone_here: bool = False) -> tuple[str, list[str]]:
    """Stop the cluster of ``cluster_file`` everywhere (``cluster stop``); returns its id and
    what was stopped (see :func:`stop_cluster`). ``owner_gone_here``: the caller judged, on this
    host, that the process which started the cluster (and its controller, here) is gone."""
    import ipyparallel as ipp

    path = resolve_path(cluster_file)
    if not path.is_file():
        raise HiresmedError(f"cluster file {cluster_file!r} does not exist")
    state = json.loads(path.read_text())
    engines = state.get("engines", {})
    # ipyparallel records a launcher class outside its own entry points as 'module:Class' but
    # imports dotted paths only.
    engines["class"] = str(engines.get("class", "")).replace(":", ".")
    cluster = ipp.Cluster.from_dict(dict(state), cluster_file=str(path), log_level=40)
    steps = _job_steps_of_engines(cluster_file, state, owner_gone_here)
    stopped = stop_cluster(cluster, cluster.cluster_id, Path(cluster.profile_dir), state)
    stopped += slurm.cancel_steps(steps)
    path.unlink(missing_ok=True)
    return cluster.cluster_id, stopped


def _job_steps_of_engines(
    cluster_file: str, state: dict[str, Any], owner_gone_here: bool = False
) -> list[str]:
    """The Slurm job steps of the cluster's engines that its own launchers did not start
    (``srun ipengine --file=...`` inside an allocation): stopping the controller leaves those
    engines running on their nodes, so their steps are cancelled. Asks every engine, but only
    when the controller has more engines than the launchers of ``state`` (the cluster file)
    started: an engine of a cancelled job stays registered until its heartbeat lapses, and
    would hold the stop up to PROBE_SECONDS. Only steps ('JOB.STEP'): an engine started in a
    batch job outside ``srun`` names its whole job, which is the user's allocation, never
    cancelled here. [] when the controller does not answer; at once when the cluster's owner
    was judged gone on this host (``owner_gone_here``) and its controller's process here has
    ended too (a client would wait PROBE_SECONDS for it). Without that judgement a pid in the
    file may be another host's (a shared profile folder), so the controller is asked."""
    if owner_gone_here and _controller_gone(state):
        return []
    try:
        client = connect(cluster_file)[0]
    except HiresmedError:
        return []
    try:
        if len(client.ids) <= _launched_engines(state):
            return []
        steps = client[:].apply_async(engine_tasks.slurm_step).get(timeout=PROBE_SECONDS)
    except Exception:
        return []
    finally:
        client.close()
    own = set(slurm.job_ids(state))
    return sorted({step for step in steps if "." in step and step.split(".")[0] not in own})


def _controller_gone(cluster_state: dict[str, Any]) -> bool:
    """Whether the controller's process of a cluster's state, started on this machine by an
    owner judged gone here, has ended."""
    launched = (cluster_state.get("controller") or {}).get("state") or {}
    pid = launched.get("pid")
    here = not launched.get("hostname") and not launched.get("location")
    return isinstance(pid, int) and pid > 0 and here and not process_alive(pid)


def _launched_engines(cluster_state: dict[str, Any]) -> int:
    """How many engines the launchers of a cluster's state started (its engine sets' ``n``)."""
    sets = cluster_state.get("engines", {}).get("sets", {})
    return sum(int(engine_set.get("n") or 0) for engine_set in sets.values())
