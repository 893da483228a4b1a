"""%horovodrun and %%horovodrun: any Horovod code from a cell, on the kernel's warm engines.

The runners that execute a script or a cell's source on a rank are tested here in-process; the
magics themselves through papermill on notebooks/04_horovod_scripts.ipynb (from notebooks/, as
JupyterLab runs it, plus an allreduce cell and a cell whose rank 1 raises; and as it is, from the
repo's root), and on two simulated hosts.
"""

import os
import subprocess
import sys
import traceback

import nbformat
import papermill as pm
import pytest
from papermill.exceptions import PapermillExecutionError
from test_train_notebook import processes_of_this_projects_clusters_after

from hiresmed_nb import cluster
from hiresmed_nb.cluster import HostSlots, Placement, scripts
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.magics import parse_line
from hiresmed_nb.params import project_root

NOTEBOOK = project_root() / "notebooks" / "04_horovod_scripts.ipynb"
SCRIPT = project_root() / "notebooks" / "scripts" / "keras_mnist_like.py"

# --- parsing the magic's line ---------------------------------------------------------------------


def test_line_magic_takes_the_placement_then_the_script_and_its_own_arguments():
    spec, argv = parse_line("-np 2 train.py --epochs 3 -np 5", cell=False)
    assert spec == Placement(2)  # the spec 01_train uses for N_RANKS=2: same warm engines
    assert argv == ["train.py", "--epochs", "3", "-np", "5"]


def test_hosts_give_the_number_of_ranks_and_an_empty_hosts_means_this_machine():
    spec, argv = parse_line("-H hostA:1,hostB:2 -- --tag x", cell=True)
    assert spec == Placement(3, hosts=(HostSlots("hostA", 1), HostSlots("hostB", 2)))
    assert argv == ["--tag", "x"]
    assert parse_line('-np 2 -H "" run.py', cell=False)[0] == Placement(2)
    assert parse_line("-np 2 -- run.py -x", cell=False)[1] == ["run.py", "-x"]


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("-np 3 -H hostA:1,hostB:1 run.py", False, "-np 3 does not match -H"),
        ("run.py", False, "-np must be at least 1"),
        ("-np 2", False, "name the script"),
        ("-np 2 --epochs 3", True, r"unrecognized arguments: --epochs; usage: .*\[-- args"),
        ("-np two run.py", False, "invalid int value"),
        ("-np 2 -H hostA:x run.py", False, "HOSTS="),
        ("-np 2 'run.py", False, "No closing quotation"),
    ],
)
def test_a_bad_line_is_one_named_error(line, cell, message):
    with pytest.raises(HiresmedError, match=message):
        parse_line(line, cell=cell)


def test_a_missing_script_is_refused_before_any_engine_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HiresmedError, match="'nowhere.py' is not a file"):
        cluster.kernel_pool().run_script(Placement(2), "nowhere.py")
    assert cluster.kernel_pool().current is None


def test_a_cell_with_a_syntax_error_fails_before_any_engine_starts():
    with pytest.raises(SyntaxError):
        cluster.kernel_pool().run_source(Placement(2), "x = (1,\n")
    assert cluster.kernel_pool().current is None


def test_loading_the_extension_imports_neither_tensorflow_nor_ipyparallel():
    code = (
        "import sys\nfrom IPython.core.interactiveshell import InteractiveShell\n"
        "from traitlets.config import Config\n"
        "import hiresmed_nb\n"
        "shell = InteractiveShell.instance(config=Config(HistoryManager={'enabled': False}))\n"
        "hiresmed_nb.load_ipython_extension(shell)\n"
        "assert 'horovodrun' in shell.magics_manager.magics['cell']\n"
        "print(sorted(m for m in ('tensorflow', 'ipyparallel', 'horovod') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"


# --- the runners, in this process (on an engine they run inside engine_tasks.run_as_rank) ---


def test_a_script_runs_as_main_with_its_argv_folder_and_working_directory(tmp_path, capsys):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "helper.py").write_text("VALUE = 'sibling module'\n")
    script = tmp_path / "scripts" / "run.py"
    script.write_text(
        "import os, sys\nimport helper\nprint(__name__, sys.argv, os.getcwd(), helper.VALUE)\n"
    )
    before = list(sys.argv), os.getcwd(), list(sys.path), sys.modules["__main__"]
    try:
        scripts.run_file_as_main(str(script), ["-x"], str(tmp_path))
    finally:
        sys.modules.pop("helper", None)
    printed = capsys.readouterr().out.strip()
    assert printed == f"__main__ ['{script}', '-x'] {tmp_path} sibling module"
    assert (list(sys.argv), os.getcwd(), list(sys.path), sys.modules["__main__"]) == before


