"""The verdicts of the Answers section: one short answer per question of the paper from the
evidence frames of :mod:`.answers`, and the evidence as display tables."""

from __future__ import annotations

import math

import pandas as pd

from hiresmed_nb.science.report.stats import (
    HIGHER,
    LOWER,
    NO_INTERVAL,
    NO_SPREAD,
    NOISE,
    ONE_SEED,
    Difference,
    format_points,
)
from hiresmed_nb.science.report.tables import format_lr

QUESTIONS = {
    "Q1": (
        "Fewer high-resolution images instead of many low-resolution ones?",
        "Can fewer high-resolution images be used to train, rather than a large number of "
        "low-resolution images, and yet achieve comparable / better accuracy?",
    ),
    "Q2": (
        "What does distributed training bring?",
        "What are the advantages of training high-resolution images in a distributed GPU setup?",
    ),
    "Q3": (
        "Is there an optimal resolution?",
        "Can we select an optimal image resolution for training a deep network which provides "
        "us with a better network performance for a medical diagnosis task?",
    ),
}
POSITIONS = {
    "interior": "interior (bracketed)",
    "largest": "largest tried: not bracketed",
    "smallest": "smallest tried: not bracketed",
    "only one": "only one tried",
    "tie": "tie",
}


# --- counting verdicts -----------------------------------------------------------------------


def tally(diffs: list[Difference]) -> dict[str, int]:
    """How many differences are higher, lower, within seed noise, or without an interval."""
    counts = {HIGHER: 0, LOWER: 0, NOISE: 0, ONE_SEED: 0, NO_SPREAD: 0}
    for diff in diffs:
        counts[diff.verdict] += 1
    return counts


def overall(diffs: list[Difference], yes: str, no: str, single: str = "one seed") -> str:
    """One phrase for a set of comparisons: ``yes``/``no`` when every interval agrees, 'not
    distinguishable from seed noise' when every interval holds zero, '<yes> or not
    distinguishable' (likewise for ``no``) when the others hold zero, 'mixed' when some say yes
    and some no; 'no interval can be computed (one seed per cell)' when no comparison has two
    seeds."""
    if not diffs:
        return "not answerable"
    counts = tally(diffs)
    with_interval = len(diffs) - counts[ONE_SEED] - counts[NO_SPREAD]
    if with_interval == 0:
        why = f"{single} per cell" if counts[ONE_SEED] else "no spread over seeds"
        return f"no interval can be computed ({why})"
    for key, word in ((HIGHER, yes), (LOWER, no), (NOISE, NOISE)):
        if counts[key] == with_interval:
            return word
    if counts[HIGHER] and counts[LOWER]:
        return "mixed"
    return f"{yes if counts[HIGHER] else no} or not distinguishable from seed noise"


def count_text(diffs: list[Difference], higher: str = "higher", lower: str = "lower") -> str:
    """'higher in 2 of 3, lower in 0, not distinguishable from seed noise in 1'; by the sign of
    the mean alone ('higher in 4 of 5, lower in 1') when no comparison has an interval."""
    counts = tally(diffs)
    total = len(diffs)
    if counts[ONE_SEED] + counts[NO_SPREAD] == total:
        up, down = sum(d.mean > 0 for d in diffs), sum(d.mean < 0 for d in diffs)
        return f"{higher} in {up} of {total}, {lower} in {down}"
    text = (
        f"{higher} in {counts[HIGHER]} of {total}, {lower} in {counts[LOWER]}, "
        f"not distinguishable from seed noise in {counts[NOISE]}"
    )
    if counts[ONE_SEED]:
        text += f", one seed (no interval) in {counts[ONE_SEED]}"
    if counts[NO_SPREAD]:
        text += f", the same difference in every seed (no interval) in {counts[NO_SPREAD]}"
    return text


