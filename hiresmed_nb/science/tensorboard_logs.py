"""TensorBoard logs: every run's curves and results, and a study's grid for the HParams dashboard.

Rank 0 alone writes (Horovod's rule; a serial run is rank 0 of 1), under ``RESULTS_DIR``::

    tensorboard/                  the study's experiment: every axis with its grid values, every
                                  metric (written once per study invocation by the runner)
    tensorboard/<run_id>/         the run's HParams (its axes), a description, and at the end the
                                  test metrics, images per second and the confusion matrix image
    tensorboard/<run_id>/train/   epoch_loss and epoch_accuracy, one point per epoch (step: the
                                  0-based epoch), written by Keras' TensorBoard callback

``tensorboard --logdir outputs/<STUDY>`` shows a whole study. Curves of epoch k are written after
checkpoint k (:class:`RunLogger` runs after the checkpoint callback), so a resumed run, which
starts after its last checkpoint, never writes an epoch twice; the epochs a killed run checkpointed
but had not yet logged are written from the checkpoint's history when it resumes. A run that
starts from epoch 0 (a first run, ``OVERWRITE``, ``--force``) replaces its folder.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from hiresmed_nb.params import SYNTHETIC_DATASETS, resolve_path, run_id
from hiresmed_nb.science.synthetic import SYNTHETIC_NOTE

LOGS_FOLDER = "tensorboard"
EVENT_FILE_PREFIX = "events.out.tfevents."
SYNTHETIC_LABEL = f"{SYNTHETIC_NOTE}; every number here is synthetic, not a medical result"

# The HParams of a run: its grid axes, plus two values derived from them. (name, description)
HPARAMS: tuple[tuple[str, str], ...] = (
    ("DATASET", "dataset (synthetic-*: SYNTHETIC data)"),
    ("ARCH", "architecture"),
    ("IMAGE_SIZE", "square input side, pixels"),
    ("IMAGES_PER_CLASS", "training images per class"),
    ("MODE", "serial or distributed (Horovod ranks)"),
    ("N_RANKS", "Horovod ranks (1: serial)"),
    ("EFFECTIVE_BATCH_SIZE", "images per optimizer step: BATCH_SIZE x N_RANKS x accumulation"),
    ("LEARNING_RATE", "LEARNING_RATE as given (before any LR_SCALING)"),
    ("ACCUMULATION_STEPS", "batches whose gradients are averaged per optimizer step"),
    ("PRECISION", "float32, mixed_float16 or mixed_bfloat16"),
    ("SEED", "seed of the split, the shuffling and the initialisation"),
    ("SYNTHETIC", "true: the embedded SYNTHETIC dataset, not a medical result"),
)

# What a run reports: (tag, run subfolder or None for the run's own folder, name, description).
METRICS: tuple[tuple[str, str | None, str, str], ...] = (
    ("epoch_loss", "train", "training loss", "last epoch's mean loss (averaged over ranks)"),
    ("epoch_accuracy", "train", "training accuracy", "last epoch's accuracy (over ranks)"),
    ("test/accuracy", None, "test accuracy", "accuracy on the whole test set"),
    ("test/balanced_accuracy", None, "test balanced accuracy", "mean per-class recall"),
    ("test/macro_f1", None, "test macro-F1", "F1 averaged over classes"),
    ("test/macro_auroc", None, "test macro AUROC", "one-vs-rest AUROC averaged over classes"),
    ("images_per_second", None, "images/s", "training images per second, all ranks together"),
)
# The record's key for each end-of-run metric.
RESULT_KEYS = {
    "test/accuracy": "accuracy",
    "test/balanced_accuracy": "balanced_accuracy",
    "test/macro_f1": "macro_f1",
    "test/macro_auroc": "macro_auroc",
    "images_per_second": "images_per_second",
}
CONFUSION_MATRIX_TAG = "test/confusion_matrix"
DESCRIPTION_TAG = "description"


def logs_root(results_dir: str | Path) -> Path:
    """The folder holding a results folder's TensorBoard logs (a study's experiment, its runs)."""
    return resolve_path(results_dir) / LOGS_FOLDER


def run_log_dir(params: dict[str, Any]) -> Path:
    """``RESULTS_DIR/tensorboard/<run_id>``: one run's logs."""
    return logs_root(params["RESULTS_DIR"]) / run_id(params)