def test_sys_exit_zero_is_success_and_any_other_status_a_named_error(tmp_path):
    script = tmp_path / "leave.py"
    script.write_text("import sys\nsys.exit(int(sys.argv[1]))\n")
    scripts.run_file_as_main(str(script), ["0"], str(tmp_path))
    with pytest.raises(scripts.ScriptExitError, match=r"sys.exit\(3\)"):
        scripts.run_file_as_main(str(script), ["3"], str(tmp_path))


def test_source_returns_its_final_expression_from_rank_zero_only(tmp_path, monkeypatch):
    source = "import sys\nvalues = [len(sys.argv), __name__]\nvalues + [2 * 21]\n"
    monkeypatch.setenv("HOROVOD_RANK", "0")
    assert scripts.run_source_as_main(source, ["<cell>", "a"], str(tmp_path)) == [
        2,
        "__main__",
        42,
    ]
    monkeypatch.setenv("HOROVOD_RANK", "1")
    assert scripts.run_source_as_main(source, ["<cell>"], str(tmp_path)) is None
    monkeypatch.setenv("HOROVOD_RANK", "0")
    assert scripts.run_source_as_main("x = 1\nif x:\n    x = 2\n", [], str(tmp_path)) is None


def test_an_unpicklable_value_comes_back_as_its_repr(tmp_path):
    value = scripts.run_source_as_main("import threading\nthreading.Lock()", [], str(tmp_path))
    assert isinstance(value, scripts.UnsendableValue) and "lock" in repr(value)


def test_an_error_in_source_shows_the_cells_own_line(tmp_path):
    with pytest.raises(ZeroDivisionError) as raised:
        scripts.run_source_as_main("x = 1\ny = x / 0  # here\n", [], str(tmp_path))
    assert "y = x / 0  # here" in "".join(traceback.format_exception(raised.value))


def test_the_notebooks_cell_runs_the_scripts_own_code():
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    [cell] = [c for c in notebook.cells if c.source.startswith("%%horovodrun")]
    code = cell.source.split("\n", 1)[1]
    assert code == SCRIPT.read_text().split('"""', 2)[2].lstrip("\n") + "history.history"
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")


# --- the magics in a kernel, through papermill ----------------------------------------------------

ALLREDUCE_CELL = """%%horovodrun -np 2
import horovod.tensorflow as hvd
import tensorflow as tf

hvd.init()
(int(hvd.allreduce(tf.constant(hvd.rank() + 1), op=hvd.Sum)), hvd.size())"""

CHECK_CELL = "total, size = _\nassert (total, size) == (3, 2), _"

RANK_1_FAILS_CELL = """%%horovodrun -np 2
import horovod.tensorflow as hvd

hvd.init()
if hvd.rank() == 1:
    raise ValueError("rank 1 stops here")"""


def _text_of(cell) -> str:
    return "".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
        for output in cell.get("outputs", [])
    )


