"""One training function, run in the notebook's kernel (serial) or on every Horovod rank.

:func:`train` is what each rank executes: it reads only its own shard of the training files,
trains with gradients averaged across ranks, and returns plain values. Rank 0 also evaluates on
the whole test set and returns the learning curves. Only model parameters (and, once at the end,
batch-norm statistics) cross ranks; images never leave the rank that read them.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import SYNTHETIC_DATASETS, RunConfig, resolve_path
from hiresmed_nb.placement import THREADS_VARIABLE
from hiresmed_nb.science import data, epochs, models


def data_dir_for(params: dict[str, Any]) -> Path:
    """The dataset folder: ``DATA_DIR`` if set, else the embedded dataset's cache."""
    if params["DATA_DIR"]:
        return resolve_path(params["DATA_DIR"])
    if params["DATASET"] in SYNTHETIC_DATASETS:
        from hiresmed_nb.science.synthetic import default_data_dir

        return default_data_dir(params["DATASET"])
    raise HiresmedError(f"DATA_DIR must name the {params['DATASET']} folder as downloaded")


def _site_totals(split: data.Split) -> tuple[int, int]:
    """Training and test images over all sites; every site must hold the same classes."""
    import horovod.tensorflow as hvd_tf

    sites = hvd_tf.allgather_object(
        (split.class_names, len(split.train_files), len(split.test_files)), name="site_sizes"
    )
    if any(names != sites[0][0] for names, _, _ in sites):
        raise HiresmedError(
            "SITE_DIRS hold different classes: " + "; ".join(str(names) for names, _, _ in sites)
        )
    return sum(n for _, n, _ in sites), sum(n for _, _, n in sites)


def make_split(params: dict[str, Any], site: int | None = None) -> data.Split:
    """The run's train/test split, from its parameters; ``site``: that rank's ``SITE_DIRS``."""
    data_dir = data_dir_for(params) if site is None else resolve_path(params["SITE_DIRS"][site])
    return data.make_split(
        params["DATASET"],
        data_dir,
        params["IMAGES_PER_CLASS"],
        params["SEED"],
        params["CLASSES"],
        params["TEST_IMAGES_PER_CLASS"],
    )


def select_gpu(gpus: Sequence[Any], local_rank: int) -> Any | None:
    """The GPU this rank should use; None on a host without GPUs.

    A rank that sees exactly one GPU uses it whatever its local rank (under Slurm's
    ``--gpus-per-task=1`` every task sees its own GPU as GPU 0); one that sees several uses the
    one at its local rank (Horovod's recipe, one process per node's GPU).
    """
    if not gpus:
        return None
    if len(gpus) == 1:
        return gpus[0]
    if local_rank >= len(gpus):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = "unset" if visible is None else repr(visible)
        raise HiresmedError(
            f"local rank {local_rank} has no GPU: this rank sees {len(gpus)} GPUs "
            f"(CUDA_VISIBLE_DEVICES={shown}); give each rank one GPU (srun --gpus-per-task=1) "
            f"or start at most {len(gpus)} ranks per host"
        )
    return gpus[local_rank]


def pin_gpu(local_rank: int) -> None:
    """Horovod's recipe: memory growth on every GPU, and only the local rank's GPU visible."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    selected = select_gpu(gpus, local_rank)
    if selected is not None:
        tf.config.set_visible_devices(selected, "GPU")
        # Deterministic GPU kernels: without them cuDNN and atomic reductions make a GPU run,
        # resumed or not, differ from the last. The CPU kernels used here repeat bitwise
        # (tested), and this would also serialise the input pipeline's audited reads, so only
        # GPU ranks pay for it.
        tf.config.experimental.enable_op_determinism()


def configure_threads(threads: int) -> bool:
    """Limit TensorFlow's intra-op threads so ranks on one host do not fight over cores.

    Returns False when TensorFlow was already initialised in this process (then unchanged).
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    except RuntimeError:
        return False
    return True


def recalibrate_batch_norm(model: Any, dataset: Any, steps: int) -> int:
    """Set every batch-norm layer's moving statistics to the average over ``steps`` batches.

    The moving averages kept during training lag behind the weights (they were measured with
    older weights), which can cost test accuracy; one pass in training mode with the final
    weights, averaging the batch statistics, fixes that. Returns the number of layers updated.
    """
    import tensorflow as tf

    layers = [
        layer
        for layer in model.submodules
        if isinstance(layer, tf.keras.layers.BatchNormalization) and layer.trainable
    ]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    try:
        for step, (images, _) in enumerate(dataset.take(steps)):
            for layer in layers:
                layer.momentum = step / (step + 1)  # a running mean of the batch statistics
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return len(layers)