def is_synthetic(params: dict[str, Any]) -> bool:
    return params["DATASET"] in SYNTHETIC_DATASETS


def run_hparams(params: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The run's values of :data:`HPARAMS`, from validated parameters."""
    return {
        "DATASET": params["DATASET"],
        "ARCH": params["ARCH"],
        "IMAGE_SIZE": params["IMAGE_SIZE"],
        "IMAGES_PER_CLASS": params["IMAGES_PER_CLASS"],
        "MODE": params["MODE"],
        "N_RANKS": params["N_RANKS"],
        "EFFECTIVE_BATCH_SIZE": params["BATCH_SIZE"]
        * params["N_RANKS"]
        * params["ACCUMULATION_STEPS"],
        "LEARNING_RATE": float(params["LEARNING_RATE"]),
        "ACCUMULATION_STEPS": params["ACCUMULATION_STEPS"],
        "PRECISION": params["PRECISION"],
        "SEED": params["SEED"],
        "SYNTHETIC": is_synthetic(params),
    }


def description(params: dict[str, Any]) -> str:
    """The run's description (Markdown), with the SYNTHETIC label when it applies."""
    ranks = params["N_RANKS"]
    text = (
        f"**{run_id(params)}**: {params['ARCH']} on {params['DATASET']} at "
        f"{params['IMAGE_SIZE']} px, {params['IMAGES_PER_CLASS']} training images per class, "
        f"{params['MODE']} on {ranks} rank{'s' if ranks > 1 else ''}, seed {params['SEED']}."
    )
    if is_synthetic(params):
        text += f"\n\n**{SYNTHETIC_LABEL}.**"
    return text


def _metric_description(text: str, synthetic: bool) -> str:
    return f"{text}. {SYNTHETIC_LABEL}." if synthetic else f"{text}."


def write_experiment(results_dir: str | Path, runs: Iterable[dict[str, Any]]) -> Path:
    """Write a study's HParams experiment into ``RESULTS_DIR/tensorboard/``, replacing an earlier
    one: every :data:`HPARAMS` name with the values its validated ``runs`` take, every metric.

    The dashboard then lists every axis and metric before the runs finish. Returns the folder.
    """
    from tensorboard.plugins.hparams import api as hp

    values = [run_hparams(params) for params in runs]
    root = logs_root(results_dir)
    if not values:
        return root
    domains = {name: sorted({run[name] for run in values}) for name, _ in HPARAMS}
    all_synthetic = all(run["SYNTHETIC"] for run in values)
    label = " (SYNTHETIC)" if all_synthetic else ""

    def explained(text: str) -> str:
        if all_synthetic or domains["SYNTHETIC"] == [False]:
            return _metric_description(text, all_synthetic)
        return f"{text}. Runs with SYNTHETIC true: {SYNTHETIC_LABEL}."

    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f"{EVENT_FILE_PREFIX}*"):
        old.unlink()  # the runs' own folders stay
    writer = tf.summary.create_file_writer(str(root))
    with writer.as_default():
        hp.hparams_config(
            hparams=[
                hp.HParam(name, hp.Discrete(domains[name]), description=text)
                for name, text in HPARAMS
            ],
            metrics=[
                hp.Metric(
                    tag,
                    group=group,
                    display_name=name + label,
                    description=explained(text),
                )
                for tag, group, name, text in METRICS
            ],
        )
    writer.close()
    return root