@pytest.mark.notebook
@pytest.mark.distributed
def test_magics_run_a_script_a_cell_and_an_allreduce_then_a_failing_rank_fails_the_cell(tmp_path):
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    notebook.cells += [nbformat.v4.new_code_cell(s) for s in (ALLREDUCE_CELL, CHECK_CELL)]
    notebook.cells.append(nbformat.v4.new_code_cell(RANK_1_FAILS_CELL))
    source, executed = tmp_path / "04_with_checks.ipynb", tmp_path / "executed.ipynb"
    nbformat.write(notebook, str(source))
    with pytest.raises(PapermillExecutionError) as raised:
        pm.execute_notebook(
            str(source),
            str(executed),
            parameters={"EPOCHS": 2, "SAMPLES": 64},
            kernel_name="hiresmed",
            cwd=str(NOTEBOOK.parent),
            progress_bar=False,
        )
    # The last cell failed, with rank 1's error and traceback (its own source line).
    assert raised.value.ename == "RankFailedError"
    assert "rank 1 failed with ValueError: rank 1 stops here" in raised.value.evalue
    assert 'raise ValueError("rank 1 stops here")' in "".join(raised.value.traceback)
    cells = nbformat.read(str(executed), as_version=4).cells
    failed = [c for c in cells if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert [c.source for c in failed] == [RANK_1_FAILS_CELL]
    # Every cell before it ran: the script's rank 0 progress reached its cell, live.
    [script_cell] = [c for c in cells if "\n%horovodrun -np" in c.source]
    streamed = _text_of(script_cell)
    assert "[stdout:0]" in streamed and "Epoch 2/2" in streamed
    assert "final accuracy on synthetic digits" in streamed
    [code_cell] = [c for c in cells if c.source.startswith("%%horovodrun -np {N_RANKS}")]
    assert "run 2 on these engines" in _text_of(code_cell)  # the warm engines of the script
    assert "'accuracy': [" in _text_of(code_cell)  # rank 0's history.history, the cell's value
    [allreduce_cell] = [c for c in cells if c.source == ALLREDUCE_CELL]
    assert "(3, 2)" in _text_of(allreduce_cell)
    # The failed run stopped the warm cluster; the kernel's exit left nothing running.
    assert processes_of_this_projects_clusters_after(30) == []


@pytest.mark.notebook
@pytest.mark.distributed
def test_the_notebook_runs_from_the_repos_root_as_the_readme_runs_papermill(tmp_path):
    executed = tmp_path / "04_from_root.ipynb"
    pm.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={"EPOCHS": 1, "SAMPLES": 32},
        kernel_name="hiresmed",
        cwd=str(project_root()),  # not notebooks/: the script is found through the project
        progress_bar=False,
    )
    cells = nbformat.read(str(executed), as_version=4).cells
    [script_cell] = [c for c in cells if "\n%horovodrun -np" in c.source]
    assert "final accuracy on synthetic digits" in _text_of(script_cell)
    [code_cell] = [c for c in cells if c.source.startswith("%%horovodrun -np {N_RANKS}")]
    assert "'accuracy': [" in _text_of(code_cell)
    assert processes_of_this_projects_clusters_after(30) == []


# --- on two simulated hosts ----------------------------------------------------------------------

WHERE_SCRIPT = """import socket, sys
import horovod.tensorflow as hvd

hvd.init()
hosts = hvd.allgather_object(socket.gethostname())
if hvd.rank() == 0:
    print("ranks on", ",".join(hosts), "argv", sys.argv)
"""

WHERE_CELL = """import socket
import horovod.tensorflow as hvd

hvd.init()
hvd.allgather_object((hvd.rank(), socket.gethostname()))"""


@pytest.mark.multihost
@pytest.mark.distributed
def test_magics_place_one_rank_on_each_simulated_host(
    simulated_hosts, monkeypatch, tmp_path, capsys
):
    from IPython.core.interactiveshell import InteractiveShell
    from simhosts import HostSpec
    from test_multihost import nothing_left, on_path
    from traitlets.config import Config

    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    on_path(monkeypatch, sim)
    monkeypatch.chdir(tmp_path)  # the hosts share this filesystem, so they see the script here
    (tmp_path / "where.py").write_text(WHERE_SCRIPT)
    shell = InteractiveShell.instance(config=Config({"HistoryManager": {"enabled": False}}))
    shell.run_line_magic("load_ext", "hiresmed_nb")
    try:
        shell.run_line_magic("horovodrun", "-H hostA:1,hostB:1 where.py --tag x")
        expected = f"ranks on hostA,hostB argv ['{tmp_path / 'where.py'}', '--tag', 'x']"
        assert expected in capsys.readouterr().out
        placed = shell.run_cell_magic("horovodrun", "-np 2 -H hostA:1,hostB:1", WHERE_CELL)
        assert placed == [(0, "hostA"), (1, "hostB")]
        assert cluster.kernel_pool().current.runs == 2  # both on the same engines
    finally:
        cluster.kernel_pool().close()
    nothing_left(sim)


# --- the benchmark's figures and goals ----------------------------------------------------------


def test_script_benchmark_ratios_pair_repeats_and_goals_are_1_1_and_0_6_of_horovodrun():
    from hiresmed_nb.bench import scripts as bench_scripts

    seconds = {"horovodrun": [20.0, 30.0], "magic_cold": [21.0, 36.0], "magic_warm": [10.0, 12.0]}
    figures = bench_scripts._figures(seconds)
    assert figures["magic_cold_ratio"]["values"] == [1.05, 1.2]
    assert figures["magic_warm_ratio"]["values"] == [0.5, 0.4]
    cold, warm = bench_scripts._goals(figures)
    assert (cold["target"], cold["value"], cold["met"]) == (1.1, pytest.approx(1.125), False)
    assert (warm["target"], warm["value"], warm["met"]) == (0.6, pytest.approx(0.45), True)
    assert "28.5 s against horovodrun 25.0 s" in cold["limits"]
