"""A study's spare kernels: the next run's kernel starts and imports the notebook's modules
while the run before it executes, and the run still begins in a kernel new to it."""

import json
from pathlib import Path

import nbformat
import pytest

from hiresmed_nb.cluster.errors import RunTimeoutError
from hiresmed_nb.study.executor import kernel_log_path, papermill_executor
from hiresmed_nb.study.kernels import (
    WARM_UP_FUNCTION,
    RunnerKernelManager,
    SpareKernels,
    live_kernels,
    warm_up_code,
)

# A stdlib module neither ipykernel nor papermill loads: loaded before the notebook's own import
# of it only in a kernel that was warmed up.
PROBE_MODULE = "mailbox"


def notebook_file(folder: Path, *sources: str, name: str = "probe.ipynb") -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {
        "name": "hiresmed",
        "display_name": "hiresmed",
        "language": "python",
    }
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell("RUN_TIMEOUT = 0", metadata={"tags": ["parameters"]}),
        *(nbformat.v4.new_code_cell(source) for source in sources),
    ]
    path = folder / name
    nbformat.write(notebook, path)
    return path


def test_the_warm_up_runs_the_notebooks_top_level_imports_in_a_function_it_deletes(tmp_path):
    notebook = notebook_file(
        tmp_path,
        "from __future__ import annotations\nimport json as j\nfrom os import path",
        "%matplotlib inline\nimport csv",  # not plain Python: left out
        "def f():\n    import wave\nimport sys",
    )
    code = warm_up_code(notebook)
    assert code.splitlines() == [
        f"def {WARM_UP_FUNCTION}():",
        "    import json as j",
        "    from os import path",
        "    import sys",
        "",
        f"{WARM_UP_FUNCTION}()",
        f"del {WARM_UP_FUNCTION}",
    ]
    namespace: dict = {}
    exec(code, namespace)
    assert set(namespace) == {"__builtins__"}
    assert warm_up_code(notebook_file(tmp_path, "x = 1", name="none.ipynb")) == ""


def test_a_study_without_runs_to_come_starts_no_spare(tmp_path):
    kernels = SpareKernels(
        tmp_path / "absent.ipynb", tmp_path, runs=1, log_dir=tmp_path, verbose=False
    )
    assert kernels.take() is None  # the first run starts its own kernel; none is left to come
    kernels.close()
    assert not live_kernels() and list(tmp_path.iterdir()) == []


def test_the_runner_gives_a_kernel_three_minutes_to_start_on_busy_cores(tmp_path, monkeypatch):
    import papermill

    given: dict = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda *_, **options: given.update(options))
    papermill_executor(tmp_path / "in.ipynb", tmp_path / "out.ipynb", {}, tmp_path)
    assert given["start_timeout"] == 180  # papermill's own default, 60 s, failed a loaded run


def executed_values(output: Path) -> tuple[list, dict]:
    """The executed notebook's execution counts, and what its last cell printed (JSON)."""
    cells = [cell for cell in nbformat.read(output, as_version=4).cells if cell.cell_type == "code"]
    printed = "".join(out.get("text", "") for out in cells[-1].outputs)
    return [cell.execution_count for cell in cells], json.loads(printed)


@pytest.mark.notebook
def test_the_second_run_gets_a_warmed_kernel_that_is_otherwise_new_and_ends_with_it(tmp_path):
    notebook = notebook_file(
        tmp_path,
        f"import sys\nloaded_before = {PROBE_MODULE!r} in sys.modules",
        f"import {PROBE_MODULE}",
        "import json\nprint(json.dumps({'loaded_before': loaded_before, 'names': "
        "sorted(n for n in globals() if not n.startswith('_'))}))",
    )
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    known = set(RunnerKernelManager.running)
    kernels = SpareKernels(notebook, tmp_path, runs=2, log_dir=runs_dir, verbose=False)
    outputs = [runs_dir / "first.ipynb", runs_dir / "second.ipynb"]
    try:
        papermill_executor(notebook, outputs[0], {"RUN_TIMEOUT": 60}, tmp_path, kernels=kernels)
        assert len(live_kernels()) == 1  # the first run's kernel ended; the spare warms up
        papermill_executor(notebook, outputs[1], {"RUN_TIMEOUT": 60}, tmp_path, kernels=kernels)
        assert not live_kernels()  # the spare ended with its run; none past the last run
    finally:
        kernels.close()
    (counts_1, first), (counts_2, second) = map(executed_values, outputs)
    assert first["loaded_before"] is False  # its own kernel, started by papermill
    assert second["loaded_before"] is True  # the spare imported the notebook's modules
    assert counts_1 == counts_2 == [1, 2, 3, 4, 5]  # injected parameters, then the cells
    assert second["names"] == first["names"]  # the warm-up left no name behind
    assert RunnerKernelManager.running == known  # both kernels' files and sockets removed
    assert sorted(p.name for p in runs_dir.iterdir()) == sorted(
        [*(o.name for o in outputs), *(kernel_log_path(o).name for o in outputs)]
    )


@pytest.mark.notebook
def test_a_spare_kernel_past_its_runs_time_limit_is_killed_with_the_named_error(tmp_path):
    notebook = notebook_file(tmp_path, "import threading\nthreading.Event().wait()  # hangs")
    known = set(RunnerKernelManager.running)
    kernels = SpareKernels(notebook, tmp_path, runs=2, log_dir=tmp_path, verbose=False)
    output = tmp_path / "out" / "hangs.ipynb"
    output.parent.mkdir()
    try:
        assert kernels.take() is None  # as a first run would: this starts the spare
        with pytest.raises(RunTimeoutError, match="kernel was killed"):
            papermill_executor(
                notebook, output, {"RUN_TIMEOUT": 3}, tmp_path, grace_seconds=0, kernels=kernels
            )
    finally:
        kernels.close()
    assert output.exists() and not live_kernels()
    assert RunnerKernelManager.running == known  # the killed spare's files removed too
    assert [p.name for p in tmp_path.glob(".spare-*")] == []