class RunLogger(tf.keras.callbacks.TensorBoard):
    """Rank 0's TensorBoard logs of a run: Keras' callback for the curves, plus the run's HParams,
    description and end-of-run results.

    Give it after the checkpoint callback (and after Horovod's ``MetricAverageCallback``, so the
    curves are averaged over ranks). ``history``: the learning curves of the epochs already done
    (a resumed run's checkpoint; empty for a run from epoch 0). Each epoch's points are in the
    event file when the epoch ends (TensorFlow 2.15's writer does not hold them back; tested),
    so TensorBoard shows the curves while the run trains.
    """

    def __init__(self, params: dict[str, Any], history: dict[str, list[float]]):
        self.log_dir_path = run_log_dir(params)
        super().__init__(
            log_dir=str(self.log_dir_path),
            histogram_freq=0,
            write_graph=False,
            update_freq="epoch",
            profile_batch=0,
        )
        self.run_params = params
        self.history_so_far = {key: list(values) for key, values in history.items()}

    def on_train_begin(self, logs: dict | None = None) -> None:
        prepare_run_logs(self.log_dir_path, self.run_params, self.history_so_far)
        super().on_train_begin(logs)

    def write_results(self, result: dict[str, Any]) -> None:
        """Write rank 0's end-of-run ``result`` (the keys the record copies): test metrics,
        images per second and the confusion matrix, at the last epoch's step."""
        write_results(self.log_dir_path, self.run_params, result)


def prepare_run_logs(
    log_dir: Path, params: dict[str, Any], history: dict[str, list[float]]
) -> None:
    """Make ``log_dir`` hold the run's HParams, description and the curves of ``history``'s
    epochs, each once, before training continues from there.

    A run from epoch 0 replaces the folder. A resumed run keeps it and writes what is missing:
    the epochs it checkpointed but had not logged when it was stopped. Should the folder hold an
    epoch at or past the resumed one (which the callback order rules out), it is rebuilt from
    ``history``, so no epoch ever shows twice.
    """
    done = len(next(iter(history.values()), []))
    logged = read_scalars(log_dir / "train") if log_dir.exists() else {}
    stale = any(step >= done for points in logged.values() for step, _ in points)
    if done == 0 or stale:
        shutil.rmtree(log_dir, ignore_errors=True)
        logged = {}
    log_dir.mkdir(parents=True, exist_ok=True)
    if not read_hparams(log_dir):
        from tensorboard.plugins.hparams import api as hp

        writer = tf.summary.create_file_writer(str(log_dir))
        with writer.as_default():
            hp.hparams(run_hparams(params), trial_id=run_id(params))
            tf.summary.text(DESCRIPTION_TAG, description(params), step=0)
        writer.close()
    missing = [
        (f"epoch_{key}", epoch, value)
        for key, values in history.items()
        for epoch, value in enumerate(values)
        if epoch not in {step for step, _ in logged.get(f"epoch_{key}", [])}
    ]
    if missing:
        writer = tf.summary.create_file_writer(str(log_dir / "train"))
        with writer.as_default():
            for tag, epoch, value in missing:
                tf.summary.scalar(tag, value, step=epoch)
        writer.close()


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str
) -> bytes:
    """A heat map of ``matrix`` (rows: true class, columns: predicted) as PNG bytes, as the
    run's notebook draws it (:func:`~hiresmed_nb.science.plots.draw_confusion_matrix`).

    Drawn on a figure outside pyplot, so nothing is shown in a notebook or kept open.
    """
    from matplotlib.figure import Figure

    from hiresmed_nb.science.plots import draw_confusion_matrix

    size = 2.5 + 0.6 * len(class_names)
    figure = Figure(figsize=(size + 1, size), dpi=80)
    axes = figure.subplots()
    draw_confusion_matrix(axes, matrix, class_names)
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_results(log_dir: Path, params: dict[str, Any], result: dict[str, Any]) -> None:
    """The end-of-run scalars (:data:`RESULT_KEYS`; an undefined macro AUROC is left out) and
    the confusion matrix image, at step ``EPOCHS - 1``, into the run's folder."""
    synthetic = is_synthetic(params)
    step = params["EPOCHS"] - 1
    descriptions = {tag: text for tag, _, _, text in METRICS}
    title = f"{run_id(params)}\ntest accuracy {result['accuracy']:.1%}"
    if synthetic:
        title += " (SYNTHETIC data)"
    png = confusion_matrix_png(result["confusion_matrix"], result["class_names"], title)
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for tag, key in RESULT_KEYS.items():
            if result.get(key) is not None:
                tf.summary.scalar(
                    tag,
                    result[key],
                    step=step,
                    description=_metric_description(descriptions[tag], synthetic),
                )
        tf.summary.image(
            CONFUSION_MATRIX_TAG,
            tf.image.decode_png(png, channels=4)[tf.newaxis],
            step=step,
            description=_metric_description(
                "confusion matrix on the test set (rows: true class)", synthetic
            ),
        )
    writer.close()


