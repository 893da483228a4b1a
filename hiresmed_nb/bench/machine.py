"""The machine a figure was measured on: CPU, cores, RAM, OS, versions, what else was running."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

BUSY_PATTERN = "pytest|hiresmed_nb run"
CPU_FEATURES = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma"}


def _cpuinfo(field: str) -> str | None:
    """The value of the first ``field`` line of ``/proc/cpuinfo``, or None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    """The machine a figure was measured on: CPU model and features, cores, RAM, OS, host."""
    import psutil

    flags = set((_cpuinfo("flags") or "").split())
    return {
        "cpu_model": _cpuinfo("model name") or platform.processor() or platform.machine(),
        "cpu_features": sorted(flags & CPU_FEATURES),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": int(psutil.virtual_memory().total),
        "os": platform.platform(),
        "hostname": platform.node(),
    }


def versions() -> dict[str, Any]:
    """Python, TensorFlow, Horovod, ipyparallel, papermill, this package; and the git commit."""
    from hiresmed_nb.science import records

    found: dict[str, Any] = dict(records.versions())
    found["git_commit"], found["git_dirty"] = records.git_state()
    return found


def contention() -> dict[str, Any]:
    """Load average and the other heavy jobs (pytest, study runs) on this host right now."""
    found = subprocess.run(
        ["pgrep", "-af", BUSY_PATTERN], capture_output=True, text=True, check=False
    ).stdout
    mine = {os.getpid(), os.getppid()}
    busy = [
        line
        for line in found.splitlines()
        if line.strip() and int(line.split()[0]) not in mine and "pgrep" not in line
    ]
    return {"load_average": list(os.getloadavg()), "other_jobs": busy}
