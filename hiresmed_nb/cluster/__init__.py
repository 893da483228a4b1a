"""Horovod ranks hosted in ipyparallel engines, started from a notebook cell.

One module per concern:

- :mod:`.horovod_cluster`: :class:`HorovodCluster` (engines started through a slots cluster or
  attached, ranks placed on them, a function run on every rank with a fresh rendezvous), placed
  as a :class:`~hiresmed_nb.placement.Placement` says.
- :mod:`.pool`: warm clusters, reused by the next run with the same placement, for the kernel
  (:func:`.pool.kernel_pool`) and the study runner alike.
- :mod:`.slots_cluster`: every cluster the project starts: one engine per slot (a run's ranks,
  a packed study's slots), each started with its slot's GPU and thread share, or engines of
  ipyparallel's Slurm launcher; or an attached cluster's engines as slots; :mod:`.devices`:
  finding GPUs, planning the slots, and the slots of an attached cluster's engines.
- :mod:`.hosts`: the ssh check of every host of ``HOSTS``.
- :mod:`.engines`: the controller and engine start every cluster shares, attaching to a
  cluster file, a view of some engines (liveness, engine output); :mod:`.stopping`: stopping
  a cluster everywhere.
- :mod:`.launchers`: ipyparallel launchers that keep engine output and name each engine.
- :mod:`.ranks`: Horovod rank numbers, host identities and ``HOROVOD_*`` variables.
- :mod:`.preflight`: checks before ``hvd.init()`` that fail with one named error.
- :mod:`.engine_tasks`: what runs on the engines (closures do not pickle).
- :mod:`.scripts`: any Horovod script or cell source on the ranks (``%horovodrun``).
- :mod:`.processes`: a cluster's processes, by the marker only they carry; reaping them, also
  after a killed kernel.
- :mod:`.slurm`: engines as a Slurm job (ipyparallel's Slurm launcher), its jobs' states.
- :mod:`.errors`: RankFailedError and RankLostError.
"""

from hiresmed_nb.cluster.engines import attached_engine_count
from hiresmed_nb.cluster.errors import RankFailedError, RankLostError
from hiresmed_nb.cluster.horovod_cluster import (
    IPP_PROFILE_DIR,
    HorovodCluster,
    start_rendezvous,
    stop_rendezvous,
)
from hiresmed_nb.cluster.pool import Pool, kernel_pool, run_training
from hiresmed_nb.cluster.processes import (
    cluster_processes,
    describe_process,
    reap_processes,
)
from hiresmed_nb.cluster.ranks import (
    EngineFacts,
    RankSlot,
    assign_ranks,
    horovod_environment,
    host_identities,
    threads_per_rank,
)
from hiresmed_nb.cluster.undertaker import reap_orphans
from hiresmed_nb.placement import HostSlots, Placement, parse_hosts, total_slots

__all__ = [
    "IPP_PROFILE_DIR",
    "Pool",
    "kernel_pool",
    "run_training",
    "Placement",
    "EngineFacts",
    "HorovodCluster",
    "HostSlots",
    "RankFailedError",
    "RankLostError",
    "RankSlot",
    "assign_ranks",
    "attached_engine_count",
    "cluster_processes",
    "describe_process",
    "horovod_environment",
    "host_identities",
    "parse_hosts",
    "reap_orphans",
    "reap_processes",
    "start_rendezvous",
    "stop_rendezvous",
    "threads_per_rank",
    "total_slots",
]