def weights_digest(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 over every weight array's bytes, in order: equal digests mean equal models."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def evaluate(
    model: Any, dataset: Any, labels: Sequence[int], class_names: Sequence[str]
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (whose true labels, in order, are ``labels``).

    Returns fractions in [0, 1]: ``accuracy``; ``balanced_accuracy`` (mean per-class recall
    over the classes present); ``macro_f1`` (over the classes in labels or predictions);
    ``per_class_auroc`` (class name -> one-vs-rest AUROC of that class's softmax probability,
    None when the test set lacks the class or holds nothing else); ``macro_auroc`` (the mean of
    the defined ones, None if none is); and ``confusion_matrix`` (rows: true class, columns:
    predicted, in ``class_names`` order).
    """
    probabilities = np.asarray(model.predict(dataset, verbose=0), dtype=np.float32)
    return metrics_of(np.asarray(labels), probabilities, class_names)


def metrics_of(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """The metrics of :func:`evaluate` from true labels and softmax probabilities."""
    from sklearn import metrics

    predicted = np.argmax(probabilities, axis=1)
    per_class_auroc: dict[str, float | None] = {}
    for index, name in enumerate(class_names):
        positive = labels == index
        defined = 0 < positive.sum() < len(labels)
        per_class_auroc[name] = (
            float(metrics.roc_auc_score(positive, probabilities[:, index])) if defined else None
        )
    defined_aurocs = [value for value in per_class_auroc.values() if value is not None]
    return {
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "balanced_accuracy": float(metrics.balanced_accuracy_score(labels, predicted)),
        "macro_f1": float(metrics.f1_score(labels, predicted, average="macro")),
        "per_class_auroc": per_class_auroc,
        "macro_auroc": float(np.mean(defined_aurocs)) if defined_aurocs else None,
        "confusion_matrix": metrics.confusion_matrix(
            labels, predicted, labels=list(range(len(class_names)))
        ).tolist(),
    }


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the run: Horovod's numbers, or rank 0 of 1 in serial mode.

    ``host`` is the rank's Horovod host identity (see :func:`horovod_host`); ``local_rank``
    numbers the ranks on that host, ``local_size`` counts them.
    """

    rank: int
    size: int
    local_rank: int
    local_size: int
    host: str
    distributed: bool


@dataclass(frozen=True)
class Shard:
    """This rank's training data: its files and labels, its input pipelines and the run's totals.

    ``batches`` makes the rank's pipelines: an epoch is ``steps_per_epoch`` batches on every
    rank, in an order drawn from the seed, the rank and the epoch alone (:mod:`.epochs`), so a
    run resumed at epoch k trains on the batches an uninterrupted run trains on from epoch k.
    """

    split: data.Split
    files: list[str]
    labels: list[int]
    per_site: bool
    n_train: int
    n_test: int
    steps_per_epoch: int
    batches: epochs.EpochBatches


def horovod_host() -> str:
    """The host identity Horovod groups local ranks by: ``HOROVOD_HOSTNAME``, else the hostname."""
    return os.environ.get("HOROVOD_HOSTNAME") or socket.gethostname()


def node_name(host: str) -> str:
    """The name a record gives a rank's host: its Horovod host identity, except that ranks all
    on one machine (identity 'localhost') are named as that machine is."""
    return socket.gethostname() if host == "localhost" else host


def scaled_learning_rate(params: dict[str, Any], size: int) -> float:
    """``LEARNING_RATE``, times ranks and accumulation steps when ``LR_SCALING`` is linear."""
    learning_rate = params["LEARNING_RATE"]
    if params["LR_SCALING"] == "linear":
        # Horovod: linear scaling rule, lr x ranks; accumulation grows the batch alike.
        learning_rate = learning_rate * size * params["ACCUMULATION_STEPS"]
    return learning_rate


def join_ranks(distributed: bool) -> RankInfo:
    """Join the Horovod ranks (distributed) or stand alone as rank 0 of 1 (serial).

    Then takes this rank's share of the host: its TensorFlow threads and, on a GPU host, the GPU
    of its local rank (on a packed study's slot engine: the slot's threads and its one GPU). In
    distributed mode this blocks until every rank has joined.
    """
    if distributed:
        import horovod.tensorflow.keras as hvd

        hvd.init()  # Horovod: join the Gloo rendezvous; blocks until every rank is here.
        ranks = RankInfo(
            hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), horovod_host(), True
        )
    else:
        # Rank 0 of 1, on its engine's host as its cluster names it for every run (the record
        # names the machine, as a distributed rank's: node_name).
        ranks = RankInfo(0, 1, 0, 1, horovod_host(), False)
    # The rank's share of the cores, as its cluster gave it (the same rule for every engine).
    threads = int(os.environ.get(THREADS_VARIABLE) or 0)
    if threads:
        configure_threads(threads)
    # Horovod: one GPU per process, chosen by local rank (on a slot: its one visible GPU).
    pin_gpu(0 if "HIRESMED_SLOT" in os.environ else ranks.local_rank)
    return ranks


