"""The runner's warm clusters: one per rank layout, shared by every distributed run of a study.

A study's distributed notebooks attach to the runner's cluster for their layout (their
``N_RANKS`` and ``HOSTS``) with ``IPP_CLUSTER_FILE``, instead of each starting engines, importing
TensorFlow and Horovod, and stopping them again. A cluster is started when a layout is first
needed, restarted after a run whose rank failed or was lost or once its engines' memory has grown
too much (:mod:`hiresmed_nb.cluster.memory`), and every one is stopped when the study ends,
also on Ctrl-C or an error (and by its undertaker if the runner is killed).
"""

from __future__ import annotations

from typing import Any

from hiresmed_nb.cluster import HorovodCluster, Placement

RANK_FAILURES = ("RankFailedError", "RankLostError")


def layout_of(params: dict[str, Any]) -> Placement | None:
    """The warm cluster a run needs: None for serial runs and for runs that name their own
    cluster (``IPP_CLUSTER_FILE``)."""
    if params["MODE"] != "distributed" or params["IPP_CLUSTER_FILE"]:
        return None
    return Placement.from_params(params)


def is_rank_failure(error: BaseException) -> bool:
    """Whether a notebook failed because a rank raised or was lost (papermill names the
    exception the cell raised in ``ename``)."""
    return (getattr(error, "ename", None) or type(error).__name__) in RANK_FAILURES


class StudyClusters:
    """``with StudyClusters() as clusters: params = clusters.attach(params)``."""

    def __init__(self) -> None:
        self._running: dict[Placement, HorovodCluster] = {}
        self._handed_out: set[Placement] = set()  # clusters that ran at least one notebook

    def __enter__(self) -> StudyClusters:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def attach(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` set to run on the warm cluster of their layout (started if needed)."""
        placement = layout_of(params)
        if placement is None:
            return params
        cluster = self._running.get(placement)
        if cluster is not None and placement in self._handed_out and cluster.usable():
            try:
                cluster.observe_memory()  # after its runs so far; the first reading is the baseline
            except Exception:  # an engine that cannot answer cannot run either: replace them
                cluster.broken = True
            if cluster.memory.outgrown():
                print(f"{cluster.description}: {cluster.memory.describe()}, replaced", flush=True)
        if cluster is None or not cluster.usable():
            self.restart(params)
            cluster = HorovodCluster(placement=placement)
            self._running[placement] = cluster
            try:
                cluster.start()
            except BaseException:
                self.restart(params)
                raise
        self._handed_out.add(placement)
        # The notebook attaches: the hosts are the cluster's, its file says where they are.
        return {**params, "IPP_CLUSTER_FILE": cluster.cluster_file, "HOSTS": ""}

    def restart(self, params: dict[str, Any]) -> None:
        """Stop the cluster of ``params``' layout; the next run of that layout starts a new one."""
        placement = layout_of(params)
        cluster = self._running.pop(placement, None) if placement is not None else None
        self._handed_out.discard(placement)
        if cluster is not None:
            cluster.stop()

    def engine_pids(self) -> dict[Placement, list[int]]:
        """Each running cluster's engine pids (for checks and tests)."""
        return {
            placement: list(cluster.engine_pids) for placement, cluster in self._running.items()
        }

    def close(self) -> None:
        """Stop every cluster."""
        while self._running:
            _, cluster = self._running.popitem()
            cluster.stop()
