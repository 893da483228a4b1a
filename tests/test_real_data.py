"""The real datasets as downloaded: NIH ChestX-ray14 and SD-198 layouts, unusable files, metrics.

The NIH folders are built from real metadata rows (tests/fixtures/nih, 2,000 rows of both entries
files) with small synthetic PNGs under the real file names; the SD-198 folders from made-up JPEGs.
Nothing here reads /work/shared or the network.
"""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.science import data, training

FIXTURES = Path(__file__).parent / "fixtures" / "nih"
SAMPLES = {
    "v2020": FIXTURES / "Data_Entry_2017_v2020.sample.csv.gz",
    "2017": FIXTURES / "Data_Entry_2017.sample.csv.gz",
}
ENTRIES_NAME = {"v2020": "Data_Entry_2017_v2020.csv", "2017": "Data_Entry_2017.csv"}
FOUR_LARGEST = ["Atelectasis", "Effusion", "Infiltration", "No Finding"]
PIXEL = 64  # side of the fixture images; the loaders resize anyway


def sample_entries(version: str = "v2020") -> pd.DataFrame:
    return pd.read_csv(SAMPLES[version], index_col=False)


def grey_value(name: str) -> int:
    return 40 + sum(name.encode()) % 170


def write_nih_png(path: Path, kind: str) -> None:
    """A flat grey PNG: 8-bit greyscale, RGBA (as some NIH files are) or 16-bit greyscale."""
    value = grey_value(path.name)
    grey = np.full((PIXEL, PIXEL), value, np.uint8)
    if kind == "RGBA":
        image = Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA")
    elif kind == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    else:
        image = Image.fromarray(grey, "L")
    image.save(path)


def png_kind(position: int) -> str:
    return {0: "RGBA", 1: "I;16"}.get(position % 10, "L")


def is_official_test_patient(patient_id: int) -> bool:
    """The fixture's stand-in for test_list.txt: patient-disjoint, a fifth of the patients."""
    return patient_id % 5 == 0


def build_nih(root: Path, version: str, archives: bool, compressed: bool, lists: bool) -> Path:
    """An NIH folder as downloaded: entries file, images/ or images_00N/images/, split lists."""
    root.mkdir(parents=True)
    entries_file = root / (ENTRIES_NAME[version] + (".gz" if compressed else ""))
    raw = gzip.decompress(SAMPLES[version].read_bytes())
    entries_file.write_bytes(gzip.compress(raw) if compressed else raw)
    entries = sample_entries("v2020")
    names = entries["Image Index"].tolist()
    for position, name in enumerate(names):
        folder = root / (
            f"images_{1 + 3 * position // len(names):03d}/images" if archives else "images"
        )
        folder.mkdir(parents=True, exist_ok=True)
        write_nih_png(folder / name, png_kind(position))
    if lists:
        is_test = entries["Patient ID"].map(is_official_test_patient)
        (root / "test_list.txt").write_text("\n".join(entries.loc[is_test, "Image Index"]) + "\n")
        (root / "train_val_list.txt").write_text(
            "\n".join(entries.loc[~is_test, "Image Index"]) + "\n"
        )
    return root


def nih_file(root: Path, name: str) -> Path:
    [path] = list(root.glob(f"images*/{name}")) + list(root.glob(f"images_*/images/{name}"))
    return path


def official_test_rows(label: str) -> list[str]:
    entries = sample_entries("v2020")
    rows = entries[
        (entries["Finding Labels"] == label) & entries["Patient ID"].map(is_official_test_patient)
    ]
    return sorted(rows["Image Index"])


@pytest.fixture(scope="session")
def nih_flat(tmp_path_factory) -> Path:
    """v2020 CSV, plain, images/, official lists; one selected test file missing, one corrupt."""
    root = build_nih(
        tmp_path_factory.mktemp("nih") / "flat",
        "v2020",
        archives=False,
        compressed=False,
        lists=True,
    )
    missing, corrupt = official_test_rows("Effusion")[:2]
    nih_file(root, missing).unlink()
    nih_file(root, corrupt).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture(scope="session")
