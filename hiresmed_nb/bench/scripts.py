"""Benchmark 6: one Horovod script on 2 ranks, under ``horovodrun`` and with ``%horovodrun``.

The script is the project's own (``notebooks/scripts/keras_mnist_like.py``, synthetic data), run
unchanged three ways per repeat: ``horovodrun -np 2`` from a shell, ``%horovodrun -np 2`` on a
cold cluster (no warm engines: the clock includes starting them), and ``%horovodrun -np 2``
again at once on the now-warm engines. Each figure is wall time from the call to the script's
end on every rank (``horovodrun``'s exit; the magic's return); the magic is called as a
notebook cell calls it, in this process. Goals: cold within 1.1x of ``horovodrun``, warm at
most 0.6x, both as medians of per-repeat ratios.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from typing import Any

from hiresmed_nb.bench.goals import goal
from hiresmed_nb.bench.process import horovodrun_command, worker_env
from hiresmed_nb.bench.timing import summarize
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import project_root

SCRIPT = "notebooks/scripts/keras_mnist_like.py"
COLD_TARGET = 1.1  # %horovodrun on a cold cluster / horovodrun, wall time
WARM_TARGET = 0.6  # %horovodrun on warm engines / horovodrun, wall time
FINISHED = "final accuracy on synthetic digits"  # rank 0's last line: the script ran to its end
PATHS = ("horovodrun", "magic_cold", "magic_warm")


def script_argv(level: dict[str, Any]) -> list[str]:
    """The script's arguments at a benchmark level (``level["script"]``)."""
    config = level["script"]
    return ["--epochs", str(config["epochs"]), "--samples", str(config["samples"])]


