"""Tests of the report: loading records, intervals, the paper lookup, findings and the notebook."""

from __future__ import annotations

import html as html_module
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from hiresmed_nb import study
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import project_root
from hiresmed_nb.science import report

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
    assert len(frame) == 13
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


def test_table2_puts_the_papers_value_beside_ours_with_lr_and_batch():
    cell = {"dataset": "sd198", "arch": "VGG16", "image_size": 112, "images_per_class": 10}
    rows = seeds([0.40, 0.44, 0.42], **cell, synthetic=False)
    rows += seeds([0.5], **cell, mode="distributed", n_ranks=4, learning_rate=8e-5, synthetic=False)
    table = report.table2(records(*rows))
    key = ("sd198", "VGG16", 112, 10)
    assert table.loc[key, ("serial", "paper (%)")] == "42.90"
    assert table.loc[key, ("serial", "ours (%)")].startswith("42.0 ± ")
    assert table.loc[key, ("serial", "ours (%)")].endswith("(n=3)")
    distributed = "distributed (4 ranks)"  # a constant rank count goes into the arm's header
    assert table.loc[key, (distributed, "ours (%)")] == "50.0 (n=1)"
    assert table.loc[key, (distributed, "paper (%)")] == "51.00"
    assert table.loc[key, (distributed, "lr")] == "8e-5"
    assert table.loc[key, (distributed, "eff. batch")] == "16"
    assert (distributed, "ranks") not in table.columns
    assert "synthetic" not in report.table2_caption(records(*rows))


def test_table2_has_a_ranks_column_only_where_the_rank_count_varies():
    rows = seeds([0.5], mode="distributed", n_ranks=2)
    rows += seeds([0.6], mode="distributed", n_ranks=4, image_size=128)
    table = report.table2(records(*rows))
    assert list(table.columns) == [
        ("distributed", "ours (%)"),
        ("distributed", "ranks"),
        ("distributed", "lr"),
        ("distributed", "eff. batch"),
    ]  # no paper column: the paper has none of these cells


@pytest.mark.parametrize(
    ("rate", "text"),
    [(1e-3, "1e-3"), (0.002, "2e-3"), (8e-5, "8e-5"), (1.6e-5, "1.6e-5"), (6.4e-5, "6.4e-5")],
)
def test_learning_rates_are_written_short(rate, text):
    assert report.format_lr(rate) == text


def test_synthetic_numbers_are_labelled_in_caption_and_figure_titles():
    frame = records(*seeds([0.5, 0.6]), *seeds([0.7], image_size=32))
    assert report.table2_caption(frame).startswith("Table 2 replica (synthetic data):")
    assert "(synthetic data)" in report.table2_html(frame)
    grid = report.plot_figure2(frame)
    assert "(synthetic data)" in grid.figure._suptitle.get_text()
    figure = report.plot_heatmaps(frame)
    assert "(synthetic data)" in figure._suptitle.get_text()


def test_figure_has_one_panel_per_arch_and_data_size():
    frame = records(
        *seeds([0.5, 0.6], arch="compact"),
        *seeds([0.5, 0.6], arch="compact", images_per_class=30),
        *seeds([0.5, 0.6], arch="VGG16", mode="distributed"),
    )
    grid = report.plot_figure2(frame)
    assert grid.axes.shape == (2, 2)


# --- findings ----------------------------------------------------------------------------------


def test_best_resolution_names_an_interior_optimum_bracketed_by_intervals():
    frame = records(
        *seeds([0.50, 0.55, 0.52], image_size=32),
        *seeds([0.70, 0.74, 0.71], image_size=64),
        *seeds([0.60, 0.62, 0.63], image_size=128),
    )
    (sentence,) = report.best_resolution(frame)
    assert "highest mean at 64 px (71.7 ± 5.2 (n=3)), interior, bracketed" in sentence
    assert "beats the next highest, 128 px, by +10.0 (95% CI +5.0 to +15.0, n=3)" in sentence


