"""Result records: one small JSON dict per run, written atomically, glued into the notebook."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import RUNNER_PARAMETERS, SYNTHETIC_DATASETS, project_root, run_id

GLUE_MIMETYPE = "application/vnd.hiresmed.record+json"
MIN_FREE_BYTES = 100_000_000
VERSIONED_PACKAGES = (
    "tensorflow-cpu",
    "tensorflow",
    "horovod",
    "ipyparallel",
    "papermill",
    "hiresmed-nb",
)


# What the record keeps of each rank's result: who and where it ran (``host``: its Horovod host
# identity, or the machine's name for a serial run and for ranks all on one machine;
# ``hostname``: the machine's name), the files it trained on, its final weights.
RANK_KEYS = (
    "rank",
    "local_rank",
    "local_size",
    "host",
    "hostname",
    "pid",
    "train_files",
    "weights_digest",
    "slot",  # the engine and slot it ran on; None when it trained in the notebook's kernel
)


def now_iso() -> str:
    """Now in UTC, to the millisecond (runs packed side by side are compared by these times)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages a result depends on (None: absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    tensorflow = found.pop("tensorflow-cpu") or found["tensorflow"]
    found["tensorflow"] = tensorflow
    found["hiresmed_nb"] = found.pop("hiresmed-nb")
    return found


def git_state(root: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the project's checkout, or (None, None) outside git."""
    root = root or project_root()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def weights_label(weights: str | None) -> str:
    return "random" if weights is None else weights


def data_locality(ranks: list[dict[str, Any]], n_train: int) -> dict[str, Any]:
    """The data-locality check of a run, from each rank's shard and the files it opened.

    ``ok`` holds when every rank's training pipeline opened only files of its own shard, the
    shards are disjoint, and together they are the whole training set.
    """
    shards = [set(rank["train_files"]) for rank in ranks]
    opened = [set(rank["opened_files"]) for rank in ranks]
    union = set().union(*shards)
    check = {
        "each_rank_opened_only_its_shard": all(o <= s for o, s in zip(opened, shards, strict=True)),
        "shards_disjoint": sum(len(s) for s in shards) == len(union),
        "shards_cover_training_set": len(union) == n_train,
        "images_opened_per_rank": [len(o) for o in opened],
    }
    check["ok"] = all(value is True for value in check.values() if isinstance(value, bool))
    return check


def _rank_entry(rank: Mapping[str, Any]) -> dict[str, Any]:
    """What the record keeps of a rank's result (``slot`` only from ranks run on engines)."""
    return {key: rank.get(key) if key == "slot" else rank[key] for key in RANK_KEYS}


def build_record(params: Mapping[str, Any], ranks: list[dict[str, Any]], started_at: str) -> dict:
    """Assemble the run's record from checked parameters and the ranks' results. The record
    keeps the placement the run asked for (``HOSTS``, ``IPP_CLUSTER_FILE``), not the study
    runner's warm cluster and engines it ran on (``POOL_CLUSTER_FILE``, ``POOL_ENGINES``)."""
    head = ranks[0]
    commit, dirty = git_state()
    return {
        "run_id": run_id(params),
        "status": "ok",
        "synthetic": params["DATASET"] in SYNTHETIC_DATASETS,
        "params": {name: value for name, value in params.items() if name not in RUNNER_PARAMETERS},
        "dataset": params["DATASET"],
        "arch": params["ARCH"],
        "image_size": params["IMAGE_SIZE"],
        "images_per_class": params["IMAGES_PER_CLASS"],
        "mode": params["MODE"],
        "n_ranks": head["n_ranks"],
        "seed": params["SEED"],
        "weights": weights_label(params["WEIGHTS"]),
        "batch_size_per_rank": params["BATCH_SIZE"],
        "effective_batch_size": head["effective_batch_size"],
        "learning_rate": head["learning_rate"],
        "epochs": params["EPOCHS"],
        **{
            key: head[key]
            for key in (
                "accuracy",
                "balanced_accuracy",
                "macro_f1",
                "per_class_auroc",
                "macro_auroc",
                "confusion_matrix",
                "class_names",
                "n_train",
                "n_test",
                "history",
                "resumed_from_epoch",
                "skipped",
                "checked",
                "accumulation_steps",
                "train_seconds",
                "images_per_second",
            )
        },
        "ranks": [_rank_entry(rank) for rank in ranks],
        "data_locality": data_locality(ranks, head["n_train"]),
        "versions": versions(),
        "host": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "git_commit": commit,
        "git_dirty": dirty,
        "started_at": started_at,
        "finished_at": now_iso(),
    }


def record_path(results_dir: Path, params: dict[str, Any]) -> Path:
    return results_dir / f"{run_id(params)}.json"


def check_results_dir(results_dir: Path, params: dict[str, Any], overwrite: bool) -> Path:
    """Fail before training if the record cannot be written or would overwrite a finished run."""
    path = record_path(results_dir, params)
    if path.exists() and not overwrite:
        raise HiresmedError(f"{path} already holds a finished run; set OVERWRITE=True to redo it")
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".probe-"):
            pass
    except OSError as error:
        raise HiresmedError(f"RESULTS_DIR {results_dir} is not writable: {error}") from None
    free = shutil.disk_usage(results_dir).free
    if free < MIN_FREE_BYTES:
        raise HiresmedError(
            f"RESULTS_DIR {results_dir} has only {free / 1e6:.0f} MB free; a run needs at least "
            f"{MIN_FREE_BYTES / 1e6:.0f} MB for its checkpoints and record"
        )
    return path


def write_json_atomic(payload: dict[str, Any], path: Path) -> Path:
    """Write JSON to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(payload, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def glue(record: dict[str, Any]) -> None:
    """Show the record in the notebook under a dedicated mimetype that :func:`read_glued` finds."""
    from IPython.display import display

    display({GLUE_MIMETYPE: record, "text/plain": f"record {record['run_id']}"}, raw=True)


def read_glued(notebook_path: str | Path) -> dict[str, Any]:
    """Read the record glued into an executed notebook."""
    import nbformat

    notebook = nbformat.read(str(notebook_path), as_version=4)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if GLUE_MIMETYPE in output.get("data", {}):
                return dict(output["data"][GLUE_MIMETYPE])
    raise HiresmedError(f"{notebook_path} holds no glued record")
