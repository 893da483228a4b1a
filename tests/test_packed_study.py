"""A packed study: serial and 2-rank runs at once on CPU slots, one engine per slot."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from small_images import SMALL_SKIN
from test_warm import interrupt_after_first_run, processes_of_clusters_owned_by

from hiresmed_nb import study
from hiresmed_nb.__main__ import main
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.study.executor import papermill_executor
from hiresmed_nb.study.occupancy import slot_overlaps

TINY = {
    "STUDY": "packed",
    "DATASET": "synthetic-skin",
    "DATA_DIR": SMALL_SKIN,
    "ARCH": "compact",
    "IMAGE_SIZE": 32,
    "IMAGES_PER_CLASS": 4,
    "TEST_IMAGES_PER_CLASS": 4,
    "BATCH_SIZE": 4,
    "EPOCHS": 1,
    "N_RANKS": 2,
}
SAME_RESULT = ("accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "history")


def spans_overlap(first: dict, second: dict) -> bool:
    from datetime import datetime

    def span(record: dict) -> tuple[float, float]:
        return tuple(
            datetime.fromisoformat(record[k]).timestamp() for k in ("started_at", "finished_at")
        )

    (a0, a1), (b0, b1) = span(first), span(second)
    return a0 < b1 and b0 < a1


@pytest.mark.notebook
@pytest.mark.distributed
def test_a_packed_grid_runs_side_by_side_on_its_own_slots_and_equals_runs_one_at_a_time(
    tmp_path, monkeypatch, skin_dir
):
    """Also: a lost rank's run is retried on fresh engines for its slots, resumes mid-run from
    its checkpoint, and ends with the same result as the run alone."""
    # The first 2-rank run's rank 1 kills itself once epoch 0 of 2 is checkpointed (in epoch 1's
    # first batch, once; faults.py), so the retry resumes from epoch 1.
    marker = tmp_path / "rank-1-was-killed"
    monkeypatch.setenv("HIRESMED_INJECT_FAULT", f"kill-rank-after-checkpoint:1:0:{marker}")
    grid = {**TINY, "EPOCHS": 2, "MODE": ["distributed", "serial"]}
    good = study.expand({**grid, "SEEDS": [0, 1]})
    # The same grid as a plain study, one run at a time, as a user runs it on one core: started
    # now, beside the packed study (its records do not depend on what else runs), compared below.
    alone = start_plain_study_on_one_core(tmp_path, grid, [0, 1])
    try:
        records, lines, result = run_packed_with_a_failing_run(tmp_path, good)
    finally:  # on a failure above too: the baseline ends, as `subprocess.run` would end it
        alone_records = plain_study_records(alone, tmp_path)
    assert sorted(result.executed) == sorted(run.run_id for run in good)
    assert [failure["ename"] for failure in result.failed.values()] == ["HiresmedError"]
    # The slots' engines stopped with the study.
    assert processes_of_clusters_owned_by(os.getpid()) == []
    # Every rank on a slot of its own; no slot ever ran two runs at once (from records alone).
    assert slot_overlaps(records.values()) == []
    for record in records.values():
        keys = [rank["slot"]["key"] for rank in record["ranks"]]
        assert len(set(keys)) == len(keys) == record["n_ranks"]
        assert all(rank["slot"]["threads"] >= 1 for rank in record["ranks"])
        assert all(isinstance(rank["slot"]["engine"], int) for rank in record["ranks"])
    # Slots keep their engines warm: some engine (the same id and process) served two runs.
    served = Counter(
        (rank["slot"]["engine"], rank["pid"])
        for record in records.values()
        for rank in record["ranks"]
    )
    assert max(served.values()) >= 2, served
    ordered = list(records.values())
    assert any(spans_overlap(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]), (
        "no two runs trained at the same time"
    )
    assert any(line.startswith("slots  ") for line in lines)
    assert any(line.startswith("slot utilisation") for line in lines)
    assert marker.exists()
    [retried] = [record for record in records.values() if "retry" in record]
    assert retried["retry"]["first_error"].startswith("RankLostError")
    assert retried["retry"]["resumed_from_epoch"] == retried["resumed_from_epoch"] == 1
    assert len(retried["history"]["loss"]) == 2  # resumed, neither restarted nor short
    # The slots' first engines are 0, 1 and 2: the retry ran on replacements for its two slots.
    assert min(rank["slot"]["engine"] for rank in retried["ranks"]) >= 3
    # The plain study (`taskset -c 0`): every run on engines with one thread each, the packed
    # slots' share on this machine. Nothing else differs: no variable is set for it.
    threads = {rank["slot"]["threads"] for record in records.values() for rank in record["ranks"]}
    assert threads == {1}
    assert sorted(alone_records) == sorted(records)
    for run_id, packed in records.items():
        assert [r["weights_digest"] for r in alone_records[run_id]["ranks"]] == [
            r["weights_digest"] for r in packed["ranks"]
        ]
        assert {k: alone_records[run_id][k] for k in SAME_RESULT} == {
            k: packed[k] for k in SAME_RESULT
        }


def fail_runs_without_data(executor):
    """``executor``, except that a run whose DATA_DIR does not exist fails at once, as its
    notebook's checks cell would, without a kernel (a real notebook's failure is recorded by
    the same code, shown in test_study.py)."""

    def execute(notebook, output, parameters, cwd, **options):
        if parameters.get("DATA_DIR") and not Path(parameters["DATA_DIR"]).exists():
            raise HiresmedError(f"DATA_DIR {parameters['DATA_DIR']} does not exist")
        executor(notebook, output, parameters, cwd, **options)

    return execute


def run_packed_with_a_failing_run(tmp_path, good: list) -> tuple[dict, list[str], object]:
    """``good`` and one run that fails (its data folder does not exist), packed on 3 slots:
    the good runs' records by run id, the study's lines and its result."""
    bad = study.expand({**TINY, "MODE": "serial", "SEEDS": [2], "DATA_DIR": str(tmp_path / "no")})
    lines: list[str] = []
    result = study.run_study(
        good + bad,
        tmp_path / "packed",
        executor=fail_runs_without_data(papermill_executor),
        report=False,
        progress=False,
        echo=lines.append,
        slots=study.SlotRequest(slots=3),
    )
    assert list(result.failed) == [bad[0].run_id]
    records = {
        run.run_id: json.loads((tmp_path / "packed" / "runs" / f"{run.run_id}.json").read_text())
        for run in good
        if run.run_id in result.executed
    }
    return records, lines, result


def start_plain_study_on_one_core(tmp_path, grid: dict, seeds: list[int]) -> subprocess.Popen:
    """Start ``grid`` as ``taskset -c 0 python -m hiresmed_nb run grid.yaml`` (one run at a
    time, no slots)."""
    import yaml

    grid_file = tmp_path / "alone.yaml"
    grid_file.write_text(yaml.safe_dump({**grid, "STUDY": "alone", "SEEDS": seeds}))
    outputs = tmp_path / "alone-outputs"
    command = ["taskset", "-c", "0", sys.executable, "-m", "hiresmed_nb", "run", str(grid_file)]
    return subprocess.Popen(
        [*command, "--no-report", "--outputs", str(outputs)],
        env={k: v for k, v in os.environ.items() if k != "HIRESMED_INJECT_FAULT"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def plain_study_records(plain: subprocess.Popen, tmp_path) -> dict[str, dict]:
    """Wait for the plain study (killed past 900 s); its records by run id. Fails, with its
    output, unless it exited 0."""
    try:
        output, _ = plain.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        plain.kill()  # the process this test started, by its Popen
        output, _ = plain.communicate()
    assert plain.returncode == 0, output
    return {
        path.stem: json.loads(path.read_text())
        for path in (tmp_path / "alone-outputs" / "alone" / "runs").glob("*.json")
        if not path.name.endswith(".failed.json")
    }


def test_a_run_wider_than_the_slots_is_one_error_before_anything_starts(tmp_path):
    runs = study.expand({**TINY, "MODE": "distributed", "N_RANKS": 3, "SEEDS": [0, 1]})
    executed = []
    with pytest.raises(HiresmedError, match=r"2 runs need more slots than the study has \(2"):
        study.run_study(
            runs,
            tmp_path / "wide",
            executor=lambda *args, **options: executed.append(args),
            report=False,
            progress=False,
            slots=study.SlotRequest(slots=2),
        )
    assert executed == []
    assert list((tmp_path / "wide" / "runs").iterdir()) == []
    assert processes_of_clusters_owned_by(os.getpid()) == []


def test_the_command_line_names_a_bad_slot_count(tmp_path, capsys):
    params = tmp_path / "grid.yaml"
    params.write_text("STUDY: s\nMODE: serial\nIMAGE_SIZE: 32\n")
    assert main(["run", str(params), "--slots", "0", "--outputs", str(tmp_path)]) == 2
    assert "--slots 0" in capsys.readouterr().err


@pytest.mark.notebook
def test_ctrl_c_stops_every_packed_notebook_and_engine_and_a_rerun_resumes(tmp_path, skin_dir):
    # Two slots: when the first run is done, the second and third are running (as with more
    # runs); the rerun trains the one or two not recorded.
    config = {**TINY, "MODE": "serial", "SEEDS": [0, 1, 2]}
    done = interrupt_after_first_run(config, tmp_path, slots=2)  # each with its record
    runs = tmp_path / "runs"
    # A run may have written its record as Ctrl-C came, before its runner said done.
    recorded = {p.stem for p in runs.glob("*.json") if not p.name.endswith(".failed.json")}
    assert done <= recorded
    kept = {run_id: (runs / f"{run_id}.json").read_bytes() for run_id in recorded}
    # The same study again, packed as before: the runs recorded are kept, the rest train now.
    result = study.run_study(
        study.expand(config), tmp_path, report=False, progress=False, slots=study.SlotRequest(2)
    )
    every = {run.run_id for run in study.expand(config)}
    assert result.ok, result.failed
    assert set(result.skipped) == recorded
    assert set(result.executed) == every - recorded != set()
    assert {run_id: (runs / f"{run_id}.json").read_bytes() for run_id in recorded} == kept
    for run_id in every - recorded:
        assert (runs / f"{run_id}.json").is_file()
        assert not (runs / f"{run_id}.failed.json").exists()
    assert processes_of_clusters_owned_by(os.getpid()) == []


@pytest.mark.distributed
def test_a_slot_engine_grown_past_the_memory_bound_gets_a_fresh_engine(monkeypatch):
    from hiresmed_nb.cluster import memory
    from hiresmed_nb.cluster.devices import plan_this_machine
    from hiresmed_nb.cluster.slots_cluster import SlotsCluster

    slots = plan_this_machine(2, {}, [], cores=2)
    with SlotsCluster(slots) as engines:
        first = engines.engine_ids(slots)
        assert engines.recycle_outgrown(slots) is None  # the first readings are the baselines
        assert engines.engine_ids(slots) == first
        monkeypatch.setattr(memory, "RECYCLE_GROWTH_BYTES", -(10**12))  # any reading outgrows
        replaced = engines.recycle_outgrown(slots[:1])
        assert replaced.startswith("slots  localhost/0: engine memory grew by")
        assert replaced.endswith(", replaced")
        now = engines.engine_ids(slots)
        assert now[0] not in first and now[1] == first[1]
    assert processes_of_clusters_owned_by(os.getpid()) == []


def test_the_packing_benchmark_judges_its_goals():
    from hiresmed_nb.bench.packing import goals_of

    figures = {"utilisation": 0.8, "max_gap_seconds": 0.5, "slot_overlaps": ["one"]}
    met = {entry["name"]: entry["met"] for entry in goals_of(figures)}
    assert met == {
        "slot utilisation": False,
        "slot freed to next run started (max)": True,
        "runs sharing a slot at once (records)": False,
    }