def nih_archives(tmp_path_factory) -> Path:
    """The original 2017 CSV, gzipped, images_001/images/ ... images_003/images/, no lists."""
    return build_nih(
        tmp_path_factory.mktemp("nih") / "archives",
        "2017",
        archives=True,
        compressed=True,
        lists=False,
    )


def patients_of(files: list[str]) -> set[int]:
    patients = sample_entries("v2020").set_index("Image Index")["Patient ID"]
    return {int(patients[Path(f).name]) for f in files}


def test_both_entries_files_read_to_the_same_images_and_patients():
    tmp = {version: data.read_nih_entries_file(SAMPLES[version]) for version in SAMPLES}
    assert list(tmp["2017"].columns) == ["Image Index", "Finding Labels", "Patient ID"]
    assert len(tmp["2017"]) == len(tmp["v2020"]) == 2000
    merged = tmp["v2020"].merge(tmp["2017"], on="Image Index", suffixes=("_2020", "_2017"))
    assert len(merged) == 2000
    assert (merged["Patient ID_2020"] == merged["Patient ID_2017"]).all()
    assert merged["Patient ID_2017"].min() == 1  # "00000001" in the 2017 file


@pytest.mark.parametrize("fixture", ["nih_flat", "nih_archives"])
def test_nih_keeps_single_label_rows_of_the_four_largest_classes_split_by_patient(fixture, request):
    root = request.getfixturevalue(fixture)
    split = data.make_split("nih", root, 10, seed=0)
    assert split.class_names == FOUR_LARGEST and split.greyscale
    version = {"nih_flat": "v2020", "nih_archives": "2017"}[fixture]
    labels = sample_entries(version).set_index("Image Index")["Finding Labels"].str.strip()
    for files, file_labels in (
        (split.train_files, split.train_labels),
        (split.test_files, split.test_labels),
    ):
        assert [labels[Path(f).name] for f in files] == [split.class_names[i] for i in file_labels]
        assert all((root / f).is_file() for f in files)
    assert np.bincount(split.train_labels).tolist() == [10] * 4
    assert not patients_of(split.train_files) & patients_of(split.test_files)
    selected = sample_entries(version).query("`Finding Labels` in @FOUR_LARGEST")
    share = len(patients_of(split.test_files)) / selected["Patient ID"].nunique()
    assert 0.1 < share < 0.3
    if fixture == "nih_archives":
        assert {f.split("/")[0] for f in split.test_files} == {
            "images_001",
            "images_002",
            "images_003",
        }


def test_official_lists_give_the_whole_test_set_minus_unusable_files(nih_flat):
    split = data.make_split("nih", nih_flat, 5, seed=0)
    expected = {label: len(official_test_rows(label)) for label in FOUR_LARGEST}
    expected["Effusion"] -= 2  # one file missing, one corrupt
    assert dict(zip(FOUR_LARGEST, np.bincount(split.test_labels).tolist(), strict=True)) == expected
    entries = sample_entries("v2020")
    assert split.skipped == {"missing": 1, "undecodable": 1}
    assert split.checked["exists"] == int(entries["Finding Labels"].isin(FOUR_LARGEST).sum())
    assert split.checked["decodes"] == len(split.test_files) + len(split.train_files) + 1
    missing, corrupt = official_test_rows("Effusion")[:2]
    used = {Path(f).name for f in split.train_files + split.test_files}
    assert missing not in used and corrupt not in used


def test_test_set_cap_and_test_set_do_not_depend_on_the_seed(nih_archives):
    first = data.make_split("nih", nih_archives, 5, seed=0, test_images_per_class=7)
    other = data.make_split("nih", nih_archives, 5, seed=1, test_images_per_class=7)
    assert np.bincount(first.test_labels).tolist() == [7] * 4
    assert first.test_files == other.test_files
    assert first.train_files != other.train_files


