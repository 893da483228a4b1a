"""The embedded SYNTHETIC dataset: generated on first use, no download, no patient data.

Each image is 1024 x 1024: a smooth background, a random lesion-like blob, and inside the blob a
fine sinusoidal texture whose orientation is the class. The texture period is
``TEXTURE_PERIOD_PX`` native pixels, so after downsampling to ``size`` pixels it is
``TEXTURE_PERIOD_PX * size / 1024`` pixels. An anti-aliased resize removes it once that falls to
2 pixels (the Nyquist limit), that is at ``RESOLVABLE_FROM_PX`` (64 px) and below: there the class
signal is really gone and accuracy drops to chance. The stripes are faint (amplitude 0.01 to 0.05
over noise 0.02) and their orientations jittered so neighbouring classes overlap a little: the
best resolution stays well below 100% and more training images help.

Two layouts, the same as the real datasets so the same loaders read them:
``synthetic-skin`` (RGB, SD-198: ``images/<class>/<file>.png``) and ``synthetic-xray``
(greyscale, NIH: ``Data_Entry_2017.csv``, ``images/<file>.png``, ``train_val_list.txt``,
``test_list.txt``).
"""

from __future__ import annotations

import csv
import fcntl
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import SYNTHETIC_DATASETS, resolve_path

SYNTHETIC_NOTE = "SYNTHETIC data from the embedded generator: no patient images"
NATIVE_SIZE = 1024
TEXTURE_PERIOD_PX = 32.0
RESOLVABLE_FROM_PX = int(np.ceil(2 * NATIVE_SIZE / TEXTURE_PERIOD_PX))
CLASS_ORIENTATIONS_DEG = (0, 45, 90, 135)
CLASS_NAMES = tuple(f"stripes_{angle:03d}deg" for angle in CLASS_ORIENTATIONS_DEG)
ORIENTATION_JITTER_DEG = 25.0
TEXTURE_AMPLITUDE = (0.01, 0.05)
NOISE_SIGMA = 0.02
IMAGES_PER_CLASS = 80
TEST_IMAGES_PER_CLASS = 20
GENERATOR_SEED = 2021
GENERATOR_VERSION = 2  # bump whenever the images change, so stale caches are refused
_MARKER = "SYNTHETIC.txt"


