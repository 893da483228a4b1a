"""Tests of the study runner: grid expansion, the CLI, resume and failure isolation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml
from papermill.exceptions import PapermillExecutionError
from test_tensorboard_logs import assert_logs_match_record, writer_pids

from hiresmed_nb import cluster, study
from hiresmed_nb import params as P
from hiresmed_nb.__main__ import main
from hiresmed_nb.cluster import Pool
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import project_root
from hiresmed_nb.science import tensorboard_logs
from hiresmed_nb.science.report import load_paper_table

ROOT = project_root()
PARAMS = ROOT / "params"


class NoClusters(Pool):
    """The runner's pool for fake executors, which run nothing on it: no cluster is started."""

    def attach_parameters(self, parameters: dict) -> dict:
        return dict(parameters)


@pytest.fixture(autouse=True)
def no_clusters_for_fake_executors(request, monkeypatch):
    """Tests that execute no real notebook need no engines: the runner starts none for them
    (its clusters are tested by the notebook and distributed tests, and in test_warm.py)."""
    if not {"notebook", "distributed"} & {mark.name for mark in request.node.iter_markers()}:
        monkeypatch.setattr(study.runner, "Pool", NoClusters)


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def base(**extra) -> dict:
    return {"STUDY": "t", "DATASET": "synthetic-skin", "ARCH": "compact", **extra}


# --- grid expansion ----------------------------------------------------------------------------


def test_list_values_are_axes_and_runs_are_their_product():
    runs = study.expand(base(IMAGE_SIZE=[32, 64, 96], MODE=["serial", "distributed"], SEEDS=[0, 1]))
    assert len(runs) == 12
    assert {r.params["IMAGE_SIZE"] for r in runs} == {32, 64, 96}
    assert {r.params["SEED"] for r in runs} == {0, 1}
    assert len({r.run_id for r in runs}) == 12
    assert runs[0].run_id == "synthetic-skin_compact_32px_20ipc_serial1_seed0"
    assert runs[1].run_id == "synthetic-skin_compact_32px_20ipc_serial1_seed1"  # last axis fastest


def test_later_file_overrides_earlier_and_p_overrides_last(tmp_path):
    first = write_yaml(tmp_path / "a.yaml", base(IMAGE_SIZE=[32, 64], EPOCHS=3, BATCH_SIZE=2))
    second = write_yaml(tmp_path / "b.yaml", {"EPOCHS": 5, "IMAGE_SIZE": 48})
    name, runs = study.plan([first, second], [("BATCH_SIZE", "6"), ("EPOCHS", "7")])
    assert name == "t"
    assert len(runs) == 1
    assert runs[0].params["IMAGE_SIZE"] == 48
    assert runs[0].params["EPOCHS"] == 7
    assert runs[0].params["BATCH_SIZE"] == 6


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("True", True),
        ("False", False),
        ("None", None),
        ("12", 12),
        ("1e-5", 1e-5),
        ("0.5", 0.5),
        ("imagenet", "imagenet"),
        ("[0, 1, 2]", [0, 1, 2]),
        ("[[a, b], [c, d]]", [["a", "b"], ["c", "d"]]),
    ],
)
def test_p_values_are_typed_like_papermill(text, value):
    assert study.resolve_value(text) == value
    assert type(study.resolve_value(text)) is type(value)


def test_p_override_with_a_list_makes_an_axis(tmp_path):
    path = write_yaml(tmp_path / "a.yaml", base(SEEDS=[0]))
    _, runs = study.plan([path], [("SEEDS", "[3, 4]")])
    assert [r.params["SEED"] for r in runs] == [3, 4]


def test_unknown_key_is_rejected_with_the_nearest_name():
    with pytest.raises(HiresmedError, match=r"IMAGE_SIZ.*did you mean IMAGE_SIZE"):
        study.expand(base(IMAGE_SIZ=[32]))


@pytest.mark.parametrize("key", ["IMAGE_SIZE", "SEEDS", "CLASSES"])
def test_empty_axis_is_an_error_naming_the_key(key):
    with pytest.raises(HiresmedError, match=rf"^{key} is an empty list"):
        study.expand(base(**{key: []}))


