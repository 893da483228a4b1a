"""Datasets on disk: find the layout, split train/test, shard per rank, build tf.data pipelines.

Two layouts, read as downloaded, shared by the real datasets and the embedded synthetic ones:

- SD-198 (``sd198``, ``synthetic-skin``): ``images/<class name>/<file>``. The default classes are
  the 10 (4 synthetic) with the most images; ties are broken by class name in Python's string
  order, so the choice never depends on the file system. ``CLASSES`` overrides. A fixed number of
  test images per class (30, the paper's; 20 synthetic) is held out in a seed-independent hashed
  order, and the training images (``IMAGES_PER_CLASS`` per class) are drawn from the rest with
  ``SEED``. The optional ``8_2_split/`` lists of the download are not used: they hold an 80/20
  split of all 198 classes, not the paper's protocol (10 classes, 10/20/30 training and 30 test
  images per class).
- NIH ChestX-ray14 (``nih``, ``synthetic-xray``): ``Data_Entry_2017_v2020.csv`` or the original
  ``Data_Entry_2017.csv`` at the top (either may be ``.gz``), images under ``images/`` or under
  ``images_001/images/`` ... ``images_012/images/`` (indexed once per split). ``Finding Labels``
  is multi-label joined by ``|``; the paper trains single-label classification, so only
  single-label rows are used, of the 4 largest such classes unless ``CLASSES`` names others (see
  :data:`NIH_CLASS_NOTE`). The split is by patient: ``test_list.txt`` (and
  ``train_val_list.txt``) when present, which are patient-disjoint (checked); otherwise a hash of
  ``Patient ID`` puts 20% of the patients in the test set. The test set is every test image of the
  selected classes, or the first ``TEST_IMAGES_PER_CLASS`` in a seed-independent hashed order.

Unusable images. A row whose image file is missing, or a file that does not decode, is skipped
and counted in :attr:`Split.skipped`. Existence is checked for every selected row (a lookup in
the image index); decodability only for the files the run will read, the drawn training images
and the test set, with PIL (``verify()`` for PNG reads the chunks and checksums without
decompressing; JPEG is decoded at 1/8 scale, since its ``verify()`` checks nothing). Checking all
112,120 NIH images up front would read the whole 45 GB dataset for every run; this reads only
the files the run decodes anyway (once per process: answers are remembered). The split fails
with a :class:`HiresmedError` when more than 1% of the rows looked up have no file, or more than
1% of the files decode-checked fail (so a single corrupt file in a test set capped at 30 images
fails the run). An undecodable training draw is replaced by the next image of its class in the
seed's order, and an undecodable SD-198 test image by the next in the test order, so runs keep
exactly ``IMAGES_PER_CLASS`` training and 30 test images per class.

Decoding. PNGs go through TensorFlow's decoder (fast; 16-bit and RGBA greyscale PNGs come out as
8-bit one-channel images). JPEGs go through PIL, which applies the EXIF orientation and converts
greyscale and CMYK files to RGB (TensorFlow's ``decode_jpeg`` does neither); large JPEGs are
decoded at the smallest DCT scale that keeps them at least as large as the target size.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hiresmed_nb.errors import HiresmedError

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
JPEG_SUFFIXES = (".jpg", ".jpeg")
SD198_TEST_IMAGES_PER_CLASS = {"sd198": 30, "synthetic-skin": 20}
DEFAULT_CLASS_COUNT = {"sd198": 10, "synthetic-skin": 4, "nih": 4, "synthetic-xray": 4}
NIH_TEST_FRACTION = 0.2
NIH_ENTRIES_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
MAX_UNUSABLE_FRACTION = 0.01
NIH_CLASS_NOTE = (
    "The paper trains 4-class single-label classification on NIH ChestX-ray14 but does not name "
    "its four classes; by default we use the four largest single-label classes of the entries "
    "file (No Finding, Infiltration, Atelectasis, Effusion in Data_Entry_2017_v2020.csv), which "
    "CLASSES can override."
)


@dataclass(frozen=True)
class Split:
    """A train/test split of one dataset: paths relative to ``data_dir``, integer labels.

    ``skipped`` counts unusable images that were left out: ``missing`` (a row without its image
    file) and ``undecodable`` (a file that failed to decode). ``checked`` counts what was checked:
    ``exists`` (rows looked up on disk) and ``decodes`` (files decode-checked).
    """

    data_dir: Path
    class_names: list[str]
    train_files: list[str]
    train_labels: list[int]
    test_files: list[str]
    test_labels: list[int]
    greyscale: bool
    skipped: dict[str, int] = field(default_factory=lambda: {"missing": 0, "undecodable": 0})
    checked: dict[str, int] = field(default_factory=lambda: {"exists": 0, "decodes": 0})


class _Checker:
    """Decode-checks files under ``data_dir`` once each and keeps the counts."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.missing = 0
        self.exists_checked = 0
        self.undecodable: list[str] = []
        self.decodes_checked = 0

    def decodable(self, relative: str) -> bool:
        self.decodes_checked += 1
        if is_decodable(self.data_dir / relative):
            return True
        self.undecodable.append(relative)
        return False

    def take(self, candidates: Sequence[str], n: int | None) -> tuple[list[str], list[str]]:
        """The first ``n`` decodable candidates (all if None), and the candidates not looked at."""
        taken: list[str] = []
        for position, relative in enumerate(candidates):
            if n is not None and len(taken) == n:
                return taken, list(candidates[position:])
            if self.decodable(relative):
                taken.append(relative)
        return taken, []

    def check_fraction(self) -> None:
        """Fail when more than 1% of the checked files are undecodable."""
        bad = len(self.undecodable)
        if bad > MAX_UNUSABLE_FRACTION * self.decodes_checked:
            raise HiresmedError(
                f"DATA_DIR {self.data_dir}: {bad} of {self.decodes_checked} image files checked "
                f"do not decode (more than {MAX_UNUSABLE_FRACTION:.0%}), e.g. "
                f"{', '.join(self.undecodable[:3])}; re-download or remove them"
            )

    def split(self, **fields) -> Split:
        return Split(
            **fields,
            skipped={"missing": self.missing, "undecodable": len(self.undecodable)},
            checked={"exists": self.exists_checked, "decodes": self.decodes_checked},
        )