def test_best_resolution_at_the_edge_with_one_seed_says_so_and_names_no_winner():
    frame = records(*seeds([0.5], image_size=32), *seeds([0.8], image_size=128))
    (sentence,) = report.best_resolution(frame)
    assert "highest mean at 128 px (80.0 (n=1)), largest tried: not bracketed" in sentence
    assert "not separated from the next highest, 32 px" in sentence
    assert "beats" not in sentence


def test_tied_resolutions_have_no_single_best():
    frame = records(*seeds([0.25], image_size=32), *seeds([0.25], image_size=48))
    (sentence,) = report.best_resolution(frame)
    assert "32 px and 48 px tie at 25.0%; no single size has the highest mean" in sentence


def test_distributed_beating_serial_beyond_seed_noise():
    frame = records(
        *seeds([0.50, 0.52, 0.54]),
        *seeds([0.60, 0.63, 0.64], mode="distributed"),
    )
    (sentence,) = report.distributed_vs_serial(frame)
    assert "distributed (2 ranks) 62.3% vs serial 52.0%" in sentence
    assert "distributed beats serial by +10.3 points (95% CI +8.9 to +11.8, n=3)" in sentence


def test_a_difference_within_seed_noise_is_no_win():
    frame = records(*seeds([0.50, 0.60, 0.70]), *seeds([0.58, 0.62, 0.66], mode="distributed"))
    (sentence,) = report.distributed_vs_serial(frame)
    assert "is within seed noise, so neither beats the other" in sentence
    assert "beats serial by" not in sentence and "beats distributed" not in sentence


def test_serial_beating_distributed_is_reported():
    frame = records(*seeds([0.80, 0.81, 0.83]), *seeds([0.60, 0.61, 0.62], mode="distributed"))
    (sentence,) = report.distributed_vs_serial(frame)
    assert "serial beats distributed by +20.3 points (95% CI +18.9 to +21.8, n=3)" in sentence


