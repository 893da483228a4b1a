"""The pool of warm clusters: one policy for the notebook's kernel and for the study runner.

A distributed run needs engines placed as its :class:`~hiresmed_nb.placement.Placement` says.
The pool keeps the cluster of each placement warm between runs (its engines have already
imported TensorFlow and Horovod) and replaces it when it can no longer be trusted: a run failed
or was interrupted on it, one of its engines is gone, or its engines' memory has grown past the
bound of :mod:`.memory` since their first run. Closing the pool stops every cluster it started
(an attached cluster, given by a cluster file, is only let go).

- The kernel's pool (:func:`kernel_pool`) holds one cluster at a time: a run with another
  placement replaces it. The kernel's exit closes it; if the kernel is killed instead, each
  cluster's undertaker (:mod:`.undertaker`) stops it on every host.
- The study runner's pool holds one cluster per placement and hands its cluster file to each
  distributed notebook, which attaches to it (:meth:`Pool.attach_parameters`).
"""

from __future__ import annotations

import atexit
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hiresmed_nb.cluster import scripts
from hiresmed_nb.cluster.horovod_cluster import HorovodCluster
from hiresmed_nb.cluster.lifecycle import start_or_stop
from hiresmed_nb.params import RunConfig, resolve_path
from hiresmed_nb.placement import Placement


class Pool:
    """``pool.run(placement, function, *args)``: ``function(*args)`` on every rank, on warm
    engines when the pool has usable ones for that placement.

    ``one_at_a_time``: keep a single cluster (the kernel's pool); otherwise one per placement.
    """

    def __init__(self, *, one_at_a_time: bool = False) -> None:
        self.one_at_a_time = one_at_a_time
        self._clusters: dict[Placement, HorovodCluster] = {}

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Handing out clusters ---------------------------------------------------------------------

    def cluster(self, placement: Placement) -> HorovodCluster:
        """The usable warm cluster of ``placement``, or a new one (what it replaces is stopped
        first). A cluster that ran before has its engines' memory read here, so an outgrown
        one is replaced before it runs again."""
        cluster = self._clusters.get(placement)
        if cluster is not None and cluster.runs and not cluster.placement.cluster_file:
            self._read_memory(cluster)
        if cluster is not None and not cluster.usable():
            self.retire(placement)
            cluster = None
        if cluster is None:
            if self.one_at_a_time:
                self.close()
            cluster = start_or_stop(HorovodCluster(placement=placement))
            self._clusters[placement] = cluster
        return cluster

    def run(self, placement: Placement, function: Callable, *args: Any) -> list[Any]:
        """``function(*args)`` on every rank of the warm cluster of ``placement``; results in
        rank order. A run that fails or is interrupted retires the cluster: its ranks are in an
        unknown state, so the next run starts fresh engines."""
        cluster = self.cluster(placement)
        print(f"{cluster.description}; run {cluster.runs + 1} on these engines", flush=True)
        try:
            return cluster.run(function, *args)
        except BaseException:
            self.retire(placement)
            raise

    def run_script(
        self, placement: Placement, path: str | Path, argv: Sequence[str] = (), cwd: str = ""
    ) -> None:
        """Run a Horovod script on every rank of the warm cluster of ``placement`` as
        ``horovodrun`` would (as ``__main__``, its ``sys.argv[1:]`` = ``argv``, in ``cwd``,
        default this process's working directory). The script is checked before any engine
        starts, then that every rank sees it and the working directory at the same path."""
        arguments = scripts.script_arguments(path, argv, cwd)
        scripts.check_ranks_see(self.cluster(placement), [arguments[0], arguments[2]])
        self.run(placement, scripts.run_file_as_main, *arguments)

    def run_source(
        self, placement: Placement, source: str, argv: Sequence[str] = (), cwd: str = ""
    ) -> Any:
        """Execute ``source`` on every rank of the warm cluster of ``placement``; returns rank
        0's value of its final expression (:func:`.scripts.run_source_as_main`)."""
        arguments = scripts.source_arguments(source, argv, cwd)
        scripts.check_ranks_see(self.cluster(placement), [arguments[2]])
        return self.run(placement, scripts.run_source_as_main, *arguments)[0]

    def attach_parameters(self, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """A study's notebook parameters set to run on the pool's cluster of their placement
        (started if needed; a serial run's is one engine): its file goes in
        ``POOL_CLUSTER_FILE``, while the placement the run asked for (``HOSTS``, ``N_RANKS``)
        stays as given, for its record. Runs that name their own cluster file are returned
        unchanged."""
        if parameters["IPP_CLUSTER_FILE"]:
            return dict(parameters)
        cluster = self.cluster(Placement.from_params(parameters))
        cluster.runs += 1  # the notebook runs on it: read its memory before the next hand-out
        return {**parameters, "POOL_CLUSTER_FILE": cluster.cluster_file}

    # Retiring ---------------------------------------------------------------------------------

    def _read_memory(self, cluster: HorovodCluster) -> None:
        """Read the engines' memory after their runs so far (the first reading is the baseline);
        an engine that cannot answer cannot run either, so the cluster is retired."""
        try:
            cluster.observe_memory()
        except Exception as error:
            print(f"{cluster.description}: engines did not report their memory ({error!r})")
            cluster.broken = True
            return
        if cluster.memory.outgrown():
            print(f"{cluster.description}: {cluster.memory.describe()}, replaced", flush=True)

    def retire(self, placement: Placement) -> None:
        """Stop the cluster of ``placement``; the next run with it starts fresh engines."""
        cluster = self._clusters.pop(placement, None)
        if cluster is not None:
            cluster.stop()

    def retire_parameters(self, parameters: Mapping[str, Any]) -> None:
        """Retire the cluster a study's notebook with these (original) parameters ran on."""
        if not parameters["IPP_CLUSTER_FILE"]:
            self.retire(Placement.from_params(parameters))

    @property
    def current(self) -> HorovodCluster | None:
        """The cluster started last and still running (the kernel's pool has at most one)."""
        return next(reversed(self._clusters.values()), None)

    def clusters(self) -> dict[Placement, HorovodCluster]:
        """The running clusters by placement (for checks and tests)."""
        return dict(self._clusters)

    def close(self) -> None:
        """Stop every cluster of the pool."""
        while self._clusters:
            _, cluster = self._clusters.popitem()
            cluster.stop()


_kernel_pool: Pool | None = None


def kernel_pool() -> Pool:
    """This process's pool (a notebook's kernel): one warm cluster at a time, closed at exit."""
    global _kernel_pool
    if _kernel_pool is None:
        _kernel_pool = Pool(one_at_a_time=True)
        atexit.register(_kernel_pool.close)
    return _kernel_pool


def run_training(config: RunConfig, split: Any = None) -> list[dict[str, Any]]:
    """What ``01_train``'s training cell does, for scripts, benchmarks and tests: train on the
    run's engines in this process's pool (one for a serial run, one per Horovod rank);
    results in rank order. This process never imports TensorFlow for it.

    The split is made here once (if not given) and sent to the ranks as file lists, so no rank
    opens a file outside its own shard of the training set (rank 0 also reads the test set).
    """
    from hiresmed_nb.science import training

    if not config.SITE_DIRS:
        split = split or training.make_split(config)
    pool = kernel_pool()
    pool.cluster(config.placement).check_results_dir(resolve_path(config.RESULTS_DIR))
    return pool.run(config.placement, training.train, config, (), split)
