"""Stop a cluster whose owner died without stopping it.

``python -m hiresmed_nb.cluster.undertaker OWNER CLUSTER_FILE`` runs beside every cluster a
kernel starts, in its own session (so a kill of the kernel's process group spares it) and with
the cluster's marker variables (so stopping the cluster ends it too). ``OWNER`` is the kernel's
host, pid and start time (:func:`~hiresmed_nb.cluster.processes.process_identity`). It runs on the
owner's host, the only one that can see the owner go. While the cluster file exists it watches
the owner; when the owner is gone (killed, out of memory, a kernel restart that did not wait) it
stops the cluster on every host, as ``cluster stop`` would, and exits. When the cluster is stopped
normally its file disappears and the undertaker exits too.
"""

from __future__ import annotations

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
            from hiresmed_nb.cluster.engines import stop_cluster_file

            stop_cluster_file(str(cluster_file))
            return True
        time.sleep(POLL_SECONDS)
    return False


if __name__ == "__main__":
    watch(sys.argv[1], Path(sys.argv[2]))
