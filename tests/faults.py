"""Fault injection for reliability tests: Keras callbacks that break a run on purpose.

Tests that cannot hand callbacks to the ranks (a study's notebooks run in their own kernels)
set ``HIRESMED_INJECT_FAULT`` in the environment the kernels and engines inherit; the tests'
``conftest.py`` points the training's ``HIRESMED_CALLBACKS`` at :func:`injected_callbacks`:

- ``kill-rank:<rank>:<epoch>:<marker file>``: that rank kills itself at the end of that epoch,
  once (the marker file records that it happened, so a retried run goes through);
- ``kill-rank-after-checkpoint:<rank>:<epoch>:<marker file>``: as ``kill-rank``, but that rank
  kills itself after the first batch of the next epoch, once: that batch's gradient allreduce
  waits for rank 0, which has written ``epoch``'s checkpoint by then, so the run resumes after
  ``epoch + 1`` epochs for certain (a rank killed at the epoch's end races rank 0's checkpoint);
- ``kill-run:<epoch>:<marker file>``: at the end of that epoch, once, rank 0 kills the whole run
  with SIGKILL, as a preempted node would: serially the kernel itself; distributed, every
  process of its cluster (controller, engines, undertaker) and the kernel that owns the cluster.

- ``hang-rank:<rank>:<epoch>[:<marker file>]``: that rank stops at the end of that epoch and
  waits for ever (as a rank stuck in a collective would), until it is interrupted; it creates the
  marker file, if given, when it starts waiting.

``kill-rank``, ``kill-run`` and ``hang-rank`` fire before that epoch's checkpoint is written: the
run resumes after ``epoch`` epochs.
Nothing is injected when the variable is unset.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import tensorflow as tf

from hiresmed_nb.cluster.processes import (
    CLUSTER_ID_VARIABLE,
    cluster_processes,
    marked_owner,
)


class KillRankAtEpoch(tf.keras.callbacks.Callback):
    """SIGKILL this process at the end of ``epoch`` (0-based) if it is rank ``rank``."""

    def __init__(self, rank: int, epoch: int):
        super().__init__()
        self.rank, self.epoch = rank, epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch and int(os.environ.get("HOROVOD_RANK", "0")) == self.rank:
            os.kill(os.getpid(), signal.SIGKILL)


class InterruptAtEpoch(tf.keras.callbacks.Callback):
    """Raise KeyboardInterrupt at the end of ``epoch`` (0-based), as a kernel interrupt would."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"injected interrupt after epoch {epoch}")


class HangRankAtEpoch(tf.keras.callbacks.Callback):
    """Wait for ever at the end of ``epoch`` (0-based) if this is rank ``rank``; a SIGINT (the
    engine's interrupt) ends the wait with KeyboardInterrupt."""

    def __init__(self, rank: int, epoch: int, marker: str = ""):
        super().__init__()
        self.rank, self.epoch, self.marker = rank, epoch, marker

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch and int(os.environ.get("HOROVOD_RANK", "0")) == self.rank:
            if self.marker:
                Path(self.marker).touch()
            threading.Event().wait()  # never set: only a signal ends it


class KillRankOnce(KillRankAtEpoch):
    """:class:`KillRankAtEpoch` that fires only if ``marker`` does not exist, and creates it."""

    def __init__(self, rank: int, epoch: int, marker: str):
        super().__init__(rank, epoch)
        self.marker = Path(marker)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        mine = int(os.environ.get("HOROVOD_RANK", "0")) == self.rank
        if epoch == self.epoch and mine and claim(self.marker):
            super().on_epoch_end(epoch, logs)


class KillRankAfterCheckpointOnce(tf.keras.callbacks.Callback):
    """SIGKILL this process after the first batch of epoch ``epoch + 1`` if it is rank ``rank``
    and ``marker`` does not exist (it creates it). Rank 0 wrote ``epoch``'s checkpoint before
    joining that batch's allreduce, so a retry resumes from ``epoch + 1``."""

    def __init__(self, rank: int, epoch: int, marker: str):
        super().__init__()
        self.rank, self.epoch, self.marker = rank, epoch, Path(marker)
        self.current_epoch = -1

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.current_epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        mine = int(os.environ.get("HOROVOD_RANK", "0")) == self.rank
        if self.current_epoch == self.epoch + 1 and batch == 0 and mine:
            if claim(self.marker):
                os.kill(os.getpid(), signal.SIGKILL)


def claim(marker: Path) -> bool:
    """Create ``marker``; False if it exists. Atomic: of runs side by side, one fires."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class KillRunOnce(tf.keras.callbacks.Callback):
    """SIGKILL the whole run at the end of ``epoch`` (0-based) if ``marker`` does not exist.

    Runs on rank 0. On an engine of a cluster (marked by ``HIRESMED_CLUSTER_ID``) it kills the
    cluster's processes, the kernel that owns the cluster (``HIRESMED_CLUSTER_OWNER``), then
    itself; serially, itself. Only for a notebook's own cluster: a study's clusters are owned by
    the study runner.
    """

    def __init__(self, epoch: int, marker: str):
        super().__init__()
        self.epoch, self.marker = epoch, Path(marker)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        rank_0 = int(os.environ.get("HOROVOD_RANK", "0")) == 0
        if epoch != self.epoch or not rank_0 or self.marker.exists():
            return
        self.marker.touch()
        cluster_id = os.environ.get(CLUSTER_ID_VARIABLE, "")
        if cluster_id:
            import psutil

            for process in cluster_processes(cluster_id):
                try:
                    process.kill()
                except psutil.NoSuchProcess:
                    pass
            owner = marked_owner(dict(os.environ))
            if owner is not None and owner.here:
                os.kill(owner.pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


FAULT_VARIABLE = "HIRESMED_INJECT_FAULT"


def injected_callbacks() -> list[tf.keras.callbacks.Callback]:
    """The callbacks ``HIRESMED_INJECT_FAULT`` asks for (see the module docstring), or []."""
    spec = os.environ.get(FAULT_VARIABLE, "")
    if not spec:
        return []
    kind, _, rest = spec.partition(":")
    if kind == "kill-rank":
        rank, epoch, marker = rest.split(":", 2)
        return [KillRankOnce(int(rank), int(epoch), marker)]
    if kind == "kill-rank-after-checkpoint":
        rank, epoch, marker = rest.split(":", 2)
        return [KillRankAfterCheckpointOnce(int(rank), int(epoch), marker)]
    if kind == "hang-rank":
        rank, epoch, *marker = rest.split(":", 2)
        return [HangRankAtEpoch(int(rank), int(epoch), *marker)]
    if kind == "kill-run":
        epoch, marker = rest.split(":", 1)
        return [KillRunOnce(int(epoch), marker)]
    raise ValueError(
        f"{FAULT_VARIABLE}={spec!r}: kill-rank:<rank>:<epoch>:<file>, "
        "kill-rank-after-checkpoint:<rank>:<epoch>:<file>, kill-run:<epoch>:<file> or "
        "hang-rank:<rank>:<epoch>[:<file>]"
    )