def is_decodable(path: Path) -> bool:
    """True when PIL can read ``path`` as an image (PNG: chunks and CRCs; JPEG: a 1/8 decode).

    Answers are remembered per (path, size, modification time) for the life of the process, so
    the notebook's check and a serial run in the same kernel read each file once.
    """
    try:
        stat = path.stat()
    except OSError:
        return False
    return _is_decodable(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=1_000_000)
def _is_decodable(path: str, size: int, mtime_ns: int) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))
                image.load()
            else:
                image.verify()
    except Exception:  # any failure to read means the same: this file is unusable
        return False
    return True


def _stable_order(names: Iterable[str], salt: str) -> list[str]:
    """Sort names by a hash, so the order is random-looking but never changes between runs."""
    return sorted(names, key=lambda name: hashlib.sha1(f"{salt}:{name}".encode()).hexdigest())


def _nih_image_folders(data_dir: Path) -> list[Path]:
    """``images/`` and ``images_NNN/images/`` (or ``images_NNN/`` holding the files directly)."""
    folders = [data_dir / "images"] if (data_dir / "images").is_dir() else []
    for part in sorted(data_dir.glob("images_*")):
        if part.is_dir():
            folders.append(part / "images" if (part / "images").is_dir() else part)
    return folders


def detect_layout(dataset: str, data_dir: Path) -> str:
    """Return ``"sd198"`` or ``"nih"`` for ``data_dir``, or raise naming what was expected."""
    layout = "nih" if dataset in ("nih", "synthetic-xray") else "sd198"
    expected = {
        "sd198": "images/<class name>/<image files>",
        "nih": "Data_Entry_2017_v2020.csv or Data_Entry_2017.csv (.gz too) and images/ "
        "or images_001/images/ ...",
    }[layout]
    if not data_dir.is_dir():
        raise HiresmedError(
            f"DATA_DIR {data_dir} does not exist (expected the {layout} layout: {expected})"
        )
    if layout == "sd198" and not _sd198_class_folders(data_dir):
        raise HiresmedError(
            f"DATA_DIR {data_dir} has no class folders under images/ "
            f"(expected the sd198 layout: {expected})"
        )
    if layout == "nih" and not nih_entries_file(data_dir):
        raise HiresmedError(
            f"DATA_DIR {data_dir} has no Data_Entry_2017 CSV (expected the nih layout: {expected})"
        )
    if layout == "nih" and not _nih_image_folders(data_dir):
        raise HiresmedError(
            f"DATA_DIR {data_dir} has no images/ folder (expected the nih layout: {expected})"
        )
    return layout


