"""The report claims nothing its intervals do not carry: records with known differences (pure
seed noise, a clear batch effect, a clear distribution effect, a tie) and what the report says
about each, including that it names no winner where there is none; and the paper's Table 2 read
whole by the same rules."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from test_report import records, seeds

from hiresmed_nb.params import project_root
from hiresmed_nb.science import report
from hiresmed_nb.science.report import decomposition

NAMED = ("larger in magnitude: the batch part", "larger in magnitude: the distribution part")


def three_arms(serial: list[float], accumulated: list[float], distributed: list[float], **cell):
    """Records of one cell run serially, serial-accumulated and distributed, seed by seed."""
    return [
        *seeds(serial, **cell),
        *seeds(accumulated, mode="serial-accumulated", accumulation_steps=2, **cell),
        *seeds(distributed, mode="distributed", **cell),
    ]


def parts_of(*rows: dict) -> pd.DataFrame:
    return report.decompose(report.q2_comparisons(records(*rows)))


def decomposition_text(*rows: dict) -> str:
    sentences = report.q2_sentences(report.q2_comparisons(records(*rows)))
    [text] = [s for s in sentences if s.startswith("Which part")]
    return text


def headline(text: str) -> str:
    return text.split(": ", 1)[1].split(". ", 1)[0]


SERIAL = [0.50, 0.56, 0.52, 0.58]


def shifted(values: list[float], by: float, noise: list[float] = (0, 0, 0, 0)) -> list[float]:
    return [v + by + e for v, e in zip(values, noise, strict=True)]


# --- Q2: batch part against distribution part ---------------------------------------------------


def test_pure_seed_noise_names_no_part_and_says_so_with_the_numbers():
    rows = three_arms(SERIAL, [0.55, 0.51, 0.57, 0.53], [0.52, 0.57, 0.50, 0.55])
    [part] = parts_of(*rows).itertuples()
    assert part.larger == decomposition.NOT_DISTINGUISHABLE
    text = decomposition_text(*rows)
    assert headline(text) == (
        "neither: the two parts are not distinguishable from each other, nor either part from "
        "seed noise"
    )
    assert not any(name in text for name in NAMED)
    assert "beyond seed noise in 0 of 1 cell" in text
    assert "batch − distribution part " in text and "(97.5% CI" in text


def test_a_clear_batch_effect_names_the_batch_part():
    accumulated = shifted(SERIAL, 0.10, [0.01, -0.01, 0.0, 0.005])
    distributed = shifted(accumulated, 0.0, [0.01, -0.01, 0.005, -0.005])
    [part] = parts_of(*three_arms(SERIAL, accumulated, distributed)).itertuples()
    assert part.larger == decomposition.BATCH
    assert part.batch_minus.verdict == report.HIGHER and part.total.verdict == report.HIGHER
    text = decomposition_text(*three_arms(SERIAL, accumulated, distributed))
    assert headline(text) == "the batch part"
    assert "The batch part is the larger in 1 of 1 cell, the distribution part in 0" in text


def test_a_clear_distribution_effect_names_the_distribution_part():
    accumulated = shifted(SERIAL, 0.0, [0.01, -0.01, 0.0, 0.005])
    distributed = shifted(accumulated, 0.10, [0.01, -0.01, 0.005, -0.005])
    rows = three_arms(SERIAL, accumulated, distributed)
    [part] = parts_of(*rows).itertuples()
    assert part.larger == decomposition.DISTRIBUTION
    assert headline(decomposition_text(*rows)) == "the distribution part"


def test_a_tie_is_a_tie_only_when_the_interval_of_b_minus_d_is_within_the_tolerance():
    # each seed gains about 5 points from the batch and 5 more from the distribution; b − d
    # scatters by a few tenths of a point, so its whole 97.5% interval is within ±1 point
    accumulated = shifted(SERIAL, 0.05, [0.002, -0.002, 0.001, -0.001])
    distributed = shifted(accumulated, 0.05, [-0.001, 0.001, 0.002, -0.002])
    rows = three_arms(SERIAL, accumulated, distributed)
    [part] = parts_of(*rows).itertuples()
    assert -decomposition.TIE_TOLERANCE < part.batch_minus.low < 0 < part.batch_minus.high
    assert part.batch_minus.high < decomposition.TIE_TOLERANCE
    assert part.larger == decomposition.TIE
    text = decomposition_text(*rows)
    assert not any(name in text for name in NAMED)
    assert "a tie in 1" in text
    assert "a tie only where the interval of batch − distribution part lies within ±1 point" in text


def test_a_zero_mean_with_a_wide_interval_is_no_tie():
    # b − d is +1/80, −1/80 and 0 in the three seeds: mean exactly zero, interval about ±4.5
    # points, so the parts are not shown equal
    serial = [0.50, 0.56, 0.52]
    accumulated = [v + 0.05 for v in serial]
    distributed = [a + 0.05 - e for a, e in zip(accumulated, [1 / 80, -1 / 80, 0.0], strict=True)]
    [part] = parts_of(*three_arms(serial, accumulated, distributed)).itertuples()
    assert part.batch_minus.mean == pytest.approx(0, abs=1e-12)
    assert part.batch_minus.half > decomposition.TIE_TOLERANCE
    assert part.larger == decomposition.NOT_DISTINGUISHABLE
    # the same b − d in every seed has no interval at all: no tie either
    exact = [a + 0.05 for a in accumulated]
    [part] = parts_of(*three_arms(serial, accumulated, exact)).itertuples()
    assert part.larger == report.NO_SPREAD


def test_a_larger_batch_mean_within_noise_is_not_named():
    # the batch part's mean is the larger (about +5 against +0 points), but seeds scatter it
    accumulated = shifted(SERIAL, 0.05, [0.08, -0.07, 0.06, -0.05])
    distributed = shifted(accumulated, 0.0, [-0.05, 0.06, -0.07, 0.06])
    rows = three_arms(SERIAL, accumulated, distributed)
    [part] = parts_of(*rows).itertuples()
    assert part.batch.mean > abs(part.distribution.mean)
    assert part.larger == decomposition.NOT_DISTINGUISHABLE
    assert not any(name in decomposition_text(*rows) for name in NAMED)


def test_parts_of_opposite_sign_compare_by_magnitude():
    # the batch helps by 5 points, spreading it over ranks costs 15: b − d = +20 favours the
    # batch, but the distribution part moves the metric more
    accumulated = shifted(SERIAL, 0.05, [0.01, -0.01, 0.0, 0.005])
    distributed = shifted(accumulated, -0.15, [0.01, -0.01, 0.005, -0.005])
    [part] = parts_of(*three_arms(SERIAL, accumulated, distributed)).itertuples()
    assert part.batch_minus.verdict == report.HIGHER and part.total.verdict == report.LOWER
    assert part.larger == decomposition.DISTRIBUTION
    # equal and opposite: the total is zero within noise, neither part is the larger
    distributed = shifted(accumulated, -0.05, [0.01, -0.01, 0.005, -0.005])
    [part] = parts_of(*three_arms(SERIAL, accumulated, distributed)).itertuples()
    assert part.larger == decomposition.NOT_DISTINGUISHABLE


def test_one_seed_decides_nothing():
    rows = three_arms([0.5], [0.7], [0.71])
    [part] = parts_of(*rows).itertuples()
    assert part.larger == report.ONE_SEED
    [part] = parts_of(*three_arms([0.5], [0.6], [0.7])).itertuples()
    assert part.larger == report.ONE_SEED  # equal parts in one seed: no interval, not a tie
    text = decomposition_text(*rows)
    assert headline(text) == "not decidable: no interval can be computed (one seed per cell)"


def test_cells_that_disagree_are_mixed_and_cells_without_a_verdict_are_said():
    batch_acc = shifted(SERIAL, 0.10, [0.01, -0.01, 0.0, 0.005])
    batch_dist = shifted(batch_acc, 0.0, [0.01, -0.01, 0.005, -0.005])
    spread_acc = shifted(SERIAL, 0.0, [0.01, -0.01, 0.0, 0.005])
    spread_dist = shifted(spread_acc, 0.10, [0.01, -0.01, 0.005, -0.005])
    noise = ([0.55, 0.51, 0.57, 0.53], [0.52, 0.57, 0.50, 0.55])
    text = decomposition_text(
        *three_arms(SERIAL, batch_acc, batch_dist, image_size=32),
        *three_arms(SERIAL, spread_acc, spread_dist, image_size=64),
    )
    assert headline(text).startswith("mixed")
    text = decomposition_text(
        *three_arms(SERIAL, batch_acc, batch_dist, image_size=32),
        *three_arms(SERIAL, *noise, image_size=64),
    )
    assert headline(text) == (
        "the batch part in 1 of 2 cells, in the others not distinguishable from each other"
    )


def test_the_answers_section_shows_the_decomposition_evidence_and_names_no_winner_in_noise():
    rows = three_arms(SERIAL, [0.55, 0.51, 0.57, 0.53], [0.52, 0.57, 0.50, 0.55])
    text = report.answers_html(records(*rows))
    assert "not distinguishable from each other" in text
    assert not any(name in text for name in NAMED)
    assert "Our answer</b> (accuracy, synthetic data)" in text
    assert "Q2 evidence (synthetic data): batch part against distribution part" in text
    assert "Q1 evidence (synthetic data)" not in text  # no Q1 pair in this study


# --- Q3 and the findings: no best without an interval ------------------------------------------


def test_q3_says_a_next_highest_within_the_interval_is_not_separated():
    frame = records(
        *seeds([0.40, 0.42, 0.41], image_size=32),
        *seeds([0.70, 0.62, 0.74], image_size=64),
        *seeds([0.66, 0.69, 0.65], image_size=128),
    )
    best = report.q3_best_resolution(frame)
    sentence = report.q3_sentence(best)
    assert "Yes" not in sentence and "In some settings" not in sentence
    assert sentence.startswith("No optimum is bracketed within this grid. ")
    assert "beyond seed noise in 0 of 1" in sentence
    assert (
        "Not separated from the next highest, so no single best is shown: 64 px and 128 px "
        "(compact, serial, 10/class)." in sentence
    )
    table = report.answers_html(frame)
    assert ">no: seed noise<" in table and "interior by the means" in table


def test_q3_with_one_run_per_cell_counts_directions_only():
    frame = records(
        *seeds([0.4], image_size=32), *seeds([0.8], image_size=64), *seeds([0.6], image_size=128)
    )
    sentence = report.q3_sentence(report.q3_best_resolution(frame))
    assert sentence.startswith("No interval can be computed (one seed per cell). ")
    assert sentence.endswith("directions only, no size is separated from another.")


def test_learning_rates_that_differ_by_the_means_only_are_not_said_to_differ():
    rows = []
    for size, best in ((96, 3e-3), (128, 1e-3)):
        for rate in (1e-3, 3e-3):
            level = 0.62 if rate == best else 0.60
            noise = [0.0, 0.06, -0.05] if rate == best else [0.03, -0.02, 0.0]
            rows += seeds(
                [level + e for e in noise],
                image_size=size,
                learning_rate=rate,
                base_learning_rate=rate,
            )
    [sentence] = report.lr_sentences(report.best_learning_rates(records(*rows)))
    assert "It differs between sizes by the means only" in sentence
    assert "beyond seed noise at 0 of 2 sizes" in sentence
    assert "differs between sizes beyond seed noise" not in sentence


def test_a_lever_within_seed_noise_beats_nothing():
    frame = records(
        *seeds([0.70, 0.64, 0.72], mode="distributed"),
        *seeds([0.66, 0.69, 0.70], mode="distributed+fp16-allreduce"),
    )
    [sentence] = report.lever_comparisons(frame)
    assert "within seed noise, so neither beats the other" in sentence
    assert "distributed beats" not in sentence and "allreduce beats" not in sentence


# --- the paper's Table 2, read whole -------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_answers() -> dict[str, list[str]]:
    return report.paper_answers(records(*seeds([0.5, 0.6]), *seeds([0.7, 0.8], image_size=128)))


def test_the_whole_paper_table_is_read_beside_a_synthetic_study(synthetic_answers):
    q1, q2, q3 = (" ".join(synthetic_answers[k]) for k in ("Q1", "Q2", "Q3"))
    for text in (q1, q2, q3):
        assert "(all 64 cells, one run per cell, so no intervals: direction counts only" in text
        assert "This study (synthetic data): " in text
    assert (
        "76 comparisons: by direction only, no significance: higher in 11 of 76, lower in 65" in q1
    )
    assert "higher in 30 of 32, lower in 2; mean +2.3 points" in q2
    assert (
        "It is at an interior size in 10; the largest size tried in 3 and the smallest in 1" in q3
    )


def test_where_the_papers_text_and_its_table_disagree_is_said(synthetic_answers):
    *_, q1 = synthetic_answers["Q1"]
    assert q1.startswith("Its text and its own Table 2 disagree")
    assert "higher accuracy in only 11 of 76 comparisons and the lower in 65" in q1
    assert q1.endswith("This study (synthetic data): not answerable.")
    *_, q2 = synthetic_answers["Q2"]
    assert q2.startswith("Its text and its Table 2 agree in direction")
    assert "another learning rate than the serial ones in 32 of 32 cells" in q2
    *_, q3 = synthetic_answers["Q3"]
    assert q3.startswith("Its text and its Table 2 disagree in part")


def test_agreement_is_computed_from_the_table_not_assumed():
    paper = report.load_paper_table()
    # accuracy rising with resolution only: fewer high-resolution images always win
    rising = paper.assign(accuracy_pct=30 + paper["image_size"] / 40)
    answers = report.paper_answers(records(*seeds([0.5])), rising)
    assert answers["Q1"][-1].startswith("Its text and its Table 2 agree in direction")
    assert "higher accuracy in 76 of 76 comparisons" in answers["Q1"][-1]
    # serial always higher
    falling = paper.assign(
        accuracy_pct=paper["accuracy_pct"] - 20 * (paper["mode"] == "distributed")
    )
    answers = report.paper_answers(records(*seeds([0.5])), falling)
    assert answers["Q2"][-1].startswith("Its text and its Table 2 disagree in direction")


def test_the_paper_is_quoted_word_for_word():
    text = " ".join(report.PAPER_TEXT_FILE.read_text().split())
    assert text.startswith("# Data-Efficient Training of High-Resolution Images in Medical Domain")
    for _, quotes in report.PAPER_TEXT.values():
        for quote in quotes:
            assert quote in text


def test_the_papers_text_and_table_are_package_data():
    globs = tomllib.loads((project_root() / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["hiresmed_nb"]
    package = Path(report.__file__).parents[2]
    for path in (report.PAPER_TEXT_FILE, report.PAPER_TABLE):
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, glob) for glob in globs), relative
