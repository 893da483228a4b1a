"""Horovod ranks hosted in ipyparallel engines, started from a notebook cell.

One module per concern:

- :mod:`.horovod_cluster`: :class:`HorovodCluster` (start or attach engines, place ranks, run a
  function on every rank with a fresh rendezvous) and :class:`ClusterSpec` (where ranks run).
- :mod:`.warm`: the kernel's warm cluster, reused by the next run with the same spec.
- :mod:`.hosts`: ``HOSTS`` (``horovodrun -H`` syntax) and the ssh check of every host.
- :mod:`.engines`: starting engines (local, ssh, mpi, slurm), attaching to a cluster file,
  liveness, engine output, stopping everywhere.
- :mod:`.launchers`: ipyparallel launchers that keep engine output and name each engine.
- :mod:`.ranks`: Horovod rank numbers, host identities and ``HOROVOD_*`` variables.
- :mod:`.preflight`: checks before ``hvd.init()`` that fail with one named error.
- :mod:`.probes`: what runs on the engines (closures do not pickle).
- :mod:`.scripts`: any Horovod script or cell source on the ranks (``%horovodrun``).
- :mod:`.processes`: finding and reaping a cluster's processes, also after a killed kernel.
- :mod:`.errors`: RankFailedError and RankLostError.
"""

from hiresmed_nb.cluster.errors import RankFailedError, RankLostError
from hiresmed_nb.cluster.horovod_cluster import (
    IPP_PROFILE_DIR,
    ClusterSpec,
    HorovodCluster,
    start_rendezvous,
    stop_rendezvous,
)
from hiresmed_nb.cluster.hosts import HostSlots, parse_hosts, total_slots
from hiresmed_nb.cluster.processes import cluster_processes, reap_orphans, reap_processes
from hiresmed_nb.cluster.ranks import (
    EngineFacts,
    RankSlot,
    assign_ranks,
    horovod_environment,
    host_identities,
    threads_per_rank,
)
from hiresmed_nb.cluster.warm import (
    current_warm_cluster,
    run_warm,
    stop_warm_cluster,
    warm_cluster,
)

__all__ = [
    "IPP_PROFILE_DIR",
    "ClusterSpec",
    "EngineFacts",
    "HorovodCluster",
    "HostSlots",
    "RankFailedError",
    "RankLostError",
    "RankSlot",
    "assign_ranks",
    "cluster_processes",
    "current_warm_cluster",
    "horovod_environment",
    "host_identities",
    "parse_hosts",
    "reap_orphans",
    "reap_processes",
    "run_warm",
    "start_rendezvous",
    "stop_rendezvous",
    "stop_warm_cluster",
    "threads_per_rank",
    "total_slots",
    "warm_cluster",
]