# --- reading logs back, with TensorBoard's own event reader ----------------------------------


@dataclass(frozen=True)
class LoggedValue:
    """One summary value of an event file: its tag, step, plugin, value and the file's name."""

    tag: str
    step: int
    plugin: str
    value: Any
    content: bytes
    event_file: str


def event_files(log_dir: Path) -> list[Path]:
    """The event files directly in ``log_dir`` (not its subfolders), by name."""
    return sorted(log_dir.glob(f"{EVENT_FILE_PREFIX}*"))


def event_file_pid(path: Path) -> int:
    """The pid of the process that wrote an event file, from its name
    (``events.out.tfevents.<time>.<host>.<pid>.<n>[.v2]``; host names may hold dots)."""
    stem = path.name.removesuffix(".v2")
    return int(stem.rsplit(".", 2)[1])


def read_values(log_dir: Path) -> list[LoggedValue]:
    """Every summary value in the event files directly in ``log_dir``, in file then write order,
    read with TensorBoard's ``EventFileLoader`` (duplicates, if any, are all kept)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    found = []
    for path in event_files(log_dir):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                found.append(
                    LoggedValue(
                        value.tag,
                        int(event.step),
                        value.metadata.plugin_data.plugin_name,
                        tensor_util.make_ndarray(value.tensor),
                        value.metadata.plugin_data.content,
                        path.name,
                    )
                )
    return found


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Tag -> ``(step, value)`` of every scalar in ``log_dir``'s event files, as written."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for logged in read_values(log_dir):
        if logged.plugin == "scalars":
            scalars.setdefault(logged.tag, []).append((logged.step, float(logged.value)))
    return scalars


def _values_of(hparams: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return {name: json_format.MessageToDict(value) for name, value in hparams.items()}


def read_hparams(log_dir: Path) -> dict[str, Any]:
    """The run's HParams written in ``log_dir`` (name -> value; numbers as floats), or {}."""
    from tensorboard.plugins.hparams import metadata

    for logged in read_values(log_dir):
        if logged.tag == metadata.SESSION_START_INFO_TAG:
            info = metadata.parse_session_start_info_plugin_data(logged.content)
            return _values_of(info.hparams)
    return {}


def read_experiment(log_dir: Path) -> tuple[dict[str, list[Any]], list[str]]:
    """A study's experiment in ``log_dir``: HParam name -> its listed values, and metric tags."""
    from google.protobuf import json_format
    from tensorboard.plugins.hparams import metadata

    for logged in read_values(log_dir):
        if logged.tag == metadata.EXPERIMENT_TAG:
            experiment = metadata.parse_experiment_plugin_data(logged.content)
            domains = {
                info.name: json_format.MessageToDict(info.domain_discrete)
                for info in experiment.hparam_infos
            }
            return domains, [info.name.tag for info in experiment.metric_infos]
    return {}, []
