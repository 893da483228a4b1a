"""Per-epoch checkpoints, so an interrupted run continues from its last complete epoch.

Rank 0 writes ``RESULTS_DIR/checkpoints/<run_id>/``: the model and optimizer state of the last
complete epoch (``epoch-NNNN.*``) and ``state.json`` naming it with the learning curves so far.
``state.json`` is written last and atomically, so it always points at a complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hiresmed_nb.params import PLACEMENT_PARAMETERS, resolve_path, run_id
from hiresmed_nb.science.records import write_json_atomic

if TYPE_CHECKING:  # TensorFlow is imported where a checkpoint is written or read: a kernel
    import tensorflow as tf  # that only clears checkpoints never imports it

STATE_FILE = "state.json"


def checkpoint_dir(params: dict[str, Any]) -> Path:
    return resolve_path(params["RESULTS_DIR"]) / "checkpoints" / run_id(params)


def _identity(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a checkpoint must share with a run to be resumed by it: all but where
    the ranks run (a run retried on a restarted cluster resumes) and OVERWRITE."""
    ignored = {"OVERWRITE", *PLACEMENT_PARAMETERS}
    return {key: value for key, value in params.items() if key not in ignored}


def load_state(directory: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The last complete epoch's state (``epoch``, ``prefix``, ``history``) of a run with
    these same parameters, or None (no checkpoint, or one left by different parameters)."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return state if state.get("params") == json.loads(json.dumps(_identity(params))) else None


def _tracked(model: tf.keras.Model, optimizer: Any) -> tf.train.Checkpoint:
    import tensorflow as tf

    return tf.train.Checkpoint(model=model, optimizer=optimizer)


def save(
    directory: Path,
    model: tf.keras.Model,
    optimizer: Any,
    params: dict[str, Any],
    epochs_done: int,
    history: dict[str, list[float]],
) -> None:
    """Write the state after ``epochs_done`` complete epochs, then drop older checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    prefix = directory / f"epoch-{epochs_done:04d}"
    _tracked(model, optimizer).write(str(prefix))
    state = {
        "epoch": epochs_done,
        "prefix": prefix.name,
        "history": history,
        "params": _identity(params),
    }
    write_json_atomic(state, directory / STATE_FILE)
    for old in directory.glob("epoch-*"):
        if not old.name.startswith(prefix.name):
            old.unlink()


def build_optimizer(model: tf.keras.Model, optimizer: Any) -> None:
    """Create the optimizer's slots now (Keras creates them at the first step), so that a
    restore fills them at once and every rank can be sent the restored optimizer state."""
    optimizer.build(model.trainable_variables)


def restore(directory: Path, state: dict[str, Any], model: tf.keras.Model, optimizer: Any) -> None:
    """Load the state named by ``state``: the model's variables (weights, batch-norm statistics,
    gradient-accumulation state) and the optimizer's (its iteration count, which drives any
    learning-rate schedule, and its slots; call :func:`build_optimizer` first).

    Fails when a variable of the model or optimizer is missing from the checkpoint.
    """
    status = _tracked(model, optimizer).read(str(directory / state["prefix"]))
    status.assert_existing_objects_matched()


def clear(directory: Path) -> None:
    """Remove a finished run's checkpoints."""
    shutil.rmtree(directory, ignore_errors=True)
