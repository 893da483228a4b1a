"""Warm engines' memory: replace them once TensorFlow has kept too much of their past runs.

Each run on a warm engine leaves some memory behind that no Python object accounts for (after
``clear_session``, dropping TensorFlow's custom-gradient entries and ``malloc_trim``, see
:func:`~hiresmed_nb.cluster.engine_tasks.release_memory`; BENCHMARKS.md has the growth per run). So
an engine whose resident memory has grown by more than :data:`RECYCLE_GROWTH_BYTES` since its
first run is retired, and the next run starts fresh engines: the recycling interval then
follows the model's size instead of a fixed count of runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

RECYCLE_GROWTH_BYTES = 100 * 10**6  # growth per engine past which it is replaced
MB = 10**6
MEMORY_READ_SECONDS = 10  # an idle engine answers in milliseconds


def resident_bytes() -> int:
    """This engine's resident set size now (runs on the engine)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def read_engine_memory(client: Any, engine_ids: Sequence[int]) -> list[int]:
    """The resident memory of the engines ``engine_ids`` now, in bytes, in that order, read
    through ``client`` (an ipyparallel Client). Bounded: raises ``TimeoutError`` when they have
    not all answered within MEMORY_READ_SECONDS, and the client's error when it is closed."""
    reading = client[list(engine_ids)].apply_async(resident_bytes)
    return list(reading.get(timeout=MEMORY_READ_SECONDS))


@dataclass
class EngineMemory:
    """Engines' resident memory after their first run, and how far it has grown since."""

    baseline: list[int] | None = None
    growth: int = 0

    def observe(self, rss: list[int]) -> int:
        """Record the engines' RSS after a run (the first call sets the baseline); returns the
        largest engine's growth over its baseline in bytes."""
        if self.baseline is None:
            self.baseline = list(rss)
        self.growth = max(now - first for now, first in zip(rss, self.baseline, strict=True))
        return self.growth

    def outgrown(self) -> bool:
        """Whether some engine has grown by more than RECYCLE_GROWTH_BYTES since its first run."""
        return self.baseline is not None and self.growth > RECYCLE_GROWTH_BYTES

    def describe(self) -> str:
        return f"engine memory grew by {self.growth / MB:.0f} MB since their first run"
