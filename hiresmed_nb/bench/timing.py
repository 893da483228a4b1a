"""Timing and summaries: the clocks the measured processes use, and the median and spread of
repeated measurements that every benchmark JSON holds.

Clock times are ``time.time()`` wall-clock seconds where timestamps from different processes on
one host are compared, ``time.perf_counter()`` where a duration is taken within one process.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hiresmed_nb.errors import HiresmedError

GiB = 1024**3


def summarize(values: Sequence[float], unit: str = "", label: str = "") -> dict[str, Any]:
    """Median and spread of repeated measurements.

    Returns ``median``, ``q1``/``q3`` (25th/75th percentiles, linear interpolation), ``iqr``,
    ``min``, ``max``, ``n`` and the ``values`` themselves, plus ``unit`` and ``label``.
    Raises :class:`HiresmedError` on no values or a non-finite one.
    """
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        raise HiresmedError(f"no measurements to summarise for {label or 'a figure'}")
    if not np.all(np.isfinite(array)):
        raise HiresmedError(f"non-finite measurement in {label or 'a figure'}: {array.tolist()}")
    q1, median, q3 = np.percentile(array, [25, 50, 75])
    return {
        "label": label,
        "unit": unit,
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "iqr": float(q3 - q1),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
        "values": [float(v) for v in array],
    }


def median_ratios(
    numerators: Sequence[Sequence[float]], denominators: Sequence[Sequence[float]]
) -> list[float]:
    """Per pair of repeats: the median of one's values over the median of the other's.

    ``numerators[i]`` and ``denominators[i]`` are the values of repeat ``i`` of two arms (a
    single number counts as one value); the lists must be equally long.
    """
    return [
        float(np.median(a) / np.median(b)) for a, b in zip(numerators, denominators, strict=True)
    ]


def median_ratio(figures: dict[str, dict[str, Any]], numerator: str, denominator: str) -> float:
    """The median of figure ``numerator`` over the median of figure ``denominator``."""
    return figures[numerator]["median"] / figures[denominator]["median"]


def relative_iqr(figure: dict[str, Any]) -> float:
    """A figure's IQR over its median (NaN for a zero median)."""
    return figure["iqr"] / figure["median"] if figure["median"] else float("nan")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ``ru_maxrss`` in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def step_clock() -> Any:
    """A Keras callback that timestamps every training batch end and notes epoch boundaries.

    ``batch_ends``: ``time.time()`` at each batch end, in order; ``epoch_starts``: the index in
    ``batch_ends`` of each epoch's first batch.
    """
    import tensorflow as tf

    class StepClock(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.batch_ends: list[float] = []
            self.epoch_starts: list[int] = []

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_starts.append(len(self.batch_ends))

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.batch_ends.append(time.time())

    return StepClock()


def step_intervals(batch_ends: list[float], epoch_starts: list[int], from_epoch: int) -> list:
    """Seconds between consecutive batch ends, counting only steps of epochs >= ``from_epoch``
    (an epoch's first step is measured from the previous epoch's last batch end)."""
    first = epoch_starts[from_epoch] if from_epoch < len(epoch_starts) else len(batch_ends)
    first = max(first, 1)
    return [batch_ends[i] - batch_ends[i - 1] for i in range(first, len(batch_ends))]


def time_calls(
    call: Callable[[], object],
    warmup: int,
    repeats: int,
    before: Callable[[int], object] | None = None,
) -> list[float]:
    """Seconds (``perf_counter``) of each of ``repeats`` calls of ``call`` after ``warmup``
    untimed ones; ``before(i)``, when given, runs untimed just before call ``i`` (from 0)."""
    seconds = []
    for index in range(warmup + repeats):
        if before is not None:
            before(index)
        started = time.perf_counter()
        call()
        if index >= warmup:
            seconds.append(time.perf_counter() - started)
    return seconds
