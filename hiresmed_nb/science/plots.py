"""Plots a run's notebook and its TensorBoard logs share, drawn with matplotlib alone.

A notebook's kernel imports this for every run, so it imports neither scipy nor scikit-learn
nor seaborn (about 0.8 s of CPU per kernel here, paid again by every run of a study).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def draw_confusion_matrix(
    axes: Any, matrix: Sequence[Sequence[int]], class_names: Sequence[str]
) -> None:
    """``matrix`` (rows: true class, columns: predicted) on ``axes`` as a heat map with each
    count written in its cell, classes named on both axes."""
    counts = np.asarray(matrix, dtype=int)
    image = axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(int(counts.max(initial=0)), 1))
    ticks = range(len(class_names))
    axes.set_xticks(ticks, list(class_names), rotation=45, ha="right")
    axes.set_yticks(ticks, list(class_names))
    axes.set(xlabel="predicted", ylabel="true")
    for (row, column), count in np.ndenumerate(counts):
        dark = count > image.norm.vmax / 2  # white text on the dark cells
        axes.text(
            column, row, str(count), ha="center", va="center", color="white" if dark else "black"
        )
