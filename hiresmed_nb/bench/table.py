"""The goals and the Markdown tables: what BENCHMARKS.md's generated block and the notebook show.

A goal is one target the project set itself (``value op target``) with, when missed, by how
much and what limits it. :func:`render_markdown` turns the benchmark JSONs into text;
:func:`update_markdown` puts that text between the bench markers of a file, leaving the rest
alone.
"""

from __future__ import annotations

import operator
import re
from pathlib import Path
from typing import Any

from hiresmed_nb.bench.timing import GiB
from hiresmed_nb.errors import HiresmedError

MARKDOWN_BEGIN = "<!-- bench:begin (written by `python -m hiresmed_nb bench`) -->"
MARKDOWN_END = "<!-- bench:end -->"
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


def figures_frame(results: dict[str, dict[str, Any]]) -> Any:
    """Every figure of every benchmark as one pandas DataFrame row (for the notebook's plots)."""
    import pandas as pd

    rows = []
    for name, result in results.items():
        for key in result.get("figure_order", list(result["figures"])):
            figure = result["figures"][key]
            rows.append({"benchmark": name, "figure": key, **figure})
    return pd.DataFrame(rows)


def goals_frame(results: dict[str, dict[str, Any]]) -> Any:
    """Every goal of every benchmark as one pandas DataFrame row."""
    import pandas as pd

    rows = [{"benchmark": n, **g} for n, r in results.items() for g in r.get("goals", [])]
    return pd.DataFrame(rows)


