"""The embedded synthetic dataset: deterministic, in the real layouts, resolution-dependent."""

import fcntl
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sessions import flock_waiters, until

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.science import synthetic
from hiresmed_nb.science.data import load_image


def render(label: int, index: int, texture_scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng([synthetic.GENERATOR_SEED, label, index])
    return synthetic.render_image(label, rng, 3, texture_scale)


def test_generator_is_deterministic_and_classes_differ():
    first, again = render(1, 5), render(1, 5)
    assert first.shape == (1024, 1024, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - render(2, 5).astype(int)).mean() > 1


def texture_left_after_resize(size: int, tmp_path) -> float:
    """RMS of (image - same image without texture) after resizing, over the same at 1024 px."""
    residuals = []
    for target in (size, synthetic.NATIVE_SIZE):
        pair = []
        for scale in (1.0, 0.0):
            path = tmp_path / f"{scale}.png"
            synthetic._write_png(path, render(0, 3, scale))
            pair.append(load_image(tf.constant(str(path)), target, greyscale=False).numpy())
        residuals.append(float(np.sqrt(np.mean((pair[0] - pair[1]) ** 2))))
    return residuals[0] / residuals[1]


def test_class_texture_is_lost_below_the_resolvable_size_and_kept_above(tmp_path):
    below = synthetic.RESOLVABLE_FROM_PX // 2  # stripes of 1 px: beyond Nyquist
    above = synthetic.RESOLVABLE_FROM_PX * 2  # stripes of 4 px
    assert texture_left_after_resize(below, tmp_path) < 0.1
    assert texture_left_after_resize(above, tmp_path) > 0.5


def test_skin_layout_is_sd198(skin_dir):
    folders = sorted(p.name for p in (skin_dir / "images").iterdir())
    assert folders == list(synthetic.CLASS_NAMES)
    counts = [len(list((skin_dir / "images" / name).glob("*.png"))) for name in folders]
    assert counts == [synthetic.IMAGES_PER_CLASS] * len(folders)
    assert "SYNTHETIC" in (skin_dir / "SYNTHETIC.txt").read_text()


def test_xray_layout_is_nih_with_patient_disjoint_lists(xray_dir):
    entries = pd.read_csv(xray_dir / "Data_Entry_2017.csv")
    assert {"Image Index", "Finding Labels", "Patient ID"} <= set(entries.columns)
    assert len(entries) == synthetic.IMAGES_PER_CLASS * len(synthetic.CLASS_NAMES)
    test_names = set((xray_dir / "test_list.txt").read_text().split())
    train_names = set((xray_dir / "train_val_list.txt").read_text().split())
    assert test_names and train_names and not test_names & train_names
    patients = entries.set_index("Image Index")["Patient ID"]
    assert not set(patients[list(test_names)]) & set(patients[list(train_names)])
    image = tf.io.decode_png(tf.io.read_file(str(xray_dir / "images" / entries["Image Index"][0])))
    assert image.shape == (1024, 1024, 1)


def test_a_partial_folder_is_refused_not_overwritten(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(HiresmedError, match="DATA_DIR"):
        synthetic.ensure_dataset("synthetic-skin", tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_cache_from_an_older_generator_is_refused(tmp_path):
    (tmp_path / "SYNTHETIC.txt").write_text("generator version 1\n")
    with pytest.raises(HiresmedError, match="older version"):
        synthetic.ensure_dataset("synthetic-skin", tmp_path)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks (Linux)")
def test_processes_asking_for_a_dataset_at_once_generate_it_once(tmp_path, monkeypatch):
    generated = []

    def generate(name, root, workers):  # stands in for minutes of rendering
        generated.append(name)
        root.mkdir()
        (root / "SYNTHETIC.txt").write_text(f"version {synthetic.GENERATOR_VERSION}\n")

    monkeypatch.setattr(synthetic, "_generate", generate)
    root = tmp_path / "synthetic-skin"
    lock = tmp_path / ".synthetic-skin.lock"
    with open(lock, "a") as first, ThreadPoolExecutor(1) as other:
        fcntl.flock(first, fcntl.LOCK_EX)  # a first process is generating
        second = other.submit(synthetic.ensure_dataset, "synthetic-skin", root)
        until(
            lambda: flock_waiters(lock) or second.done(),
            "the second caller never waited on the lock",
        )
        assert not second.done()  # it waits for the first
        generate("synthetic-skin", root, None)  # the first finishes
        fcntl.flock(first, fcntl.LOCK_UN)
        assert second.result(timeout=60) == root
    assert generated == ["synthetic-skin"]  # the second found it complete: not generated twice
