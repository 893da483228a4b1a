"""Loaders: layouts, deterministic splits, disjoint shards, the tf.data pipeline."""

import numpy as np
import pytest

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.science import data, models


def test_split_is_deterministic_and_test_set_independent_of_seed(skin_dir):
    first = data.make_split("synthetic-skin", skin_dir, 10, seed=0)
    again = data.make_split("synthetic-skin", skin_dir, 10, seed=0)
    other = data.make_split("synthetic-skin", skin_dir, 10, seed=1)
    assert first.train_files == again.train_files
    assert first.train_files != other.train_files
    assert first.test_files == other.test_files
    assert not set(first.train_files) & set(first.test_files)
    assert np.bincount(first.train_labels).tolist() == [10] * 4
    assert np.bincount(first.test_labels).tolist() == [20] * 4


def test_nih_layout_split_keeps_patients_apart(xray_dir):
    import pandas as pd

    split = data.make_split("synthetic-xray", xray_dir, 20, seed=0)
    patients = pd.read_csv(xray_dir / "Data_Entry_2017.csv").set_index("Image Index")["Patient ID"]
    train = {patients[f.split("/")[-1]] for f in split.train_files}
    test = {patients[f.split("/")[-1]] for f in split.test_files}
    assert split.greyscale and not train & test
    assert np.bincount(split.train_labels).tolist() == [20] * 4


def test_too_many_images_per_class_names_the_class_and_its_count(skin_dir):
    with pytest.raises(HiresmedError, match=r"IMAGES_PER_CLASS=61.*'stripes_000deg' holds only 60"):
        data.make_split("synthetic-skin", skin_dir, 61, seed=0)


@pytest.mark.parametrize("dataset", ["synthetic-skin", "nih"])
def test_missing_data_dir_says_which_layout_was_expected(tmp_path, dataset):
    with pytest.raises(HiresmedError, match=r"DATA_DIR .* does not exist .*layout"):
        data.make_split(dataset, tmp_path / "absent", 5, seed=0)


def test_wrong_layout_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(HiresmedError, match="no class folders"):
        data.make_split("sd198", tmp_path, 5, seed=0)
    with pytest.raises(HiresmedError, match="Data_Entry_2017"):
        data.make_split("nih", tmp_path, 5, seed=0)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_shards_are_disjoint_and_cover_the_training_set(size):
    files = [f"f{i}.png" for i in range(23)]
    labels = list(range(23))
    shards = [data.shard(files, labels, rank, size, seed=4) for rank in range(size)]
    seen = [name for shard_files, _ in shards for name in shard_files]
    assert sorted(seen) == sorted(files) and len(seen) == len(set(seen))
    for shard_files, shard_labels in shards:
        assert [int(f[1:-4]) for f in shard_files] == shard_labels
    assert max(len(s[0]) for s in shards) - min(len(s[0]) for s in shards) <= 1


def test_pipeline_yields_preprocessed_batches_of_the_requested_size(skin_dir, xray_dir):
    for dataset, folder in (("synthetic-skin", skin_dir), ("synthetic-xray", xray_dir)):
        split = data.make_split(dataset, folder, 2, seed=0)
        pipeline = data.make_dataset(
            split,
            split.train_files,
            split.train_labels,
            40,
            models.preprocessing_for("compact"),
            batch_size=3,
        )
        images, labels = next(iter(pipeline))
        assert images.shape == (3, 40, 40, 3)
        assert 0.0 <= float(images.numpy().min()) and float(images.numpy().max()) <= 1.0
        assert labels.numpy().tolist() == split.train_labels[:3]