def test_classes_is_one_value_unless_a_list_of_lists():
    one = study.expand(base(CLASSES=["nevus", "melanoma"]))
    assert len(one) == 1
    assert one[0].params["CLASSES"] == ["nevus", "melanoma"]
    with pytest.raises(HiresmedError, match="share run id"):
        # two class sets are two runs, but the run id does not spell CLASSES
        study.expand(base(CLASSES=[["nevus", "melanoma"], ["nevus", "wart"]]))


def test_runs_that_differ_only_outside_the_run_id_are_refused():
    with pytest.raises(HiresmedError, match=r"share run id .* differ in EPOCHS"):
        study.expand(base(EPOCHS=[1, 2]))


def test_serial_runs_collapse_across_rank_counts():
    runs = study.expand(base(MODE=["serial", "distributed"], N_RANKS=[2, 4]))
    assert sorted(r.run_id for r in runs) == [
        "synthetic-skin_compact_64px_20ipc_distributed2_seed0",
        "synthetic-skin_compact_64px_20ipc_distributed4_seed0",
        "synthetic-skin_compact_64px_20ipc_serial1_seed0",
    ]


def test_a_bad_run_in_the_grid_fails_the_whole_grid_naming_the_parameter():
    with pytest.raises(HiresmedError, match=r"IMAGE_SIZE=8 .*in the run with IMAGE_SIZE=8"):
        study.expand(base(IMAGE_SIZE=[64, 8]))


def test_missing_or_bad_study_name_is_an_error():
    with pytest.raises(HiresmedError, match="STUDY is not set"):
        study.expand({"DATASET": "synthetic-skin"})
    with pytest.raises(HiresmedError, match="STUDY="):
        study.expand(base(STUDY="../elsewhere"))


def test_results_dir_is_left_to_the_runner():
    with pytest.raises(HiresmedError, match="RESULTS_DIR is chosen by the runner"):
        study.expand(base(RESULTS_DIR="elsewhere"))


def test_seed_and_seeds_together_are_an_error():
    with pytest.raises(HiresmedError, match="SEEDS .* or SEED"):
        study.expand(base(SEED=1, SEEDS=[0, 1]))


def test_cells_set_values_on_matching_runs_in_order():
    cells = [
        {"match": {"MODE": "distributed"}, "set": {"LEARNING_RATE": 2e-3}},
        {"match": {"MODE": "distributed", "IMAGE_SIZE": [64, 96]}, "set": {"LEARNING_RATE": 5e-3}},
    ]
    runs = study.expand(base(IMAGE_SIZE=[32, 64], MODE=["serial", "distributed"], CELLS=cells))
    lr = {(r.params["IMAGE_SIZE"], r.params["MODE"]): r.params["LEARNING_RATE"] for r in runs}
    assert lr == {
        (32, "serial"): 1e-3,
        (32, "distributed"): 2e-3,
        (64, "serial"): 1e-3,
        (64, "distributed"): 5e-3,
    }


def test_cells_with_an_unknown_parameter_are_rejected():
    cells = [{"match": {"MODES": "serial"}, "set": {"EPOCHS": 1}}]
    with pytest.raises(HiresmedError, match=r"MODES.*CELLS\[0\].*did you mean MODE"):
        study.expand(base(CELLS=cells))
    with pytest.raises(HiresmedError, match=r"CELLS\[0\] must be a mapping"):
        study.expand(base(CELLS=[{"when": {}}]))


