"""Stop a cluster whose owner died without stopping it.

``python -m hiresmed_nb.cluster.undertaker OWNER CLUSTER_FILE`` runs beside every cluster a
kernel starts, in its own session (so a kill of the kernel's process group spares it) and with
the cluster's marker variables (so stopping the cluster ends it too). ``OWNER`` is the kernel's
host, pid and start time (:func:`~hiresmed_nb.cluster.processes.process_identity`). It runs on the
owner's host, the only one that can see the owner go. While the cluster file exists it watches
the owner; when the owner is gone (killed, out of memory, a kernel restart that did not wait) it
stops the cluster on every host, as ``cluster stop`` would, and exits. When the cluster is stopped
normally its file disappears and the undertaker exits too.

:func:`reap_orphans` does the undertaker's job for clusters whose undertaker died with its owner
(a machine out of memory, a ``kill`` of every process of a job): a cluster that starts runs it on
its own host first.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

POLL_SECONDS = 1.0


def start_undertaker(owner: str, cluster_id: str, cluster_file: str) -> subprocess.Popen:
    """Start the undertaker of ``cluster_file`` for ``owner`` (in a new session, output
    discarded, marked as one of ``cluster_id``'s processes). ``owner`` must be a process of this
    host: no other host can tell when it is gone."""
    from hiresmed_nb.cluster.processes import marker_environment, parse_identity
    from hiresmed_nb.errors import HiresmedError

    parsed = parse_identity(owner)
    if parsed is None or not parsed.here:
        raise HiresmedError(
            f"owner: {owner!r} is not a process of this host; its undertaker must run on its host"
        )

    return subprocess.Popen(
        [sys.executable, "-m", __name__, owner, cluster_file],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **marker_environment(cluster_id, owner)},
        start_new_session=True,
    )


def watch(owner: str, cluster_file: Path) -> bool:
    """Wait until the cluster file is gone (returns False) or the owner is (stops the cluster,
    returns True). A zombie owner, or another process under the owner's pid, counts as gone."""
    import time

    from hiresmed_nb.cluster.processes import owner_gone

    while cluster_file.exists():
        if owner_gone(owner):
            from hiresmed_nb.cluster.stopping import stop_cluster_file

            stop_cluster_file(str(cluster_file), owner_gone_here=True)
            return True
        time.sleep(POLL_SECONDS)
    return False


def reap_orphans(profile_dir: Path | None = None) -> list[str]:
    """Stop the clusters left behind by a process of this host that was killed (papermill, OOM,
    kill -9) together with its undertaker. Returns the ids stopped.

    Only owners of this host are judged (:func:`~.processes.owner_gone`): engines that a head on
    another host keeps here, and its files in a shared ``profile_dir``, are left alone. A cluster
    whose file is in ``profile_dir`` is stopped everywhere, as ``cluster stop`` would (controller,
    engines here and over ssh, their folders on those hosts, its files); what is left of any
    orphaned cluster on this host is then ended, and (given ``profile_dir``) the files of clusters
    whose owner is gone are removed.
    """
    from hiresmed_nb.cluster.processes import (
        orphaned_cluster_ids,
        reap_processes,
        remove_orphaned_files,
    )
    from hiresmed_nb.cluster.stopping import stop_cluster_file

    orphaned = sorted(orphaned_cluster_ids(profile_dir))
    for cluster_id in orphaned:
        if profile_dir is not None:
            cluster_file = profile_dir / "security" / f"cluster-{cluster_id}.json"
            if cluster_file.is_file():
                # Best effort: a file that cannot be read still leaves the local reap below.
                with contextlib.suppress(Exception):
                    stop_cluster_file(str(cluster_file), owner_gone_here=True)
        reap_processes(cluster_id)
    if profile_dir is not None:
        remove_orphaned_files(profile_dir)
    return orphaned


if __name__ == "__main__":
    watch(sys.argv[1], Path(sys.argv[2]))
