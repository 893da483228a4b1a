"""Starting a measured task in a fresh process, alone or as Horovod ranks under ``horovodrun``.

The task runs as ``python -m hiresmed_nb.bench.worker TASK --config C.json --out O.json`` (see
:mod:`hiresmed_nb.bench.worker`), so its peak RSS belongs to one config and TensorFlow's thread
settings are fresh in each.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import RunConfig, project_root

WORKER_MODULE = "hiresmed_nb.bench.worker"


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with the venv's ``bin`` first on PATH, the project on PYTHONPATH,
    TensorFlow's INFO lines off (unless set), and ``extra`` on top."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = str(project_root()) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def _plain(value: Any) -> Any:
    """A checked :class:`RunConfig` as the plain dict a worker process validates again."""
    if isinstance(value, RunConfig):
        return value.as_dict()
    raise TypeError(f"a benchmark task's config cannot hold a {type(value).__name__}")


def horovodrun_command(
    command: list[str], ranks: int, hosts: str | None = None, interface: str = "lo"
) -> list[str]:
    """``command`` started as ``ranks`` Horovod ranks by ``horovodrun`` over Gloo.

    ``hosts``: horovodrun's ``-H`` (default ``localhost:<ranks>``); ``interface``: the network
    interface the ranks talk over (default loopback).
    """
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    return [
        horovodrun,
        "-np",
        str(ranks),
        "--gloo",
        "-H",
        hosts or f"localhost:{ranks}",
        "--network-interface",
        interface,
        *command,
    ]


def run_worker(
    task: str,
    config: dict[str, Any],
    ranks: int = 1,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
    hosts: str | None = None,
    interface: str = "lo",
) -> tuple[dict[str, Any], float]:
    """Run a :mod:`~hiresmed_nb.bench.worker` task in a fresh process (or ``ranks`` of them
    under ``horovodrun``, on ``hosts`` over ``interface`` as :func:`horovodrun_command` takes).

    Returns ``(rank 0's result, time.time() just before the process was started)``. Raises
    :class:`HiresmedError` with the tail of the output when the task fails.
    """
    with tempfile.TemporaryDirectory(prefix="hiresmed-bench-") as scratch:
        config_file, out_file = Path(scratch) / "config.json", Path(scratch) / "out.json"
        config_file.write_text(json.dumps(config, default=_plain))
        command = [sys.executable, "-m", WORKER_MODULE, task]
        command += ["--config", str(config_file), "--out", str(out_file)]
        if ranks > 1:
            command = horovodrun_command(command, ranks, hosts, interface)
        started = time.time()
        finished = subprocess.run(
            command,
            cwd=project_root(),
            env=worker_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if finished.returncode != 0 or not out_file.exists():
            tail = (finished.stdout + finished.stderr)[-3000:]
            raise HiresmedError(
                f"benchmark task {task} failed (exit {finished.returncode}): "
                f"{shlex.join(command)}\n{tail}"
            )
        return json.loads(out_file.read_text()), started
