"""Parameter files expanded into a grid of runs, each checked before anything executes.

Parameter files are flat YAML. A key whose value is a list is a grid axis (``CLASSES`` only when its
value is a list of lists, since one ``CLASSES`` value is already a list). Later files override
earlier ones, and ``-p KEY VALUE`` overrides last. Besides the notebook parameters of
:data:`hiresmed_nb.params.PARAMETERS` a file may hold three runner keys:

- ``STUDY``: the study's name; its outputs go to ``outputs/<STUDY>/``.
- ``SEEDS``: the list of seeds, i.e. the ``SEED`` axis.
- ``CELLS``: per-cell overrides, a list of ``{match: {KEY: value, ...}, set: {KEY: value, ...}}``.
  After the grid is expanded, every entry whose ``match`` equals a run (a list in ``match`` means
  "any of these") applies its ``set`` to that run, in file order, so a later entry wins.

Every expanded run is checked with :func:`hiresmed_nb.params.validate` before anything executes,
so a bad grid is one :class:`HiresmedError` and nothing runs.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hiresmed_nb import params as P
from hiresmed_nb.cluster.engines import attached_engine_count
from hiresmed_nb.errors import HiresmedError

RUNNER_KEYS = ("STUDY", "SEEDS", "CELLS")
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ---------------------------------------------------------------------------------------------
# Reading parameter files and overrides
# ---------------------------------------------------------------------------------------------


def load_param_files(paths: Iterable[str | Path]) -> dict[str, Any]:
    """Merge flat YAML parameter files, a later file's keys replacing an earlier file's.

    Raises :class:`HiresmedError` naming the file when one is missing, is not YAML, or is not a
    flat mapping of UPPER_SNAKE keys.
    """
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise HiresmedError(f"parameter file {str(path)!r} does not exist")
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise HiresmedError(
                f"parameter file {str(path)!r} is not valid YAML: {error}"
            ) from None
        if content is None:
            continue
        if not isinstance(content, dict):
            raise HiresmedError(
                f"parameter file {str(path)!r} must be a mapping of KEY: value, "
                f"not a {type(content).__name__}"
            )
        for key, value in content.items():
            if not isinstance(key, str):
                raise HiresmedError(f"parameter file {str(path)!r}: key {key!r} is not a name")
            merged[key] = value
    return merged


def resolve_value(text: str) -> Any:
    """Turn a ``-p KEY VALUE`` string into a value, as papermill's ``-p`` does.

    "True"/"False" become bools, "None" None, integers int, other numbers float, anything else
    stays a string. One addition: a value written as a YAML list or mapping (starting with ``[``
    or ``{``) is parsed as YAML, so ``-p SEEDS "[0, 1]"`` gives a grid axis.
    """
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError as error:
            raise HiresmedError(
                f"value {text!r} looks like a YAML list but is not: {error}"
            ) from None
    if text == "True":
        return True
    if text == "False":
        return False
    if text == "None":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def apply_overrides(config: dict[str, Any], overrides: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Return ``config`` with each ``(KEY, VALUE)`` string pair applied in order (last wins)."""
    merged = dict(config)
    for key, text in overrides:
        merged[key] = resolve_value(text) if isinstance(text, str) else text
    return merged


# ---------------------------------------------------------------------------------------------
# Expanding the grid
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run of the study: its id and its validated notebook parameters."""

    run_id: str
    params: dict[str, Any]


def _check_key(key: str, where: str) -> None:
    known = (*P.PARAMETERS, *RUNNER_KEYS)
    if key not in P.PARAMETERS and key not in RUNNER_KEYS:
        raise HiresmedError(f"unknown key {key!r} in {where}" + P.suggest(key, known))


def _is_axis(key: str, value: Any) -> bool:
    if key == "CLASSES":
        return isinstance(value, list) and (
            len(value) == 0 or all(isinstance(v, list) for v in value)
        )
    return isinstance(value, list)


def study_name(config: dict[str, Any]) -> str:
    """Return the ``STUDY`` name of a merged config; it names the folder ``outputs/<STUDY>``."""
    name = config.get("STUDY")
    if name is None:
        raise HiresmedError(
            "STUDY is not set: add 'STUDY: <name>' to a parameter file or pass -p STUDY <name>"
        )
    if not isinstance(name, str) or not _STUDY_NAME.match(name):
        raise HiresmedError(
            f"STUDY={name!r} must be a folder name of letters, digits, '_', '-' or '.'"
        )
    return name


def _parse_cells(cells: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    if cells is None:
        return []
    if not isinstance(cells, list):
        raise HiresmedError("CELLS must be a list of {match: {...}, set: {...}} entries")
    parsed = []
    for index, entry in enumerate(cells):
        where = f"CELLS[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"match", "set"} or "set" not in entry:
            raise HiresmedError(f"{where} must be a mapping with keys 'match' and 'set'")
        match = entry.get("match") or {}
        to_set = entry["set"]
        if not isinstance(match, dict) or not isinstance(to_set, dict):
            raise HiresmedError(f"{where}: 'match' and 'set' must each be a mapping of KEY: value")
        for key in (*match, *to_set):
            if key not in P.PARAMETERS:
                raise HiresmedError(
                    f"unknown parameter {key!r} in {where}" + P.suggest(key, tuple(P.PARAMETERS))
                )
        parsed.append((match, to_set))
    return parsed


def _matches(run: dict[str, Any], match: dict[str, Any]) -> bool:
    for key, wanted in match.items():
        value = run.get(key, P.PARAMETERS[key][0])
        options = wanted if isinstance(wanted, list) and key != "CLASSES" else [wanted]
        if value not in options:
            return False
    return True


def expand(config: dict[str, Any]) -> list[Run]:
    """Expand a merged config into its runs, every one validated, in grid order.

    Axes vary in the order their keys first appear (the last axis fastest). Raises one
    :class:`HiresmedError` for an unknown key (with the nearest name), an empty axis, a malformed
    ``CELLS`` entry, any run that :func:`hiresmed_nb.params.validate` rejects, or two runs that
    share a run id but differ in another parameter (the run id would not tell them apart).
    """
    for key in config:
        _check_key(key, "the study parameters")
    study_name(config)
    cells = _parse_cells(config.get("CELLS"))
    notebook = {k: v for k, v in config.items() if k not in RUNNER_KEYS}
    if "SEEDS" in config:
        if "SEED" in config:
            raise HiresmedError("give SEEDS (the seed axis) or SEED, not both")
        seeds = config["SEEDS"]
        notebook["SEED"] = seeds if isinstance(seeds, list) else [seeds]
    if "RESULTS_DIR" in notebook:
        raise HiresmedError(
            "RESULTS_DIR is chosen by the runner (outputs/<STUDY>/runs): remove it from the "
            "parameter files and set STUDY (or --outputs) instead"
        )

    axes: list[tuple[str, list[Any]]] = []
    fixed: dict[str, Any] = {}
    for key, value in notebook.items():
        if _is_axis(key, value):
            if not value:
                name = "SEEDS" if key == "SEED" and "SEEDS" in config else key
                raise HiresmedError(
                    f"{name} is an empty list: a grid axis needs at least one value"
                )
            axes.append((key, value))
        else:
            fixed[key] = value

    runs: dict[str, Run] = {}
    engines_of = functools.cache(attached_engine_count)  # an attached cluster's controller, once
    for combination in itertools.product(*(values for _, values in axes)):
        raw = dict(fixed)
        raw.update(zip((key for key, _ in axes), combination, strict=True))
        for match, to_set in cells:
            if _matches(raw, match):
                raw.update(to_set)
        try:
            checked = P.validate(raw, engines_of)
        except HiresmedError as error:
            shown = ", ".join(f"{k}={raw[k]!r}" for k, _ in axes)
            raise HiresmedError(
                f"{error} (in the run with {shown})" if shown else str(error)
            ) from None
        rid = P.run_id(checked)
        if rid in runs and runs[rid].params != checked.as_dict():
            differ = sorted(k for k in checked if checked[k] != runs[rid].params[k])
            raise HiresmedError(
                f"two runs share run id {rid!r} but differ in {', '.join(differ)}, which the run "
                "id does not spell: put them in separate studies"
            )
        runs[rid] = Run(rid, checked.as_dict())
    return list(runs.values())


def plan(
    files: Iterable[str | Path], overrides: Iterable[tuple[str, str]] = ()
) -> tuple[str, list[Run]]:
    """Read parameter files and overrides; return the study name and its validated runs."""
    config = apply_overrides(load_param_files(files), overrides)
    runs = expand(config)
    return study_name(config), runs