def seed_run(params: dict[str, Any]) -> None:
    """Start from a clean slate: a fresh Keras session, seeds for Python, NumPy and TensorFlow,
    a restarted file-open audit and the run's precision policy.

    A warm engine (or a kernel) that trained before thus runs like a fresh process would.
    """
    import tensorflow as tf

    tf.keras.backend.clear_session()  # forget earlier runs' models, layer names and graph
    tf.keras.utils.set_random_seed(params["SEED"])  # before the pipeline: its shuffle uses it
    data.reset_opened_files()
    tf.keras.mixed_precision.set_global_policy(params["PRECISION"])


def shard_data(params: dict[str, Any], ranks: RankInfo, split: data.Split | None) -> Shard:
    """This rank's shard of the training set and its input pipeline.

    ``split``: the caller's train/test split (made here when None); in per-site mode the rank
    splits its own ``SITE_DIRS`` folder instead, and every rank must call this at once.
    """
    per_site = bool(params["SITE_DIRS"])
    if per_site:
        # Per-site mode: the rank's data is its own site's folder, split where it lies.
        split = make_split(params, site=ranks.rank)
        files, labels = split.train_files, split.train_labels
        n_train, n_test = _site_totals(split)
    else:
        split = split or make_split(params)
        # Horovod: each rank reads only its own shard of the training files.
        files, labels = data.shard(
            split.train_files, split.train_labels, ranks.rank, ranks.size, params["SEED"]
        )
        n_train, n_test = len(split.train_files), len(split.test_files)
    batch_size = params["BATCH_SIZE"]
    accumulation = params["ACCUMULATION_STEPS"]
    # Horovod: every rank takes the same number of steps, so allreduces pair up; with
    # accumulation an epoch is a whole number of optimizer steps of `accumulation` batches.
    steps_per_epoch = accumulation * math.ceil(n_train / (batch_size * ranks.size * accumulation))
    batches = epochs.EpochBatches(
        data.cached_images(split, files, labels, params["IMAGE_SIZE"]),
        models.preprocessing_for(params["ARCH"]),
        batch_size,
        steps_per_epoch,
        params["SEED"],
        ranks.rank,
    )
    return Shard(split, files, labels, per_site, n_train, n_test, steps_per_epoch, batches)


def build_and_compile(params: dict[str, Any], ranks: RankInfo, n_classes: int) -> tuple[Any, Any]:
    """The run's model, compiled with Adam (Horovod's distributed optimizer when distributed).

    Returns ``(model, optimizer)``; with ``ACCUMULATION_STEPS`` > 1 the model accumulates the
    gradients of that many batches per optimizer step.
    """
    import tensorflow as tf

    model = models.build_model(
        params["ARCH"], params["IMAGE_SIZE"], n_classes, params["WEIGHTS"], params["SEED"]
    )
    epochs.check_nothing_random_per_step(model)  # a resume could not repeat its draws
    if params["ACCUMULATION_STEPS"] > 1:
        from hiresmed_nb.science.accumulation import AccumulatingModel

        model = AccumulatingModel.wrap(model, params["ACCUMULATION_STEPS"])
    optimizer = tf.keras.optimizers.Adam(scaled_learning_rate(params, ranks.size))
    if ranks.distributed:
        import horovod.tensorflow.keras as hvd

        compression = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}
        # Horovod: average gradients across ranks, optionally sent as float16.
        optimizer = hvd.DistributedOptimizer(
            optimizer, compression=compression[params["COMPRESSION"]]
        )
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, optimizer


