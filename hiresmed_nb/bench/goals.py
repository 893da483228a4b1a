"""The project's goals: one target per figure that matters (``value op target``), met or missed.

Each benchmark's JSON lists its goals; :func:`goal_lines` is what ``python -m hiresmed_nb bench``
prints of them, and ``notebooks/03_benchmarks.ipynb`` draws the figures themselves.
"""

from __future__ import annotations

import operator
from typing import Any

from hiresmed_nb.errors import HiresmedError

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def goal(
    name: str, value: float, op: str, target: float, unit: str = "", limits: str = ""
) -> dict[str, Any]:
    """One goal: ``value op target``; ``miss`` says by how much when missed.

    ``op`` is ``"<="``, ``"<"``, ``">="`` or ``">"``; ``limits`` (what limits a missed goal) is
    kept only when the goal is missed.
    """
    if op not in _OPS:
        raise HiresmedError(f"goal {name!r}: op must be one of {list(_OPS)}, got {op!r}")
    met = _OPS[op](value, target)
    miss = ""
    if not met:
        relative = (value - target) / target if target else float("inf")
        miss = f"{value - target:+.3g} {unit} ({relative:+.0%})".replace("  ", " ")
    return {
        "name": name,
        "value": float(value),
        "op": op,
        "target": float(target),
        "unit": unit,
        "met": bool(met),
        "miss": miss,
        "limits": "" if met else limits,
    }


def goal_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """One line per goal of every benchmark: measured, target, met or by how much it missed."""
    lines = []
    for name, result in results.items():
        for found in result.get("goals", []):
            verdict = "met" if found["met"] else f"missed by {found['miss']}"
            unit = found["unit"]
            measured = f"{found['value']:.3g} {unit}".strip()
            target = f"{found['op']} {found['target']:.3g} {unit}".strip()
            lines.append(f"{name}: {found['name']}: {measured} (goal {target}): {verdict}")
    return lines