def test_missing_and_malformed_parameter_files_are_named(tmp_path):
    with pytest.raises(HiresmedError, match="nope.yaml"):
        study.load_param_files([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(HiresmedError, match="bad.yaml.*mapping"):
        study.load_param_files([bad])


# --- the shipped parameter files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd198", "nih", "quick", "smoke"])
def test_shipped_parameter_files_expand_and_validate(name):
    study_name, runs = study.plan([PARAMS / f"{name}.yaml"])
    assert study_name == name
    assert runs


def test_sd198_grid_is_the_papers_table1_with_its_distributed_learning_rates():
    _, runs = study.plan([PARAMS / "sd198.yaml"])
    assert len(runs) == 7 * 3 * 2 * 2 * 3  # sizes x images/class x archs x modes x seeds
    paper = load_paper_table()
    checked = 0
    for run in runs:
        p = run.params
        assert p["BATCH_SIZE"] == (4 if p["IMAGE_SIZE"] == 1024 else 5)
        row = paper[
            (paper["dataset"] == "sd198")
            & (paper["arch"] == p["ARCH"])
            & (paper["image_size"] == p["IMAGE_SIZE"])
            & (paper["images_per_class"] == p["IMAGES_PER_CLASS"])
            & (paper["mode"] == p["MODE"])
        ]
        if len(row):
            assert p["LEARNING_RATE"] == pytest.approx(row["learning_rate"].iloc[0])
            assert p["N_RANKS"] == row["num_nodes"].iloc[0]
            checked += 1
    assert checked == len(paper[paper["dataset"] == "sd198"]) * 3


def test_nih_grid_uses_the_papers_ranks_and_learning_rate_per_cell():
    _, runs = study.plan([PARAMS / "nih.yaml"])
    assert len(runs) == 4 * 3 * 2 * 3
    paper = load_paper_table()
    paper = paper[paper["dataset"] == "nih"]
    cells = {
        (row.image_size, row.images_per_class, row.mode): (row.num_nodes, row.learning_rate)
        for row in paper.itertuples()
    }
    assert len(cells) == 24
    for run in runs:
        p = run.params
        ranks, lr = cells[(p["IMAGE_SIZE"], p["IMAGES_PER_CLASS"], p["MODE"])]
        assert p["N_RANKS"] == ranks
        assert p["LEARNING_RATE"] == pytest.approx(lr)


# --- the command line --------------------------------------------------------------------------


def test_dry_run_prints_one_run_id_per_line_and_writes_nothing(tmp_path, capsys):
    code = main(["run", str(PARAMS / "smoke.yaml"), "--dry-run", "--outputs", str(tmp_path)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [r.run_id for r in study.plan([PARAMS / "smoke.yaml"])[1]]
    assert len(lines) == 4
    assert list(tmp_path.iterdir()) == []


def test_bad_grid_exits_2_with_one_error_and_runs_nothing(tmp_path, capsys, monkeypatch):
    def executor(*args, **options):
        raise AssertionError("nothing may execute for a bad grid")

    monkeypatch.setattr(study.runner, "papermill_executor", executor)
    argv = ["run", str(PARAMS / "smoke.yaml"), "-p", "IMAGE_SIZE", "[32, 5]"]
    code = main([*argv, "--outputs", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hiresmed: error: IMAGE_SIZE=5")
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# --- the runner with a fake executor -----------------------------------------------------------


def fake_executor(
    fail: set[str] = frozenset(),
    calls: list | None = None,
    record: bool = True,
    options: list | None = None,
):
    """An executor that writes a record like 01_train does, or raises like papermill.
    ``options``: collects the keyword options each call got (the runner's ``verbose``)."""

    def execute(notebook: Path, output: Path, parameters: dict, cwd: Path, **given) -> None:
        from hiresmed_nb.params import run_id

        rid = run_id(parameters)
        if calls is not None:
            calls.append(rid)
        if options is not None:
            options.append(given)
        output.write_text("{}")
        if rid in fail:
            raise PapermillExecutionError(5, 5, "train()", "HiresmedError", "too few images", [])
        if record:
            out = Path(parameters["RESULTS_DIR"]) / f"{rid}.json"
            out.write_text(json.dumps({"run_id": rid, "status": "ok"}))

    return execute


def smoke_runs():
    return study.plan([PARAMS / "smoke.yaml"])[1]


def test_resume_skips_recorded_runs_and_reruns_only_deleted_records(tmp_path):
    runs = smoke_runs()
    calls: list[str] = []
    first = study.run_study(
        runs, tmp_path, executor=fake_executor(calls=calls), report=False, progress=False
    )
    assert first.ok and first.executed == [r.run_id for r in runs] and first.skipped == []
    calls.clear()
    second = study.run_study(
        runs, tmp_path, executor=fake_executor(calls=calls), report=False, progress=False
    )
    assert calls == [] and second.executed == [] and len(second.skipped) == 4
    (tmp_path / "runs" / f"{runs[2].run_id}.json").unlink()
    third = study.run_study(
        runs, tmp_path, executor=fake_executor(calls=calls), report=False, progress=False
    )
    assert calls == [runs[2].run_id] and third.executed == [runs[2].run_id]
    calls.clear()
    study.run_study(
        runs,
        tmp_path,
        executor=fake_executor(calls=calls),
        report=False,
        force=True,
        progress=False,
    )
    assert calls == [r.run_id for r in runs]


def test_a_failing_run_is_recorded_with_its_cell_and_the_others_go_on(tmp_path):
    runs = smoke_runs()
    bad = runs[1].run_id
    result = study.run_study(
        runs, tmp_path, executor=fake_executor(fail={bad}), report=False, progress=False
    )
    assert not result.ok
    assert list(result.failed) == [bad]
    assert len(result.executed) == 3
    failure = json.loads((tmp_path / "runs" / f"{bad}.failed.json").read_text())
    assert failure["cell_index"] == 5
    assert failure["ename"] == "HiresmedError"
    assert failure["params"]["IMAGE_SIZE"] == runs[1].params["IMAGE_SIZE"]
    lines = study.summary_lines(result)
    assert lines[0].startswith("executed 3, skipped 0")
    assert any(bad in line and "cell 5" in line and "too few images" in line for line in lines)
    # the next invocation retries only the failed run and clears its failure on success
    calls: list[str] = []
    again = study.run_study(
        runs, tmp_path, executor=fake_executor(calls=calls), report=False, progress=False
    )
    assert calls == [bad] and again.ok
    assert not (tmp_path / "runs" / f"{bad}.failed.json").exists()


def test_a_notebook_that_writes_no_record_counts_as_failed(tmp_path):
    runs = smoke_runs()[:1]
    result = study.run_study(
        runs, tmp_path, executor=fake_executor(record=False), report=False, progress=False
    )
    assert list(result.failed) == [runs[0].run_id]
    assert "wrote no record" in result.failed[runs[0].run_id]["evalue"]


def test_cli_exits_nonzero_and_lists_the_failure(tmp_path, capsys, monkeypatch):
    bad = smoke_runs()[0].run_id
    monkeypatch.setattr(study.runner, "papermill_executor", fake_executor(fail={bad}))
    code = main(["run", str(PARAMS / "smoke.yaml"), "--no-report", "--outputs", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    assert f"FAILED {bad}" in out
    assert (tmp_path / "smoke" / "runs" / f"{bad}.failed.json").exists()


@pytest.mark.parametrize(("flags", "verbose"), [([], False), (["--verbose"], True), (["-v"], True)])
def test_verbose_reaches_the_executor_of_every_run(tmp_path, capsys, monkeypatch, flags, verbose):
    options: list[dict] = []
    monkeypatch.setattr(study.runner, "papermill_executor", fake_executor(options=options))
    argv = ["run", str(PARAMS / "smoke.yaml"), "--no-report", "--outputs", str(tmp_path)]
    assert main([*argv, *flags]) == 0
    assert [given["verbose"] for given in options] == [verbose] * len(smoke_runs())
    assert len({id(given["kernels"]) for given in options}) == 1  # one study, one set of spares
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("done ")] == [
        run.run_id for run in smoke_runs()
    ]


# --- the real notebooks ------------------------------------------------------------------------


def record_ids(study_dir: Path) -> set[str]:
    return {p.stem for p in (study_dir / "runs").glob("*.json") if ".failed" not in p.name}


@pytest.mark.notebook
@pytest.mark.distributed
def test_smoke_study_runs_the_train_notebook_resumes_and_reports(tmp_path, capfd, monkeypatch):
    """A real run of the 2 x 2 smoke grid; the console (also the kernels' and engines' output,
    captured at the file descriptors) holds one line per run and none of the kernel noise."""
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # the runner must set it itself
    argv = ["run", str(PARAMS / "smoke.yaml"), "--outputs", str(tmp_path)]
    assert main(argv) == 0
    study_dir = tmp_path / "smoke"
    runs = smoke_runs()
    assert record_ids(study_dir) == {r.run_id for r in runs}
    for run in runs:
        record = json.loads((study_dir / "runs" / f"{run.run_id}.json").read_text())
        assert record["mode"] == run.params["MODE"]
        assert record["n_ranks"] == run.params["N_RANKS"]
        assert 0.0 <= record["accuracy"] <= 1.0
        assert (study_dir / "runs" / f"{run.run_id}.ipynb").exists()
        kernel_log = (study_dir / "runs" / f"{run.run_id}.kernel.log").read_text()
        assert "oneDNN" not in kernel_log and "without encryption" not in kernel_log
        run_logs = assert_logs_match_record(study_dir / "runs", record)
        assert writer_pids(run_logs) == {record["ranks"][0]["pid"]}  # rank 0 alone
    domains, metrics = tensorboard_logs.read_experiment(study_dir / "runs" / "tensorboard")
    assert domains["IMAGE_SIZE"] == [32, 48] and domains["MODE"] == ["distributed", "serial"]
    assert domains["N_RANKS"] == [1, 2] and domains["SYNTHETIC"] == [True]
    assert set(domains) == {name for name, _ in tensorboard_logs.HPARAMS}
    assert "test/accuracy" in metrics and "epoch_loss" in metrics
    html = (study_dir / "report.html").read_text()
    assert "SYNTHETIC DATA" in html and "Table 2 replica" in html
    out, err = capfd.readouterr()
    assert f"report: {study_dir / 'report.html'}" in out
    done = [line.split()[1] for line in out.splitlines() if line.startswith("done ")]
    assert done == [run.run_id for run in runs]
    for noise in ("without encryption", "oneDNN", "cpu_feature_guard", "  cells"):
        assert noise not in out + err, noise

    stamps = {p.name: p.stat().st_mtime_ns for p in (study_dir / "runs").glob("*.json")}
    assert main([*argv, "--no-report"]) == 0
    assert "executed 0, skipped 4" in capfd.readouterr().out
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (study_dir / "runs").glob("*.json")}

    (study_dir / "runs" / f"{runs[0].run_id}.json").unlink()
    assert main([*argv, "--no-report"]) == 0
    assert "executed 1, skipped 3" in capfd.readouterr().out
    assert record_ids(study_dir) == {r.run_id for r in runs}
    rerun = json.loads((study_dir / "runs" / f"{runs[0].run_id}.json").read_text())
    run_logs = assert_logs_match_record(study_dir / "runs", rerun)
    assert writer_pids(run_logs) == {rerun["ranks"][0]["pid"]}  # the rerun replaced the logs


@pytest.mark.notebook
def test_an_impossible_run_fails_alone_and_the_study_exits_nonzero(tmp_path, capsys):
    argv = ["run", str(PARAMS / "smoke.yaml"), "--outputs", str(tmp_path)]
    argv += ["-p", "MODE", "serial", "-p", "IMAGE_SIZE", "32"]
    argv += ["-p", "IMAGES_PER_CLASS", "[4, 100000]"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    study_dir = tmp_path / "smoke"
    assert record_ids(study_dir) == {"synthetic-skin_compact_32px_4ipc_serial1_seed0"}
    failed = "synthetic-skin_compact_32px_100000ipc_serial1_seed0"
    assert f"FAILED {failed}" in out
    failure = json.loads((study_dir / "runs" / f"{failed}.failed.json").read_text())
    assert isinstance(failure["cell_index"], int)
    assert failed in (study_dir / "report.html").read_text()  # the report lists it


def stub_train_notebook(path: Path) -> None:
    """A stand-in for 01_train: validates its parameters, fails on purpose for >50 images per
    class, and writes a record of the documented schema (accuracy derived from the seed)."""
    import nbformat

    from hiresmed_nb.params import defaults

    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell(
        "\n".join(f"{name} = {value!r}" for name, value in defaults().items())
    )
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [
        parameters,
        nbformat.v4.new_code_cell(
            "import json, pathlib\n"
            "from hiresmed_nb.params import PARAMETERS, validate, run_id\n"
            "p = validate({name: globals()[name] for name in PARAMETERS})"
        ),
        nbformat.v4.new_code_cell(
            "if p['IMAGES_PER_CLASS'] > 50:\n"
            "    raise ValueError('IMAGES_PER_CLASS is more than the class holds')"
        ),
        nbformat.v4.new_code_cell(
            "ranks = p['N_RANKS']\n"
            "record = {'run_id': run_id(p), 'status': 'ok', 'synthetic': True,\n"
            "  'params': p.as_dict(),\n"
            "  'dataset': p['DATASET'], 'arch': p['ARCH'], 'image_size': p['IMAGE_SIZE'],\n"
            "  'images_per_class': p['IMAGES_PER_CLASS'], 'mode': p['MODE'], 'n_ranks': ranks,\n"
            "  'seed': p['SEED'], 'learning_rate': p['LEARNING_RATE'], 'epochs': p['EPOCHS'],\n"
            "  'batch_size_per_rank': p['BATCH_SIZE'],\n"
            "  'effective_batch_size': p['BATCH_SIZE'] * ranks,\n"
            "  'accuracy': 0.5 + 0.01 * p['SEED'], 'balanced_accuracy': 0.5, 'macro_f1': 0.5,\n"
            "  'n_train': 4 * p['IMAGES_PER_CLASS'], 'n_test': 8, 'train_seconds': 1.0}\n"
            "out = pathlib.Path(p['RESULTS_DIR']) / f\"{run_id(p)}.json\"\n"
            "out.write_text(json.dumps(record))"
        ),
    ]
    nb.metadata["kernelspec"] = {
        "name": "hiresmed",
        "display_name": "Python 3 (hiresmed)",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.mark.notebook
def test_papermill_runner_isolates_the_failing_cell_and_renders_the_report(tmp_path, capfd):
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    stub_train_notebook(root / study.TRAIN_NOTEBOOK)
    shutil.copy(ROOT / study.REPORT_NOTEBOOK, root / study.REPORT_NOTEBOOK)
    runs = study.expand(
        base(STUDY="stub", IMAGE_SIZE=32, IMAGES_PER_CLASS=[4, 100], SEEDS=[0, 1], EPOCHS=1)
    )
    study_dir = tmp_path / "outputs" / "stub"
    result = study.run_study(runs, study_dir, root=root, progress=False)

    bad = {r.run_id for r in runs if r.params["IMAGES_PER_CLASS"] == 100}
    assert set(result.failed) == bad and len(result.executed) == 2
    assert record_ids(study_dir) == {r.run_id for r in runs} - bad
    for rid in bad:
        failure = json.loads((study_dir / "runs" / f"{rid}.failed.json").read_text())
        assert "raise ValueError" in failure["cell_source"]
        executed = nbformat.read(study_dir / "runs" / f"{rid}.ipynb", as_version=4)
        assert any(c.source == failure["cell_source"] for c in executed.cells)
        assert failure["ename"] == "ValueError"
    assert not list((study_dir / "runs").glob("*.partial.ipynb"))
    assert result.report_error is None
    html = result.report_html.read_text()
    assert all(rid in html for rid in bad)
    assert "50.5 ± " in html  # seeds 0 and 1 of the 4-image cell: 50% and 51%
    out, err = capfd.readouterr()  # also what the kernels print, at the file descriptors
    assert "without encryption" not in out + err  # the kernels talk over IPC
    ends = [line.split()[1] for line in out.splitlines() if line[:6] in ("done  ", "FAILED")]
    assert sorted(ends) == sorted(r.run_id for r in runs)  # one line per run
    assert (study_dir / "runs" / f"{min(bad)}.kernel.log").exists()


def test_quick_grid_has_serial_distributed_and_accumulated_arms_at_equal_effective_batch():
    _, runs = study.plan([PARAMS / "quick.yaml"])
    arms = {}
    for run in runs:
        p = run.params
        arm = "accumulated" if p["ACCUMULATION_STEPS"] > 1 else p["MODE"]
        arms.setdefault(arm, []).append(p)
    assert {arm: len(ps) for arm, ps in arms.items()} == {
        "serial": 12,
        "distributed": 12,
        "accumulated": 6,
    }
    assert all(p["MODE"] == "serial" and p["IMAGES_PER_CLASS"] == 60 for p in arms["accumulated"])
    effective = {
        arm: {p["BATCH_SIZE"] * p["N_RANKS"] * p["ACCUMULATION_STEPS"] for p in ps}
        for arm, ps in arms.items()
    }
    assert effective == {"serial": {8}, "distributed": {16}, "accumulated": {16}}


def test_the_runner_keeps_a_warm_cluster_per_placement_for_runs_without_their_own_cluster_file(
    tmp_path, monkeypatch
):
    from hiresmed_nb.cluster import pool as pool_module
    from hiresmed_nb.cluster.memory import EngineMemory

    started = []

    class StandIn:
        description, memory = "a stand-in", EngineMemory()

        def __init__(self, placement):
            self.placement, self.runs, self.cluster_file = placement, 0, f"pool-{len(started)}.json"
            started.append(placement)

        def observe_memory(self):
            return self.memory.observe([1, 1])

        def start(self):
            pass

        def usable(self):
            return True

        def stop(self):
            pass

    monkeypatch.setattr(pool_module, "HorovodCluster", StandIn)
    pool = Pool()
    serial = P.validate({"MODE": "serial"})
    # A serial run trains on one engine of the runner's, kept warm for the next serial run.
    on_one_engine = pool.attach_parameters(serial)
    assert started == [cluster.Placement(1)] and on_one_engine["POOL_CLUSTER_FILE"] == "pool-0.json"
    assert P.validate(on_one_engine).placement == cluster.Placement(1, cluster_file="pool-0.json")
    cluster_file = tmp_path / "cluster.json"
    cluster_file.write_text(json.dumps({"engines": {"sets": {"1": {"n": 2}}}}))
    own = P.validate({"MODE": "distributed", "IPP_CLUSTER_FILE": str(cluster_file)})
    assert own["N_RANKS"] == 2 and pool.attach_parameters(own) == dict(own)  # its own cluster
    with_hosts = P.validate({"MODE": "distributed", "HOSTS": "a:2,b:1"})
    attached = pool.attach_parameters(with_hosts)
    assert [(h.host, h.slots) for h in started[1].hosts] == [("a", 2), ("b", 1)]
    # The run attaches to the pool's cluster; the placement it asked for stays for its record.
    assert attached["POOL_CLUSTER_FILE"] == "pool-1.json" and attached["HOSTS"] == "a:2,b:1"
    assert P.validate(attached).placement == cluster.Placement(3, cluster_file="pool-1.json")
    assert pool.attach_parameters(with_hosts)["POOL_CLUSTER_FILE"] == "pool-1.json"  # reused
    assert pool.attach_parameters(serial)["POOL_CLUSTER_FILE"] == "pool-0.json"  # reused
    assert len(started) == 2


def test_only_a_rank_failure_counts_as_one_for_the_retry():
    class NotebookError(Exception):
        def __init__(self, ename):
            super().__init__(ename)
            self.ename = ename

    assert study.is_rank_failure(NotebookError("RankLostError"))
    assert study.is_rank_failure(NotebookError("RankFailedError"))
    assert not study.is_rank_failure(NotebookError("HiresmedError"))
    assert not study.is_rank_failure(ValueError("RankLostError"))