def capitalised(text: str) -> str:
    """``text`` with its first letter in upper case."""
    return text[:1].upper() + text[1:]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _mean_text(mean: float, half: float | None, n: int) -> str:
    if half is None or math.isnan(half):
        return f"{100 * mean:.1f} (n={n})"
    return f"{100 * mean:.1f} ± {100 * half:.1f} (n={n})"


def _optional_points(diff: Difference | None) -> str:
    return "—" if diff is None else format_points(diff)


# --- Q1 --------------------------------------------------------------------------------------


def _cell_text(size_images: tuple[int, int]) -> str:
    size, images = size_images
    return f"{images}/class at {size} px"


def q1_sentence(pairs: pd.DataFrame, single: str = "one seed") -> str:
    """The Q1 verdict: yes / no / not distinguishable from seed noise / mixed, with counts and
    the largest difference (``single`` names one sample: 'one seed', or 'one run' for the
    paper)."""
    if pairs.empty:
        return (
            "Not answerable: no arm was run at two data sizes and two resolutions with fewer "
            "images at the higher one."
        )
    diffs = list(pairs["diff"])
    top = pairs.loc[pairs["diff"].map(lambda d: d.mean).idxmax()]
    return (
        f"{capitalised(overall(diffs, 'yes', 'no', single))}. Fewer images at a higher resolution "
        f"against more images at a lower one, {_plural(len(diffs), 'comparison')}: "
        f"{count_text(diffs)}. Largest difference: "
        f"{format_points(top['diff'], unit=' points', single=single)}, "
        f"{_cell_text(top['fewer'])} against {_cell_text(top['more'])} ({top['arch']}, "
        f"{top['arm']})."
    )


