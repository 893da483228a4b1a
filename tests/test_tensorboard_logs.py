"""TensorBoard logs: curves once per epoch (also across a resume), HParams, results, the study's
experiment; every check reads the event files back with TensorBoard's own reader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from hiresmed_nb.params import validate
from hiresmed_nb.science import tensorboard_logs as tb


def expected_hparams(record: dict) -> dict:
    """The HParams a run's logs must hold, from its record."""
    return {
        "DATASET": record["dataset"],
        "ARCH": record["arch"],
        "IMAGE_SIZE": record["image_size"],
        "IMAGES_PER_CLASS": record["images_per_class"],
        "MODE": record["mode"],
        "N_RANKS": record["n_ranks"],
        "EFFECTIVE_BATCH_SIZE": record["effective_batch_size"],
        "LEARNING_RATE": record["params"]["LEARNING_RATE"],
        "ACCUMULATION_STEPS": record["accumulation_steps"],
        "PRECISION": record["params"]["PRECISION"],
        "SEED": record["seed"],
        "SYNTHETIC": record["synthetic"],
    }


def assert_logs_match_record(results_dir: Path, record: dict) -> Path:
    """The run's logs hold one point per epoch equal to the record's history, its HParams with
    the record's values, and the record's test metrics; returns the run's log folder."""
    run_dir = Path(results_dir) / "tensorboard" / record["run_id"]
    curves = tb.read_scalars(run_dir / "train")
    assert set(curves) == {f"epoch_{key}" for key in record["history"]}
    for key, values in record["history"].items():
        points = sorted(curves[f"epoch_{key}"])
        assert [step for step, _ in points] == list(range(record["epochs"]))  # none repeated
        assert [value for _, value in points] == pytest.approx(values, rel=1e-6)
    assert tb.read_hparams(run_dir) == expected_hparams(record)
    results = tb.read_scalars(run_dir)
    last = record["epochs"] - 1
    for tag, key in tb.RESULT_KEYS.items():
        expected = [] if record[key] is None else [(last, pytest.approx(record[key], rel=1e-6))]
        assert results.get(tag, []) == expected, tag
    logged = tb.read_values(run_dir)
    [image] = [value for value in logged if value.tag == tb.CONFUSION_MATRIX_TAG]
    assert image.plugin == "images" and image.value[2].startswith(b"\x89PNG")
    [text] = [value.value for value in logged if value.tag == tb.DESCRIPTION_TAG]
    assert record["run_id"] in text.item().decode()
    assert ("SYNTHETIC" in text.item().decode()) == record["synthetic"]
    return run_dir


def writer_pids(run_dir: Path) -> set[int]:
    """The processes that wrote the run's event files (its folder and subfolders)."""
    return {tb.event_file_pid(path) for path in run_dir.rglob(f"{tb.EVENT_FILE_PREFIX}*")}


# --- the callback on a tiny model --------------------------------------------------------------


def tiny_params(tmp_path: Path, **extra) -> dict:
    return validate({"RESULTS_DIR": str(tmp_path), "IMAGE_SIZE": 32, "EPOCHS": 4, **extra})


def tiny_fit(logger: tb.RunLogger, epochs: int, initial_epoch: int = 0, extra=()) -> dict:
    """Fit a tiny dense model (same seed, same data) with ``logger``; returns Keras' history."""
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images, labels = rng.normal(size=(16, 3)).astype("float32"), rng.integers(0, 2, 16)
    model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2, "softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    fitted = model.fit(
        images,
        labels,
        batch_size=4,
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=[logger, *extra],
        verbose=0,
    )
    return fitted.history


class ReadAtEpochEnd(tf.keras.callbacks.Callback):
    """Reads the train curves at each epoch end, while training still runs."""

    def __init__(self, train_dir: Path):
        super().__init__()
        self.train_dir, self.seen = train_dir, []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seen.append(sorted(step for step, _ in tb.read_scalars(self.train_dir)["epoch_loss"]))


def test_each_epoch_is_logged_once_and_readable_while_the_run_trains(tmp_path):
    params = tiny_params(tmp_path)
    run_dir = tb.run_log_dir(params)
    reader = ReadAtEpochEnd(run_dir / "train")
    history = tiny_fit(tb.RunLogger(params, {}), epochs=2, extra=[reader])
    assert reader.seen == [[0], [0, 1]]  # flushed at every epoch end, not only at the end
    curves = tb.read_scalars(run_dir / "train")
    assert [step for step, _ in curves["epoch_loss"]] == [0, 1]
    assert [value for _, value in curves["epoch_loss"]] == pytest.approx(history["loss"])
    assert [value for _, value in curves["epoch_accuracy"]] == pytest.approx(history["accuracy"])
    assert tb.read_hparams(run_dir) == tb.run_hparams(params)
    assert writer_pids(run_dir) == {os.getpid()}


def test_a_resumed_run_writes_the_unflushed_epochs_once_and_continues(tmp_path):
    params = tiny_params(tmp_path)
    run_dir = tb.run_log_dir(params)
    tiny_fit(tb.RunLogger(params, {}), epochs=1)  # epoch 0 logged
    # Killed after checkpointing epoch 1 but before its scalars were flushed: the checkpoint's
    # history holds epochs 0 and 1; the resumed run trains epochs 2 and 3.
    checkpointed = {"loss": [9.0, 8.0], "accuracy": [0.25, 0.5]}
    resumed = tiny_fit(tb.RunLogger(params, checkpointed), epochs=4, initial_epoch=2)
    curves = tb.read_scalars(run_dir / "train")
    steps = sorted(step for step, _ in curves["epoch_loss"])
    assert steps == [0, 1, 2, 3]
    by_step = dict(curves["epoch_loss"])
    assert by_step[0] != 9.0  # the epoch already logged is kept, not written again
    assert by_step[1] == 8.0 and by_step[3] == pytest.approx(resumed["loss"][1])
    hparams = [value for value in tb.read_values(run_dir) if value.plugin == "hparams"]
    assert len(hparams) == 1