def _fmt(value: float, unit: str = "") -> str:
    """A figure for the tables: img/s to 0.1, fractions as %, ratios to 0.001, GiB to 0.01,
    counts of runs whole when they are."""
    if unit == "runs" and float(value).is_integer():
        return f"{value:.0f}"
    if unit == "img/s":
        return f"{value:.1f}"
    if unit == "":
        return f"{value:.1%}"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "GiB":
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _machine_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The machine and versions (from the first result), then each benchmark's command,
    finish time, duration, load and other heavy jobs."""
    first = next(iter(results.values()))
    machine, found = first["machine"], first["versions"]
    dirty = " (dirty tree)" if found.get("git_dirty") else ""
    lines = [
        f"Machine: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({', '.join(machine['cpu_features'])}), {machine['ram_bytes'] / GiB:.1f} GiB RAM, "
        f"{machine['os']}.",
        f"Versions: Python {found.get('python')}, TensorFlow {found.get('tensorflow')}, "
        f"Horovod {found.get('horovod')}, ipyparallel {found.get('ipyparallel')}; commit "
        f"{(found.get('git_commit') or '?')[:10]}{dirty}.",
        "",
        "Each benchmark: the command that wrote it, when it finished, how long it took, the "
        "1-minute load average at its start and end, and the other heavy jobs that "
        '`pgrep -af "pytest|hiresmed_nb run"` found then (contention):',
        "",
    ]
    for name, result in results.items():
        seen = result.get("contention", {})
        jobs = {j for side in ("before", "after") for j in seen.get(side, {}).get("other_jobs", [])}
        loads = [seen.get(side, {}).get("load_average", [0])[0] for side in ("before", "after")]
        jobs_text = "; ".join(sorted(j.split(" ", 1)[1][:60] for j in jobs)) if jobs else "none"
        lines.append(
            f"- {name}: `{result.get('command') or 'python -m hiresmed_nb bench'}` at "
            f"{result['created']}, {result.get('wall_seconds', 0):.0f} s; load "
            f"{loads[0]:.2f} -> {loads[1]:.2f}; other jobs: {jobs_text}"
        )
    return lines


def _goal_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """The goals table of every benchmark, then what limits each missed goal."""
    lines = ["", "### Goals", "", "| benchmark | goal | measured | target | met | missed by |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    limits = []
    for name, result in results.items():
        for found in result.get("goals", []):
            unit = found["unit"]
            met = "yes" if found["met"] else "**no**"
            measured = f"{_fmt(found['value'], unit)} {unit}".strip()
            target = f"{found['op']} {_fmt(found['target'], unit)} {unit}".strip()
            lines.append(
                f"| {name} | {found['name']} | {measured} | {target} | {met} | {found['miss']} |"
            )
            if found["limits"]:
                limits.append(f"- **{found['name']}**: {found['limits']}")
    if limits:
        lines += ["", "What limits the missed goals (from the measurements):", "", *limits]
    return lines


def _figure_lines(name: str, result: dict[str, Any]) -> list[str]:
    """One benchmark's section: its figures table, the planner line, failed configs, notes."""
    lines = [
        "",
        f"### {result.get('title', name)}",
        "",
        "| figure | median | IQR (q1-q3) | min-max | n | unit |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in result.get("figure_order", list(result["figures"])):
        figure = result["figures"][key]
        unit = figure["unit"]
        label = figure["label"].replace("|", "\\|")
        lines.append(
            f"| {label} | {_fmt(figure['median'], unit)} | "
            f"{_fmt(figure['q1'], unit)}-{_fmt(figure['q3'], unit)} | "
            f"{_fmt(figure['min'], unit)}-{_fmt(figure['max'], unit)} | {figure['n']} | "
            f"{unit or 'fraction'} |"
        )
    if name == "resolution" and result.get("planner", {}).get("plans"):
        lines += ["", _planner_line(result["planner"])]
    for config in (c for c in result.get("configs", []) if "error" in c):
        lines.append(
            f"- {config['arch']} {config['size']} px b{config['batch']} "
            f"{config['precision']}: failed ({config['error'][-120:].strip()})"
        )
    lines += [f"- {note}" for note in result.get("notes", [])]
    return lines


def _planner_line(planner: dict[str, Any]) -> str:
    """The batch-size planner's fit, its check and its plans, as one sentence."""
    config = planner["config"]
    plans = sorted(planner["plans"].items(), key=lambda kv: float(kv[0][:-4]))
    return (
        f"Planner ({config['arch']} at {config['size']} px, "
        f"probes at batch {config['probes']}): peak RSS = "
        f"{planner['intercept_bytes'] / GiB:.2f} GiB + "
        f"{planner['bytes_per_image'] / 2**20:.1f} MiB x batch; at batch "
        f"{config['check']} predicted "
        f"{planner['predicted_check_bytes'] / GiB:.2f} GiB, measured "
        f"{planner['measured_check_bytes'] / GiB:.2f} GiB "
        f"({planner['relative_error']:+.1%}). Largest per-rank batch by budget: "
        + ", ".join(f"{k}: {v}" for k, v in plans)
        + "."
    )


def render_markdown(results: dict[str, dict[str, Any]]) -> str:
    """The tables of every benchmark JSON: goals first, then every figure, with the machine."""
    if not results:
        return "No benchmark results yet: run `python -m hiresmed_nb bench --quick`.\n"
    lines = _machine_lines(results) + _goal_lines(results)
    for name, result in results.items():
        lines += _figure_lines(name, result)
    return "\n".join(lines) + "\n"


def listed_benchmarks(generated: str) -> list[str]:
    """The benchmarks a generated block lists (its contention lines, ``- <name>: `...```)."""
    return re.findall(r"^- (\w+): `", generated, flags=re.MULTILINE)


def update_markdown(path: str | Path, generated: str) -> Path:
    """Replace the generated block of ``path`` (between the bench markers), or append one.

    Raises :class:`HiresmedError` (the file unchanged) when the new block would drop a
    benchmark the old one lists: the block is rendered from the JSONs in one folder, and a
    benchmark without its JSON there would vanish from the file.
    """
    path = Path(path)
    block = f"{MARKDOWN_BEGIN}\n{generated}{MARKDOWN_END}"
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    if MARKDOWN_BEGIN in text and MARKDOWN_END in text:
        head, rest = text.split(MARKDOWN_BEGIN, 1)
        old, tail = rest.split(MARKDOWN_END, 1)
        kept = set(listed_benchmarks(generated))
        dropped = [name for name in listed_benchmarks(old) if name not in kept]
        if dropped:
            raise HiresmedError(
                f"{path}: not updated, its tables would lose {', '.join(dropped)} (no JSON for "
                "them in the results folder): run those benchmarks too, or put their JSONs there"
            )
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return path
