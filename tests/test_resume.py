"""Exact resume: a run killed and resumed ends with the weights of one never interrupted."""

import json
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
from serial_twin import SERIAL_TWIN

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import project_root, validate
from hiresmed_nb.science import checkpoints, epochs
from hiresmed_nb.study.executor import KERNEL_START_SECONDS

NOTEBOOK = project_root() / "notebooks" / "01_train.ipynb"
# The session's serial twin: 20 training images, batch 8, so an epoch (3 steps, 24 images)
# crosses into the next pass; its uninterrupted run is trained once per test run.
TINY = SERIAL_TWIN
SAME_RESULT = (
    "weights_digest",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "per_class_auroc",
    "confusion_matrix",
    "history",
)


def same_result(record: dict, reference: dict) -> dict:
    """The keys of SAME_RESULT where ``record`` differs from ``reference`` (empty: identical).
    Records hold the weights digest per rank, run results at the top."""
    head = (
        {**record, "weights_digest": record["ranks"][0]["weights_digest"]}
        if "ranks" in record
        else record
    )
    return {key: (head[key], reference[key]) for key in SAME_RESULT if head[key] != reference[key]}


# The epoch order --------------------------------------------------------------------------


def labels_of(dataset) -> list[list[int]]:
    return [labels.numpy().tolist() for _, labels in dataset]


def toy_batches(rank: int = 0, seed: int = 0) -> epochs.EpochBatches:
    import tensorflow as tf

    images = tf.data.Dataset.from_tensor_slices((np.zeros((10, 1), np.float32), np.arange(10)))
    return epochs.EpochBatches(images.cache(), lambda x: x, 4, 3, seed, rank)


def test_each_epochs_batches_depend_only_on_the_seed_rank_and_epoch():
    batches = toy_batches()
    stream = labels_of(batches.epochs(0, 5))  # 5 epochs x 3 batches of 4 = 6 passes of 10
    assert len(stream) == 15 and all(len(batch) == 4 for batch in stream)
    flat = sum(stream, [])
    for start in range(0, 60, 10):  # every pass is a permutation of the rank's images
        assert sorted(flat[start : start + 10]) == list(range(10))
    assert len({tuple(flat[start : start + 10]) for start in range(0, 60, 10)}) == 6
    for first in (1, 3):  # started later: exactly the uninterrupted epochs from there on
        assert labels_of(batches.epochs(first, 5)) == stream[3 * first :]
    assert labels_of(batches.epochs(0, 5)) == stream  # no state left by earlier pipelines
    assert labels_of(toy_batches().epochs(2, 3)) == stream[6:9]  # nor in a new object
    assert labels_of(toy_batches(rank=1).epochs(0, 5)) != stream
    assert labels_of(toy_batches(seed=1).epochs(0, 5)) != stream
    assert labels_of(batches.epochs(5, 5)) == []


def test_a_model_with_random_layers_is_refused():
    import tensorflow as tf

    inputs = tf.keras.Input((4,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dropout(0.5, name="drop")(inputs))
    with pytest.raises(HiresmedError, match=r"random layers \(drop \(Dropout\)\)"):
        epochs.check_nothing_random_per_step(model)


# Serial: the kernel killed twice -----------------------------------------------------------


def execute(params: dict, out) -> None:
    pm.execute_notebook(
        str(NOTEBOOK),
        str(out),
        parameters={key: params[key] for key in (*TINY, "RESULTS_DIR")},
        kernel_name="hiresmed",
        cwd=str(project_root()),
        progress_bar=False,
        start_timeout=KERNEL_START_SECONDS,  # as the runner: 60 s failed once on loaded cores
    )


def epochs_checkpointed(params: dict) -> int:
    return checkpoints.load_state(checkpoints.checkpoint_dir(params), params)["epoch"]


def record_of(params) -> dict:
    return json.loads((Path(params["RESULTS_DIR"]) / f"{params.run_id}.json").read_text())


@pytest.mark.notebook
def test_a_serial_run_killed_after_epoch_1_then_after_epoch_3_ends_as_if_uninterrupted(
    tmp_path, serial_twin, monkeypatch
):
    """Every part runs in a notebook's kernel, a fresh process each time, as on a preempted
    node (on CPU the weights also depend on TensorFlow's thread count, which a long-lived test
    process may have fixed otherwise)."""
    params = validate({**TINY, "RESULTS_DIR": str(tmp_path / "runs")})
    # A preempted node: the kernel is SIGKILLed at the end of epoch 2, before its checkpoint
    # (tests/faults.py); then again at the end of epoch 4 of the rerun.
    for killed_at, checkpointed in ((1, 1), (3, 3)):
        monkeypatch.setenv(
            "HIRESMED_INJECT_FAULT", f"kill-run:{killed_at}:{tmp_path / str(killed_at)}"
        )
        with pytest.raises(Exception, match="(?i)kernel died"):
            execute(params, tmp_path / f"killed{killed_at}.ipynb")
        assert epochs_checkpointed(params) == checkpointed
    monkeypatch.delenv("HIRESMED_INJECT_FAULT")
    execute(params, tmp_path / "resumed.ipynb")
    _, reference, _ = serial_twin  # the same run, uninterrupted, in a notebook's kernel
    resumed = record_of(params)
    assert resumed["run_id"] == reference["run_id"]
    assert resumed["resumed_from_epoch"] == 3 and reference["resumed_from_epoch"] == 0
    assert len(resumed["history"]["loss"]) == TINY["EPOCHS"]
    reference = {**reference, "weights_digest": reference["ranks"][0]["weights_digest"]}
    assert same_result(resumed, reference) == {}


# Distributed runs: tests/test_warm.py (a study's retry after a lost rank, a notebook whose kernel
# and engines are killed, a resume on warm engines).