def test_epochs_logged_past_the_resumed_one_are_replaced_by_the_checkpoints_history(tmp_path):
    params = tiny_params(tmp_path)
    run_dir = tb.run_log_dir(params)
    tiny_fit(tb.RunLogger(params, {}), epochs=3)
    tiny_fit(tb.RunLogger(params, {"loss": [7.0], "accuracy": [0.5]}), epochs=2, initial_epoch=1)
    steps = sorted(step for step, _ in tb.read_scalars(run_dir / "train")["epoch_loss"])
    assert steps == [0, 1]
    assert dict(tb.read_scalars(run_dir / "train")["epoch_loss"])[0] == 7.0


def test_a_run_from_epoch_zero_replaces_its_logs(tmp_path):
    params = tiny_params(tmp_path)
    run_dir = tb.run_log_dir(params)
    tiny_fit(tb.RunLogger(params, {}), epochs=3)
    old_files = set(run_dir.rglob(f"{tb.EVENT_FILE_PREFIX}*"))
    tiny_fit(tb.RunLogger(params, {}), epochs=1)
    assert not old_files & set(run_dir.rglob(f"{tb.EVENT_FILE_PREFIX}*"))
    assert [step for step, _ in tb.read_scalars(run_dir / "train")["epoch_loss"]] == [0]


def test_results_are_the_test_metrics_and_the_confusion_matrix_image(tmp_path):
    params = tiny_params(tmp_path, DATASET="sd198")
    run_dir = tb.run_log_dir(params)
    result = {
        "accuracy": 0.5,
        "balanced_accuracy": 0.375,
        "macro_f1": 0.25,
        "macro_auroc": None,  # undefined: left out
        "images_per_second": 12.5,
        "confusion_matrix": [[2, 0], [2, 0]],
        "class_names": ["a", "b"],
    }
    tb.write_results(run_dir, params, result)
    scalars = tb.read_scalars(run_dir)
    assert scalars == {
        "test/accuracy": [(3, 0.5)],
        "test/balanced_accuracy": [(3, 0.375)],
        "test/macro_f1": [(3, 0.25)],
        "images_per_second": [(3, 12.5)],
    }
    [image] = [value for value in tb.read_values(run_dir) if value.plugin == "images"]
    width, height, png = image.value
    decoded = tf.image.decode_png(png).numpy()
    assert decoded.shape[:2] == (int(height), int(width)) and decoded.std() > 0
    assert "SYNTHETIC" not in tb.description(params)  # a real dataset carries no label


def test_the_experiment_lists_every_axis_with_the_grids_values_and_every_metric(tmp_path):
    runs = [
        validate({"IMAGE_SIZE": size, "MODE": mode, "SEED": seed, "RESULTS_DIR": "unused"})
        for size in (32, 64)
        for mode in ("serial", "distributed")
        for seed in (0, 1)
    ]
    tb.write_experiment(tmp_path, runs[:1])
    root = tb.write_experiment(tmp_path, runs)  # a later invocation replaces the experiment
    assert len(tb.event_files(root)) == 1
    domains, metrics = tb.read_experiment(root)
    assert list(domains) == [name for name, _ in tb.HPARAMS]
    assert domains["IMAGE_SIZE"] == [32, 64] and domains["SEED"] == [0, 1]
    assert domains["MODE"] == ["distributed", "serial"] and domains["N_RANKS"] == [1, 2]
    assert domains["EFFECTIVE_BATCH_SIZE"] == [8, 16] and domains["SYNTHETIC"] == [True]
    assert metrics == [tag for tag, _, _, _ in tb.METRICS]


def metric_infos(root: Path) -> list:
    from tensorboard.plugins.hparams import metadata

    [experiment] = [v for v in tb.read_values(root) if v.tag == metadata.EXPERIMENT_TAG]
    return list(metadata.parse_experiment_plugin_data(experiment.content).metric_infos)


@pytest.mark.parametrize(
    ("datasets", "name_suffix", "says"),
    [
        (["synthetic-skin"], " (SYNTHETIC)", "SYNTHETIC data from the embedded generator"),
        (["synthetic-skin", "sd198"], "", "Runs with SYNTHETIC true: SYNTHETIC data"),
        (["sd198"], "", None),
    ],
)
def test_the_experiment_says_which_numbers_are_synthetic(tmp_path, datasets, name_suffix, says):
    runs = [validate({"DATASET": name, "RESULTS_DIR": "unused"}) for name in datasets]
    for info in metric_infos(tb.write_experiment(tmp_path, runs)):
        assert info.display_name.endswith(" (SYNTHETIC)") == bool(name_suffix)
        assert ("SYNTHETIC" in info.description) == (says is not None)
        assert says is None or says in info.description


def test_event_file_pid_reads_host_names_with_dots():
    name = "events.out.tfevents.1764490000.node-1.example.org.4242.7.v2"
    assert tb.event_file_pid(Path(name)) == 4242
    assert tb.event_file_pid(Path("events.out.tfevents.1764490000.host.99.1")) == 99