def test_classes_parameter_picks_and_orders_the_classes(nih_archives):
    split = data.make_split("nih", nih_archives, 3, seed=0, classes=["Pneumothorax", "Nodule"])
    assert split.class_names == ["Pneumothorax", "Nodule"]
    assert np.bincount(split.train_labels).tolist() == [3, 3]
    with pytest.raises(HiresmedError, match=r"CLASSES names \['Infiltrate'\] not found"):
        data.make_split("nih", nih_archives, 3, seed=0, classes=["Infiltrate", "Nodule"])
    with pytest.raises(HiresmedError, match="CLASSES names"):  # only ever in multi-label rows
        data.make_split("nih", nih_archives, 3, seed=0, classes=["Effusion|Infiltration", "Mass"])


def test_too_many_images_per_class_names_the_class_and_its_pool(nih_flat):
    pool = len(sample_entries("v2020").query("`Finding Labels` == 'Atelectasis'")) - len(
        official_test_rows("Atelectasis")
    )
    data.make_split("nih", nih_flat, pool, seed=0, classes=["Atelectasis", "Effusion"])
    with pytest.raises(HiresmedError, match=rf"'Atelectasis' holds only {pool} training"):
        data.make_split("nih", nih_flat, pool + 1, seed=0, classes=["Atelectasis", "Effusion"])