def via_horovodrun(argv: list[str]) -> tuple[float, str]:
    """Seconds from starting ``horovodrun -np 2 python SCRIPT ...`` to its exit, and rank 0's
    final line."""
    command = horovodrun_command([sys.executable, SCRIPT, *argv], 2)
    started = time.perf_counter()
    # As the cluster sets for its engines' ranks: one OpenMP thread per rank on 2 cores.
    done = subprocess.run(
        command,
        cwd=project_root(),
        env=worker_env({"OMP_NUM_THREADS": "1"}),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    return seconds, _final_line("horovodrun", done.returncode == 0, done.stdout + done.stderr)


def via_magic(argv: list[str]) -> tuple[float, str]:
    """Seconds of one ``%horovodrun -np 2 SCRIPT ...`` call (output captured, not shown), and
    rank 0's final line."""

    from hiresmed_nb.cluster import Placement, kernel_pool

    output = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(output), contextlib.chdir(project_root()):
        # What `%horovodrun -np 2 SCRIPT ...` calls once it has parsed its line.
        kernel_pool().run_script(Placement(2), SCRIPT, argv)
    seconds = time.perf_counter() - started
    return seconds, _final_line("%horovodrun", True, output.getvalue())


def _final_line(path: str, ok: bool, output: str) -> str:
    """Rank 0's final line; HiresmedError with the output's tail when the run did not finish."""
    found = [
        line[line.index(FINISHED) :].strip() for line in output.splitlines() if FINISHED in line
    ]
    if not ok or not found:
        raise HiresmedError(f"benchmark scripts: the {path} run did not finish: {output[-3000:]}")
    return found[-1]


def cold_then_warm(argv: list[str]) -> tuple[tuple[float, str], tuple[float, str]]:
    """``%horovodrun`` on a cold cluster, then again on its warm engines; :func:`via_magic` of
    each. Raises HiresmedError when the second call did not reuse the first one's engines."""
    from hiresmed_nb.cluster import kernel_pool

    pool = kernel_pool()
    pool.close()
    try:
        cold = via_magic(argv)
        pids = list(pool.current.engine_pids)
        warm = via_magic(argv)
        after = pool.current
        if after is None or after.engine_pids != pids:
            raise HiresmedError(f"benchmark scripts: the warm run did not reuse engines {pids}")
    finally:
        pool.close()
    return cold, warm


def measure(level: dict[str, Any]) -> dict[str, Any]:
    """``level["script_repeats"]`` repeats of the three paths, the order reversed every other
    repeat (horovodrun first, then the magic's cold-warm pair; then the other way round)."""
    argv = script_argv(level)
    seconds: dict[str, list[float]] = {name: [] for name in PATHS}
    final_lines: dict[str, list[str]] = {name: [] for name in PATHS}

    def record(name: str, run: tuple[float, str]) -> None:
        seconds[name].append(run[0])
        final_lines[name].append(run[1])

    for repeat in range(level["script_repeats"]):
        steps = ["horovodrun", "magic"] if repeat % 2 == 0 else ["magic", "horovodrun"]
        for step in steps:
            if step == "horovodrun":
                record("horovodrun", via_horovodrun(argv))
            else:
                cold, warm = cold_then_warm(argv)
                record("magic_cold", cold)
                record("magic_warm", warm)
    figures = _figures(seconds)
    return {
        "benchmark": "scripts",
        "title": "6. A Horovod script on 2 ranks: horovodrun, %horovodrun cold and warm",
        "config": {
            "script": SCRIPT,
            "argv": argv,
            "repeats": level["script_repeats"],
            "targets": {"cold": COLD_TARGET, "warm": WARM_TARGET},
        },
        "figures": figures,
        "goals": _goals(figures),
        "notes": [
            f"Wall time from the call to the end of `{SCRIPT} {' '.join(argv)}` (synthetic "
            "data) on 2 ranks: horovodrun's exit, or the return of `%horovodrun -np 2` called "
            "in the benchmark's process as a cell calls it. Cold: no warm engines, so the call "
            "starts the controller and 2 engines; warm: the next call, on those engines "
            "(TensorFlow and Horovod already imported). Ratios are per repeat; goals use their "
            "median.",
            "Rank 0's last line (without its launcher's prefix), per path and repeat (the same "
            "script and seeds on every path): "
            + "; ".join(f"{name}: {' | '.join(lines)}" for name, lines in final_lines.items()),
        ],
        "raw": {"seconds": seconds, "final_lines": final_lines},
    }


def _figures(seconds: dict[str, list[float]]) -> dict[str, Any]:
    """Each path's seconds, and the magic's cold and warm seconds over horovodrun's, per repeat."""
    labels = {
        "horovodrun": "horovodrun -np 2: call to exit",
        "magic_cold": "%horovodrun -np 2, cold cluster: call to return",
        "magic_warm": "%horovodrun -np 2, warm engines: call to return",
    }
    figures = {f"{name}_seconds": summarize(seconds[name], "s", labels[name]) for name in PATHS}
    for name, kind in (("magic_cold", "cold"), ("magic_warm", "warm")):
        ratios = [a / b for a, b in zip(seconds[name], seconds["horovodrun"], strict=True)]
        figures[f"{name}_ratio"] = summarize(ratios, "x", f"%horovodrun {kind} / horovodrun")
    return figures


def _goals(figures: dict[str, Any]) -> list[dict[str, Any]]:
    seconds = {name: figures[f"{name}_seconds"]["median"] for name in PATHS}
    spread = {name: figures[f"{name}_ratio"] for name in ("magic_cold", "magic_warm")}
    return [
        goal(
            f"script wall time, %horovodrun {kind} / horovodrun",
            spread[f"magic_{kind}"]["median"],
            "<=",
            target,
            "x",
            f"%horovodrun {kind} {seconds[f'magic_{kind}']:.1f} s against horovodrun "
            f"{seconds['horovodrun']:.1f} s (medians); per repeat "
            f"{spread[f'magic_{kind}']['min']:.2f}-{spread[f'magic_{kind}']['max']:.2f}.",
        )
        for kind, target in (("cold", COLD_TARGET), ("warm", WARM_TARGET))
    ]
