"""Finding and reaping a cluster's processes on this machine, also after a kernel was killed."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

CLUSTER_PREFIX = "hiresmed-"
STOP_GRACE_SECONDS = 10


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs on this machine (a zombie counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def owned_cluster_id(owner_pid: int, token: str) -> str:
    """A cluster id that names its owner's pid, so a later cluster can reap it if the owner
    (a kernel, a study runner) is killed."""
    return f"{CLUSTER_PREFIX}{owner_pid}-{token}"


def detached_cluster_id(token: str) -> str:
    """A cluster id for a cluster meant to outlive the process that started it (never reaped
    as an orphan; ``python -m hiresmed_nb cluster stop`` stops it)."""
    return f"{CLUSTER_PREFIX}detached-{token}"


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


def reap_orphans(profile_dir: Path | None = None) -> list[str]:
    """Stop clusters left behind by a kernel that was killed (papermill, OOM, kill -9).

    A cluster's id carries its owner's pid; any local engine or controller whose owner is gone is
    reaped, and (given ``profile_dir``) the logs and connection files of such clusters are
    removed. Detached clusters (``cluster start``) have no owner and are left alone. Returns the
    ids reaped.
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
            if not process_alive(int(owner)):
                orphaned.add(cluster_id)
    for cluster_id in sorted(orphaned):
        reap_processes(cluster_id)
    if profile_dir is not None:
        _remove_orphaned_files(profile_dir)
    return sorted(orphaned)


def _remove_orphaned_files(profile_dir: Path) -> None:
    """Remove the log and connection files of owned clusters whose owner is gone."""
    owned = re.compile(rf"{CLUSTER_PREFIX}(\d+)-[0-9a-f]+")
    for folder in ("log", "security"):
        for path in (profile_dir / folder).glob(f"*{CLUSTER_PREFIX}*"):
            found = owned.search(path.name)
            if found and not process_alive(int(found.group(1))):
                path.unlink(missing_ok=True)
