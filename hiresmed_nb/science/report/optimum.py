"""The best value on one axis, said no more strongly than its intervals allow: Q3's resolution per
setting and, when the study sweeps it, the learning rate per size and arm.

The value with the highest seed mean is only the highest mean. It is *separated* from the next
highest when the paired 95% interval of their difference is above zero; an interior optimum is
*bracketed* when the highest beats both the smallest and the largest value tried beyond seed
noise (then neither edge can be the best, and the optimum lies inside the grid). Both claims, over
all the settings of one frame (Q3's, or the learning rates'), form one family adjusted by Holm's
procedure (:func:`.answers._adjust_optimum`, :mod:`.family`): the frame's ``separated`` and
``bracketed`` are the adjusted claims, and the intervals shown are each comparison's own,
unadjusted. The value compared is the one with the highest mean, chosen from the same seeds, and
no correction is made for that choice (in 200 studies of pure noise over 6 settings of 4 sizes
and 3 seeds, 1 had a separated or bracketed highest; read one interval at a time, 20 had one).
Without intervals (one seed, or the paper's one run per cell) positions are counted by direction
only.
"""

from __future__ import annotations

import pandas as pd

from hiresmed_nb.science.report.family import UNADJUSTED
from hiresmed_nb.science.report.stats import NO_INTERVAL
from hiresmed_nb.science.report.tables import format_lr
from hiresmed_nb.science.report.verdicts import _mean_text, _optional_points, _plural

BRACKETED, INTERIOR, INTERIOR_NO_INTERVAL = (
    "bracketed",
    "interior, not bracketed",
    "interior, no interval",
)
WHERE = {
    BRACKETED: "interior, bracketed beyond seed noise",
    INTERIOR: "interior by the means only",
    INTERIOR_NO_INTERVAL: "interior by the means (no interval)",
    "largest": "largest tried: not bracketed",
    "smallest": "smallest tried: not bracketed",
    "only one": "only one tried",
    "tie": "tie",
}
SHOWN = 3  # settings named in a sentence before 'and k more'


def where(row) -> str:
    """The row's position (answers' ``position``) with an interior one judged by its adjusted
    claim: :data:`BRACKETED`, :data:`INTERIOR` or :data:`INTERIOR_NO_INTERVAL`."""
    if row.position != "interior":
        return row.position
    edges = (row.vs_smallest, row.vs_largest)
    if row.bracketed:
        return BRACKETED
    if any(d is None or d.verdict in NO_INTERVAL for d in edges):
        return INTERIOR_NO_INTERVAL
    return INTERIOR


def separation(row) -> str:
    """Whether the highest mean is separated from the next highest (beyond seed noise, adjusted
    over the family), in a word or two for a table column."""
    diff = row.diff
    if diff is None:
        return "—"
    if row.separated:
        return "yes"
    if diff.verdict in NO_INTERVAL:
        return "no interval"
    return "no: seed noise"


# --- the learning rate -----------------------------------------------------------------------


def lr_sentences(rates: pd.DataFrame) -> list[str]:
    """Per arm and data size, the highest-mean LEARNING_RATE at each image size, and whether it
    differs between sizes beyond seed noise (the paper: in distributed training each size has its
    own ideal rate). The rates are said to differ only when at two sizes with different rates the
    highest beats its runner-up beyond seed noise."""
    sentences = []
    for (_, arch, arm, images), group in rates.groupby(
        ["dataset", "arch", "arm", "images_per_class"]
    ):
        best = ", ".join(f"{r.image_size} px: {format_lr(r.best)}" for r in group.itertuples())
        separated = group[group["separated"]]
        if group["best"].nunique() == 1:
            own = "It is the same at every size"
        elif separated["best"].nunique() > 1:
            own = "It differs between sizes beyond seed noise"
        else:
            own = (
                "It differs between sizes by the means only: not separated from the runner-up "
                "at enough sizes to show that the ideal rate differs"
            )
        edge = int(group["position"].isin(["largest", "smallest"]).sum())
        sentences.append(
            f"Highest-mean learning rate, {arm}, {arch}, {images}/class: {best}. {own}. It beats "
            f"the runner-up beyond seed noise at {len(separated)} of "
            f"{_plural(len(group), 'size')}; it is the smallest or largest rate tried at {edge}."
        )
    return sentences


