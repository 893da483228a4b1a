"""The Keras callback that checkpoints every epoch on rank 0 (see :mod:`.checkpoints`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf

from hiresmed_nb.science.checkpoints import save


class EpochCheckpoint(tf.keras.callbacks.Callback):
    """Checkpoint after every epoch (on rank 0 only), continuing ``history`` from a resume."""

    def __init__(
        self,
        directory: Path,
        optimizer: Any,
        params: dict[str, Any],
        history: dict[str, list[float]],
    ):
        super().__init__()
        self.directory = directory
        self.optimizer = optimizer
        self.run_params = params
        self.history = {key: list(values) for key, values in history.items()}

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        save(self.directory, self.model, self.optimizer, self.run_params, epoch + 1, self.history)