def nih_entries_file(data_dir: Path) -> Path | None:
    """The entries CSV at the top of ``data_dir``: the 2020 revision first, plain or ``.gz``."""
    for name in NIH_ENTRIES_FILES:
        for candidate in (data_dir / name, data_dir / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _choose_classes(counts: Counter, dataset: str, classes: list[str] | None) -> list[str]:
    """The named classes, or the dataset's default number of largest ones.

    Ties: classes with equal counts are ranked by name (Python string order), so the 10th SD-198
    class is the alphabetically first of those tied at the 10th count.
    """
    available = sorted(counts, key=lambda name: (-counts[name], name))
    if classes:
        unknown = [name for name in classes if name not in counts]
        if unknown:
            raise HiresmedError(
                f"CLASSES names {unknown} not found; the largest classes are {available[:20]}"
            )
        if len(set(classes)) != len(classes):
            raise HiresmedError(f"CLASSES={classes!r} names a class twice")
        return list(classes)
    if len(available) < 2:
        raise HiresmedError(f"the {dataset} data has {len(available)} class(es); at least 2 needed")
    return sorted(available[: DEFAULT_CLASS_COUNT[dataset]])


def _check_pools(
    pools: dict[str, list[str]], images_per_class: int, held_out: dict[str, int]
) -> None:
    for name, pool in pools.items():
        if images_per_class > len(pool):
            raise HiresmedError(
                f"IMAGES_PER_CLASS={images_per_class} but class {name!r} holds only "
                f"{len(pool)} training images ({held_out[name]} more are held out for testing)"
            )


def _draw_training(
    pools: dict[str, list[str]], images_per_class: int, seed: int, checker: _Checker
) -> dict[str, list[str]]:
    """``images_per_class`` decodable images per class, in the seed's order; undecodable ones are
    replaced by the next in that order."""
    rng = np.random.default_rng(seed)
    drawn = {}
    for name, pool in pools.items():
        order = [pool[i] for i in rng.permutation(len(pool))]
        taken, _ = checker.take(order, images_per_class)
        if len(taken) < images_per_class:
            raise HiresmedError(
                f"IMAGES_PER_CLASS={images_per_class} but class {name!r} holds only "
                f"{len(taken)} decodable training images"
            )
        drawn[name] = sorted(taken)
    return drawn


def _sd198_class_folders(data_dir: Path) -> list[Path]:
    images = data_dir / "images"
    if not images.is_dir():
        return []
    return sorted(p for p in images.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


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
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
        )
        for folder in _sd198_class_folders(data_dir)
    }
    by_class = {name: files for name, files in by_class.items() if files}
    names = _choose_classes(Counter({k: len(v) for k, v in by_class.items()}), dataset, classes)
    n_test = SD198_TEST_IMAGES_PER_CLASS[dataset]
    _check_pools(
        {name: by_class[name][n_test:] for name in names},
        images_per_class,
        {name: min(n_test, len(by_class[name])) for name in names},
    )
    checker = _Checker(data_dir)
    checker.exists_checked = sum(len(by_class[name]) for name in names)  # listed, so present
    tests, pools = {}, {}
    for name in names:
        held_out, pools[name] = checker.take(_stable_order(by_class[name], "test"), n_test)
        tests[name] = sorted(held_out[:test_cap] if test_cap else held_out)
        pools[name] = sorted(pools[name])
    train = _draw_training(pools, images_per_class, seed, checker)
    checker.check_fraction()
    return _assemble(checker, names, train, tests, greyscale=False)


def read_nih_entries(data_dir: Path) -> pd.DataFrame:
    """Read the entries CSV at the top of ``data_dir`` (see :func:`read_nih_entries_file`)."""
    path = nih_entries_file(data_dir)
    if path is None:
        raise HiresmedError(f"DATA_DIR {data_dir} has no {' or '.join(NIH_ENTRIES_FILES)}")
    return read_nih_entries_file(path)


def read_nih_entries_file(path: Path) -> pd.DataFrame:
    """Read an entries CSV, either version, plain or gzipped.

    Returns columns ``Image Index`` (str), ``Finding Labels`` (str, stripped) and ``Patient ID``
    (int: the 2017 file's zero-padded ``00000001`` and the 2020 file's ``1`` agree). The other
    columns (the bracketed header, the 2017 file's trailing empty column, ages like ``058Y``)
    are not read.
    """
    try:
        header = pd.read_csv(path, nrows=0, index_col=False).columns
        frame = pd.read_csv(
            path,
            index_col=False,
            usecols=lambda column: column.strip() in NIH_COLUMNS,
            dtype=str,
            keep_default_na=False,
        )
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise HiresmedError(f"{path} is not a readable entries CSV: {error}") from None
    missing = set(NIH_COLUMNS) - {str(column).strip() for column in header}
    if missing:
        raise HiresmedError(f"{path} lacks the columns {sorted(missing)}")
    frame.columns = [str(column).strip() for column in frame.columns]
    frame = frame.apply(lambda column: column.str.strip())
    try:
        frame["Patient ID"] = frame["Patient ID"].astype(int)
    except ValueError:
        raise HiresmedError(f"{path}: 'Patient ID' holds values that are not integers") from None
    return frame