def q1_table(pairs: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The Q1 evidence: one row per pair, the paired difference and the verdict."""
    if pairs.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "dataset": pairs["dataset"],
            "arch": pairs["arch"],
            "arm": pairs["arm"],
            "LEARNING_RATE": pairs["lr"],
            "fewer, higher res.": pairs["fewer"].map(_cell_text),
            "more, lower res.": pairs["more"].map(_cell_text),
            f"{metric} difference (points)": pairs["diff"].map(format_points),
            "verdict": pairs["verdict"],
        }
    )


# --- Q2 --------------------------------------------------------------------------------------


def _rows(comparisons: pd.DataFrame, first_prefix: str, second: str) -> pd.DataFrame:
    chosen = comparisons["first"].str.startswith(first_prefix) & (comparisons["second"] == second)
    return comparisons[chosen]


def _seconds(rows: pd.DataFrame) -> tuple[float, float] | None:
    """Mean training seconds per run of each side over the rows that have both, or None."""
    timed = rows.dropna(subset=["first_seconds", "second_seconds"])
    if timed.empty:
        return None
    return float(timed["first_seconds"].mean()), float(timed["second_seconds"].mean())


def q2_sentences(comparisons: pd.DataFrame, single: str = "one seed") -> list[str]:
    """The Q2 verdict: distributed vs serial (this study: same batch per rank) and vs
    serial-accumulated (same effective batch) in the metric and in wall time, and which part,
    batch or distribution, is larger."""
    if comparisons.empty:
        return ["Not answerable: no cell was run both distributed and serially."]
    sentences = []
    for second in ("serial", "serial-accumulated"):
        rows = _rows(comparisons, "distributed", second)
        if rows.empty:
            if second == "serial-accumulated":
                sentences.append(
                    "No serial-accumulated arm, so the effective batch cannot be told apart "
                    "from the distribution."
                )
            continue
        diffs = list(rows["diff"])
        mean = 100 * sum(d.mean for d in diffs) / len(diffs)
        text = (
            f"Distributed − {second}, {_plural(len(diffs), 'cell')}: "
            f"{overall(diffs, 'distributed higher', f'{second} higher', single)}; "
            f"{count_text(diffs)}; mean {mean:+.1f} points"
        )
        seconds = _seconds(rows)
        if seconds:
            first, other = seconds
            text += (
                f"; training wall time {first:.0f} s against {other:.0f} s per run "
                f"(×{first / other:.2f})"
            )
        sentences.append(text + ".")
    sentences += _decomposition(comparisons)
    return sentences


def _decomposition(comparisons: pd.DataFrame) -> list[str]:
    """Which part of distributed − serial is larger: the batch (serial-accumulated − serial) or
    the distribution at equal effective batch (distributed − serial-accumulated)."""
    keys = ["dataset", "arch", "image_size", "images_per_class", "lr"]
    batch = _rows(comparisons, "serial-accumulated", "serial").set_index(keys)
    spread = _rows(comparisons, "distributed", "serial-accumulated")
    spread = spread[~spread.duplicated(keys)].set_index(keys)
    common = batch.index.intersection(spread.index)
    if common.empty:
        return []
    b, d = list(batch.loc[common, "diff"]), list(spread.loc[common, "diff"])
    larger = sum(abs(x.mean) > abs(y.mean) for x, y in zip(b, d, strict=True))
    if 2 * larger == len(common):
        word = "neither part consistently"
    else:
        word = "the effective batch" if 2 * larger > len(common) else "the distribution"
    sure_b = sum(x.verdict in (HIGHER, LOWER) for x in b)
    sure_d = sum(y.verdict in (HIGHER, LOWER) for y in d)
    text = (
        f"Larger effect on the metric: {word}. The batch part (serial-accumulated − serial, mean "
        f"{100 * sum(x.mean for x in b) / len(b):+.1f} points, beyond seed noise in {sure_b} of "
        f"{len(b)}) is the larger in {larger} of {_plural(len(common), 'cell')}; the distribution "
        f"part (distributed − serial-accumulated, mean {100 * sum(y.mean for y in d) / len(d):+.1f}"
        f" points, beyond seed noise in {sure_d} of {len(d)})"
        f" in {len(common) - larger}."
    )
    time_b, time_d = _seconds(batch.loc[common]), _seconds(spread.loc[common])
    if time_b and time_d:
        text += (
            f" In wall time, accumulation takes ×{time_b[0] / time_b[1]:.2f} the serial time and "
            f"distribution ×{time_d[0] / time_d[1]:.2f} the accumulated time."
        )
    return [text]


def lr_sentences(rates: pd.DataFrame) -> list[str]:
    """The best LEARNING_RATE per image size and arm (the paper: in distributed training each
    size has its own ideal rate), and whether it beats the runner-up beyond seed noise."""
    sentences = []
    for (_, arch, arm, images), group in rates.groupby(
        ["dataset", "arch", "arm", "images_per_class"]
    ):
        best = ", ".join(f"{r.image_size} px: {format_lr(r.best)}" for r in group.itertuples())
        same = group["best"].nunique() == 1
        own = "is the same at every size" if same else "differs between sizes"
        sure = sum(d is not None and d.verdict == HIGHER for d in group["diff"])
        edge = int(group["position"].isin(["largest", "smallest"]).sum())
        sentences.append(
            f"Best learning rate, {arm}, {arch}, {images}/class: {best}; it {own}. It beats the "
            f"runner-up beyond seed noise at {sure} of {_plural(len(group), 'size')}; it is the "
            f"smallest or largest rate tried at {edge}."
        )
    return sentences


def q2_table(comparisons: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The Q2 evidence: one row per cell and comparison, metric and wall time."""
    if comparisons.empty:
        return pd.DataFrame()

    def seconds(row: pd.Series) -> str:
        if math.isnan(row["first_seconds"]) or math.isnan(row["second_seconds"]):
            return "—"
        ratio = row["first_seconds"] / row["second_seconds"]
        return f"{row['first_seconds']:.0f} vs {row['second_seconds']:.0f} (×{ratio:.2f})"

    def verdict(row: pd.Series) -> str:
        if row["diff"].verdict == HIGHER:
            return f"{row['first']} higher"
        if row["diff"].verdict == LOWER:
            return f"{row['second']} higher"
        return row["diff"].verdict

    return pd.DataFrame(
        {
            "dataset": comparisons["dataset"],
            "arch": comparisons["arch"],
            "size": comparisons["image_size"].map(lambda s: f"{s} px"),
            "images/class": comparisons["images_per_class"],
            "LEARNING_RATE": comparisons["lr"],
            "comparison": comparisons["first"] + " − " + comparisons["second"],
            f"{metric} (points)": comparisons["diff"].map(format_points),
            "verdict": comparisons.apply(verdict, axis=1),
            "train s per run": comparisons.apply(seconds, axis=1),
        }
    )


def lr_table(rates: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The evidence for the best learning rate per size and arm."""
    if rates.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "dataset": rates["dataset"],
            "arch": rates["arch"],
            "arm": rates["arm"],
            "images/class": rates["images_per_class"],
            "size": rates["image_size"].map(lambda s: f"{s} px"),
            "best rate": rates["best"].map(format_lr),
            f"{metric} (%)": [_mean_text(r.mean, r.half, r.n) for r in rates.itertuples()],
            "runner-up": rates["runner_up"].map(format_lr),
            "best − runner-up (points)": rates["diff"].map(_optional_points),
            "where": rates["position"].map(POSITIONS),
        }
    )


# --- Q3 --------------------------------------------------------------------------------------


def q3_sentence(best: pd.DataFrame, single: str = "one seed") -> str:
    """The Q3 verdict: how often the best resolution is interior (an optimum bracketed by the
    grid) or at an edge, which sizes win, and how often beyond seed noise. With at most two sizes
    per setting no optimum can be bracketed, and the verdict says so."""
    ranked = best[best["position"] != "only one"]
    if ranked.empty:
        return "Not answerable: every setting was run at one resolution only."
    counts = ranked["position"].value_counts()
    interior = int(counts.get("interior", 0))
    if not (ranked["tried"] >= 3).any():
        word = (
            "Not answerable from two resolutions per setting: an optimum needs a worse size on "
            "each side"
        )
    elif interior == len(ranked):
        word = "Yes, inside the grid"
    elif interior:
        word = "In some settings"
    else:
        word = "Not within this grid"
    winners = ranked["best"].value_counts()
    sizes = ", ".join(f"{size} px in {count}" for size, count in winners.items())
    diffs = [d for d in ranked["diff"] if d is not None]
    if diffs and all(d.verdict in NO_INTERVAL for d in diffs):
        noise = f"no interval can be computed ({single} per cell)"
    else:
        sure = sum(d.verdict == HIGHER for d in diffs)
        noise = f"the best beats the next best size beyond seed noise in {sure} of {len(ranked)}"
    what = "arch, arm, data size" + (", learning rate" if (ranked["lr"] != "").any() else "")
    text = (
        f"{word}. Over {_plural(len(ranked), 'setting')} ({what}) the best "
        f"resolution is {sizes}. It is interior, bracketed by the grid, in {interior}; the "
        f"largest size tried in {int(counts.get('largest', 0))} and the smallest in "
        f"{int(counts.get('smallest', 0))} (there the optimum may lie beyond the grid)"
    )
    if counts.get("tie"):
        text += f"; a tie in {int(counts['tie'])}"
    return f"{text}; {noise}."


def q3_table(best: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The Q3 evidence: per setting, the best size, its interval, the next best and where."""
    if best.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "dataset": best["dataset"],
            "arch": best["arch"],
            "arm": best["arm"],
            "images/class": best["images_per_class"],
            "LEARNING_RATE": best["lr"],
            "best size": best["best"].map(lambda s: f"{s} px"),
            f"{metric} (%)": [_mean_text(r.mean, r.half, r.n) for r in best.itertuples()],
            "next best": best["runner_up"].map(lambda s: "—" if pd.isna(s) else f"{int(s)} px"),
            "best − next (points)": best["diff"].map(_optional_points),
            "where": best["position"].map(POSITIONS),
        }
    )
