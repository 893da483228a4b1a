"""The benchmark helpers: statistics, planner, JSON and Markdown; the CLI; a tiny end-to-end run.

No timing thresholds: the benchmarks measure speed, the tests check what they write.
"""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simhosts
from test_train_notebook import processes_of_this_projects_clusters_after

from hiresmed_nb import bench
from hiresmed_nb.bench import launchers, process, timed, two_hosts, warm
from hiresmed_nb.bench.timing import median_ratios, step_intervals, time_calls
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import project_root, validate

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


def launch_figures(first_steps: dict[str, float]) -> dict:
    """The launchers figures of one fake run per path, ``path -> its call to first step``."""
    runs = {name: [fake_launch_run(first_step)] for name, first_step in first_steps.items()}
    figures = {}
    for name, done in runs.items():
        figures.update(launchers._path_figures(name, done))
    figures.update(launchers._ratio_figures(runs))
    return figures


def fake_memory_series(*rss_mb: list[float]) -> dict:
    """A warm.memory_series result: one list of MB per rank (after each run)."""
    return {
        "engine_pids": list(range(100, 100 + len(rss_mb))),
        "rss_bytes": [[value * warm.MB for value in rank] for rank in rss_mb],
        "first_step_seconds": [5.0] + [1.0] * (len(rss_mb[0]) - 1),
    }


def test_every_launch_path_gets_its_figures_and_each_target_a_first_step_goal():
    figures = launch_figures({name: 2.5 for name in launchers.PATHS})
    for name in launchers.PATHS:
        assert figures[f"{name}_first_step_seconds"]["median"] == pytest.approx(2.5)
        assert figures[f"{name}_setup_seconds"]["median"] == pytest.approx(0.5)
    assert figures["horovodrun_step_seconds"]["values"] == pytest.approx([0.5, 0.4, 0.5])
    goals = launchers._goals(figures)
    targets = [p for p in launchers.PATHS.values() if p.target is not None]
    assert [g["name"] for g in goals] == [
        "steady-state s/step, ipyparallel / horovodrun",
        *[f"call to first step, {path.goal_name}" for path in targets],
        "call to first step, warm engines / horovodrun (same run)",
    ]
    assert launchers.PATHS["two_hosts"].target is None  # overhead figures, no goal
    assert figures["two_hosts_step_ratio"]["median"] == pytest.approx(1.0)


def test_missed_first_step_goal_says_what_limits_it():
    figures = launch_figures({name: 12.0 for name in ("ipyparallel", "horovodrun")})
    missed = launchers._goals(figures)[1]
    assert missed["name"] == "call to first step, ipyparallel path" and not missed["met"]
    assert "takes 2.0 s" in missed["limits"] and "(10.0 s)" in missed["limits"]


def test_warm_goals_are_three_seconds_and_four_tenths_of_horovodrun_in_the_same_run():
    figures = launch_figures({"ipyparallel": 12.0, "horovodrun": 5.0, "warm": 2.5})
    goals = {found["name"]: found for found in launchers._goals(figures)}
    absolute = goals["call to first step, warm engines (second run)"]
    assert absolute["met"] and absolute["target"] == 3.0 and absolute["op"] == "<="
    ratio = goals["call to first step, warm engines / horovodrun (same run)"]
    assert ratio["value"] == pytest.approx(0.5) and ratio["target"] == 0.4 and not ratio["met"]
    assert "warm 2.50 s against horovodrun 5.00 s" in ratio["limits"]
    figures = launch_figures({"horovodrun": 10.0, "warm": 3.5})
    goals = {found["name"]: found for found in launchers._goals(figures)}
    absolute = goals["call to first step, warm engines (second run)"]
    assert not absolute["met"] and "+0.5 s" in absolute["miss"]
    assert "2.00 s" in absolute["limits"] and "1.50 s" in absolute["limits"]
    assert goals["call to first step, warm engines / horovodrun (same run)"]["met"]
    assert "steady-state s/step, ipyparallel / horovodrun" not in goals  # no ipyparallel run


