"""Datasets on disk: find the layout, split train/test, shard per rank, build tf.data pipelines.

Two layouts, shared by the real datasets and the embedded synthetic ones:
- SD-198 (``sd198``, ``synthetic-skin``): ``images/<class>/<file>``; no official split, so a fixed
  number of test images per class is held out by a seed-independent order.
- NIH ChestX-ray14 (``nih``, ``synthetic-xray``): a ``Data_Entry_2017*.csv`` at the top with
  ``Image Index``, ``Finding Labels`` and ``Patient ID``, images under ``images/``; single-label
  rows only; split by patient with ``train_val_list.txt``/``test_list.txt`` when present.
The test set never depends on ``SEED``; the training images (``IMAGES_PER_CLASS`` per class) are
drawn from the remaining pool with ``SEED``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hiresmed_nb.params import HiresmedError

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SD198_TEST_IMAGES_PER_CLASS = {"sd198": 30, "synthetic-skin": 20}
DEFAULT_CLASS_COUNT = {"sd198": 10, "synthetic-skin": 4, "nih": 4, "synthetic-xray": 4}
NIH_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """A train/test split of one dataset: paths relative to ``data_dir``, integer labels."""

    data_dir: Path
    class_names: list[str]
    train_files: list[str]
    train_labels: list[int]
    test_files: list[str]
    test_labels: list[int]
    greyscale: bool


def _stable_order(names: Sequence[str], salt: str) -> list[str]:
    """Sort names by a hash, so the order is random-looking but never changes between runs."""
    return sorted(names, key=lambda name: hashlib.sha1(f"{salt}:{name}".encode()).hexdigest())


def detect_layout(dataset: str, data_dir: Path) -> str:
    """Return ``"sd198"`` or ``"nih"`` for ``data_dir``, or raise naming what was expected."""
    layout = "nih" if dataset in ("nih", "synthetic-xray") else "sd198"
    expected = {
        "sd198": "images/<class name>/<image files>",
        "nih": "Data_Entry_2017.csv (or _v2020) and images/",
    }[layout]
    if not data_dir.is_dir():
        raise HiresmedError(
            f"DATA_DIR {data_dir} does not exist (expected the {layout} layout: {expected})"
        )
    if layout == "sd198" and not any(p.is_dir() for p in (data_dir / "images").glob("*")):
        raise HiresmedError(
            f"DATA_DIR {data_dir} has no class folders under images/ "
            f"(expected the sd198 layout: {expected})"
        )
    if layout == "nih" and not _nih_entries_file(data_dir):
        raise HiresmedError(
            f"DATA_DIR {data_dir} has no Data_Entry_2017 CSV (expected the nih layout: {expected})"
        )
    return layout


def _nih_entries_file(data_dir: Path) -> Path | None:
    for name in ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"):
        for candidate in (data_dir / name, data_dir / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def _choose_classes(counts: Counter, dataset: str, classes: list[str] | None) -> list[str]:
    """The named classes, or the dataset's default number of largest ones (ties: by name)."""
    if classes:
        unknown = [name for name in classes if name not in counts]
        if unknown:
            raise HiresmedError(
                f"CLASSES names {unknown} not found; the dataset has {sorted(counts)[:20]}"
            )
        return list(classes)
    ranked = sorted(counts, key=lambda name: (-counts[name], name))
    return sorted(ranked[: DEFAULT_CLASS_COUNT[dataset]])


def _draw_training(
    pools: dict[str, list[str]], images_per_class: int, seed: int, held_out: dict[str, int]
) -> dict[str, list[str]]:
    rng = np.random.default_rng(seed)
    drawn = {}
    for name, pool in pools.items():
        if images_per_class > len(pool):
            raise HiresmedError(
                f"IMAGES_PER_CLASS={images_per_class} but class {name!r} holds only "
                f"{len(pool)} training images ({held_out[name]} more are held out for testing)"
            )
        picks = rng.choice(len(pool), size=images_per_class, replace=False)
        drawn[name] = [pool[i] for i in sorted(picks)]
    return drawn


def _cap(files: list[str], cap: int) -> list[str]:
    return files[:cap] if cap else files


def _split_sd198(
    data_dir: Path,
    dataset: str,
    classes: list[str] | None,
    images_per_class: int,
    test_cap: int,
    seed: int,
) -> Split:
    by_class = {
        folder.name: sorted(
            str(path.relative_to(data_dir))
            for path in folder.iterdir()
            if path.suffix.lower() in IMAGE_SUFFIXES
        )
        for folder in (data_dir / "images").iterdir()
        if folder.is_dir()
    }
    names = _choose_classes(Counter({k: len(v) for k, v in by_class.items()}), dataset, classes)
    n_test = SD198_TEST_IMAGES_PER_CLASS[dataset]
    tests, pools = {}, {}
    for name in names:
        ordered = _stable_order(by_class[name], "test")
        tests[name], pools[name] = (
            _cap(sorted(ordered[:n_test]), test_cap),
            sorted(ordered[n_test:]),
        )
    train = _draw_training(pools, images_per_class, seed, {n: len(tests[n]) for n in names})
    return _assemble(data_dir, names, train, tests, greyscale=False)


