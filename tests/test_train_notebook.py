"""01_train.ipynb through papermill: serial and 2-rank runs, bad inputs, nothing left behind."""

import ast
import json
from pathlib import Path

import nbformat
import papermill as pm
import psutil
import pytest
from papermill.exceptions import PapermillExecutionError
from serial_twin import SERIAL_TWIN
from sessions import processes_of_this_session
from small_images import SMALL_SKIN
from test_tensorboard_logs import assert_logs_match_record, writer_pids

from hiresmed_nb.params import PARAMETERS, parameters_cell, project_root
from hiresmed_nb.science import records

NOTEBOOK = project_root() / "notebooks" / "01_train.ipynb"
TINY = {
    "DATA_DIR": SMALL_SKIN,
    "IMAGE_SIZE": 32,
    "IMAGES_PER_CLASS": 4,
    "EPOCHS": 1,
    "BATCH_SIZE": 4,
}
# Test images per class where a test needs no more: rank 0 decodes each one.
SMALL_TEST_SET = 5


# What the kernel never imports: TensorFlow trains on engines; scikit-learn, scipy and seaborn
# would cost every run's kernel about 0.8 s of CPU for one plot (hiresmed_nb/science/plots.py).
NOT_IN_THE_KERNEL = ("tensorflow", "sklearn", "scipy", "seaborn")
# Appended to the notebook as its last cell: asks the kernel what it imported.
ASK_THE_KERNEL = (
    "import sys\n"
    f"print('IMPORTED IN KERNEL:', [m for m in {NOT_IN_THE_KERNEL!r} if m in sys.modules])"
)


def execute(tmp_path, **parameters):
    """Execute 01_train (and a last cell that asks its kernel which of
    :data:`NOT_IN_THE_KERNEL` it imported)."""
    out = tmp_path / "executed.ipynb"
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(ASK_THE_KERNEL))
    asking = tmp_path / "01_train_asking.ipynb"
    nbformat.write(notebook, str(asking))
    parameters = {**TINY, "RESULTS_DIR": str(tmp_path / "runs"), **parameters}
    pm.execute_notebook(
        str(asking),
        str(out),
        parameters=parameters,
        kernel_name="hiresmed",
        cwd=str(project_root()),
        progress_bar=False,
    )
    [record_file] = (tmp_path / "runs").glob("*.json")
    return json.loads(record_file.read_text()), out


def heavy_modules_in_kernel(executed) -> list[str]:
    """Which of :data:`NOT_IN_THE_KERNEL` the kernel of an :func:`execute` run had imported."""
    [answer] = [
        output["text"]
        for output in nbformat.read(str(executed), as_version=4).cells[-1].outputs
        if "IMPORTED IN KERNEL" in output.get("text", "")
    ]
    return ast.literal_eval(answer.split(":", 1)[1].strip())


def processes_of_this_projects_clusters_after(seconds: float) -> list[str]:
    """Command lines of this project's cluster processes (controller, engines, undertaker) that
    this test session started and that still run ``seconds`` after the call; returns as soon as
    none is left. The kernel's exit stops its cluster; if the kernel is killed while stopping
    it, the undertaker finishes the job and exits within a poll (hiresmed_nb.cluster.undertaker).
    """
    found = processes_of_this_session(str(project_root() / ".ipyparallel"))
    _, alive = psutil.wait_procs(found, timeout=seconds)
    return [" ".join(process.info["cmdline"]) for process in alive]


def test_parameters_cell_is_rendered_from_the_run_configuration():
    """Names, types, defaults and help have one source, RunConfig: the notebook's parameters
    cell is exactly what it renders (after a change there, paste parameters_cell() here)."""
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert tagged[0].source.strip() == parameters_cell()
    inspected = pm.inspect_notebook(str(NOTEBOOK))
    assert list(inspected) == list(PARAMETERS)
    for name, (default, _, help_text) in PARAMETERS.items():
        assert inspected[name]["help"] == help_text
        assert default is None or ast.literal_eval(inspected[name]["default"]) == default
    assert notebook.metadata.kernelspec.name == "hiresmed"
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")