def test_one_seed_gives_no_verdict():
    frame = records(*seeds([0.5]), *seeds([0.9, 0.91], mode="distributed"))
    (sentence,) = report.distributed_vs_serial(frame)
    assert "(one seed: no interval), so no verdict is given" in sentence


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
    assert html.count(report.SYNTHETIC_WARNING) == 1  # once, in the box at the top
    assert "synthetic-skin_compact_128px_10ipc_serial1_seed0" in html  # the failed run
    assert re.search(r'<img[^>]+src="data:image/png;base64,', html)
    assert "report.load_records" not in html  # code hidden
    # under the Answers heading, before the first question: which intervals are adjusted and how
    answers = html[html.index('id="Answers"') : html.index('id="answer-q1"')]
    assert html_module.escape(report.ADJUSTMENT_SENTENCE, quote=False) in answers


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Runs in the page as it is parsed: headings in order, and for every table cell holding a number
# (its text starts with a digit or a sign and a digit) its white-space and how many line boxes
# its text occupies; every table's right edge against the page width.
MEASURE = r"""<script>
(function () {
  const out = {headings: [], wrapped: [], notNowrap: [], overflow: [], cells: 0,
               width: document.documentElement.clientWidth};
  document.querySelectorAll("h1, h2, h3").forEach(h => out.headings.push(
    [h.tagName, h.textContent.replace("\u00b6", "").trim()]));
  document.querySelectorAll("table").forEach((table, t) => {
    const right = table.getBoundingClientRect().right;
    if (right > out.width) out.overflow.push([t, right]);
    table.querySelectorAll("td").forEach(td => {
      const text = td.textContent.trim();
      if (!/^[+\-\u2212]?\d/.test(text)) return;
      out.cells += 1;
      if (getComputedStyle(td).whiteSpace !== "nowrap") out.notNowrap.push(text);
      const range = document.createRange();
      range.selectNodeContents(td);
      const lines = new Set(Array.from(range.getClientRects())
        .filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (lines.size > 1) out.wrapped.push(text);
    });
  });
  const pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile; skip when it is not installed."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    profile = f"--user-data-dir={tmp_path / 'profile'}"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, profile, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.notebook
def test_report_html_opens_in_headless_chromium(rendered, tmp_path):
    url = rendered.resolve().as_uri()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,3000", url)
    assert shot.stat().st_size > 10_000
    dom = chromium(tmp_path, "--dump-dom", url).stdout
    assert "Table 2 replica" in dom
    assert "<table" in dom and "52.0 ± 5.0 (n=3)" in dom
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom)
    assert report.SYNTHETIC_WARNING in dom


@pytest.mark.notebook
def test_answers_come_first_name_the_questions_and_no_number_wraps_at_1280_px(rendered, tmp_path):
    page = tmp_path / "measured.html"
    page.write_text(rendered.read_text().replace("</body>", MEASURE + "</body>"))
    dom = chromium(tmp_path, "--window-size=1280,2000", "--dump-dom", page.as_uri()).stdout
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, "the measuring script did not run"
    measured = json.loads(html_module.unescape(found.group(1)))
    h2 = [text for tag, text in measured["headings"] if tag == "H2"]
    assert h2[0] == "Answers"
    after = [text for tag, text in measured["headings"][1:] if tag in ("H2", "H3")]
    assert [text[:3] for text in after[1:4]] == ["Q1.", "Q2.", "Q3."]  # right under Answers
    answers = dom[dom.index(">Answers") : dom.index(">See the trade-off")]
    for _, question in report.QUESTIONS.values():
        assert html_module.escape(question, quote=False) in answers
    assert measured["width"] <= 1280
    assert measured["cells"] >= 20  # the Answers' tables, Table 2, the run tables
    assert measured["notNowrap"] == []
    assert measured["wrapped"] == []
    assert measured["overflow"] == []


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
    assert "distributed beats serial-accumulated by +19.0 points (95% CI" in sentence
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
    assert "distributed beats distributed+fp16-allreduce by +20.0 points (95% CI" in sentence
    assert report.ordered_modes(frame["mode"]) == ["distributed", "distributed+fp16-allreduce"]


# --- paired differences ------------------------------------------------------------------------


def per_seed(values: list[float]) -> pd.Series:
    return pd.Series(values, index=range(len(values)))


def test_paired_difference_verdicts():
    higher = report.paired_difference(per_seed([0.8, 0.82, 0.81]), per_seed([0.5, 0.51, 0.53]))
    assert higher.verdict == report.HIGHER and higher.mean == pytest.approx(0.81 - 1.54 / 3)
    assert higher.n == 3 and higher.low > 0
    lower = report.paired_difference(per_seed([0.5, 0.51, 0.53]), per_seed([0.8, 0.82, 0.81]))
    assert lower.verdict == report.LOWER and lower.high < 0
    noise = report.paired_difference(per_seed([0.5, 0.7, 0.6]), per_seed([0.6, 0.6, 0.6]))
    assert noise.verdict == report.NOISE and noise.low < 0 < noise.high
    single = report.paired_difference(per_seed([0.9]), per_seed([0.5, 0.6]))
    assert single.verdict == report.ONE_SEED and single.half is None and single.n == 1
    assert report.paired_difference(per_seed([0.9]), pd.Series([0.5], index=[7])) is None


def test_pairing_seeds_sees_a_consistent_gain_that_overlapping_means_hide():
    # the seeds differ a lot, but every seed gains 2 to 3 points: paired, the gain is clear
    diff = report.paired_difference(per_seed([0.52, 0.73, 0.92]), per_seed([0.5, 0.7, 0.9]))
    assert diff.verdict == report.HIGHER
    assert report.format_points(diff) == "+2.3 (95% CI +0.9 to +3.8, n=3)"


def test_the_same_difference_in_every_seed_gives_no_interval():
    # accuracies are multiples of 1/n_test: two seeds can differ by exactly the same amount
    diff = report.paired_difference(per_seed([41 / 80, 53 / 80]), per_seed([45 / 80, 57 / 80]))
    assert diff.verdict == report.NO_SPREAD and diff.half == pytest.approx(0, abs=1e-12)
    assert report.format_points(diff) == "-5.0 (the same in all 2 seeds: no interval)"
    assert report.overall([diff], "yes", "no") == (
        "no interval can be computed (no spread over seeds)"
    )


# --- Q1: fewer high-resolution images against many low-resolution ones -------------------------


def q1_frame(high: list[float], low: list[float], **common) -> pd.DataFrame:
    return records(
        *seeds(high, image_size=128, images_per_class=10, **common),
        *seeds(low, image_size=32, images_per_class=30, **common),
    )


def test_q1_clear_yes():
    pairs = report.q1_pairs(q1_frame([0.80, 0.82, 0.81], [0.50, 0.51, 0.53]))
    [pair] = pairs.itertuples()
    assert (pair.fewer, pair.more) == ((128, 10), (32, 30))
    assert pair.verdict == "yes"
    sentence = report.q1_sentence(pairs)
    assert sentence.startswith("Yes. ")
    assert "higher in 1 of 1, lower in 0, not distinguishable from seed noise in 0" in sentence
    assert "+29.7 points (95% CI +25.9 to +33.5, n=3)" in sentence


def test_q1_clear_no():
    pairs = report.q1_pairs(q1_frame([0.50, 0.51, 0.53], [0.80, 0.82, 0.81]))
    assert list(pairs["verdict"]) == ["no"]
    assert report.q1_sentence(pairs).startswith("No. ")


def test_q1_overlapping_intervals_are_not_distinguishable():
    pairs = report.q1_pairs(q1_frame([0.50, 0.70, 0.60], [0.60, 0.60, 0.62]))
    assert list(pairs["verdict"]) == [report.NOISE]
    assert report.q1_sentence(pairs).startswith("Not distinguishable from seed noise. ")


def test_q1_single_seed_says_no_interval_can_be_computed():
    pairs = report.q1_pairs(q1_frame([0.9], [0.5]))
    assert list(pairs["verdict"]) == [report.ONE_SEED]
    sentence = report.q1_sentence(pairs)
    assert sentence.startswith("No interval can be computed (one seed per cell). ")
    assert "+40.0 points (one seed: no interval)" in sentence


def test_q1_pairs_only_fewer_images_at_higher_resolution_in_the_same_arm():
    frame = records(
        *seeds([0.8, 0.8], image_size=128, images_per_class=10),
        *seeds([0.7, 0.7], image_size=128, images_per_class=30),  # more images, same size
        *seeds([0.5, 0.5], image_size=32, images_per_class=30),
        *seeds([0.4, 0.4], image_size=32, images_per_class=10),  # fewer images, lower size
        *seeds([0.9, 0.9], image_size=32, images_per_class=30, mode="distributed"),
    )
    pairs = report.q1_pairs(frame)
    assert [(p.fewer, p.more, p.arm) for p in pairs.itertuples()] == [
        ((128, 10), (32, 30), "serial")
    ]
    assert report.q1_sentence(report.q1_pairs(records(*seeds([0.5])))).startswith("Not answerable")


# --- Q2: distributed, serial and serial with accumulation --------------------------------------


def q2_frame() -> pd.DataFrame:
    return records(
        *seeds([0.50, 0.51, 0.52], train_seconds=10.0),
        *seeds(
            [0.60, 0.61, 0.62],
            mode="serial-accumulated",
            accumulation_steps=2,
            effective_batch_size=8,
            train_seconds=20.0,
        ),
        *seeds([0.61, 0.60, 0.62], mode="distributed", train_seconds=30.0),
    )


def test_q2_separates_the_batch_from_the_distribution_in_accuracy_and_time():
    comparisons = report.q2_comparisons(q2_frame())
    found = {(r.first, r.second): r for r in comparisons.itertuples()}
    assert set(found) == {
        ("distributed", "serial"),
        ("distributed", "serial-accumulated"),
        ("serial-accumulated", "serial"),
    }
    assert found[("distributed", "serial")].diff.verdict == report.HIGHER
    assert found[("distributed", "serial-accumulated")].diff.verdict == report.NOISE
    assert found[("serial-accumulated", "serial")].diff.mean == pytest.approx(0.10)
    assert found[("distributed", "serial")].first_seconds == 30.0
    assert found[("distributed", "serial")].time_diff.mean == pytest.approx(20.0)
    sentences = report.q2_sentences(comparisons)
    assert sentences[0].startswith("Distributed − serial, 1 cell: distributed higher;")
    assert "training wall time 30 s against 10 s per run (×3.00)" in sentences[0]
    assert sentences[1].startswith(
        "Distributed − serial-accumulated, 1 cell: not distinguishable from seed noise;"
    )
    assert sentences[2].startswith(
        "Which part of distributed − serial is larger in magnitude: the batch part. "
    )
    assert sentences[3] == (
        "In wall time, accumulation takes ×2.00 the serial time and distribution ×1.50 the "
        "accumulated time."
    )


def test_q2_leaves_resumed_runs_out_of_the_wall_time():
    frame = q2_frame()
    retried = (frame["mode"] == "distributed") & (frame["seed"] == 0)
    frame.loc[retried, ["train_seconds", "retry_error"]] = [3.0, "RankLostError: gone"]
    resumed = (frame["mode"] == "serial") & (frame["seed"] == 1)
    frame.loc[resumed, ["train_seconds", "resumed_from_epoch"]] = [1.0, 1]
    row = report.q2_comparisons(frame).iloc[0]
    assert (row["first"], row["second"]) == ("distributed", "serial")
    assert row["first_seconds"] == 30.0 and row["second_seconds"] == 10.0
    assert row["time_diff"].n == 1  # only seed 2 has whole-run times on both sides


def test_q2_without_an_accumulated_arm_says_it_cannot_separate_batch_and_distribution():
    frame = records(*seeds([0.5]), *seeds([0.6], mode="distributed"))
    sentences = report.q2_sentences(report.q2_comparisons(frame))
    assert "no interval can be computed (one seed per cell)" in sentences[0]
    assert sentences[1].startswith("No serial-accumulated arm")
    assert report.q2_sentences(report.q2_comparisons(records(*seeds([0.5])))) == [
        "Not answerable: no cell was run both distributed and serially."
    ]


# --- Q3: the best resolution -------------------------------------------------------------------


def test_q3_optimum_at_the_edge_of_the_grid_is_not_bracketed():
    frame = records(
        *seeds([0.40, 0.41, 0.42], image_size=32),
        *seeds([0.60, 0.61, 0.63], image_size=64),
        *seeds([0.80, 0.81, 0.82], image_size=128),
    )
    [best] = report.q3_best_resolution(frame).itertuples()
    assert (best.best, best.runner_up, best.position, best.tried) == (128, 64, "largest", 3)
    assert best.mean == pytest.approx(0.81) and best.half > 0
    assert best.diff.verdict == report.HIGHER
    sentence = report.q3_sentence(report.q3_best_resolution(frame))
    assert sentence.startswith("No optimum is bracketed within this grid. ")
    assert "It is at an interior size in 0 (bracketed, beating both" in sentence
    assert "the largest size tried in 1" in sentence
    assert "the highest beats the next highest size beyond seed noise in 1 of 1." in sentence


def test_q3_interior_optimum_bracketed_by_intervals_is_a_yes():
    frame = records(
        *seeds([0.40, 0.41, 0.43], image_size=32),
        *seeds([0.80, 0.81, 0.84], image_size=64),
        *seeds([0.60, 0.61, 0.62], image_size=128),
    )
    best = report.q3_best_resolution(frame)
    assert list(best["position"]) == ["interior"]
    assert report.q3_sentence(best).startswith("Yes, inside the grid. ")


def test_q3_two_sizes_cannot_bracket_and_one_seed_has_no_interval():
    frame = records(*seeds([0.4], image_size=32), *seeds([0.8], image_size=128))
    best = report.q3_best_resolution(frame)
    assert best.iloc[0]["half"] is None and best.iloc[0]["diff"].verdict == report.ONE_SEED
    sentence = report.q3_sentence(best)
    assert sentence.startswith("Not answerable from two resolutions per setting")
    assert sentence.endswith(
        "one seed per cell: directions only, no size is separated from another."
    )


# --- the learning-rate axis --------------------------------------------------------------------


def lr_frame() -> pd.DataFrame:
    rows = []
    for size, best in ((96, 3e-3), (128, 1e-3)):
        for rate in (3e-4, 1e-3, 3e-3):
            # the best rate gains 20 points in both seeds (19.9 in the second): clear enough to
            # be separated with two seeds in a family of six claims
            level, spread = (0.8, 0.029) if rate == best else (0.6, 0.03)
            for mode in ("serial", "distributed"):
                rows += seeds(
                    [level, level + spread],
                    image_size=size,
                    mode=mode,
                    learning_rate=rate,
                    base_learning_rate=rate,
                )
    return records(*rows)


def test_a_swept_learning_rate_gets_its_best_rate_per_size_and_arm():
    frame = lr_frame()
    assert report.has_lr_axis(frame)
    rates = report.best_learning_rates(frame)
    best = {(r.arm, r.image_size): r.best for r in rates.itertuples()}
    assert best == {
        ("distributed", 96): 3e-3,
        ("distributed", 128): 1e-3,
        ("serial", 96): 3e-3,
        ("serial", 128): 1e-3,
    }
    assert dict(zip(rates["image_size"], rates["position"], strict=False)) == {
        96: "largest",
        128: "interior",
    }
    [distributed, serial] = report.lr_sentences(rates)
    assert distributed.startswith(
        "Highest-mean learning rate, distributed, compact, 10/class: 96 px: 3e-3, 128 px: 1e-3. "
        "It differs between sizes beyond seed noise. It beats the runner-up beyond seed noise at "
        "2 of 2 sizes"
    )
    # Q2 compares the arms at the same rate, never across rates
    comparisons = report.q2_comparisons(frame)
    assert len(comparisons) == 6 and set(comparisons["lr"]) == {"3e-4", "1e-3", "3e-3"}
    table = report.table2(frame)
    assert table.index.names[-1] == "LEARNING_RATE"
    assert table.loc[("synthetic-skin", "compact", 96, 10, "3e-4"), ("serial", "lr")] == "3e-4"


def test_per_cell_rates_that_differ_between_cells_are_no_axis():
    paper = report.paper_records(report.load_paper_table())
    assert not report.has_lr_axis(paper)
    assert report.best_learning_rates(paper).empty
    assert not report.has_lr_axis(records(*seeds([0.5, 0.6])))


def test_lr_study_sweeps_three_rates_two_sizes_and_both_modes():
    name, runs = study.plan([project_root() / "params" / "lr.yaml"])
    assert name == "lr"
    cells = {
        (r.params["LEARNING_RATE"], r.params["IMAGE_SIZE"], r.params["MODE"], r.params["N_RANKS"])
        for r in runs
    }
    assert len(cells) == 12 and len({r.run_id for r in runs}) == len(runs) == 24
    assert {c[0] for c in cells} == {3e-4, 1e-3, 3e-3}
    assert {c[2:] for c in cells} == {("serial", 1), ("distributed", 2)}
    assert any(r.run_id.endswith("_lr3e-4_seed1") for r in runs)


# --- the paper's own answers, from its Table 2 -------------------------------------------------


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return report.paper_records(report.load_paper_table())


def test_paper_sd198_resnet50_distributed_beats_serial_at_30_images_per_class(paper):
    comparisons = report.q2_comparisons(paper)
    resnet = comparisons[
        (comparisons["dataset"] == "sd198")
        & (comparisons["arch"] == "ResNet50")
        & (comparisons["images_per_class"] == 30)
    ]
    diffs = dict(zip(resnet["image_size"], resnet["diff"], strict=True))
    assert sorted(diffs) == [112, 224, 448, 512, 1024]
    assert all(d.mean > 0 and d.verdict == report.ONE_SEED for d in diffs.values())
    assert 100 * diffs[1024].mean == pytest.approx(82.88 - 73.40)


def test_paper_distributed_is_higher_in_30_of_its_32_cells(paper):
    comparisons = report.q2_comparisons(paper)
    lower = comparisons[comparisons["diff"].map(lambda d: d.mean < 0)]
    assert len(comparisons) == 32
    cells = zip(lower["arch"], lower["image_size"], lower["images_per_class"], strict=True)
    assert set(cells) == {
        ("VGG16", 224, 10),
        ("ResNet50", 1024, 10),
    }
    [sentence, no_accumulation] = report.q2_sentences(comparisons, single="one run")
    assert (
        "no interval can be computed (one run per cell); by direction only, no significance: "
        "higher in 30 of 32, lower in 2; mean +2.3 points"
    ) in sentence
    assert no_accumulation.startswith("No serial-accumulated arm")


def test_paper_sd198_never_has_fewer_high_resolution_images_beat_more_low_resolution(paper):
    pairs = report.q1_pairs(paper)
    sd198 = pairs[pairs["dataset"] == "sd198"]
    assert len(sd198) == 40  # 10 size pairs x 2 archs x 2 arms, 10 against 30 images per class
    assert all(d.mean < 0 for d in sd198["diff"])
    resnet = sd198[(sd198["arch"] == "ResNet50") & (sd198["arm"] == "serial")]
    pair = resnet[resnet["fewer"] == (448, 10)].set_index("more").loc[[(112, 30)]].iloc[0]
    assert 100 * pair["diff"].mean == pytest.approx(63.42 - 65.95)
    # on NIH it sometimes does: 200 images per class at 512 px beat 400 at 224 px
    sentence = report.q1_sentence(pairs, single="one run")
    assert (
        "Highest mean difference: +2.7 points (one run: no interval), 200/class at 512 px against "
        in (sentence)
    )


def test_paper_best_resolutions(paper):
    best = report.q3_best_resolution(paper).set_index(
        ["dataset", "arch", "arm", "images_per_class"]
    )
    assert best.loc[("sd198", "VGG16", "serial", 10), ["best", "position"]].tolist() == [
        224,
        "interior",
    ]
    assert best.loc[("sd198", "ResNet50", "distributed", 30), ["best", "position"]].tolist() == [
        1024,
        "largest",
    ]
    assert best.loc[("nih", "DenseNet169", "serial", 200), ["best", "position"]].tolist() == [
        512,
        "interior",
    ]


def test_paper_answers_cover_only_the_cells_the_study_ran():
    cells = [
        dict(arch="ResNet50", image_size=size, images_per_class=ipc, mode=mode)
        for size in (112, 224)
        for ipc in (10, 30)
        for mode in ("serial", "distributed")
    ]
    ours = records(*[row for c in cells for row in seeds([0.5], dataset="sd198", **c)])
    ours["synthetic"] = False
    answers = report.paper_answers(ours)
    [shared] = [s for s in answers["Q2"] if s.startswith("On the 8 cells of its Table 2")]
    assert "higher in 4 of 4" in shared
    [shared] = [s for s in answers["Q1"] if s.startswith("On the 8 cells of its Table 2")]
    assert "higher in 0 of 2, lower in 2" in shared  # 224 px x 10 vs 112 px x 30, 2 arms
    synthetic = report.paper_answers(records(*seeds([0.5])))
    assert not any(s.startswith("On the") for s in synthetic["Q1"])  # the paper never ran it


# --- heat maps and retried runs ----------------------------------------------------------------


def test_heat_maps_hold_the_mean_per_data_size_and_resolution():
    frame = records(
        *seeds([0.5, 0.7], image_size=32, images_per_class=10),
        *seeds([0.8], image_size=128, images_per_class=30),
        *seeds([0.4], image_size=32, images_per_class=10, mode="distributed"),
    )
    tables = report.heatmap_tables(frame)
    serial = tables[("synthetic-skin", "compact", "serial")]
    assert list(serial.index) == [30, 10] and list(serial.columns) == [32, 128]
    assert serial.loc[10, 32] == pytest.approx(60.0) and serial.loc[30, 128] == pytest.approx(80.0)
    assert math.isnan(serial.loc[30, 32])
    figure = report.plot_heatmaps(frame)
    titled = [ax for ax in figure.axes if ax.get_title()]
    assert len(titled) == 2  # one panel per arm, one architecture
    numbers = {t.get_text() for ax in titled for t in ax.texts}
    assert {"60.0", "80.0", "40.0"} <= numbers


def test_retried_runs_are_listed_with_their_first_error_and_epoch():
    retried = report.retried_runs(report.load_records(FIXTURES))
    assert retried.to_dict("records") == [
        {
            "run": "synthetic-skin_compact_32px_20ipc_distributed2_seed1",
            "first error": "RankLostError: rank 1 is gone: its engine process died",
            "resumed from epoch": "1",
        }
    ]
    assert report.retries(report.load_records(FIXTURES)).startswith("1 run failed once and was")
    assert report.retried_runs(records(*seeds([0.5]))).empty


def test_a_malformed_retry_is_named(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    source = FIXTURES / "runs" / "synthetic-skin_compact_32px_10ipc_serial1_seed0.json"
    record = json.loads(source.read_text())
    record["retry"] = "once"
    (runs / "bad.json").write_text(json.dumps(record))
    with pytest.raises(HiresmedError, match=r"bad.json.*'retry' must be an object"):
        report.load_records(tmp_path)


def test_overall_verdict_over_several_comparisons():
    def diff(verdict: str) -> report.Difference:
        # a mean of +-10 points whose interval (+-5, or +-20 for noise) agrees with the verdict
        half = 0.2 if verdict == report.NOISE else 0.05
        return report.Difference(0.1 if verdict != report.LOWER else -0.1, half, 3, verdict)

    higher, lower, noise = diff(report.HIGHER), diff(report.LOWER), diff(report.NOISE)
    single = report.Difference(0.1, None, 1, report.ONE_SEED)
    assert report.overall([higher, higher, single], "yes", "no") == "yes"
    assert report.overall([lower], "yes", "no") == "no"
    assert report.overall([noise, noise], "yes", "no") == report.NOISE
    assert report.overall([higher, noise], "yes", "no") == (
        "yes or not distinguishable from seed noise"
    )
    assert report.overall([lower, noise], "yes", "no").startswith("no or not")
    assert report.overall([higher, lower, noise], "yes", "no") == "mixed"
    assert report.overall([single], "yes", "no") == (
        "no interval can be computed (one seed per cell)"
    )
    assert report.overall([], "yes", "no") == "not answerable"


def test_answers_of_a_one_arm_study_say_what_cannot_be_answered():
    text = report.answers_html(records(*seeds([0.5, 0.6]), *seeds([0.7, 0.8], image_size=128)))
    assert "Not answerable: no arm was run at two data sizes" in text
    assert "Not answerable: no cell was run both distributed and serially." in text
    assert "Not answerable from two resolutions per setting" in text
    # the paper's whole Table 2 is read for every question, even beside synthetic data
    assert text.count("Its Table 2 read by the same rules (all 64 cells, one run per cell") == 3
    assert text.count("This study (synthetic data): not answerable") == 3
    assert report.answers_html(records().iloc[:0]) == "<p>No records yet: nothing to answer.</p>"


def test_answers_of_a_learning_rate_sweep_give_the_best_rate_per_size():
    text = report.answers_html(lr_frame())
    assert "Highest-mean learning rate, serial, compact, 10/class: 96 px: 3e-3, 128 px: 1e-3." in (
        text
    )
    assert "Q2 (synthetic data): highest-mean LEARNING_RATE per size and arm" in text