def read_nih_entries(data_dir: Path) -> pd.DataFrame:
    """Read the entries CSV: columns ``Image Index``, ``Finding Labels``, ``Patient ID``."""
    path = _nih_entries_file(data_dir)
    frame = pd.read_csv(path, index_col=False)
    missing = {"Image Index", "Finding Labels", "Patient ID"} - set(frame.columns)
    if missing:
        raise HiresmedError(f"{path} lacks the columns {sorted(missing)}")
    return frame


def _split_nih(
    data_dir: Path,
    dataset: str,
    classes: list[str] | None,
    images_per_class: int,
    test_cap: int,
    seed: int,
) -> Split:
    entries = read_nih_entries(data_dir)
    single = entries[~entries["Finding Labels"].str.contains("|", regex=False)]
    names = _choose_classes(Counter(single["Finding Labels"]), dataset, classes)
    single = single[single["Finding Labels"].isin(names)]
    test_list = data_dir / "test_list.txt"
    if test_list.exists():
        is_test = single["Image Index"].isin(set(test_list.read_text().split()))
    else:
        digest = (
            single["Patient ID"]
            .astype(str)
            .map(lambda pid: int(hashlib.sha1(pid.encode()).hexdigest()[:8], 16) / 16**8)
        )
        is_test = digest < NIH_TEST_FRACTION
    tests, pools = {}, {}
    for name in names:
        rows = single[single["Finding Labels"] == name]
        as_path = [f"images/{index}" for index in sorted(rows["Image Index"])]
        test_names = set(rows[is_test.loc[rows.index]]["Image Index"])
        tests[name] = _cap([p for p in as_path if p[7:] in test_names], test_cap)
        pools[name] = [p for p in as_path if p[7:] not in test_names]
    train = _draw_training(pools, images_per_class, seed, {n: len(tests[n]) for n in names})
    return _assemble(data_dir, names, train, tests, greyscale=True)


def _assemble(
    data_dir: Path,
    names: list[str],
    train: dict[str, list[str]],
    tests: dict[str, list[str]],
    greyscale: bool,
) -> Split:
    def flatten(files: dict[str, list[str]]) -> tuple[list[str], list[int]]:
        pairs = [(path, label) for label, name in enumerate(names) for path in files[name]]
        return [p for p, _ in pairs], [label for _, label in pairs]

    train_files, train_labels = flatten(train)
    test_files, test_labels = flatten(tests)
    return Split(data_dir, names, train_files, train_labels, test_files, test_labels, greyscale)


def make_split(
    dataset: str,
    data_dir: Path,
    images_per_class: int,
    seed: int,
    classes: list[str] | None = None,
    test_images_per_class: int = 0,
) -> Split:
    """Split ``data_dir`` (layout given by ``dataset``) into training and test files.

    Raises :class:`HiresmedError` naming ``DATA_DIR`` for a wrong layout, or the class and its
    count when ``images_per_class`` is more than a class holds.
    """
    layout = detect_layout(dataset, data_dir)
    split = _split_nih if layout == "nih" else _split_sd198
    return split(data_dir, dataset, classes, images_per_class, test_images_per_class, seed)


def shard(
    files: Sequence[str], labels: Sequence[int], rank: int, size: int, seed: int
) -> tuple[list[str], list[int]]:
    """Rank ``rank``'s disjoint share of the training set; the ``size`` shards cover all of it.

    The files are shuffled with ``seed`` first, so every shard holds a mix of classes.
    """
    if not 0 <= rank < size:
        raise HiresmedError(f"rank {rank} is outside 0..{size - 1}")
    order = np.random.default_rng(seed).permutation(len(files))[rank::size]
    return [files[i] for i in order], [labels[i] for i in order]


def load_image(path: tf.Tensor, image_size: int, greyscale: bool) -> tf.Tensor:
    """Decode a PNG/JPEG file to float32 (image_size, image_size, 3) in [0, 255].

    Greyscale sources (or RGBA X-rays) go to one channel first, then to three. The resize is
    anti-aliased, so detail finer than the target resolution is removed, not aliased.
    """
    import tensorflow as tf

    raw = tf.io.read_file(path)
    image = tf.io.decode_image(raw, channels=1 if greyscale else 3, expand_animations=False)
    image = tf.image.resize(
        tf.cast(image, tf.float32), (image_size, image_size), method="bilinear", antialias=True
    )
    if greyscale:
        image = tf.image.grayscale_to_rgb(image)
    return tf.ensure_shape(image, (image_size, image_size, 3))


def make_dataset(
    split: Split,
    files: Sequence[str],
    labels: Sequence[int],
    image_size: int,
    preprocess: Callable,
    batch_size: int,
    shuffle_seed: int | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """A tf.data pipeline: decode, resize, cache the resized images, preprocess, batch, prefetch.

    With ``shuffle_seed`` the order is reshuffled every epoch; with ``repeat`` it never ends
    (each rank then runs a fixed number of steps per epoch, so ranks stay in lockstep).
    """
    import tensorflow as tf

    paths = [str(split.data_dir / name) for name in files]
    dataset = tf.data.Dataset.from_tensor_slices((paths, list(labels)))
    dataset = dataset.map(
        lambda path, label: (load_image(path, image_size, split.greyscale), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(lambda image, label: (preprocess(image), label))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