def index_nih_images(data_dir: Path) -> dict[str, str]:
    """Map every image file name to its path relative to ``data_dir`` (first folder wins)."""
    index: dict[str, str] = {}
    for folder in _nih_image_folders(data_dir):
        relative = folder.relative_to(data_dir).as_posix()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(IMAGE_SUFFIXES):
                    index.setdefault(entry.name, f"{relative}/{entry.name}")
    return index


def _nih_test_mask(data_dir: Path, rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(is_test, is_train) over ``rows``: the official lists if present, else a patient hash.

    With lists, a patient on both sides (over all rows, not only the selected ones) is an error.
    """
    test_list = data_dir / "test_list.txt"
    train_list = data_dir / "train_val_list.txt"
    if test_list.is_file():
        is_test = rows["Image Index"].isin(set(test_list.read_text().split()))
        if train_list.is_file():
            is_train = rows["Image Index"].isin(set(train_list.read_text().split())) & ~is_test
        else:
            is_train = ~is_test
        shared = set(rows.loc[is_test, "Patient ID"]) & set(rows.loc[is_train, "Patient ID"])
        if shared:
            raise HiresmedError(
                f"{test_list} and {train_list.name} put {len(shared)} patients on both sides "
                f"(e.g. Patient ID {sorted(shared)[:3]}); the official lists are patient-disjoint"
            )
        return is_test, is_train
    digest = (
        rows["Patient ID"]
        .astype(str)
        .map(lambda pid: int(hashlib.sha1(pid.encode()).hexdigest()[:8], 16) / 16**8)
    )
    is_test = digest < NIH_TEST_FRACTION
    return is_test, ~is_test


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
    selected = single[single["Finding Labels"].isin(names)]

    checker = _Checker(data_dir)
    index = index_nih_images(data_dir)
    present = selected["Image Index"].isin(index.keys())
    checker.exists_checked, checker.missing = len(selected), int((~present).sum())
    if checker.missing > MAX_UNUSABLE_FRACTION * len(selected):
        examples = ", ".join(selected.loc[~present, "Image Index"].head(3))
        raise HiresmedError(
            f"DATA_DIR {data_dir}: {checker.missing} of {len(selected)} selected rows of "
            f"{nih_entries_file(data_dir).name} have no image file under images/ or "
            f"images_NNN/images/ (more than {MAX_UNUSABLE_FRACTION:.0%}), e.g. {examples}"
        )
    selected = selected[present]
    is_test, is_train = _nih_test_mask(data_dir, entries)

    by_label = {name: selected[selected["Finding Labels"] == name] for name in names}
    test_rows = {name: rows[is_test.loc[rows.index]] for name, rows in by_label.items()}
    pools = {
        name: sorted(index[i] for i in rows[is_train.loc[rows.index]]["Image Index"])
        for name, rows in by_label.items()
    }
    _check_pools(pools, images_per_class, {name: len(test_rows[name]) for name in names})
    tests = {}
    for name in names:
        ordered = _stable_order((index[i] for i in test_rows[name]["Image Index"]), "test")
        tests[name] = sorted(checker.take(ordered, test_cap or None)[0])
    train = _draw_training(pools, images_per_class, seed, checker)
    checker.check_fraction()
    return _assemble(checker, names, train, tests, greyscale=True)


def _assemble(
    checker: _Checker,
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
    return checker.split(
        data_dir=checker.data_dir,
        class_names=names,
        train_files=train_files,
        train_labels=train_labels,
        test_files=test_files,
        test_labels=test_labels,
        greyscale=greyscale,
    )


def make_split(
    dataset: str,
    data_dir: Path,
    images_per_class: int,
    seed: int,
    classes: list[str] | None = None,
    test_images_per_class: int = 0,
) -> Split:
    """Split ``data_dir`` (layout given by ``dataset``) into training and test files.

    Reads the listing (and the NIH entries CSV), checks that every selected NIH row has its
    file, and decode-checks the training and test files (see the module docstring). Raises
    :class:`HiresmedError` naming ``DATA_DIR`` for a wrong layout or more than 1% unusable
    images, ``CLASSES`` for an unknown class, or the class and its count when
    ``images_per_class`` is more than a class holds.
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


# Every image file the pipelines of this process opened, in order: the data-locality audit.
_OPENED: list[str] = []


def opened_files() -> list[str]:
    """The image files this process's pipelines have opened so far (each rank is a process)."""
    return list(_OPENED)


def reset_opened_files() -> None:
    _OPENED.clear()


def _as_str(path: str | bytes | np.ndarray) -> str:
    if isinstance(path, np.ndarray):  # tf.numpy_function passes 0-d arrays
        path = path.item()
    return path.decode() if isinstance(path, bytes) else str(path)


def read_file_audited(path: str | bytes | np.ndarray) -> bytes:
    """Read a file's bytes, noting it in :func:`opened_files`."""
    name = _as_str(path)
    _OPENED.append(name)
    with open(name, "rb") as handle:
        return handle.read()


def decode_with_pil(path: str | bytes, min_side: int, greyscale: bool) -> np.ndarray:
    """Decode an image file with PIL: EXIF orientation applied, greyscale/CMYK/RGBA converted.

    Returns uint8 (H, W, 1) if ``greyscale`` else (H, W, 3). JPEGs are decoded at the smallest
    DCT scale (1, 1/2, 1/4, 1/8) that keeps both sides at least ``min_side``.
    """
    from PIL import Image, ImageOps

    name = _as_str(path)
    _OPENED.append(name)
    greyscale = bool(greyscale)
    mode = "L" if greyscale else "RGB"
    with Image.open(name) as image:
        image.draft(mode, (int(min_side), int(min_side)))
        pixels = np.asarray(ImageOps.exif_transpose(image).convert(mode), dtype=np.uint8)
    return pixels[..., None] if greyscale else pixels


def load_image(path: tf.Tensor, image_size: int, greyscale: bool) -> tf.Tensor:
    """Decode a PNG/JPEG file to float32 (image_size, image_size, 3) in [0, 255].

    PNGs: TensorFlow's decoder (16-bit PNGs are scaled to 8 bits; RGBA drops alpha). JPEGs: PIL
    (:func:`decode_with_pil`), for EXIF orientation and CMYK. Greyscale datasets go to one channel
    first, then to three. The resize is anti-aliased, so detail finer than the target resolution
    is removed, not aliased.
    """
    import tensorflow as tf

    channels = 1 if greyscale else 3

    def with_pil() -> tf.Tensor:
        pixels = tf.numpy_function(
            decode_with_pil, [path, image_size, greyscale], tf.uint8, stateful=False
        )
        return tf.reshape(pixels, tf.stack([tf.shape(pixels)[0], tf.shape(pixels)[1], channels]))

    def with_tf() -> tf.Tensor:
        raw = tf.numpy_function(read_file_audited, [path], tf.string, stateful=True)
        return tf.io.decode_image(raw, channels=channels, expand_animations=False)

    is_jpeg = tf.strings.regex_full_match(tf.strings.lower(path), r".*\.jpe?g")
    image = tf.cond(is_jpeg, with_pil, with_tf)
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
    images = cached_images(split, files, labels, image_size)
    return batches(images, preprocess, batch_size, shuffle_seed, repeat)


def cached_images(
    split: Split, files: Sequence[str], labels: Sequence[int], image_size: int
) -> tf.data.Dataset:
    """(image, label) pairs, decoded and resized (see :func:`load_image`) on the first pass,
    then read from memory. Pipelines made from this one object by :func:`batches` share that
    cache: the files are decoded once."""
    import tensorflow as tf

    paths = [str(split.data_dir / name) for name in files]
    dataset = tf.data.Dataset.from_tensor_slices((paths, list(labels)))
    return dataset.map(
        lambda path, label: (load_image(path, image_size, split.greyscale), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).cache()


def batches(
    images: tf.data.Dataset,
    preprocess: Callable,
    batch_size: int,
    shuffle_seed: int | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """The rest of :func:`make_dataset`'s pipeline over ``images`` (from :func:`cached_images`).

    Each call makes a pipeline with its own shuffle: all iterators over one pipeline share its
    seed generator, so a new iterator's order depends on how many epochs earlier iterators
    (and their prefetch, running ahead) started; the first iterator of a new one does not.
    """
    import tensorflow as tf

    dataset = images
    if shuffle_seed is not None:
        n_images = int(images.cardinality())  # known: a list of files, mapped and cached
        dataset = dataset.shuffle(n_images, seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(lambda image, label: (preprocess(image), label))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