def resume(
    params: dict[str, Any], ranks: RankInfo, model: Any, optimizer: Any
) -> tuple[int, Any | None]:
    """Continue from the run's last complete epoch when rank 0 finds its checkpoint.

    Returns the epoch to start at (0 when nothing is resumed) and, on rank 0, the callback that
    checkpoints every epoch and keeps the learning curves (None on the other ranks).
    """
    from hiresmed_nb.science import checkpoints
    from hiresmed_nb.science.epoch_checkpoint import EpochCheckpoint

    checkpoint_dir = checkpoints.checkpoint_dir(params)
    state = checkpoints.load_state(checkpoint_dir, params) if ranks.rank == 0 else None
    if ranks.distributed:
        import horovod.tensorflow as hvd_tf

        # Horovod: every rank resumes at the epoch rank 0 found.
        state = hvd_tf.broadcast_object(state, root_rank=0, name="resume_state")
    if state:
        checkpoints.build_optimizer(model, optimizer)  # its slots exist before the restore
    if state and ranks.rank == 0:
        checkpoints.restore(checkpoint_dir, state, model, optimizer)
    if state and ranks.distributed:
        # Horovod: every rank continues from rank 0's model and optimizer state.
        hvd_tf.broadcast_variables([*model.variables, *optimizer.variables], root_rank=0)
    checkpointer = None
    if ranks.rank == 0:
        checkpointer = EpochCheckpoint(
            checkpoint_dir, optimizer, params, state["history"] if state else {}
        )
    return (state["epoch"] if state else 0), checkpointer


CALLBACKS_VARIABLE = "HIRESMED_CALLBACKS"


def callbacks_from_environment() -> list[Any]:
    """The Keras callbacks ``HIRESMED_CALLBACKS=module:function`` names (the function returns a
    list of them), for every rank; none when it is unset.

    A study's notebooks train in kernels and engines of their own, which no caller can hand
    callbacks to: this is the one way in. The project's reliability tests inject faults through
    it (``tests/faults.py``); a user can attach, say, a profiler the same way.
    """
    spec = os.environ.get(CALLBACKS_VARIABLE, "")
    if not spec:
        return []
    module, _, function = spec.partition(":")
    if not module or not function:
        raise HiresmedError(f"{CALLBACKS_VARIABLE}={spec!r}: give module:function")
    return list(getattr(importlib.import_module(module), function)())


def fit(
    params: dict[str, Any],
    ranks: RankInfo,
    model: Any,
    shard: Shard,
    initial_epoch: int,
    callbacks: Sequence[Any],
) -> float:
    """Train from ``initial_epoch`` to ``EPOCHS``; returns the seconds it took.

    ``callbacks`` run on this rank after Horovod's own; only rank 0 prints its progress.
    """
    fit_callbacks = []
    if ranks.distributed:
        import horovod.tensorflow.keras as hvd

        fit_callbacks = [
            hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # Horovod: same start on all.
            hvd.callbacks.MetricAverageCallback(),  # Horovod: report metrics over all ranks.
        ]
    fit_callbacks.extend(callbacks_from_environment())
    started = time.perf_counter()
    model.fit(
        shard.batches.epochs(initial_epoch, params["EPOCHS"]),
        epochs=params["EPOCHS"],
        initial_epoch=initial_epoch,
        steps_per_epoch=shard.steps_per_epoch,
        callbacks=[*fit_callbacks, *callbacks],
        verbose=2 if ranks.rank == 0 else 0,
    )
    return time.perf_counter() - started


def finish(model: Any, shard: Shard, ranks: RankInfo) -> None:
    """Recalibrate batch norm on this rank's shard; in distributed mode average it over ranks."""
    # The first epoch's batches, in a pipeline of its own (same cached images): a resumed run
    # recalibrates on the same batches as an uninterrupted one.
    recalibrate_batch_norm(model, shard.batches.epochs(0, 1), shard.steps_per_epoch)
    if ranks.distributed:
        import horovod.tensorflow.keras as hvd

        # Horovod: batch-norm statistics are per rank; average them so every rank ends equal.
        for variable in model.non_trainable_variables:
            variable.assign(hvd.allreduce(variable, op=hvd.Average, name=f"final_{variable.name}"))


def rank_result(ranks: RankInfo, shard: Shard, model: Any) -> dict[str, Any]:
    """What every rank reports: who and where it is, the files it read, its final weights."""
    split = shard.split
    # Paths relative to the data folder; absolute in per-site mode, where folders differ.
    prefix = "" if shard.per_site else f"{split.data_dir}{os.sep}"
    return {
        "rank": ranks.rank,
        "local_rank": ranks.local_rank,
        "local_size": ranks.local_size,
        "host": node_name(ranks.host),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "train_files": (
            [str(split.data_dir / name) for name in shard.files] if shard.per_site else shard.files
        ),
        # The audit: every image file this rank's training pipeline opened.
        "opened_files": sorted({path.removeprefix(prefix) for path in data.opened_files()}),
        "weights_digest": weights_digest(model.get_weights()),
    }


