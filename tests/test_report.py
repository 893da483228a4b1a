"""Tests of the report: loading records, intervals, the paper lookup, findings and the notebook."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from hiresmed_nb import report, study
from hiresmed_nb.params import HiresmedError, project_root

FIXTURES = Path(__file__).parent / "fixtures" / "records"
ARTIFACTS = project_root() / "outputs" / "test-artifacts"


def records(*rows: dict) -> pd.DataFrame:
    """Records as load_records returns them, from short dicts (defaults fill the rest)."""
    full = []
    for row in rows:
        mode = row.get("mode", "serial")
        ranks = row.get("n_ranks", 1 if mode == "serial" else 2)
        full.append(
            {
                "run_id": "r",
                "dataset": "synthetic-skin",
                "arch": "compact",
                "image_size": 64,
                "images_per_class": 10,
                "mode": mode,
                "n_ranks": ranks,
                "seed": 0,
                "learning_rate": 1e-3,
                "batch_size_per_rank": 4,
                "effective_batch_size": 4 * ranks,
                "epochs": 2,
                "accuracy": 0.5,
                "balanced_accuracy": 0.5,
                "macro_f1": 0.5,
                "n_train": 20,
                "n_test": 10,
                "train_seconds": 1.0,
                "synthetic": True,
                **report.OPTIONAL_COLUMNS,
                **row,
            }
        )
    return pd.DataFrame(full, columns=[*report.RECORD_COLUMNS, *report.OPTIONAL_COLUMNS])


def seeds(accuracies: list[float], **cell) -> list[dict]:
    return [dict(cell, seed=i, accuracy=a) for i, a in enumerate(accuracies)]


# --- loading -----------------------------------------------------------------------------------


def test_load_records_reads_ok_records_and_skips_failures():
    frame = report.load_records(FIXTURES)
    assert len(frame) == 10
    assert set(frame["mode"]) == {"serial", "distributed"}
    failures = report.load_failures(FIXTURES)
    assert list(failures["run_id"]) == ["synthetic-skin_compact_128px_10ipc_serial1_seed0"]
    assert failures["cell_index"].iloc[0] == 7


def test_load_records_names_the_bad_file(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "broken.json").write_text("{not json")
    with pytest.raises(HiresmedError, match="broken.json"):
        report.load_records(tmp_path)
    (tmp_path / "runs" / "broken.json").write_text(json.dumps({"run_id": "x", "status": "ok"}))
    with pytest.raises(HiresmedError, match=r"broken.json.*lacks dataset"):
        report.load_records(tmp_path)


def test_load_records_of_a_missing_folder_names_study_dir(tmp_path):
    with pytest.raises(HiresmedError, match="STUDY_DIR"):
        report.load_records(tmp_path / "nowhere")


def test_an_empty_study_loads_as_an_empty_frame(tmp_path):
    assert report.load_records(tmp_path).empty
    assert report.usage(report.load_records(tmp_path)) == "No run has finished yet."


def test_unknown_metric_is_named():
    with pytest.raises(HiresmedError, match="METRIC='acc'"):
        report.check_metric("acc")


# --- statistics --------------------------------------------------------------------------------


def test_one_seed_has_no_interval():
    assert report.mean_ci([0.7]) == (0.7, None)
    assert report.format_value(0.7, math.nan, 1) == "70.0 (n=1)"


def test_interval_is_the_student_t_interval():
    values = [0.50, 0.54, 0.58, 0.49]
    mean, half = report.mean_ci(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    assert mean == pytest.approx(sum(values) / 4)
    assert half == pytest.approx((high - low) / 2)
    assert report.format_value(mean, half, 4) == f"{100 * mean:.1f} ± {100 * half:.1f} (n=4)"


def test_interval_of_nothing_is_an_error():
    with pytest.raises(HiresmedError):
        report.mean_ci([])


# --- the paper's table -------------------------------------------------------------------------


def test_paper_lookup_matches_dataset_arch_size_images_and_mode():
    paper = report.load_paper_table()
    assert report.paper_accuracy(paper, "sd198", "VGG16", 112, 10, "serial") == 42.9
    assert report.paper_accuracy(paper, "sd198", "ResNet50", 112, 10, "serial") == 48.63
    assert report.paper_accuracy(paper, "sd198", "VGG16", 112, 10, "distributed") == 51.0
    assert report.paper_accuracy(paper, "nih", "DenseNet169", 512, 600, "distributed") == 67.0
    assert report.paper_accuracy(paper, "sd198", "VGG16", 600, 10, "serial") is None
    assert report.paper_accuracy(paper, "synthetic-skin", "compact", 64, 10, "serial") is None


def test_packaged_table_is_the_papers_64_cells():
    paper = report.load_paper_table()
    assert len(paper) == 64
    assert not paper.duplicated(report.CELL).any()


def test_table2_puts_the_papers_value_beside_ours_with_ranks_lr_and_batch():
    cell = {"dataset": "sd198", "arch": "VGG16", "image_size": 112, "images_per_class": 10}
    rows = seeds([0.40, 0.44, 0.42], **cell, synthetic=False)
    rows += seeds([0.5], **cell, mode="distributed", n_ranks=4, learning_rate=8e-5, synthetic=False)
    table = report.table2(records(*rows))
    key = ("sd198", 112, 10)
    assert table.loc[key, ("serial", "VGG16", "paper (%)")] == "42.90"
    assert table.loc[key, ("serial", "VGG16", "ours (%)")].startswith("42.0 ± ")
    assert table.loc[key, ("serial", "VGG16", "ours (%)")].endswith("(n=3)")
    assert table.loc[key, ("distributed", "VGG16", "ours (%)")] == "50.0 (n=1)"
    assert table.loc[key, ("distributed", "VGG16", "paper (%)")] == "51.00"
    assert table.loc[key, ("distributed", "VGG16", "ranks")] == "4"
    assert table.loc[key, ("distributed", "VGG16", "lr")] == "8.0e-05"
    assert table.loc[key, ("distributed", "VGG16", "eff. batch")] == "16"
    assert "SYNTHETIC" not in report.table2_caption(records(*rows))


def test_synthetic_numbers_carry_the_warning_in_caption_and_figure_title():
    frame = records(*seeds([0.5, 0.6]), *seeds([0.7], image_size=32))
    assert report.table2_caption(frame).startswith(report.SYNTHETIC_WARNING)
    assert report.SYNTHETIC_WARNING in report.table2_html(frame)
    grid = report.plot_figure2(frame)
    assert report.SYNTHETIC_WARNING in grid.figure._suptitle.get_text()


def test_figure_has_one_panel_per_arch_and_data_size():
    frame = records(
        *seeds([0.5, 0.6], arch="compact"),
        *seeds([0.5, 0.6], arch="compact", images_per_class=30),
        *seeds([0.5, 0.6], arch="VGG16", mode="distributed"),
    )
    grid = report.plot_figure2(frame)
    assert grid.axes.shape == (2, 2)


# --- findings ----------------------------------------------------------------------------------


def test_best_resolution_names_an_interior_optimum():
    frame = records(
        *seeds([0.50, 0.52], image_size=32),
        *seeds([0.70, 0.72], image_size=64),
        *seeds([0.60, 0.62], image_size=128),
    )
    (sentence,) = report.best_resolution(frame)
    assert "best at 64 px (71.0%)" in sentence
    assert "interior optimum" in sentence
    assert "10.0 points above the next best, 128 px" in sentence


def test_best_resolution_at_the_edge_says_so():
    frame = records(*seeds([0.5], image_size=32), *seeds([0.8], image_size=128))
    (sentence,) = report.best_resolution(frame)
    assert "best at 128 px (80.0%), the largest size tried" in sentence


def test_tied_resolutions_have_no_single_best():
    frame = records(*seeds([0.25], image_size=32), *seeds([0.25], image_size=48))
    (sentence,) = report.best_resolution(frame)
    assert "no single best resolution; 32 px, 48 px tie at 25.0%" in sentence


def test_distributed_beating_serial_beyond_the_seed_spread():
    frame = records(
        *seeds([0.50, 0.52, 0.54]),
        *seeds([0.60, 0.62, 0.64], mode="distributed"),
    )
    (sentence,) = report.distributed_vs_serial(frame)
    assert "distributed beats serial by 10.0 points, more than the seed spread (2.0 points)" in (
        sentence
    )


def test_a_difference_within_the_seed_spread_is_no_win():
    frame = records(*seeds([0.50, 0.60, 0.70]), *seeds([0.58, 0.62, 0.66], mode="distributed"))
    (sentence,) = report.distributed_vs_serial(frame)
    assert "within the seed spread" in sentence and "beats serial by" not in sentence


def test_serial_beating_distributed_is_reported():
    frame = records(*seeds([0.80, 0.81]), *seeds([0.60, 0.61], mode="distributed"))
    (sentence,) = report.distributed_vs_serial(frame)
    assert "serial beats distributed by 20.0 points" in sentence


def test_one_seed_gives_no_verdict():
    frame = records(*seeds([0.5]), *seeds([0.9, 0.91], mode="distributed"))
    (sentence,) = report.distributed_vs_serial(frame)
    assert "no verdict" in sentence


def test_usage_sums_images_and_time():
    frame = records(
        *seeds([0.5, 0.6], n_train=20, epochs=2, train_seconds=30.0),
        *seeds([0.5], n_train=40, epochs=3, train_seconds=60.0, image_size=32),
    )
    text = report.usage(frame)
    assert text.startswith("3 runs trained on 80 training images")
    assert "(200 image passes" in text
    assert "2.0 minutes of training (120 s)" in text


# --- the report notebook -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """The fixture study rendered through 02_report.ipynb and nbconvert, as the runner does."""
    study_dir = tmp_path_factory.mktemp("study") / "fixture"
    shutil.copytree(FIXTURES, study_dir)
    return study.render_report(study_dir)


@pytest.mark.notebook
def test_report_notebook_renders_the_table_figure_findings_and_failures(rendered):
    html = rendered.read_text()
    assert (rendered.parent / "report.ipynb").exists()
    assert "Table 2 replica" in html
    # the three-seed cell with its interval, the one-seed cell without
    mean, half = report.mean_ci([0.50, 0.54, 0.52])
    assert f"{100 * mean:.1f} ± {100 * half:.1f} (n=3)" in html
    assert "70.0 (n=1)" in html
    assert html.count(report.SYNTHETIC_WARNING) >= 3  # banner, table caption, figure/findings
    assert "synthetic-skin_compact_128px_10ipc_serial1_seed0" in html  # the failed run
    assert re.search(r'<img[^>]+src="data:image/png;base64,', html)
    assert "report.load_records" not in html  # code hidden


@pytest.mark.notebook
def test_report_html_opens_in_headless_chromium(rendered, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    url = rendered.resolve().as_uri()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1400,3000", url],
        check=True,
        capture_output=True,
        timeout=180,
    )
    assert shot.stat().st_size > 10_000
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    assert "Table 2 replica" in dom
    assert "<table" in dom and "52.0 ± 5.0 (n=3)" in dom
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom)
    assert report.SYNTHETIC_WARNING in dom


# --- the accumulation arm and the data-locality check ------------------------------------------


def test_serial_runs_with_accumulation_load_as_their_own_arm(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for source in sorted((FIXTURES / "runs").glob("*.json")):
        record = json.loads(source.read_text())
        if record.get("status", "ok") == "ok" and record["mode"] == "serial":
            record.update(accumulation_steps=2, run_id=record["run_id"] + "_acc2")
            (runs / f"{record['run_id']}.json").write_text(json.dumps(record))
            break
    loaded = report.load_records(tmp_path)
    assert loaded["mode"].tolist() == ["serial-accumulated"]


def test_findings_compare_distributed_with_the_accumulated_arm():
    frame = records(
        *seeds([0.60, 0.62, 0.61], mode="serial-accumulated", effective_batch_size=8),
        *seeds([0.80, 0.81, 0.79], mode="distributed"),
    )
    [sentence] = report.distributed_vs_serial(frame, baseline="serial-accumulated")
    assert "distributed beats serial-accumulated by 19.0 points" in sentence
    assert report.distributed_vs_serial(frame) == []  # no plain serial cell to compare


def test_data_locality_sentence_names_failed_runs():
    frame = records(
        {"mode": "distributed", "run_id": "good", "data_locality_ok": True},
        {"mode": "distributed", "run_id": "leaky", "data_locality_ok": False},
        {"mode": "serial", "run_id": "s"},
    )
    sentence = report.data_locality(frame)
    assert "1 of 2 checked distributed runs passed" in sentence
    assert "FAILED: leaky" in sentence
    assert report.data_locality(records({"mode": "serial"})).startswith("No distributed run")


def test_lever_variants_are_their_own_arms_and_compared_with_the_plain_arm():
    base = {"mode": "distributed", "accumulation_steps": 1, "precision": "float32"}
    assert report.arm({**base, "compression": "fp16"}) == "distributed+fp16-allreduce"
    assert report.arm({**base, "compression": "none", "precision": "mixed_bfloat16"}) == (
        "distributed+bfloat16"
    )
    frame = records(
        *seeds([0.70, 0.71, 0.72], mode="distributed"),
        *seeds([0.50, 0.52, 0.51], mode="distributed+fp16-allreduce"),
    )
    [sentence] = report.lever_comparisons(frame)
    assert "distributed beats distributed+fp16-allreduce by 20.0 points" in sentence
    assert report.ordered_modes(frame["mode"]) == ["distributed", "distributed+fp16-allreduce"]
