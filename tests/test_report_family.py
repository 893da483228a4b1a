"""A headline holds at 95% for the whole family of comparisons it summarises: studies of pure seed
noise over a grid of many comparisons name a side in at most 5% of cases, one comparison at
p = 0.035 among noise names none, and a clear effect in every cell is still named."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from test_report import records, seeds

from hiresmed_nb.science import report
from hiresmed_nb.science.report import decomposition

SIZES = (32, 64, 128, 256)
IMAGES = (10, 20, 40)  # with SIZES: 6 x 3 = 18 Q1 comparisons in one arm
NAMES_A_SIDE = {"yes", "no", "mixed", f"yes or {report.NOISE}", f"no or {report.NOISE}"}
STUDIES = 200


def grid_study(rng: np.random.Generator, n_seeds: int, effect_per_size: float = 0.0):
    """One arm over SIZES x IMAGES, every cell run with ``n_seeds`` seeds: accuracy 60% plus
    ``effect_per_size`` per step up in size, a per-seed offset shared by all cells (the seed's
    split) and independent run noise, rounded to 1/80 as a test set of 80 images would."""
    offsets = rng.normal(0, 0.02, n_seeds)
    rows = []
    for step, size in enumerate(SIZES):
        for images in IMAGES:
            values = 0.6 + effect_per_size * step + offsets + rng.normal(0, 0.03, n_seeds)
            rows += seeds(
                list(np.round(values * 80) / 80), image_size=size, images_per_class=images
            )
    return records(*rows)


def names_a_side(headline: str) -> bool:
    return headline in NAMES_A_SIDE


def test_difference_p_value_is_the_paired_t_test_its_interval_inverts():
    a = pd.Series([0.61, 0.70, 0.66, 0.59])
    b = pd.Series([0.55, 0.69, 0.60, 0.58])
    diff = report.paired_difference(a, b)
    assert diff.p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert (diff.p < 0.05) == (diff.verdict in (report.HIGHER, report.LOWER))
    wide = report.paired_difference(a, b, confidence=0.99)
    assert wide.p == pytest.approx(diff.p)
    assert math.isnan(report.paired_difference(a[:1], b[:1]).p)


def test_holm_adjusts_step_down_and_leaves_untested_comparisons_out():
    adjusted = report.holm_p_values([0.01, 0.04, 0.03, 0.005, math.nan])
    # sorted: 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1 (never below the one before)
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    assert report.holm_p_values([0.4, 0.3]) == pytest.approx([0.6, 0.6])
    assert report.holm_p_values([]) == []


def test_pure_noise_over_a_grid_of_18_comparisons_names_a_side_in_at_most_5_percent():
    rng = np.random.default_rng(20261204)
    named = unadjusted = 0
    for _ in range(STUDIES):
        pairs = report.q1_pairs(grid_study(rng, n_seeds=3))
        assert len(pairs) == 18
        named += names_a_side(report.q1_headline(pairs))
        unadjusted += any(d.verdict in (report.HIGHER, report.LOWER) for d in pairs["diff"])
    assert named <= 0.05 * STUDIES
    # the same studies read one interval at a time name a side far more often: the grid is a
    # real test of the adjustment
    assert unadjusted > 0.15 * STUDIES


def single_pairs_study(differences: list[list[float]]) -> pd.DataFrame:
    """One Q1 pair per architecture: fewer images at 128 px against more at 32 px, whose
    per-seed differences (fewer − more) are the given ones."""
    rows = []
    for index, diffs in enumerate(differences):
        more = [0.55 + 0.03 * seed for seed in range(len(diffs))]
        arch = f"net{index}"
        rows += seeds(more, arch=arch, image_size=32, images_per_class=30)
        rows += seeds(
            [m + d for m, d in zip(more, diffs, strict=True)],
            arch=arch,
            image_size=128,
            images_per_class=10,
        )
    return records(*rows)


def per_seed_at(p: float, spread: float = 0.02) -> list[float]:
    """Three per-seed differences whose paired t-test has two-sided p-value ``p``."""
    t = stats.t.isf(p / 2, 2)
    mean = t * spread / math.sqrt(3)  # the sd of mean + spread * (-1, 0, 1) is ``spread``
    return [mean - spread, mean, mean + spread]


NOISE_PAIRS = [
    [0.02, -0.03, 0.01],
    [-0.04, 0.01, 0.02],
    [0.03, 0.00, -0.02],
    [-0.01, 0.02, -0.02],
    [0.05, -0.04, 0.00],
    [0.00, 0.03, -0.04],
    [0.01, -0.02, 0.02],
    [-0.03, 0.04, 0.01],
    [0.02, 0.02, -0.05],
]


def test_one_comparison_at_p_0035_among_noise_names_no_side():
    pairs = report.q1_pairs(single_pairs_study([per_seed_at(0.035), *NOISE_PAIRS]))
    assert len(pairs) == 10
    [lone] = pairs[pairs["arch"] == "net0"].itertuples()
    assert lone.diff.p == pytest.approx(0.035)
    assert lone.diff.verdict == report.HIGHER  # its own interval excludes zero...
    assert lone.adjusted == report.NOISE  # ...but not within the family of ten
    assert lone.holm_p == pytest.approx(0.35)
    assert all(d.p > 0.2 for d in pairs["diff"][1:])
    assert report.q1_headline(pairs) == report.NOISE
    sentence = report.q1_sentence(pairs)
    assert sentence.startswith("Not distinguishable from seed noise. ")
    assert "higher in 0 of 10, lower in 0, not distinguishable from seed noise in 10" in sentence
    assert "adjusted together over the 10 comparisons of Q1 with an interval, Holm" in sentence
    assert "Highest mean difference (its own interval, unadjusted)" in sentence
    # the table keeps the pair's own interval, labelled unadjusted, beside the adjusted verdict
    table = report.answers_html(single_pairs_study([per_seed_at(0.035), *NOISE_PAIRS]))
    assert "accuracy difference, points (own 95% CI, unadjusted)" in table
    assert "verdict (Holm, family of 10)" in table and ">0.350<" in table


def test_the_same_comparison_alone_is_named():
    pairs = report.q1_pairs(single_pairs_study([per_seed_at(0.035)]))
    assert report.q1_headline(pairs) == "yes"


def test_a_clear_effect_in_every_cell_is_still_named():
    rng = np.random.default_rng(7)
    for _ in range(5):
        pairs = report.q1_pairs(grid_study(rng, n_seeds=5, effect_per_size=0.10))
        assert len(pairs) == 18
        assert set(pairs["adjusted"]) == {report.HIGHER}
        assert report.q1_headline(pairs) == "yes"


def test_q2_headline_is_adjusted_over_all_of_q2s_comparisons():
    # distributed − serial at p = 0.035 in one cell, the other comparisons of Q2 noise
    serial = [0.50, 0.56, 0.52]
    rows = []
    for index, diffs in enumerate([per_seed_at(0.035), *NOISE_PAIRS[:4]]):
        cell = {"image_size": 32 * (index + 1)}
        rows += seeds(serial, **cell)
        rows += seeds(
            [s + d for s, d in zip(serial, diffs, strict=True)], mode="distributed", **cell
        )
    comparisons = report.q2_comparisons(records(*rows))
    assert len(comparisons) == 5
    assert comparisons["diff"].iloc[0].verdict == report.HIGHER
    assert report.q2_headline(comparisons) == report.NOISE
    [sentence, *_] = report.q2_sentences(comparisons)
    assert sentence.startswith(f"Distributed − serial, 5 cells: {report.NOISE}; higher in 0 of 5")


def test_lever_comparisons_are_one_family():
    plain = [0.70, 0.64, 0.72]
    rows = []
    for index, diffs in enumerate([per_seed_at(0.035), *NOISE_PAIRS[:3]]):
        cell = {"image_size": 32 * (index + 1)}
        rows += seeds(plain, mode="distributed", **cell)
        mode = "distributed+fp16-allreduce" if index % 2 else "distributed+bfloat16"
        rows += seeds([p + d for p, d in zip(plain, diffs, strict=True)], mode=mode, **cell)
    sentences = report.lever_comparisons(records(*rows))
    assert len(sentences) == 4
    assert not any("allreduce beats" in s or "bfloat16 beats" in s for s in sentences)
    assert not any("distributed beats" in s for s in sentences)
    assert "(its own interval, unadjusted; verdict by Holm over 4 comparisons)" in sentences[0]
    assert "within seed noise, so neither beats the other" in sentences[0]


def test_the_answers_say_which_intervals_are_adjusted_and_how():
    text = report.answers_html(single_pairs_study([per_seed_at(0.035), *NOISE_PAIRS]))
    assert text.startswith(f"<p>{report.ADJUSTMENT_SENTENCE}</p>".replace("'", "&#x27;"))
    assert "Holm" in report.ADJUSTMENT_SENTENCE and "unadjusted" in report.ADJUSTMENT_SENTENCE


def decomposed_cells(per_cell: list[tuple[list[float], list[float]]]) -> pd.DataFrame:
    """Cells run serially, serial-accumulated and distributed whose per-seed b − d and b + d
    (batch part b, distribution part d) are the given ones."""
    serial = [0.50, 0.56, 0.52]
    rows = []
    for index, (minus, plus) in enumerate(per_cell):
        cell = {"image_size": 32 * (index + 1)}
        batch = [(x + y) / 2 for x, y in zip(minus, plus, strict=True)]
        spread = [(y - x) / 2 for x, y in zip(minus, plus, strict=True)]
        accumulated = [s + b for s, b in zip(serial, batch, strict=True)]
        distributed = [a + d for a, d in zip(accumulated, spread, strict=True)]
        rows += seeds(serial, **cell)
        rows += seeds(accumulated, mode="serial-accumulated", accumulation_steps=2, **cell)
        rows += seeds(distributed, mode="distributed", **cell)
    return report.decompose(report.q2_comparisons(records(*rows)))


def test_a_part_named_in_one_cell_alone_is_not_named_among_noise_cells():
    # b − d and b + d each at p = 0.015: both 97.5% intervals exclude zero, the batch part is
    # the larger in that cell alone; among four cells of noise, Holm keeps no cell
    claim = (per_seed_at(0.015), per_seed_at(0.015))
    [alone] = decomposed_cells([claim]).itertuples()
    assert alone.larger == decomposition.BATCH
    assert alone.holm_p == pytest.approx(0.03)
    noise = [(NOISE_PAIRS[i], NOISE_PAIRS[i + 4]) for i in range(4)]
    parts = decomposed_cells([claim, *noise])
    assert parts["batch_minus"].iloc[0].verdict == report.HIGHER
    assert parts["total"].iloc[0].verdict == report.HIGHER
    assert parts["holm_p"].iloc[0] == pytest.approx(0.15)
    assert decomposition.BATCH not in set(parts["larger"])
    assert decomposition.DISTRIBUTION not in set(parts["larger"])
    sentence = report.decomposition_sentence(parts)
    assert "the cells are adjusted together by Holm's procedure" in sentence


def resolution_settings(interior_gains: list[list[float] | None]) -> pd.DataFrame:
    """One setting per entry (its own data size), run at 32, 64 and 128 px with three seeds: a
    list of per-seed gains puts 64 px that far above the two edges; None gives three sizes of
    seed noise around the same level."""
    base = [0.50, 0.56, 0.52]
    rows = []
    for index, gains in enumerate(interior_gains):
        cell = {"images_per_class": 10 * (index + 1)}
        if gains is None:
            scatter = [NOISE_PAIRS[index], NOISE_PAIRS[index + 1], NOISE_PAIRS[index + 2]]
            levels = [
                [b + e + 0.001 * k for b, e in zip(base, s, strict=True)]
                for k, s in enumerate(scatter)
            ]
        else:
            levels = [base, [b + g for b, g in zip(base, gains, strict=True)], base]
        for size, values in zip((32, 64, 128), levels, strict=True):
            rows += seeds(values, image_size=size, **cell)
    return records(*rows)


def test_an_optimum_bracketed_alone_is_not_bracketed_among_settings_of_noise():
    alone = report.q3_best_resolution(resolution_settings([per_seed_at(0.02)]))
    [row] = alone.itertuples()
    assert row.vs_smallest.p == pytest.approx(0.02) and row.vs_largest.p == pytest.approx(0.02)
    assert row.bracketed and row.separated
    assert report.q3_headline(alone) == "yes, inside the grid"
    best = report.q3_best_resolution(resolution_settings([per_seed_at(0.02), None, None, None]))
    first = best.iloc[0]
    assert first["vs_smallest"].verdict == first["vs_largest"].verdict == report.HIGHER
    assert not best["bracketed"].any() and not best["separated"].any()
    assert report.q3_headline(best) == "no optimum is bracketed within this grid"
    assert "beyond seed noise in 0 of 4" in report.q3_sentence(best)


def test_a_part_beyond_seed_noise_is_counted_within_q2s_family():
    # the batch part of the first cell is at p = 0.01 on its own (d = 0, so b − d = b + d = b);
    # alone, its family is b and b + d (d has no spread): Holm keeps it at 0.02
    gain = per_seed_at(0.01)
    noise = [(NOISE_PAIRS[i], NOISE_PAIRS[i + 4]) for i in range(4)]
    parts = decomposed_cells([(gain, gain), *noise])
    assert parts["batch"].iloc[0].verdict == report.HIGHER
    assert parts["batch_adjusted"].iloc[0] == report.NOISE
    sentence = report.decomposition_sentence(parts)
    assert "has mean" in sentence and "beyond seed noise in 0 of 5 cells" in sentence
    alone = report.decomposition_sentence(decomposed_cells([(gain, gain)]))
    assert "beyond seed noise in 1 of 1 cell;" in alone