def test_warm_memory_growth_is_per_rank_from_run_one_to_the_last():
    met = fake_memory_series([600, 650, 690], [610, 615, 620])
    figures = warm.memory_figures(met)
    assert figures["warm_rss_first_run_mb"]["values"] == pytest.approx([600, 610])
    assert figures["warm_rss_last_run_mb"]["values"] == pytest.approx([690, 620])
    assert figures["warm_rss_growth_mb"]["values"] == pytest.approx([90, 10])
    assert figures["warm_series_first_step_seconds"]["values"] == [1.0, 1.0]  # runs 2 and 3
    found = warm.memory_goal(met)
    assert found["met"] and found["value"] == pytest.approx(90) and found["op"] == "<"
    assert found["name"] == "engine RSS growth, warm run 1 -> run 3 (largest rank)"
    missed = warm.memory_goal(fake_memory_series([600, 650, 720], [610, 615, 620]))
    assert not missed["met"] and missed["value"] == pytest.approx(120)
    assert "rank 0 +120 MB, rank 1 +10 MB" in missed["limits"]
    assert "rank 0: 600, 650, 720 MB; rank 1: 610, 615, 620 MB" in missed["limits"]


def test_warm_memory_series_needs_two_runs():
    with pytest.raises(HiresmedError, match="warm_memory_runs"):
        warm.memory_series({}, 1)


def test_two_warm_memory_runs_are_the_warm_paths_own_and_more_run_on_a_cluster_of_their_own(
    monkeypatch,
):
    own = fake_memory_series([600, 620], [610, 615])
    separate = fake_memory_series(*[[600] * 10] * 2)
    started = []

    def fresh_cluster_series(params: dict, runs: int) -> dict:
        started.append(runs)
        return separate

    monkeypatch.setattr(warm, "memory_series", fresh_cluster_series)

    def warm_runs() -> list[dict]:
        return [{"pid": 7, "memory": own}, {"pid": 7, "memory": separate}]

    runs = warm_runs()
    assert launchers._warm_memory({}, 2, runs) is own and started == []  # tiny: no cluster
    assert runs == [{"pid": 7}, {"pid": 7}]  # the raw runs keep their timings only
    assert launchers._warm_memory({}, 10, warm_runs()) is separate and started == [10]
    assert launchers._warm_memory({}, 0, warm_runs()) is None
    assert launchers._warm_memory({}, 2, []) is None  # the warm path did not run


def test_runs_on_replaced_engines_are_refused():
    warm._same_engines([{"pid": 7}, {"pid": 8}], [{"pid": 7}, {"pid": 8}])
    with pytest.raises(HiresmedError, match=r"replaced between runs: pids \[7, 8\] -> \[7, 9\]"):
        warm._same_engines([{"pid": 7}, {"pid": 8}], [{"pid": 7}, {"pid": 9}])


@pytest.mark.parametrize(
    ("hosts", "reason"),
    [
        ("", "no hosts: set HIRESMED_BENCH_HOSTS='hostA:1,hostB:1'"),
        ("hostA:2", "HIRESMED_BENCH_HOSTS='hostA:2': give two hosts of one slot each"),
        ("hostA:x", "HIRESMED_BENCH_HOSTS: HOSTS='hostA:x'"),
    ],
)
def test_two_hosts_not_named_are_skipped_with_the_reason(monkeypatch, hosts, reason):
    monkeypatch.setenv(two_hosts.HOSTS_VARIABLE, hosts)
    payload = launchers.measure(bench.LEVELS["tiny"], paths=["two_hosts"])
    assert payload["skipped"]["two_hosts"].startswith(reason)
    assert f"2 hosts x 1 rank: skipped: {reason}" in " ".join(payload["notes"])
    assert payload["figures"] == {} and payload["goals"] == []