def lr_table(rates: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The evidence for the highest-mean learning rate per size and arm."""
    if rates.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "dataset": rates["dataset"],
            "arch": rates["arch"],
            "arm": rates["arm"],
            "images/class": rates["images_per_class"],
            "size": rates["image_size"].map(lambda s: f"{s} px"),
            "highest-mean rate": rates["best"].map(format_lr),
            f"{metric} (%)": [_mean_text(r.mean, r.half, r.n) for r in rates.itertuples()],
            "runner-up": rates["runner_up"].map(format_lr),
            f"highest − runner-up, points ({UNADJUSTED})": rates["diff"].map(_optional_points),
            "separated (Holm)": [separation(r) for r in rates.itertuples()],
            "where": [WHERE[where(r)] for r in rates.itertuples()],
        }
    )


# --- Q3: the resolution ----------------------------------------------------------------------


def _setting(row) -> str:
    rate = f", lr {row.lr}" if row.lr else ""
    return f"{row.arch}, {row.arm}, {row.images_per_class}/class{rate}"


def _without_intervals(ranked: pd.DataFrame) -> bool:
    """True when no comparison of any setting has an interval (one seed, one run per cell)."""
    return all(
        d is None or d.verdict in NO_INTERVAL
        for r in ranked.itertuples()
        for d in (r.diff, r.vs_smallest, r.vs_largest)
    )


def q3_headline(best: pd.DataFrame, single: str = "one seed") -> str:
    """Q3 in a few words: an optimum bracketed by intervals in every, some or no setting."""
    ranked = best[best["position"] != "only one"]
    if ranked.empty:
        return "not answerable: every setting was run at one resolution only"
    if not (ranked["tried"] >= 3).any():
        return (
            "not answerable from two resolutions per setting: an optimum needs a worse size on "
            "each side"
        )
    places = [where(r) for r in ranked.itertuples()]
    if _without_intervals(ranked):
        return f"no interval can be computed ({single} per cell)"
    bracketed = places.count(BRACKETED)
    if bracketed == int((ranked["tried"] >= 3).sum()):
        return "yes, inside the grid"
    return "in some settings" if bracketed else "no optimum is bracketed within this grid"


def q3_sentence(best: pd.DataFrame, single: str = "one seed") -> str:
    """The Q3 verdict: where the highest mean lies in each setting (interior, and bracketed
    beyond seed noise, or at an edge of the grid) and whether it is separated from the next
    highest size; the settings where it is not are named. Without intervals, directions only."""
    headline = q3_headline(best, single)
    ranked = best[best["position"] != "only one"]
    if ranked.empty:
        return headline[:1].upper() + headline[1:] + "."
    places = pd.Series([where(r) for r in ranked.itertuples()])
    counts = ranked["position"].value_counts()
    winners = ranked["best"].value_counts()
    sizes = ", ".join(f"{size} px in {count}" for size, count in winners.items())
    what = "arch, arm, data size" + (", learning rate" if (ranked["lr"] != "").any() else "")
    no_interval = _without_intervals(ranked)
    text = (
        f"{headline[:1].upper() + headline[1:]}. Over {_plural(len(ranked), 'setting')} ({what}) "
        f"the highest mean is at {sizes}. It is at an interior size in "
        f"{int(counts.get('interior', 0))}"
    )
    if not no_interval:
        text += (
            f" (bracketed, beating both the smallest and the largest size tried beyond seed "
            f"noise, in {int((places == BRACKETED).sum())})"
        )
    text += (
        f"; the largest size tried in {int(counts.get('largest', 0))} and the smallest in "
        f"{int(counts.get('smallest', 0))} (there the optimum may lie beyond the grid)"
    )
    if counts.get("tie"):
        text += f"; a tie in {int(counts['tie'])}"
    if no_interval:
        return f"{text}; {single} per cell: directions only, no size is separated from another."
    separated = list(ranked["separated"])
    text += (
        f"; the highest beats the next highest size beyond seed noise in {sum(separated)} of "
        f"{len(ranked)}"
    )
    apart = [r for r, sure in zip(ranked.itertuples(), separated, strict=True) if not sure]
    if apart:
        named = "; ".join(
            f"{r.best} px and {int(r.runner_up)} px ({_setting(r)})" for r in apart[:SHOWN]
        )
        more = f"; and {len(apart) - SHOWN} more (see the table)" if len(apart) > SHOWN else ""
        text += f". Not separated from the next highest, so no single best is shown: {named}{more}"
    return text + "."


def q3_table(best: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """The Q3 evidence: per setting, the size with the highest mean, its interval, the next
    highest, whether the two are separated, and where the highest lies."""
    if best.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "dataset": best["dataset"],
            "arch": best["arch"],
            "arm": best["arm"],
            "images/class": best["images_per_class"],
            "LEARNING_RATE": best["lr"],
            "highest mean at": best["best"].map(lambda s: f"{s} px"),
            f"{metric} (%)": [_mean_text(r.mean, r.half, r.n) for r in best.itertuples()],
            "next highest": best["runner_up"].map(lambda s: "—" if pd.isna(s) else f"{int(s)} px"),
            f"highest − next, points ({UNADJUSTED})": best["diff"].map(_optional_points),
            "separated (Holm)": [separation(r) for r in best.itertuples()],
            "where": [WHERE[where(r)] for r in best.itertuples()],
        }
    )


def resolution_sentences(best: pd.DataFrame) -> list[str]:
    """One plain sentence per setting of :func:`.answers.q3_best_resolution`:
    where the highest mean lies and whether the next highest size is separated from it."""
    sentences = []
    for r in best.itertuples():
        head = f"{r.arch} on {r.dataset}, {r.images_per_class} images per class, {r.arm}"
        head += f", lr {r.lr}" if r.lr else ""
        value = _mean_text(r.mean, r.half, r.n)
        if r.position == "only one":
            sentences.append(f"{head}: only {r.best} px was run ({value}); nothing to compare.")
            continue
        if r.position == "tie":
            sentences.append(
                f"{head}: {r.best} px and {int(r.runner_up)} px tie at {100 * r.mean:.1f}%; no "
                "single size has the highest mean."
            )
            continue
        place = WHERE[where(r)]
        gap = _optional_points(r.diff)
        if r.separated:
            verdict = f"beats the next highest, {int(r.runner_up)} px, by {gap}"
        else:
            verdict = (
                f"not separated from the next highest, {int(r.runner_up)} px ({gap}), so "
                "neither is shown to be better"
            )
        sentences.append(f"{head}: highest mean at {r.best} px ({value}), {place}; {verdict}.")
    return sentences
