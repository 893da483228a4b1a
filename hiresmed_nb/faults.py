"""Fault injection for reliability tests: Keras callbacks that break a run on purpose.

Tests that cannot hand callbacks to the ranks (a study's notebooks run in their own kernels)
set ``HIRESMED_INJECT_FAULT=kill-rank:<rank>:<epoch>:<marker file>`` in the environment the
engines inherit: that rank kills itself at the end of that epoch, once (the marker file records
that it happened, so a retried run goes through). Nothing is injected when it is unset.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import tensorflow as tf


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


class KillRankOnce(KillRankAtEpoch):
    """:class:`KillRankAtEpoch` that fires only if ``marker`` does not exist, and creates it."""

    def __init__(self, rank: int, epoch: int, marker: str):
        super().__init__(rank, epoch)
        self.marker = Path(marker)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        mine = int(os.environ.get("HOROVOD_RANK", "0")) == self.rank
        if epoch == self.epoch and mine and not self.marker.exists():
            self.marker.touch()
            super().on_epoch_end(epoch, logs)


FAULT_VARIABLE = "HIRESMED_INJECT_FAULT"


def injected_callbacks() -> list[tf.keras.callbacks.Callback]:
    """The callbacks ``HIRESMED_INJECT_FAULT`` asks for (see the module docstring), or []."""
    spec = os.environ.get(FAULT_VARIABLE, "")
    if not spec:
        return []
    kind, rank, epoch, marker = spec.split(":", 3)
    if kind != "kill-rank":
        raise ValueError(f"{FAULT_VARIABLE}={spec!r}: only kill-rank:<rank>:<epoch>:<file>")
    return [KillRankOnce(int(rank), int(epoch), marker)]