def test_a_failing_two_host_run_is_recorded_not_raised(monkeypatch):
    @contextlib.contextmanager
    def built_pair():
        yield None

    def failing_run(params):
        raise HiresmedError("HOSTS: cannot ssh to hostA")

    monkeypatch.setattr(two_hosts, "host_pair", built_pair)
    path = launchers.PATHS["two_hosts"]._replace(run=failing_run)
    monkeypatch.setitem(launchers.PATHS, "two_hosts", path)
    payload = launchers.measure(bench.LEVELS["tiny"], paths=["two_hosts"])
    expected = "the 2-host run failed: HiresmedError: HOSTS: cannot ssh to hostA"
    assert payload["skipped"] == {"two_hosts": expected}
    assert payload["raw"] == {"warm_memory": None}


@pytest.mark.multihost
@pytest.mark.distributed
def test_two_host_path_runs_one_rank_on_each_simulated_host(simulated_hosts, skin_dir, monkeypatch):
    sim = simulated_hosts(simhosts.HostSpec("hostA"), simhosts.HostSpec("hostB"))
    monkeypatch.setenv("PATH", f"{sim.bin_dir}{os.pathsep}{os.environ['PATH']}")  # plain ssh
    monkeypatch.setenv(two_hosts.HOSTS_VARIABLE, "hostA:1,hostB:1")
    params = timed.train_params(bench.LEVELS["tiny"], Path("unused"))
    run = timed.in_fresh_results_dir(two_hosts.via_two_hosts, params)
    assert run["hostnames"] == ["hostA", "hostB"]
    assert "hostA" in run["placement"] and "hostB" in run["placement"]
    figures = launchers._path_figures("two_hosts", [run])
    assert figures["two_hosts_step_seconds"]["n"] >= 1
    assert figures["two_hosts_launch_seconds"]["median"] > 0
    for alias in sim.aliases:
        assert sim.wait_for_no_leftovers(alias) == {}


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


def test_goal_lines_say_each_goal_measured_against_its_target():
    results = {
        "launchers": {"goals": [bench.goal("call to first step", 13.0, "<=", 10.0, "s", "why")]},
        "packing": {"goals": [bench.goal("slot utilisation", 0.9, ">=", 0.85)]},
    }
    assert bench.goal_lines(results) == [
        "launchers: call to first step: 13 s (goal <= 10 s): missed by +3 s (+30%)",
        "packing: slot utilisation: 0.9 (goal >= 0.85): met",
    ]


def test_packing_is_in_every_level_and_its_goals_are_utilisation_gaps_and_overlaps():
    from hiresmed_nb.bench import packing

    assert "packing" in bench.BENCHMARKS
    assert all({"slots", "seeds"} <= set(level["packing"]) for level in bench.LEVELS.values())
    study = {
        "runs": 6,
        "slots": 4,
        "study_seconds": 190.0,
        "utilisation": 0.8,
        "busy_slot_seconds": 544.0,
        "packed_wall_seconds": 170.0,
        "gaps_seconds": [0.001, 0.002, 1.5],
        "max_gap_seconds": 1.5,
        "slot_overlaps": [],
        "summary": "slot utilisation 0.80",
    }
    payload = packing.payload_of(study, seeds=2, cores=2)
    goals = {found["name"]: found for found in payload["goals"]}
    assert goals["slot utilisation"]["value"] == 0.8 and not goals["slot utilisation"]["met"]
    gap = goals["slot freed to next run started (max)"]
    assert gap["value"] == 1.5 and gap["target"] == 1.0 and not gap["met"]
    assert goals["runs sharing a slot at once (records)"]["met"]
    assert payload["figures"]["gap_seconds"]["n"] == 3  # every gap
    notes = " ".join(payload["notes"])
    assert "SYNTHETIC" in notes and "4 CPU slots on 2 cores share the cores" in notes
    for slots, seeds in ((1, 2), (4, 1)):  # one slot; no slot freed and reused: no gap
        with pytest.raises(HiresmedError, match="packing benchmark: s"):
            packing.check_config(slots, seeds)


