"""The benchmark helpers: statistics, planner, JSON and Markdown; the CLI; a tiny end-to-end run.

No timing thresholds: the benchmarks measure speed, the tests check what they write.
"""

import json
import subprocess
import sys

import pytest

from hiresmed_nb import bench
from hiresmed_nb.bench import launchers
from hiresmed_nb.bench.timing import median_ratios, step_intervals, time_calls
from hiresmed_nb.params import HiresmedError, project_root

GiB = bench.GiB
MiB = 2**20


def linear_probes(intercept: float, slope: float, batches=(1, 2, 4)) -> list[tuple[int, float]]:
    return [(batch, intercept + slope * batch) for batch in batches]


def test_planner_gives_the_exact_batch_on_linear_probes():
    probes = linear_probes(1 * GiB, 100 * MiB)
    assert bench.fit_memory(probes) == pytest.approx((1 * GiB, 100 * MiB))
    assert bench.plan_batch_size(1 * GiB + 7 * 100 * MiB, probes) == 7  # exactly at batch 7
    assert bench.plan_batch_size(1 * GiB + 7.9 * 100 * MiB, probes) == 7
    assert bench.plan_batch_size(1 * GiB + 100 * MiB, probes) == 1


def test_planner_refuses_a_budget_below_one_image():
    probes = linear_probes(2 * GiB, 100 * MiB)
    with pytest.raises(HiresmedError, match="below what one image needs"):
        bench.plan_batch_size(1 * GiB, probes)
    with pytest.raises(HiresmedError, match="below"):
        bench.plan_batch_size(2 * GiB + 50 * MiB, probes)


def test_planner_refuses_probes_it_cannot_fit():
    with pytest.raises(HiresmedError, match="two or more batch sizes"):
        bench.plan_batch_size(8 * GiB, [(4, 1.0 * GiB), (4, 1.1 * GiB)])
    with pytest.raises(HiresmedError, match="does not grow"):
        bench.plan_batch_size(8 * GiB, linear_probes(1 * GiB, 0))


def test_summarize_gives_median_quartiles_and_range():
    summary = bench.summarize([5, 1, 4, 2, 3], "s", "step")
    assert summary["median"] == 3
    assert (summary["q1"], summary["q3"], summary["iqr"]) == (2, 4, 2)
    assert (summary["min"], summary["max"], summary["n"]) == (1, 5, 5)
    assert summary["values"] == [5, 1, 4, 2, 3]
    assert summary["unit"] == "s" and summary["label"] == "step"
    assert bench.summarize([0.5])["iqr"] == 0


@pytest.mark.parametrize("values", [[], [1.0, float("nan")], [float("inf")]])
def test_summarize_refuses_no_or_non_finite_values(values):
    with pytest.raises(HiresmedError):
        bench.summarize(values, label="step")


def test_step_intervals_start_at_the_chosen_epoch():
    ends = [10.0, 11.0, 11.5, 12.5, 13.0, 13.25]
    assert step_intervals(ends, [0, 3], 0) == [1.0, 0.5, 1.0, 0.5, 0.25]
    assert step_intervals(ends, [0, 3], 1) == [1.0, 0.5, 0.25]
    assert step_intervals(ends, [0, 3], 2) == []


def test_median_ratios_pair_repeats_in_order():
    assert median_ratios([[1.0, 3.0, 2.0], [4.0]], [[1.0], [2.0, 2.0]]) == [2.0, 2.0]
    with pytest.raises(ValueError):
        median_ratios([[1.0]], [[1.0], [2.0]])


def test_time_calls_times_only_the_calls_after_the_warmup():
    calls, before = [], []
    seconds = time_calls(lambda: calls.append(len(calls)), 2, 3, before=before.append)
    assert len(seconds) == 3 and all(s >= 0 for s in seconds)
    assert calls == [0, 1, 2, 3, 4] and before == [0, 1, 2, 3, 4]


def fake_launch_run(first_step: float) -> dict:
    """A timed_train result as a launch path returns it: called at 0 s, entered at 2 s."""
    ends = [first_step + t for t in (0.0, 0.5, 1.0, 1.4, 1.9)]
    return {"called": 0.0, "entered": 2.0, "batch_ends": ends, "epoch_starts": [0, 2]}


def test_every_launch_path_gets_its_figures_and_a_first_step_goal():
    figures = {}
    for name in launchers.PATHS:
        figures.update(launchers._path_figures(name, [fake_launch_run(5.0)]))
    figures["step_ratio"] = bench.summarize([1.0], "x", "ratio")
    goals = launchers._goals(figures)
    assert [g["name"] for g in goals[1:]] == [
        f"call to first step, {path.goal_name}" for path in launchers.PATHS.values()
    ]
    for found in goals[1:]:
        assert found["value"] == pytest.approx(5.0) and found["met"]
    assert figures["ipyparallel_setup_seconds"]["median"] == pytest.approx(3.0)
    assert figures["horovodrun_step_seconds"]["values"] == pytest.approx([0.5, 0.4, 0.5])


def test_missed_first_step_goal_says_what_limits_it():
    figures = {}
    for name in launchers.PATHS:
        figures.update(launchers._path_figures(name, [fake_launch_run(12.0)]))
    figures["step_ratio"] = bench.summarize([1.0], "x", "ratio")
    missed = launchers._goals(figures)[1]
    assert not missed["met"] and "takes 2.0 s" in missed["limits"]
    assert "(10.0 s)" in missed["limits"]


