"""Fault injection for reliability tests: Keras callbacks that break a run on purpose."""

from __future__ import annotations

import os
import signal

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