def test_bench_help_lists_the_options():
    shown = subprocess.run(
        [sys.executable, "-m", "hiresmed_nb", "bench", "--help"],
        cwd=project_root(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in ("--quick", "--tiny", "--only", "--out"):
        assert option in shown


def test_worker_entry_point_lists_its_tasks():
    shown = subprocess.run(
        [sys.executable, "-m", "hiresmed_nb.bench.worker", "--help"],
        cwd=project_root(),
        capture_output=True,
        text=True,
        check=True,
    )
    for task in ("timed-train", "probe", "pipeline", "allreduce-share", "tensorboard-cost"):
        assert task in shown.stdout
    assert "RuntimeWarning" not in shown.stderr


def test_a_checked_run_config_reaches_a_worker_process_as_plain_values():
    config = validate(timed.train_params(bench.LEVELS["tiny"], Path("unused")))
    sent = json.loads(json.dumps({"params": config}, default=process._plain))
    assert validate(sent["params"]) == config
    with pytest.raises(TypeError, match="config cannot hold a"):
        json.dumps({"folder": Path("x")}, default=process._plain)


def test_bench_refuses_an_unknown_benchmark(tmp_path):
    with pytest.raises(HiresmedError, match="unknown benchmark"):
        bench.run_suite("tiny", ["launcher"], tmp_path)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory, skin_dir):
    """Every benchmark at ``--tiny``, run as a user runs the suite (a few minutes: all nine)."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "hiresmed_nb", "bench", "--tiny", "--out", str(out)],
        cwd=project_root(),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return out


def figure_median(result: dict, key: str) -> float:
    return result["figures"][key]["median"]


@pytest.mark.notebook
@pytest.mark.distributed
def test_tiny_suite_runs_every_benchmark_and_writes_one_json_each(tiny_results):
    results = bench.load_results(tiny_results)
    assert list(results) == list(bench.BENCHMARKS)
    assert sorted(p.name for p in tiny_results.iterdir()) == sorted(
        f"{name}.json" for name in bench.BENCHMARKS
    )
    for name, result in results.items():
        assert result["level"] == "tiny" and result["machine"]["cpu_model"], name
        assert result["command"].startswith("python -m hiresmed_nb bench --tiny"), name
        assert result["wall_seconds"] > 0 and result["figures"], name
        for key, figure in result["figures"].items():
            assert figure["n"] >= 1, (name, key)
            assert figure["min"] <= figure["median"] <= figure["max"], (name, key)
        for found in result.get("goals", []):
            assert isinstance(found["met"], bool) and np.isfinite(found["value"]), (name, found)


@pytest.mark.notebook
@pytest.mark.distributed
def test_tiny_launch_paths_time_the_call_to_first_step_in_two_parts(tiny_results):
    launch = bench.load_results(tiny_results)["launchers"]
    for path in ("ipyparallel", "horovodrun", "warm"):
        first_step = figure_median(launch, f"{path}_first_step_seconds")
        parts = [figure_median(launch, f"{path}_{part}_seconds") for part in ("launch", "setup")]
        assert all(part > 0 for part in parts) and first_step == pytest.approx(sum(parts))
        assert figure_median(launch, f"{path}_step_seconds") > 0
    assert "two_hosts" in launch["skipped"] or "two_hosts_step_seconds" in launch["figures"]
    # The warm path's run reused the two engines of the cold path's run: one pool, two runs.
    run, cold = launch["raw"]["warm"][0], launch["raw"]["ipyparallel"][0]
    first_run, second_run = run["engine_pids"]
    assert first_run == second_run and len(set(first_run)) == 2 and run["pid"] == first_run[0]
    assert cold["pid"] == first_run[0] and cold["batch_ends"][-1] < run["called"]
    assert run["called"] < run["entered"] < run["batch_ends"][0]
    # The memory series: each rank's RSS after each of its 2 runs.
    memory = launch["raw"]["warm_memory"]
    assert len(set(memory["engine_pids"])) == 2
    assert memory["engine_pids"] == first_run  # tiny: the warm path's own two runs
    assert "memory" not in run
    assert [len(rss) for rss in memory["rss_bytes"]] == [2, 2]  # after run 1 and run 2
    assert all(rss > 50 * warm.MB for rank in memory["rss_bytes"] for rss in rank)
    assert launch["figures"]["warm_rss_growth_mb"]["n"] == 2  # one per rank
    assert [found["name"] for found in launch["goals"]][-1] == (
        "engine RSS growth, warm run 1 -> run 2 (largest rank)"
    )
    assert any(note.startswith("Warm memory: 2 consecutive runs") for note in launch["notes"])
    assert processes_of_this_projects_clusters_after(30) == []  # the suite stopped its clusters
    threads = bench.load_results(tiny_results)["threads"]
    for arm in ("two_ranks", "one_rank"):
        assert figure_median(threads, f"{arm}_images_per_second") > 0


@pytest.mark.notebook
@pytest.mark.distributed
def test_tiny_allreduce_scripts_and_packing_measure_what_they_name(tiny_results):
    results = bench.load_results(tiny_results)
    allreduce = results["allreduce"]
    for compression in ("none", "fp16"):
        reduce, step = (
            figure_median(allreduce, f"{part}_seconds_{compression}")
            for part in ("allreduce", "step")
        )
        assert reduce > 0 and step > 0
        share = figure_median(allreduce, f"allreduce_share_{compression}")
        assert share == pytest.approx(reduce / step)
    scripts = results["scripts"]
    for path in ("horovodrun", "magic_cold", "magic_warm"):
        assert figure_median(scripts, f"{path}_seconds") > 0
    assert [g["name"] for g in scripts["goals"]] == [
        "script wall time, %horovodrun cold / horovodrun",
        "script wall time, %horovodrun warm / horovodrun",
    ]
    packing = results["packing"]
    assert 0 < figure_median(packing, "utilisation") <= 1
    assert figure_median(packing, "slot_overlaps") == 0
    assert packing["raw"]["runs"] == 3 and packing["raw"]["slots"] == 2  # 1 seed, 2 slots
    overhead = results["overhead"]
    # Each arm's runs in the order they started, warm or cold, from the runs' own records.
    assert {arm: raw["warm"] for arm, raw in overhead["raw"].items()} == {
        "serial_one_at_a_time": [False, True]
    }
    assert overhead["config"]["runs_per_arm"] == {
        arm: len(raw["warm"]) for arm, raw in overhead["raw"].items()
    }
    for raw in overhead["raw"].values():
        assert raw["runs"] == len(raw["warm"]) == len(raw["overhead_seconds"])
        assert all(seconds > 0 for seconds in raw["overhead_seconds"])  # a notebook is not free
        assert raw["study_seconds"] > raw["train_seconds"] > 0


@pytest.mark.notebook
@pytest.mark.distributed
def test_tiny_pipeline_resolution_and_tensorboard_figures(tiny_results):
    results = bench.load_results(tiny_results)
    pipeline = results["pipeline"]["figures"]
    assert pipeline["decode_images_per_second"]["median"] > 0
    assert {"pipeline_steady_step_seconds", "in_memory_steady_step_seconds"} <= set(pipeline)
    planner = results["resolution"]["planner"]
    assert planner["measured_check_bytes"] > planner["intercept_bytes"] > 0
    tensorboard = results["tensorboard"]
    assert {"with_logs_step_seconds", "without_logs_step_seconds"} <= set(tensorboard["figures"])
    for ratio in ("step_ratio", "cpu_step_ratio"):
        pairs = tensorboard["figures"][ratio]
        assert pairs["n"] == 2 and pairs["min"] > 0  # one ratio per pair of fits
    assert tensorboard["figures"]["epoch_end_seconds"]["n"] == 2 * 2  # 2 fits with logs x 2 epochs
    assert [g["name"] for g in tensorboard["goals"]] == [
        "wall-clock s/step, with / without TensorBoard logs",
        "CPU s/step, with / without TensorBoard logs",
    ]


@pytest.mark.notebook
@pytest.mark.distributed
def test_benchmarks_notebook_plots_every_benchmark_of_the_tiny_suite(tiny_results, tmp_path):
    import papermill

    executed = tmp_path / "03_benchmarks.ipynb"
    papermill.execute_notebook(
        str(project_root() / "notebooks" / "03_benchmarks.ipynb"),
        str(executed),
        parameters={"BENCH_DIR": str(tiny_results)},
        kernel_name="hiresmed",
        cwd=str(project_root()),
        progress_bar=False,
    )
    cells = json.loads(executed.read_text())["cells"]
    images = [
        output
        for cell in cells
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    # launchers, warm memory, pipeline, resolution, planner, threads, allreduce, tensorboard
    assert len(images) == 8
    tables = [o for c in cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert len(tables) == 2  # the goals and every figure


@pytest.mark.notebook
def test_benchmarks_notebook_plots_every_launch_path_and_the_warm_memory(tmp_path):
    import papermill

    memory = fake_memory_series([600, 620], [610, 615])
    figures = launch_figures({name: 2.5 for name in launchers.PATHS})
    figures.update(warm.memory_figures(memory))
    payload = {  # made-up figures (no measurement): what the notebook reads of launchers.json
        "benchmark": "launchers",
        "level": "tiny",
        "config": {"first_step_targets": {n: p.target for n, p in launchers.PATHS.items()}},
        "figures": figures,
        "goals": launchers._goals(figures, memory),
        "notes": ["2 hosts x 1 rank: skipped: made up for this test"],
        "raw": {"warm_memory": memory},
    }
    bench.write_result(payload, tmp_path)
    executed = tmp_path / "03_benchmarks.ipynb"
    papermill.execute_notebook(
        str(project_root() / "notebooks" / "03_benchmarks.ipynb"),
        str(executed),
        parameters={"BENCH_DIR": str(tmp_path)},
        kernel_name="hiresmed",
        cwd=str(project_root() / "notebooks"),  # as JupyterLab runs it
        progress_bar=False,
    )
    outputs = [o for c in json.loads(executed.read_text())["cells"] for o in c.get("outputs", [])]
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 2  # the launchers and the warm memory plots
    shown = [o["data"].get("text/markdown", "") for o in outputs if "data" in o]
    assert "2 hosts x 1 rank: skipped: made up for this test" in "".join(map(str, shown))


def test_a_runs_overhead_is_its_notebooks_time_less_training_and_warm_after_its_engines_first():
    from hiresmed_nb.bench.overhead import overheads

    def record(run_id: str, started: str, pid: int, train: float) -> dict:
        return {
            "run_id": run_id,
            "started_at": started,
            "train_seconds": train,
            "ranks": [{"pid": pid}],
        }

    records = [  # given out of order: the start times order them
        record("c", "2026-01-01T00:00:03", 11, 1.0),
        record("a", "2026-01-01T00:00:01", 11, 2.0),
        record("b", "2026-01-01T00:00:02", 12, 1.5),
    ]
    found = overheads(records, {"a": 6.0, "b": 4.0, "c": 3.5}, wall=20.0)
    assert found["overhead_seconds"] == [4.0, 2.5, 2.5]
    assert found["warm"] == [False, False, True]  # c is engine 11's second run
    assert found["study_overhead_per_run"] == (20.0 - 4.5) / 3


@pytest.mark.parametrize(
    ("runs", "expected"),
    [
        (2, [2, 2, 3, 2]),  # tiny: the packed serial pair starts cold, so one more run
        (3, [3, 3, 3, 3]),
        (6, [6, 6, 6, 6]),  # quick and full
    ],
)
def test_each_overhead_arm_takes_the_levels_runs_and_one_past_its_cold_start(runs, expected):
    from hiresmed_nb.bench.overhead import ARMS, arm_runs

    assert [arm_runs(mode, slots, runs) for mode, slots in ARMS] == expected
    assert arm_runs("serial", 4, 2) == 5  # 4 runs start together on 4 slots
    assert arm_runs("distributed", 4, 2) == 3  # two 2-rank runs fit 4 slots


def test_the_tiny_overhead_level_runs_the_goals_arm_twice_and_the_others_every_arm():
    from hiresmed_nb.bench.overhead import ARMS, arm_name, arm_runs, chosen_arms

    tiny = bench.LEVELS["tiny"]["overhead"]
    assert {arm_name(*arm): arm_runs(*arm, tiny["runs"]) for arm in chosen_arms(tiny["arms"])} == {
        "serial_one_at_a_time": 2
    }
    for level in ("quick", "full"):
        overhead = bench.LEVELS[level]["overhead"]
        assert chosen_arms(overhead.get("arms")) == list(ARMS)  # every arm
        assert {arm_runs(*arm, overhead["runs"]) for arm in ARMS} == {6}


@pytest.mark.parametrize("arms", [["serial_packed2"], ["serial_one_at_a_time", "serial_packed3"]])
def test_overhead_arms_must_be_known_and_include_the_goals(arms):
    from hiresmed_nb.bench.overhead import chosen_arms

    with pytest.raises(HiresmedError, match=r"arms must name serial_one_at_a_time .*got \["):
        chosen_arms(arms)


@pytest.mark.parametrize(
    ("mode", "slots", "runs", "message"),
    [
        ("serial", None, 1, r"runs must be a whole number >= 2 .* got 1"),
        ("serial", None, 2.0, r"runs must be a whole number >= 2 .* got 2\.0"),
        ("serial", None, True, r"runs must be a whole number >= 2 .* got True"),
        ("parallel", None, 2, r"mode must be 'serial' or 'distributed', got 'parallel'"),
        ("distributed", 1, 2, r"slots must be >= 2 for a distributed run of 2 rank\(s\), got 1"),
        ("serial", 0, 2, r"slots must be >= 1 for a serial run of 1 rank\(s\), got 0"),
    ],
)
def test_overhead_arm_runs_refuses_bad_input_naming_it(mode, slots, runs, message):
    from hiresmed_nb.bench.overhead import arm_runs

    with pytest.raises(HiresmedError, match=message):
        arm_runs(mode, slots, runs)


def test_resolution_probes_share_one_settings_and_each_config_runs_once(monkeypatch):
    from hiresmed_nb.bench import resolution

    level = {
        **bench.LEVELS["tiny"],
        "probe_steps": (1, 3),
        "resolution": [("compact", 32, 2, "float32"), ("compact", 64, 2, "float32")],
        "planner": {"arch": "compact", "size": 32, "probes": [1, 2], "check": 4},
    }
    started = []

    def fake_worker(task: str, config: dict) -> tuple[dict, float]:
        """A probe's result without a process: peak RSS 100 MB + 10 MB per image."""
        started.append((task, config))
        seconds = [0.5] * config["steps"]
        rss = 100 * MiB + 10 * MiB * config["batch"]
        return {
            **config,
            "step_seconds": seconds,
            "images_per_second": [config["batch"] / s for s in seconds],
            "peak_rss_bytes": rss,
        }, 0.0

    monkeypatch.setattr(resolution, "run_worker", fake_worker)
    found = resolution.measure(level)
    settings = {"warmup": 1, "steps": 3, "threads": os.cpu_count() or 1}
    assert resolution.probe_settings(level) == settings
    # compact 32 px at batch 2 is a config and a planner probe: one process for both.
    assert [(c["size"], c["batch"]) for _, c in started] == [(32, 2), (64, 2), (32, 1), (32, 4)]
    assert all(task == "probe" and settings.items() <= c.items() for task, c in started)
    assert found["planner"]["probes"][1] == found["configs"][0]
    assert found["planner"]["bytes_per_image"] == pytest.approx(10 * MiB)
    assert found["planner"]["relative_error"] == pytest.approx(0)
    assert set(found["figures"]) >= {
        "compact_32px_float32_images_per_second",
        "compact_64px_float32_images_per_second",
        "planner_relative_error",
    }
