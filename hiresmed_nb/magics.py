"""``%horovodrun`` and ``%%horovodrun``: Horovod code from a notebook cell, on the warm engines.

``%load_ext hiresmed_nb`` registers them::

    %horovodrun -np 2 [-H hostA:1,hostB:1] script.py [args ...]
    %%horovodrun -np 2 [-H hostA:1,hostB:1] [-- args ...]

The line magic runs ``script.py`` on every rank as ``horovodrun`` would (see
:mod:`hiresmed_nb.cluster.scripts`); the cell magic runs the cell's source on every rank, with
``args`` as its ``sys.argv[1:]``, and gives rank 0's value of its final expression as the cell's
value. Both use the kernel's warm cluster, the same engines ``01_train`` uses for the same
placement (``N_RANKS`` = ``-np``, ``HOSTS`` = ``-H``). Rank 0's output streams into the cell; an
interrupt stops every rank; a failing rank raises ``RankFailedError`` with its traceback, a lost
one ``RankLostError`` with its engine's last output.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class

from hiresmed_nb.errors import HiresmedError

USAGE = (
    "%horovodrun -np N [-H HOSTS] script.py [args ...]  or, as a cell's first line, "
    "%%horovodrun -np N [-H HOSTS] [-- args ...]"
)


class _Parser(argparse.ArgumentParser):
    """argparse that raises HiresmedError instead of exiting the kernel."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise HiresmedError(f"%horovodrun: {message}; usage: {USAGE}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="%horovodrun", usage=USAGE, add_help=False)
    parser.add_argument("-np", "--num-proc", dest="n_ranks", type=int, default=0)
    parser.add_argument("-H", "--hosts", default="")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def parse_line(line: str, cell: bool) -> tuple[Any, list[str]]:
    """``(Placement, argv)`` of a magic's line: for the line magic ``argv`` starts with the
    script; for the cell magic it is what follows ``--``. HiresmedError naming ``-np`` or
    ``-H`` for a bad placement, before any engine starts."""
    from hiresmed_nb.placement import Placement, parse_hosts, total_slots

    try:
        tokens = shlex.split(line)
    except ValueError as error:
        raise HiresmedError(f"%horovodrun: {error} in {line!r}") from None
    if not tokens:
        raise HiresmedError(f"%horovodrun: give -np and what to run; usage: {USAGE}")
    options = _parser().parse_args(tokens)
    rest = options.rest
    if cell:
        if rest and rest[0] == "--":
            rest = rest[1:]
        elif rest:
            raise HiresmedError(f"%%horovodrun: put the cell's arguments after --, not {rest}")
    else:
        rest = rest[1:] if rest[:1] == ["--"] else rest
        if not rest:
            raise HiresmedError(f"%horovodrun: name the script to run; usage: {USAGE}")
    hosts = parse_hosts(options.hosts)
    n_ranks = options.n_ranks
    if hosts and n_ranks not in (0, total_slots(hosts)):
        raise HiresmedError(
            f"%horovodrun: -np {n_ranks} does not match -H {options.hosts}, which has "
            f"{total_slots(hosts)} slots: give -np equal to the total or leave it out"
        )
    if not hosts and n_ranks < 1:
        raise HiresmedError(f"%horovodrun: -np must be at least 1, got {n_ranks}")
    return Placement(n_ranks or total_slots(hosts), hosts=tuple(hosts)), rest


@magics_class
class HorovodrunMagics(Magics):
    """``%horovodrun`` (a script) and ``%%horovodrun`` (the cell's source) on Horovod ranks."""

    @line_cell_magic
    def horovodrun(self, line: str, cell: str | None = None) -> Any:
        """Run a Horovod script, or this cell, on N ranks of the kernel's warm engines.

        %horovodrun -np N [-H HOSTS] script.py [args ...]
        %%horovodrun -np N [-H HOSTS] [-- args ...]
        """
        from hiresmed_nb.cluster import kernel_pool

        placement, argv = parse_line(line, cell is not None)
        if cell is None:
            kernel_pool().run_script(placement, argv[0], argv[1:])
            return None
        return kernel_pool().run_source(placement, cell, argv)
