"""``python -m hiresmed_nb cluster start|stop``: a cluster that outlives the command.

``start`` launches a controller and engines (here, on ``--hosts`` over ssh, or as a Slurm job
with ``--slurm N``) and prints the path of its cluster file; notebooks and studies attach to it
with ``IPP_CLUSTER_FILE`` and leave it running. ``stop FILE`` stops it on every host.
"""

from __future__ import annotations

from hiresmed_nb.cluster.horovod_cluster import HorovodCluster
from hiresmed_nb.cluster.lifecycle import start_or_stop
from hiresmed_nb.cluster.processes import cluster_processes, describe_process, summarize
from hiresmed_nb.cluster.stopping import stop_cluster_file
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.placement import Placement, parse_hosts, total_slots


def start_detached(
    n_engines: int = 0,
    hosts: str = "",
    remote_python: str = "",
    rendezvous_addr: str = "auto",
    slurm_tasks: int = 0,
) -> HorovodCluster:
    """Start a cluster that keeps running after this process exits; returns it (its
    ``cluster_file`` and ``placement`` say where it is). ``n_engines`` 0: the slots of
    ``hosts``, else 2. ``slurm_tasks`` > 0: that many engines submitted as one Slurm job
    (ipyparallel's Slurm launcher; the controller here, on the address the nodes reach)."""
    parsed = parse_hosts(hosts)
    if n_engines < 0:
        raise HiresmedError(f"-n {n_engines}: give a positive number of engines")
    if slurm_tasks < 0:
        raise HiresmedError(f"--slurm {slurm_tasks}: give a positive number of engines")
    if slurm_tasks and (parsed or n_engines):
        raise HiresmedError("--slurm N submits N engines to Slurm: give it without -n or --hosts")
    n_engines = slurm_tasks or n_engines or (total_slots(parsed) if parsed else 2)
    placement = Placement(
        n_engines,
        hosts=tuple(parsed),
        launcher="slurm" if slurm_tasks else "local",
        remote_python=remote_python,
        rendezvous_addr=rendezvous_addr,
    )
    return start_or_stop(HorovodCluster(placement=placement, detached=True))


def stop(cluster_file: str) -> str:
    """Stop the cluster of ``cluster_file`` on every host; returns what was stopped, for the
    console. Only the cluster's own processes are signalled, never the caller or its parents
    (a ``timeout``, ``srun`` or shell that names the file)."""
    cluster_id, stopped = stop_cluster_file(cluster_file)
    left = cluster_processes(cluster_id)
    if left:
        raise HiresmedError(
            f"cluster {cluster_id} is still running here after its stop: "
            + summarize([describe_process(process) for process in left])
        )
    lines = "\n".join(f"  {line}" for line in stopped)
    return f"stopped cluster {cluster_id}:\n{lines}"