def test_more_than_one_percent_missing_files_fails_naming_data_dir(nih_archives, tmp_path):
    root = shutil.copytree(nih_archives, tmp_path / "nih")
    selected = sample_entries("2017").query("`Finding Labels` in @FOUR_LARGEST")["Image Index"]
    assert len(selected) == 1320
    gone = selected.iloc[:: len(selected) // 15][:15]  # 15 of 1,320 selected rows: 1.1%
    for name in gone:
        nih_file(root, name).unlink()
    with pytest.raises(HiresmedError, match=r"DATA_DIR .*: 15 of 1320 selected rows .* no image"):
        data.make_split("nih", root, 5, seed=0)
    nih_file(shutil.copytree(nih_archives, tmp_path / "again"), gone.iloc[0]).unlink()
    assert data.make_split("nih", tmp_path / "again", 5, seed=0).skipped["missing"] == 1


def test_more_than_one_percent_undecodable_files_fails(nih_archives, tmp_path):
    root = shutil.copytree(nih_archives, tmp_path / "nih")
    split = data.make_split("nih", root, 5, seed=0)
    checked = len(split.test_files) + len(split.train_files)
    for name in split.test_files[: checked // 50]:  # 2%
        (root / name).write_bytes(b"truncated")
    with pytest.raises(HiresmedError, match=r"DATA_DIR .* image files checked do not decode"):
        data.make_split("nih", root, 5, seed=0)


def test_an_undecodable_training_draw_is_replaced(nih_archives, tmp_path):
    root = shutil.copytree(nih_archives, tmp_path / "nih")
    before = data.make_split("nih", root, 5, seed=3)
    (root / before.train_files[0]).write_bytes(b"")
    after = data.make_split("nih", root, 5, seed=3)
    assert np.bincount(after.train_labels).tolist() == [5] * 4
    assert before.train_files[0] not in after.train_files
    assert len(set(before.train_files) & set(after.train_files)) == 19
    assert after.skipped == {"missing": 0, "undecodable": 1}


def test_split_lists_sharing_a_patient_are_refused(nih_flat, tmp_path):
    root = shutil.copytree(nih_flat, tmp_path / "nih")
    train_list = (root / "train_val_list.txt").read_text().split()
    (root / "test_list.txt").write_text("\n".join([train_list[0]]) + "\n")
    with pytest.raises(HiresmedError, match="put 1 patients on both sides"):
        data.make_split("nih", root, 5, seed=0)


def test_nih_folder_without_images_is_named(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_bytes(gzip.decompress(SAMPLES["2017"].read_bytes()))
    with pytest.raises(HiresmedError, match=r"DATA_DIR .* has no images/ folder"):
        data.make_split("nih", tmp_path, 5, seed=0)


@pytest.mark.parametrize("kind", ["L", "RGBA", "I;16"])
def test_greyscale_rgba_and_16_bit_pngs_decode_to_the_same_three_channels(tmp_path, kind):
    path = tmp_path / "00000001_000.png"
    write_nih_png(path, kind)
    image = data.load_image(str(path), 32, greyscale=True).numpy()
    assert image.shape == (32, 32, 3)
    assert np.allclose(image, grey_value(path.name), atol=0.51)


# SD-198 ---------------------------------------------------------------------------------------

SD198_COUNTS = {
    "Acne_Keloidalis_Nuchae": 40,
    "Actinic_solar_Damage(Actinic_Keratosis)": 41,
    "Allergic_Contact_Dermatitis": 42,
    "Basal_Cell_Carcinoma": 43,
    "Blue_Nevus": 44,
    "Dermatofibroma": 45,
    "Eczema": 46,
    "Epidermoid_Cyst": 47,
    "Keloid": 48,
    # three classes tie at the 10th count: the alphabetically first one is chosen
    "Stasis_Ulcer": 34,
    "Seborrheic_Keratosis": 34,
    "Psoriasis": 34,
    "Tinea_Pedis": 33,
}
SD198_TENTH = "Psoriasis"


def write_jpeg(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> None:
    Image.new("RGB", size, rgb).save(path, quality=95)


@pytest.fixture(scope="session")
def sd198_dir(tmp_path_factory) -> Path:
    """SD-198 as downloaded: images/<class>/<file>.jpg, 8_2_split/ lists (unused), a stray file."""
    root = tmp_path_factory.mktemp("sd198") / "SD-198"
    for index, (name, count) in enumerate(sorted(SD198_COUNTS.items())):
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for i in range(count):
            write_jpeg(folder / f"{name.lower()}_{i:03d}.jpg", (20 * index, 128, 255 - 20 * index))
    (root / "images" / "Keloid" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "8_2_split").mkdir()
    (root / "8_2_split" / "train_1.txt").write_text("Keloid/keloid_000.jpg 8\n")
    (root / "8_2_split" / "val_1.txt").write_text("Keloid/keloid_001.jpg 8\n")
    return root


def test_sd198_ten_largest_classes_with_ties_broken_by_name(sd198_dir):
    split = data.make_split("sd198", sd198_dir, 3, seed=0)
    largest_nine = [name for name, count in SD198_COUNTS.items() if count >= 40]
    assert split.class_names == sorted(largest_nine + [SD198_TENTH])
    assert np.bincount(split.test_labels).tolist() == [30] * 10
    assert np.bincount(split.train_labels).tolist() == [3] * 10
    assert not set(split.train_files) & set(split.test_files)
    assert all(
        f.split("/")[1] == split.class_names[label]
        for f, label in zip(split.train_files, split.train_labels, strict=True)
    )
    assert split.skipped == {"missing": 0, "undecodable": 0}
    assert split.checked == {
        "exists": sum(SD198_COUNTS[name] for name in split.class_names),
        "decodes": 330,
    }
    with pytest.raises(HiresmedError, match=rf"IMAGES_PER_CLASS=5 but class '{SD198_TENTH}'"):
        data.make_split("sd198", sd198_dir, 5, seed=0)
    named = data.make_split("sd198", sd198_dir, 3, seed=0, classes=["Tinea_Pedis", "Keloid"])
    assert named.class_names == ["Tinea_Pedis", "Keloid"]


def test_sd198_undecodable_test_image_is_replaced_and_counted(sd198_dir, tmp_path):
    root = shutil.copytree(sd198_dir, tmp_path / "SD-198")
    before = data.make_split("sd198", root, 2, seed=0)
    broken = before.test_files[0]
    (root / broken).write_bytes((root / broken).read_bytes()[:200])  # truncated download
    after = data.make_split("sd198", root, 2, seed=0)
    assert broken not in after.test_files + after.train_files
    assert np.bincount(after.test_labels).tolist() == [30] * 10
    assert after.skipped == {"missing": 0, "undecodable": 1}


def test_jpeg_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, 32:] = 255  # left half dark, right half bright, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    image = data.load_image(str(path), 32, greyscale=False).numpy()
    top, bottom = image[:12].mean(), image[-12:].mean()
    left, right = image[:, :12].mean(), image[:, -12:].mean()
    assert top < 40 and bottom > 215  # displayed: dark on top, bright below
    assert abs(left - right) < 20


def test_greyscale_and_cmyk_jpegs_become_rgb(tmp_path):
    grey = tmp_path / "grey.jpg"
    Image.new("L", (40, 40), 90).save(grey, quality=95)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("RGB", (40, 40), (200, 30, 30)).convert("CMYK").save(cmyk, quality=95)
    grey_image = data.load_image(str(grey), 32, greyscale=False).numpy()
    assert grey_image.shape == (32, 32, 3) and np.allclose(grey_image, 90, atol=3)
    red = data.load_image(str(cmyk), 32, greyscale=False).numpy().mean(axis=(0, 1))
    assert red[0] > 170 and red[1] < 70 and red[2] < 70


# Evaluation -----------------------------------------------------------------------------------


class FixedModel:
    """Stands in for a Keras model: predict returns fixed softmax probabilities."""

    def __init__(self, probabilities):
        self.probabilities = np.asarray(probabilities, dtype=float)

    def predict(self, dataset, verbose=0):
        return self.probabilities


def test_evaluate_reports_per_class_auroc_and_none_for_an_absent_class():
    probabilities = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1]]
    labels = [0, 1, 1, 0]  # class 2 never occurs in the test set
    result = training.evaluate(FixedModel(probabilities), None, labels, ["a", "b", "c"])
    assert result["per_class_auroc"] == {"a": 0.75, "b": 0.75, "c": None}
    assert result["macro_auroc"] == 0.75
    assert result["accuracy"] == 0.5
    assert result["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
    json.dumps(result)  # plain values only


# Notebook runs on the fixtures ------------------------------------------------------------------


@pytest.mark.notebook
def test_train_notebook_runs_on_the_nih_download_layout(tmp_path, nih_flat):
    from test_train_notebook import execute

    record, _ = execute(tmp_path, MODE="serial", DATASET="nih", DATA_DIR=str(nih_flat))
    test_total = sum(len(official_test_rows(label)) for label in FOUR_LARGEST) - 2
    assert record["run_id"] == "nih_compact_32px_4ipc_serial1_seed0"
    assert record["synthetic"] is False
    assert record["class_names"] == FOUR_LARGEST
    assert record["n_train"] == 16 and record["n_test"] == test_total
    assert sum(map(sum, record["confusion_matrix"])) == test_total
    assert set(record["per_class_auroc"]) == set(FOUR_LARGEST)
    assert all(0.0 <= value <= 1.0 for value in record["per_class_auroc"].values())
    assert 0.0 <= record["macro_auroc"] <= 1.0


@pytest.mark.notebook
def test_train_notebook_runs_on_the_sd198_download_layout(tmp_path, sd198_dir):
    from test_train_notebook import execute

    record, _ = execute(
        tmp_path, MODE="serial", DATASET="sd198", DATA_DIR=str(sd198_dir), IMAGES_PER_CLASS=2
    )
    assert record["run_id"] == "sd198_compact_32px_2ipc_serial1_seed0"
    assert len(record["class_names"]) == 10 and SD198_TENTH in record["class_names"]
    assert record["n_train"] == 20 and record["n_test"] == 300
    assert sum(map(sum, record["confusion_matrix"])) == 300
    assert set(record["per_class_auroc"]) == set(record["class_names"])
    assert 0.0 <= record["macro_auroc"] <= 1.0