@pytest.mark.notebook
def test_serial_run_writes_and_glues_a_complete_record(serial_twin):
    """The session's serial twin (tests/serial_twin.py): 5 training and 4 test images per class
    of 4, batch 8, 4 epochs."""
    folder, record, executed = serial_twin
    assert record == records.read_glued(executed)
    assert record["run_id"] == "synthetic-skin_compact_32px_5ipc_serial1_seed0"
    assert record["synthetic"] is True and record["n_ranks"] == 1
    assert record["n_train"] == 20 and record["n_test"] == 16
    assert 0.0 <= record["accuracy"] <= 1.0
    assert sum(map(sum, record["confusion_matrix"])) == 16
    assert record["effective_batch_size"] == 8
    assert len(record["ranks"][0]["train_files"]) == 20
    assert record["versions"]["tensorflow"] == "2.15.1"
    assert record["versions"]["horovod"] == "0.28.1"
    assert len(record["history"]["loss"]) == 4
    assert record["data_locality"]["images_opened_per_rank"] == [20]
    assert record["data_locality"]["ok"]
    run_logs = assert_logs_match_record(folder / "runs", record)
    assert writer_pids(run_logs) == {record["ranks"][0]["pid"]}  # its engine, rank 0 of 1
    # It trained on an engine: the kernel only orchestrated, without TensorFlow.
    assert heavy_modules_in_kernel(executed) == []


@pytest.mark.notebook
@pytest.mark.distributed
def test_two_rank_run_reads_disjoint_shards_and_ends_with_equal_weights(tmp_path, skin_dir):
    record, executed = execute(
        tmp_path, MODE="distributed", N_RANKS=2, EPOCHS=2, TEST_IMAGES_PER_CLASS=SMALL_TEST_SET
    )
    assert record["run_id"].endswith("_distributed2_seed0")
    assert record["n_ranks"] == 2 and record["effective_batch_size"] == 8
    shards = [set(rank["train_files"]) for rank in record["ranks"]]
    assert [rank["rank"] for rank in record["ranks"]] == [0, 1]
    assert not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == record["n_train"] == 16
    assert len({rank["weights_digest"] for rank in record["ranks"]}) == 1
    locality = record["data_locality"]
    assert locality["ok"] and locality["each_rank_opened_only_its_shard"]
    assert locality["images_opened_per_rank"] == [len(shard) for shard in shards]
    streamed = "".join(
        str(output.get("data", {}).get("text/plain", ""))
        for cell in nbformat.read(str(executed), as_version=4).cells
        for output in cell.get("outputs", [])
    )
    assert "[stdout:0]" in streamed and "Epoch 2/2" in streamed  # rank 0's progress, live
    run_logs = assert_logs_match_record(tmp_path / "runs", record)
    assert writer_pids(run_logs) == {record["ranks"][0]["pid"]}  # rank 0 alone writes logs
    assert heavy_modules_in_kernel(executed) == []
    assert processes_of_this_projects_clusters_after(30) == []


@pytest.mark.notebook
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        # One bad parameter (tests/test_params.py checks every parameter's own error), more
        # images than the data holds, and a folder of the wrong layout.
        ({"N_RANKS": -1, "MODE": "distributed"}, "N_RANKS=-1"),
        ({"IMAGES_PER_CLASS": 500, "MODE": "distributed"}, "holds only 60"),
        ({"DATASET": "nih", "DATA_DIR": "/nonexistent/nih"}, "nih layout"),
    ],
)
def test_bad_input_stops_in_the_checks_cell_before_any_cluster(
    tmp_path, skin_dir, parameters, message
):
    keep = tmp_path / "runs" / "earlier.json"
    keep.parent.mkdir()
    keep.write_text('{"kept": true}')
    with pytest.raises(PapermillExecutionError) as raised:
        execute(tmp_path, **parameters)
    assert raised.value.ename == "HiresmedError"
    assert message in raised.value.evalue
    executed = nbformat.read(str(tmp_path / "executed.ipynb"), as_version=4)
    [failed] = [
        cell
        for cell in executed.cells
        if any(o.output_type == "error" for o in cell.get("outputs", []))
    ]
    assert "validate(" in failed.source or "make_split(" in failed.source
    assert keep.read_text() == '{"kept": true}'
    assert sorted(p.name for p in keep.parent.iterdir()) == ["earlier.json"]


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path, with its contents."""
    files = (path for path in folder.rglob("*") if path.is_file())
    return {str(path.relative_to(folder)): path.read_bytes() for path in files}


@pytest.mark.notebook
def test_a_finished_run_is_not_overwritten(serial_twin, tmp_path):
    folder, record, _ = serial_twin
    runs = folder / "runs"
    files_before = files_under(runs)
    with pytest.raises(PapermillExecutionError, match="already holds a finished run"):
        execute(tmp_path, **SERIAL_TWIN, RESULTS_DIR=str(runs))
    [record_file] = runs.glob("*.json")
    assert json.loads(record_file.read_text()) == record
    assert files_under(runs) == files_before  # nor its logs or checkpoints
