"""What a run on engines raises when a rank fails or is lost (with the rank's own evidence), when
it runs out of time, or when an attached cluster's engine is gone."""

from __future__ import annotations

from hiresmed_nb.errors import HiresmedError


class RankFailedError(RuntimeError):
    """A Horovod rank raised: carries the rank number and the rank's own traceback."""

    def __init__(self, rank: int, ename: str, evalue: str, traceback_text: str):
        self.rank, self.ename, self.evalue = rank, ename, evalue
        super().__init__(
            f"rank {rank} failed with {ename}: {evalue}\n\n"
            f"--- traceback on rank {rank} ---\n{traceback_text}"
        )


class RankLostError(RankFailedError):
    """A rank's engine died (killed, out of memory, host lost) while the ranks were running.

    ``output_tail`` holds the last lines the engine process wrote (its stdout and stderr, where
    Gloo and TensorFlow report fatal errors), kept before ipyparallel removes them.
    """

    def __init__(self, rank: int, pid: int, host: str = "", output_tail: str = "", cause: str = ""):
        self.pid, self.host, self.output_tail, self.cause = pid, host, output_tail, cause
        where = f" on {host}" if host else ""
        where += f", {cause}" if cause else ""  # e.g. its Slurm job, cancelled
        shown = output_tail.strip() or "(the engine wrote nothing, or its output is unavailable)"
        super().__init__(
            rank,
            "RankLost",
            f"the engine process of rank {rank} (pid {pid}{where}) is gone; "
            "the other ranks were stopped",
            f"(no traceback: the process ended without one, e.g. killed or out of memory)\n"
            f"--- last output of rank {rank}'s engine ---\n{shown}",
        )


def as_rank_failure(rank: int, error: BaseException) -> RankFailedError:
    """Turn ipyparallel's RemoteError into a RankFailedError that keeps the remote traceback."""
    if isinstance(error, RankFailedError):
        return error
    ename = getattr(error, "ename", type(error).__name__)
    evalue = getattr(error, "evalue", str(error))
    traceback_text = getattr(error, "traceback", None) or str(error)
    return RankFailedError(rank, ename, evalue, traceback_text)


class RunTimeoutError(HiresmedError):
    """A run took longer than its time limit (``RUN_TIMEOUT``); ``detail`` says what was still
    running and what was stopped."""

    def __init__(self, seconds: float, detail: str):
        self.seconds = seconds
        super().__init__(
            f"the run exceeded its time limit of {seconds:g} s (RUN_TIMEOUT): {detail}; raise "
            "RUN_TIMEOUT (or `python -m hiresmed_nb run --run-timeout SECONDS`) if it needs longer"
        )


class EngineLostError(HiresmedError):
    """An engine of an attached cluster (not ours to replace) is gone: its slot is unusable."""

    def __init__(self, engine_id: int, host: str, cluster_file: str = ""):
        self.engine_id, self.host = engine_id, host
        where = f" of the cluster {cluster_file}" if cluster_file else ""
        super().__init__(
            f"engine {engine_id}{where} on {host or 'an unknown host'} is gone (its job ended or "
            "it was killed); an attached cluster's engines are not replaced here, so its slot "
            "leaves the study"
        )
