"""Stop a cluster whose owner died without stopping it.

``python -m hiresmed_nb.cluster.undertaker OWNER_PID CLUSTER_FILE`` runs beside every cluster a
kernel starts, in its own session (so a kill of the kernel's process group spares it). While the
cluster file exists it watches the owner; when the owner is gone (killed, out of memory, a kernel
restart that did not wait) it stops the cluster on every host, as ``cluster stop`` would, and
exits. When the cluster is stopped normally its file disappears and the undertaker exits too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

POLL_SECONDS = 1.0


def start_undertaker(owner_pid: int, cluster_file: str) -> subprocess.Popen:
    """Start the undertaker for ``cluster_file`` (in a new session, output discarded)."""
    return subprocess.Popen(
        [sys.executable, "-m", __name__, str(owner_pid), cluster_file],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def watch(owner_pid: int, cluster_file: Path) -> bool:
    """Wait until the cluster file is gone (returns False) or the owner is (stops the cluster,
    returns True). A zombie owner counts as gone."""
    import time

    from hiresmed_nb.cluster.processes import process_alive

    while cluster_file.exists():
        if not process_alive(owner_pid):
            from hiresmed_nb.cluster.engines import stop_cluster_file

            stop_cluster_file(str(cluster_file))
            return True
        time.sleep(POLL_SECONDS)
    return False


if __name__ == "__main__":
    watch(int(sys.argv[1]), Path(sys.argv[2]))