def evaluate_test_set(
    params: dict[str, Any], ranks: RankInfo, shard: Shard, model: Any
) -> dict[str, Any]:
    """Rank 0's metrics (see :func:`evaluate`) on the whole test set; ``{}`` on other ranks.

    In per-site mode every rank must call this at once: each predicts its own site's test set.
    """
    split = shard.split
    if not (shard.per_site or ranks.rank == 0):
        return {}
    test_data = data.make_dataset(
        split,
        split.test_files,
        split.test_labels,
        params["IMAGE_SIZE"],
        models.preprocessing_for(params["ARCH"]),
        params["BATCH_SIZE"],
    )
    if not shard.per_site:
        return evaluate(model, test_data, split.test_labels, split.class_names)
    import horovod.tensorflow as hvd_tf

    # Per-site mode: each site predicts its own test set; only the predictions (class
    # probabilities and labels, no image) are gathered for rank 0's metrics.
    probabilities = np.asarray(model.predict(test_data, verbose=0), dtype=np.float32)
    gathered = hvd_tf.allgather_object((split.test_labels, probabilities), name="site_tests")
    if ranks.rank != 0:
        return {}
    all_labels = np.concatenate([np.asarray(site_labels) for site_labels, _ in gathered])
    all_probabilities = np.concatenate([site_probs for _, site_probs in gathered])
    return metrics_of(all_labels, all_probabilities, split.class_names)


def run_summary(
    params: dict[str, Any],
    ranks: RankInfo,
    shard: Shard,
    initial_epoch: int,
    history: dict[str, list[float]],
    train_seconds: float,
) -> dict[str, Any]:
    """Rank 0's account of the run: data, batch and learning rate, curves and timings."""
    batch_size, size = params["BATCH_SIZE"], ranks.size
    images_seen = shard.steps_per_epoch * batch_size * size * (params["EPOCHS"] - initial_epoch)
    return {
        "class_names": shard.split.class_names,
        "skipped": shard.split.skipped,
        "checked": shard.split.checked,
        "accumulation_steps": params["ACCUMULATION_STEPS"],
        "n_train": shard.n_train,
        "n_test": shard.n_test,
        "n_ranks": size,
        "learning_rate": scaled_learning_rate(params, size),
        "effective_batch_size": batch_size * size * params["ACCUMULATION_STEPS"],
        "history": history,
        "resumed_from_epoch": initial_epoch,
        "train_seconds": train_seconds,
        "images_per_second": images_seen / train_seconds if images_seen else 0.0,
    }


def train(
    params: RunConfig, callbacks: Sequence[Any] = (), split: data.Split | None = None
) -> dict[str, Any]:
    """Train one run; in distributed mode call it on every rank at once (hvd.init() waits).

    ``params``: the run's configuration, checked once on the head
    (:func:`hiresmed_nb.params.validate`); ranks check nothing again.
    Rank 0 checkpoints every epoch; a run whose checkpoint exists (same parameters) continues
    from its last complete epoch. Rank 0 also writes the run's TensorBoard logs
    (:mod:`.tensorboard_logs`). ``callbacks`` are extra Keras callbacks for every rank.
    ``split``: the train/test file lists made (and checked) by the caller; without it the rank
    makes the split itself, which reads every listed file's header.
    Returns, on every rank: rank, local_rank, local_size, host (Horovod's host identity),
    hostname, pid, the training files it read and its final weights digest. Rank 0 adds the
    evaluation, learning curves and timings.
    """
    ranks = join_ranks(params["MODE"] == "distributed")
    seed_run(params)
    shard = shard_data(params, ranks, split)
    model, optimizer = build_and_compile(params, ranks, len(shard.split.class_names))
    initial_epoch, checkpointer = resume(params, ranks, model, optimizer)
    rank0_callbacks = [checkpointer] if checkpointer is not None else []
    if checkpointer is not None:  # Rank 0 logs each epoch to TensorBoard after checkpointing it.
        from hiresmed_nb.science.tensorboard_logs import RunLogger

        tensorboard = RunLogger(params, checkpointer.history)
        rank0_callbacks.append(tensorboard)
    train_seconds = fit(params, ranks, model, shard, initial_epoch, [*rank0_callbacks, *callbacks])
    finish(model, shard, ranks)
    result = rank_result(ranks, shard, model)
    result.update(evaluate_test_set(params, ranks, shard, model))
    if checkpointer is not None:  # rank 0
        result.update(
            run_summary(params, ranks, shard, initial_epoch, checkpointer.history, train_seconds)
        )
        tensorboard.write_results(result)
    return result
