"""Starting something that must be stopped also when its start fails half-way (a controller up,
some engines not): :class:`Started` gives ``with`` to the clusters."""

from __future__ import annotations

from typing import Protocol, Self, TypeVar


class Startable(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


StartableT = TypeVar("StartableT", bound=Startable)


def start_or_stop(thing: StartableT) -> StartableT:
    """``thing.start()`` and return it; if the start fails, ``thing.stop()`` then the failure."""
    try:
        thing.start()
    except BaseException:
        thing.stop()
        raise
    return thing


class Started:
    """``with Cluster(...) as cluster``: started on entry (stopped if that fails), stopped on
    exit. Subclasses define ``start`` and ``stop``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return start_or_stop(self)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