def _blob_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A soft, irregular blob (values in [0, 1]) covering roughly a third of the image."""
    cy, cx = rng.uniform(0.35, 0.65, size=2)
    base_radius = rng.uniform(0.22, 0.32)
    angle = np.arctan2(yy - cy, xx - cx)
    radius = np.full_like(angle, base_radius)
    for harmonic in range(2, 6):
        radius += rng.uniform(0, 0.03) * np.cos(harmonic * angle + rng.uniform(0, 2 * np.pi))
    distance = np.hypot(yy - cy, xx - cx)
    return np.clip((radius - distance) / 0.02, 0.0, 1.0)


def render_image(
    label: int, rng: np.random.Generator, channels: int = 3, texture_scale: float = 1.0
) -> np.ndarray:
    """Render one NATIVE_SIZE x NATIVE_SIZE image of class ``label`` as uint8 (H, W, channels).

    ``texture_scale`` multiplies the class texture (0 renders the same image without it).
    """
    coords = (np.arange(NATIVE_SIZE, dtype=np.float32) + 0.5) / NATIVE_SIZE
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    gradient_angle = rng.uniform(0, 2 * np.pi)
    background = 0.1 * (np.cos(gradient_angle) * xx + np.sin(gradient_angle) * yy)
    blob = _blob_mask(rng, yy, xx)

    theta = np.deg2rad(
        CLASS_ORIENTATIONS_DEG[label] + rng.uniform(-ORIENTATION_JITTER_DEG, ORIENTATION_JITTER_DEG)
    )
    phase = rng.uniform(0, 2 * np.pi)
    along = (np.cos(theta) * xx + np.sin(theta) * yy) * NATIVE_SIZE
    texture = np.sin(2 * np.pi * along / TEXTURE_PERIOD_PX + phase)
    amplitude = rng.uniform(*TEXTURE_AMPLITUDE) * texture_scale
    luminance = background - 0.25 * blob + amplitude * blob * texture

    if channels == 3:
        skin = np.array(rng.uniform([0.75, 0.55, 0.45], [0.9, 0.7, 0.6]), dtype=np.float32)
        lesion = np.array(rng.uniform([0.8, 0.6, 0.55], [1.0, 0.8, 0.75]), dtype=np.float32)
        tint = skin * (1 - blob[..., None] * (1 - lesion))
        image = tint + luminance[..., None] - background.mean()
    else:
        image = (0.5 + luminance)[..., None]
    image = image + rng.normal(0, NOISE_SIGMA, size=image.shape[:2] + (1,)).astype(np.float32)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    mode = "RGB" if pixels.shape[-1] == 3 else "L"
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(
        path, compress_level=1
    )


def _render_to(task: tuple[Path, int, int, int]) -> None:
    path, label, index, channels = task
    rng = np.random.default_rng([GENERATOR_SEED, label, index])
    _write_png(path, render_image(label, rng, channels))


def _plan(name: str, root: Path) -> list[tuple[Path, int, int, int]]:
    """(file, label, index, channels) for every image of the dataset, in a fixed order."""
    tasks = []
    for label, class_name in enumerate(CLASS_NAMES):
        for index in range(IMAGES_PER_CLASS):
            if name == "synthetic-skin":
                tasks.append(
                    (
                        root / "images" / class_name / f"{class_name}_{index:03d}.png",
                        label,
                        index,
                        3,
                    )
                )
            else:
                tasks.append((root / "images" / f"{label:04d}{index:04d}_000.png", label, index, 1))
    return tasks


def _patient_id(label: int, index: int) -> int:
    """Synthetic patients own two images each, so patient-wise splits have work to do."""
    return 1 + label * IMAGES_PER_CLASS // 2 + index // 2


def _write_nih_metadata(root: Path, tasks: list[tuple[Path, int, int, int]]) -> None:
    test_patients = {
        _patient_id(label, index)
        for _, label, index, _ in tasks
        if index >= IMAGES_PER_CLASS - TEST_IMAGES_PER_CLASS
    }
    with open(root / "Data_Entry_2017.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "Image Index",
                "Finding Labels",
                "Follow-up #",
                "Patient ID",
                "Patient Age",
                "Patient Gender",
                "View Position",
            ]
        )
        for path, label, index, _ in tasks:
            writer.writerow(
                [path.name, CLASS_NAMES[label], index % 2, _patient_id(label, index), 50, "F", "PA"]
            )
    names = {True: [], False: []}
    for path, label, index, _ in tasks:
        names[_patient_id(label, index) in test_patients].append(path.name)
    (root / "test_list.txt").write_text("\n".join(names[True]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(names[False]) + "\n")


def default_data_dir(name: str) -> Path:
    """Where the embedded dataset ``name`` is cached (``$HIRESMED_DATA_HOME`` or ``data/``)."""
    home = os.environ.get("HIRESMED_DATA_HOME")
    return (Path(home).expanduser() if home else resolve_path("data")) / name


def ensure_dataset(name: str, root: str | Path | None = None, workers: int | None = None) -> Path:
    """Generate the embedded dataset ``name`` into ``root`` unless it is already complete.

    Generation is deterministic (fixed seed) and atomic: images go to a temporary sibling folder
    that is renamed into place when every file is written. Processes asking at once (two
    notebooks, two test workers) generate it once: the others wait on a lock file beside it.
    Returns the dataset folder.
    """
    if name not in SYNTHETIC_DATASETS:
        raise HiresmedError(f"DATASET={name!r} is not an embedded dataset ({SYNTHETIC_DATASETS})")
    root = Path(root) if root else default_data_dir(name)
    if _is_complete(name, root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not _is_complete(name, root):  # or another process generated it while this one waited
            _generate(name, root, workers)
    return root


def _is_complete(name: str, root: Path) -> bool:
    """Whether ``root`` holds this version of ``name``; refuses a folder holding anything else."""
    marker = root / _MARKER
    if marker.exists():
        if f"version {GENERATOR_VERSION}" not in marker.read_text():
            raise HiresmedError(
                f"DATA_DIR {root} holds an older version of {name}; remove the folder to "
                f"regenerate version {GENERATOR_VERSION}"
            )
        return True
    if root.exists() and any(root.iterdir()):
        raise HiresmedError(
            f"DATA_DIR {root} exists but is not a complete {name} dataset (no {_MARKER}); "
            "remove it to regenerate"
        )
    return False


def _generate(name: str, root: Path, workers: int | None) -> None:
    """Render ``name`` into a staging folder beside ``root``, then rename it into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root.parent))
    try:
        tasks = _plan(name, staging)
        for folder in {path.parent for path, *_ in tasks}:
            folder.mkdir(parents=True, exist_ok=True)
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
            list(pool.map(_render_to, tasks, chunksize=8))
        if name == "synthetic-xray":
            _write_nih_metadata(staging, tasks)
        (staging / _MARKER).write_text(
            f"{SYNTHETIC_NOTE}.\nGenerated by hiresmed_nb.science.synthetic, generator version "
            f"{GENERATOR_VERSION} (seed {GENERATOR_SEED}).\n"
            f"Class signal: stripes of period {TEXTURE_PERIOD_PX} px at {NATIVE_SIZE} px, "
            f"unresolvable below {RESOLVABLE_FROM_PX} px.\n"
        )
        if root.exists():
            root.rmdir()
        try:
            staging.rename(root)
        except OSError:
            if not (root / _MARKER).exists():  # another process finished first: keep its copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