def test_goal_says_whether_met_and_by_how_much_it_missed():
    met = bench.goal("ratio", 1.02, "<=", 1.03, "x", "why")
    assert met["met"] and met["miss"] == "" and met["limits"] == ""
    missed = bench.goal("ratio", 1.2, "<=", 1.0, "x", "why")
    assert not missed["met"] and "+20%" in missed["miss"] and missed["limits"] == "why"
    assert not bench.goal("throughput", 0.5, ">=", 0.95, "x")["met"]


def test_result_json_holds_machine_versions_and_every_figures_spread(tmp_path):
    payload = {
        "benchmark": "threads",
        "figures": {"ratio": bench.summarize([0.9, 1.0, 1.1], "x", "2 ranks / 1 rank")},
        "goals": [bench.goal("ratio", 1.0, ">=", 0.95, "x")],
    }
    path = bench.write_result(payload, tmp_path)
    assert path == tmp_path / "threads.json"
    record = json.loads(path.read_text())
    assert {"cpu_model", "logical_cores", "ram_bytes", "os"} <= set(record["machine"])
    assert record["machine"]["logical_cores"] >= 1 and record["machine"]["ram_bytes"] > 0
    assert {"python", "tensorflow", "horovod", "ipyparallel", "git_commit"} <= set(
        record["versions"]
    )
    figure = record["figures"]["ratio"]
    assert figure["median"] == 1.0 and figure["min"] == 0.9 and figure["max"] == 1.1
    assert figure["iqr"] == pytest.approx(0.1)
    assert bench.load_results(tmp_path)["threads"]["figure_order"] == ["ratio"]


def test_result_json_needs_a_name_and_figures(tmp_path):
    with pytest.raises(HiresmedError, match="figures"):
        bench.write_result({"benchmark": "threads"}, tmp_path)


def test_markdown_shows_goals_figures_and_machine(tmp_path):
    payload = {
        "benchmark": "launchers",
        "title": "1. Launchers",
        "figures": {"first": bench.summarize([12.0, 14.0], "s", "call to first step")},
        "goals": [bench.goal("call to first step", 13.0, "<=", 10.0, "s", "imports")],
    }
    bench.write_result(payload, tmp_path)
    text = bench.render_markdown(bench.load_results(tmp_path))
    assert "| launchers | call to first step | 13.00 s | <= 10.00 s | **no** |" in text
    assert "| call to first step | 13.00 | 12.50-13.50 | 12.00-14.00 | 2 | s |" in text
    assert "Machine:" in text and "imports" in text


def test_update_markdown_replaces_only_the_generated_block(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    bench.update_markdown(path, "first table\n")
    path.write_text(path.read_text() + "\n## Hand-written analysis\n")
    bench.update_markdown(path, "second table\n")
    text = path.read_text()
    assert "second table" in text and "first table" not in text
    assert text.count(bench.MARKDOWN_BEGIN) == 1 and "## Hand-written analysis" in text


def test_bench_help_lists_the_options():
    shown = subprocess.run(
        [sys.executable, "-m", "hiresmed_nb", "bench", "--help"],
        cwd=project_root(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--quick", "--tiny", "--only", "--out", "--markdown"):
        assert option in shown


def test_worker_entry_point_lists_its_tasks():
    shown = subprocess.run(
        [sys.executable, "-m", "hiresmed_nb.bench.worker", "--help"],
        cwd=project_root(),
        capture_output=True,
        text=True,
        check=True,
    )
    for task in ("timed-train", "probe", "pipeline", "allreduce-share"):
        assert task in shown.stdout
    assert "RuntimeWarning" not in shown.stderr


def test_bench_refuses_an_unknown_benchmark(tmp_path):
    with pytest.raises(HiresmedError, match="unknown benchmark"):
        bench.run_suite("tiny", ["launcher"], tmp_path)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory, skin_dir):
    out = tmp_path_factory.mktemp("bench")
    subprocess.run(
        [sys.executable, "-m", "hiresmed_nb", "bench", "--tiny"]
        + ["--only", "pipeline,resolution", "--out", str(out)],
        cwd=project_root(),
        check=True,
        capture_output=True,
    )
    return out


@pytest.mark.notebook
def test_tiny_suite_writes_one_json_per_benchmark_with_spreads(tiny_results):
    results = bench.load_results(tiny_results)
    assert set(results) == {"pipeline", "resolution"}
    for result in results.values():
        assert result["level"] == "tiny" and result["machine"]["cpu_model"]
        for figure in result["figures"].values():
            assert figure["n"] >= 1 and figure["min"] <= figure["median"] <= figure["max"]
    pipeline = results["pipeline"]["figures"]
    assert pipeline["decode_images_per_second"]["median"] > 0
    assert {"pipeline_steady_step_seconds", "in_memory_steady_step_seconds"} <= set(pipeline)
    planner = results["resolution"]["planner"]
    assert planner["measured_check_bytes"] > planner["intercept_bytes"] > 0
    assert (tiny_results / "BENCHMARKS.md").read_text().count("###") >= 3


@pytest.mark.notebook
def test_benchmarks_notebook_plots_the_tiny_results(tiny_results, tmp_path):
    import papermill

    executed = tmp_path / "03_benchmarks.ipynb"
    papermill.execute_notebook(
        str(project_root() / "notebooks" / "03_benchmarks.ipynb"),
        str(executed),
        parameters={"BENCH_DIR": str(tiny_results)},
        kernel_name="hiresmed",
        progress_bar=False,
    )
    cells = json.loads(executed.read_text())["cells"]
    images = [
        output
        for cell in cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 2  # the pipeline and resolution plots
