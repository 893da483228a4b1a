"""Any Horovod code on the ranks: a script file as ``horovodrun`` runs it, or a cell's source.

Engine side (engines import these; closures do not pickle): :func:`run_file_as_main` runs a
script as ``__main__`` with its own ``sys.argv``, the script's folder first on ``sys.path`` and
the caller's working directory, as ``python script.py`` under ``horovodrun`` would;
:func:`run_source_as_main` does the same for source text, executing all of it and returning the
value of a final expression from rank 0. Both run inside :func:`.engine_tasks.run_as_rank`,
which has set the rank's ``HOROVOD_*`` variables, so the code's own ``hvd.init()`` joins this
run's ranks.

Kernel side: :func:`script_arguments` and :func:`source_arguments` check a script or a cell
before any engine runs it, and :func:`check_ranks_see` checks every path the ranks need, on
every engine, with one :class:`HiresmedError` naming the file and the host. The pool
(:meth:`.pool.Pool.run_script`, :meth:`.pool.Pool.run_source`) and a cluster
(:meth:`.horovod_cluster.HorovodCluster.run_script`) run them.
"""

from __future__ import annotations

import ast
import os
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiresmed_nb.errors import HiresmedError

CELL_FILENAME = "<horovodrun cell>"


class ScriptExitError(RuntimeError):
    """The code on a rank called ``sys.exit`` with a failure status."""


@dataclass(frozen=True)
class UnsendableValue:
    """Stands for rank 0's value when it cannot be pickled back to the kernel: shows its repr."""

    type_name: str
    text: str

    def __repr__(self) -> str:
        return self.text


# --- engine side ---------------------------------------------------------------------------------


@contextmanager
def _as_main(argv: Sequence[str], cwd: str, import_dir: str) -> Iterator[types.ModuleType]:
    """A fresh ``__main__`` module with ``sys.argv``, working directory and ``sys.path[0]`` set
    as ``python <argv[0]>`` started in ``cwd`` would have them; all restored afterwards, so a
    warm engine's next run starts from the engine's own state."""
    saved = sys.argv, os.getcwd(), list(sys.path), sys.modules["__main__"]
    main = types.ModuleType("__main__")
    sys.argv = list(argv)
    os.chdir(cwd)
    sys.path.insert(0, import_dir)
    sys.modules["__main__"] = main
    try:
        yield main
    finally:
        sys.argv, sys.modules["__main__"] = saved[0], saved[3]
        sys.path[:] = saved[2]
        os.chdir(saved[1])


def _exit_status(code: Any) -> None:
    """``sys.exit(code)`` ends a script, not the engine: 0 or None is success, anything else a
    :class:`ScriptExitError` (as ``horovodrun`` would fail on that rank's exit status)."""
    if code not in (None, 0):
        raise ScriptExitError(f"the code called sys.exit({code!r})") from None


def run_file_as_main(path: str, args: Sequence[str], cwd: str) -> None:
    """Run the script at ``path`` (absolute) as ``__main__`` in ``cwd``, with ``sys.argv`` =
    ``[path, *args]`` (runpy puts the script's path first, as ``python`` puts it as typed).
    Returns None; raises what the script raises, or :class:`ScriptExitError`."""
    import runpy

    with _as_main([path, *args], cwd, str(Path(path).parent)):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as ended:
            _exit_status(ended.code)


def run_source_as_main(source: str, argv: Sequence[str], cwd: str) -> Any:
    """Execute ``source`` as ``__main__`` (``sys.argv`` = ``argv``, in ``cwd``, with ``cwd``
    first on ``sys.path`` as in a kernel) and return the value of its final expression on rank
    0 (None on the other ranks, or when the source ends with a statement).

    Tracebacks show the source's lines (it is registered with ``linecache``). A value that does
    not pickle comes back as an :class:`UnsendableValue` showing its repr.
    """
    import linecache
    import pickle

    tree = ast.parse(source, CELL_FILENAME)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    linecache.cache[CELL_FILENAME] = (len(source), None, source.splitlines(True), CELL_FILENAME)
    value = None
    with _as_main(argv, cwd, cwd) as main:
        try:
            exec(compile(tree, CELL_FILENAME, "exec"), main.__dict__)
            if last is not None:
                expression = ast.Expression(last.value)
                value = eval(compile(expression, CELL_FILENAME, "eval"), main.__dict__)
        except SystemExit as ended:
            _exit_status(ended.code)
    if os.environ.get("HOROVOD_RANK", "0") != "0":
        return None  # Horovod: only rank 0's value goes back to the kernel.
    try:
        pickle.dumps(value)
    except Exception:
        return UnsendableValue(type(value).__name__, repr(value))
    return value


# --- kernel side ---------------------------------------------------------------------------------


def _local_script(path: str | Path) -> Path:
    """``path`` made absolute against this process's working directory; HiresmedError when it
    is not a file here."""
    script = Path(path).expanduser()
    script = script if script.is_absolute() else Path.cwd() / script
    if not script.is_file():
        raise HiresmedError(f"script {str(path)!r} is not a file (looked for {script})")
    return script


def check_ranks_see(cluster: Any, paths: Sequence[str]) -> None:
    """Every engine of ``cluster`` sees every one of ``paths`` (a script and the working
    directory must be at the same path on every host); HiresmedError naming the first missing
    path and its host."""
    from hiresmed_nb.cluster import engine_tasks

    for path in paths:
        for index, seen in enumerate(cluster.engines.ask(engine_tasks.sees_file, path)):
            if not seen:
                raise HiresmedError(
                    f"{path} does not exist on {cluster.engines.host_of(index)} (rank {index}): "
                    "the ranks run it at the same path, so put it there (e.g. a shared filesystem)"
                )


def script_arguments(path: str | Path, argv: Sequence[str], cwd: str) -> tuple[str, list[str], str]:
    """What :func:`run_file_as_main` takes on every rank for a script at ``path`` (checked
    here, before any engine runs it) with ``argv``, in ``cwd`` (default this process's)."""
    return str(_local_script(path)), list(argv), cwd or os.getcwd()


def source_arguments(source: str, argv: Sequence[str], cwd: str) -> tuple[str, list[str], str]:
    """What :func:`run_source_as_main` takes on every rank for ``source`` (a syntax error is
    raised here, before any engine runs it); ``sys.argv`` is ``[CELL_FILENAME, *argv]``."""
    ast.parse(source, CELL_FILENAME)
    return source, [CELL_FILENAME, *argv], cwd or os.getcwd()
