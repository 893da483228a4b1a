"""Warm clusters: engines kept between runs, in a kernel and in a study, and what ends them."""

import json
import os
import signal
import subprocess
import sys
import time

import papermill
import psutil
import pytest
from sessions import processes_of_this_session
from small_images import SMALL_SKIN
from test_tensorboard_logs import assert_logs_match_record

from hiresmed_nb import cluster, study
from hiresmed_nb.cluster import Placement, RankFailedError, command, memory
from hiresmed_nb.cluster.processes import marked_owner
from hiresmed_nb.params import project_root, validate
from hiresmed_nb.science import checkpoints

pytestmark = pytest.mark.distributed

# Four test images per class: rank 0 decodes each (1024 px) once, whatever the result compares.
TINY = {
    "DATA_DIR": SMALL_SKIN,
    "IMAGE_SIZE": 32,
    "IMAGES_PER_CLASS": 4,
    "TEST_IMAGES_PER_CLASS": 4,
    "BATCH_SIZE": 4,
    "EPOCHS": 2,
}
SAME_RESULT = (
    "weights_digest",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "confusion_matrix",
    "history",
)


def tiny_params(results_dir, **overrides) -> dict:
    return validate({**TINY, "MODE": "distributed", "RESULTS_DIR": str(results_dir), **overrides})


def only_cluster(pool: cluster.Pool) -> cluster.HorovodCluster | None:
    """The pool's one cluster, or None."""
    running = list(pool.clusters().values())
    assert len(running) <= 1
    return running[0] if running else None


def pids(ranks: list[dict]) -> list[int]:
    return [rank["pid"] for rank in ranks]


def processes_of_clusters_owned_by(pid: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            owner = marked_owner(process.environ())
            if owner is not None and owner.here and owner.pid == pid:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kernel_processes() -> list[psutil.Process]:
    """The Jupyter kernels this test session started (tests/sessions.py) that still run."""
    return processes_of_this_session("ipykernel_launcher")


def test_a_second_run_reuses_the_warm_engines_and_gives_the_record_of_a_fresh_cluster(
    tmp_path, skin_dir, monkeypatch
):
    first = cluster.run_training(tiny_params(tmp_path / "first"))
    warm = only_cluster(cluster.kernel_pool())
    assert warm.memory.baseline is None  # read when the engines are handed out again
    second = cluster.run_training(tiny_params(tmp_path / "second"))  # same placement: warm engines
    baseline = list(warm.memory.baseline)  # every engine's RSS after the first run
    assert len(baseline) == 2 and min(baseline) > 100 * memory.MB  # engines hold TensorFlow
    # Engines grown past the memory bound are replaced before the next run: with a bound below
    # any growth, the reading after the second run retires them.
    # (The first run's cluster was fresh: its record is the fresh cluster's, so the replacement
    # is asked for, not trained on again.)
    monkeypatch.setattr(memory, "RECYCLE_GROWTH_BYTES", -(10**12))
    replacement = cluster.kernel_pool().cluster(warm.placement)
    assert warm.memory.baseline == baseline and not warm.usable()  # the baseline stayed put
    assert only_cluster(cluster.kernel_pool()) is replacement is not warm
    assert not any(psutil.pid_exists(pid) for pid in pids(first))  # the outgrown ones stopped
    assert not set(replacement.engine_pids) & set(pids(first))
    assert pids(second) == pids(first)
    for key in SAME_RESULT:
        assert second[0][key] == first[0][key], key
    assert len({rank["weights_digest"] for rank in first + second}) == 1


def test_a_changed_placement_replaces_the_warm_cluster():
    pool, engine_pid = cluster.kernel_pool(), "__import__('os').getpid()"
    two = pool.run(Placement(2), eval, engine_pid)
    assert pool.run(Placement(2), eval, engine_pid) == two  # the same placement: warm engines
    one = pool.run(Placement(1), eval, engine_pid)
    assert len(one) == 1 and one[0] not in two
    assert not any(psutil.pid_exists(pid) for pid in two)  # the old cluster was stopped
    assert only_cluster(pool).engine_pids == one


def test_a_failed_run_stops_the_warm_cluster_and_the_next_run_starts_a_new_one():
    placement = Placement(2)
    failing = "1 // (1 - int(__import__('os').environ['HOROVOD_RANK']))"
    with pytest.raises(RankFailedError):
        cluster.kernel_pool().run(placement, eval, failing)
    assert only_cluster(cluster.kernel_pool()) is None
    assert cluster.kernel_pool().run(
        placement, eval, "__import__('os').environ['HOROVOD_SIZE']"
    ) == [
        "2",
        "2",
    ]


def horovod_world() -> dict:
    """A rank's stand-in for training, where attaching is under test: join Horovod and return
    this rank, the ranks' count and every rank's pid (one allgather over the ranks)."""
    import horovod.tensorflow as hvd

    hvd.init()  # Horovod: join the run's ranks, as training does.
    return {"rank": hvd.rank(), "size": hvd.size(), "pids": hvd.allgather_object(os.getpid())}


def assert_one_horovod_world(ranks: list[dict]) -> list[int]:
    """``ranks`` (results of :func:`horovod_world`) formed one world; returns its pids."""
    assert [(rank["rank"], rank["size"]) for rank in ranks] == [(0, 2), (1, 2)]
    assert ranks[0]["pids"] == ranks[1]["pids"] and len(set(ranks[0]["pids"])) == 2
    return ranks[0]["pids"]


def test_attaching_leaves_a_cluster_it_did_not_start_running(tmp_path):
    started = command.start_detached(2)
    cluster_file, engine_pids = started.cluster_file, started.engine_pids
    try:
        params = tiny_params(tmp_path, IPP_CLUSTER_FILE=cluster_file)
        assert params["N_RANKS"] == 2  # N_RANKS 0: the cluster's engines
        ranks = cluster.kernel_pool().run(params.placement, horovod_world)
        cluster.kernel_pool().close()  # what a kernel's exit does
        assert sorted(assert_one_horovod_world(ranks)) == sorted(engine_pids)
        assert all(psutil.pid_exists(pid) for pid in engine_pids)
    finally:
        command.stop(cluster_file)
    _, alive = psutil.wait_procs([psutil.Process(p) for p in engine_pids if psutil.pid_exists(p)])
    assert alive == []
    assert not os.path.exists(cluster_file)


SMOKE_DISTRIBUTED = {
    "STUDY": "warm",
    **TINY,
    "WEIGHTS": None,
    "MODE": "distributed",
    "N_RANKS": 2,
}


@pytest.mark.notebook
def test_a_study_retries_a_lost_rank_on_a_restarted_cluster_and_shares_it_with_the_next_run(
    tmp_path, monkeypatch, skin_dir
):
    """Also: runs resumed after a lost rank, after their kernel and engines were killed, and on
    warm engines, end with the weights and metrics of the same runs uninterrupted."""
    # The first run's rank 1 kills itself at the end of epoch 2 of 4, once (faults.py).
    marker = tmp_path / "rank-1-was-killed"
    monkeypatch.setenv("HIRESMED_INJECT_FAULT", f"kill-rank:1:1:{marker}")
    runs = study.expand({**SMOKE_DISTRIBUTED, "EPOCHS": 4, "SEEDS": [0, 1]})
    lines = []
    result = study.run_study(
        runs, tmp_path / "warm", report=False, progress=False, echo=lines.append
    )
    assert result.ok, result.failed
    assert marker.exists()
    first, second = (
        json.loads((tmp_path / "warm" / "runs" / f"{run.run_id}.json").read_text()) for run in runs
    )
    assert first["retry"]["first_error"].startswith("RankLostError")
    assert 1 <= first["retry"]["resumed_from_epoch"] <= 2
    assert first["resumed_from_epoch"] == first["retry"]["resumed_from_epoch"]
    assert len(first["history"]["loss"]) == 4  # resumed, not restarted or short
    # Its curves continue across the retry: one point per epoch, none repeated, none missing.
    assert_logs_match_record(tmp_path / "warm" / "runs", first)
    assert len({rank["weights_digest"] for rank in first["ranks"]}) == 1
    assert "retry" not in second
    # The retry's restarted cluster served the next run too: same engine processes.
    assert [r["pid"] for r in first["ranks"]] == [r["pid"] for r in second["ranks"]]
    assert processes_of_clusters_owned_by(os.getpid()) == []  # stopped when the study ended

    # A preempted node: the second run again, in a notebook whose rank 0 SIGKILLs the kernel
    # and every process of its cluster at the end of epoch 4, before that epoch's checkpoint.
    killed = validate({**runs[1].params, "RESULTS_DIR": str(tmp_path / "killed")})
    monkeypatch.setenv("HIRESMED_INJECT_FAULT", f"kill-run:3:{tmp_path / 'run-was-killed'}")
    with pytest.raises(Exception, match="(?i)kernel died"):
        papermill.execute_notebook(
            str(project_root() / "notebooks" / "01_train.ipynb"),
            str(tmp_path / "killed.ipynb"),
            parameters=dict(runs[1].params, RESULTS_DIR=killed["RESULTS_DIR"]),
            kernel_name="hiresmed",
            cwd=str(project_root()),
            progress_bar=False,
        )
    monkeypatch.delenv("HIRESMED_INJECT_FAULT")
    state = checkpoints.load_state(checkpoints.checkpoint_dir(killed), killed)
    assert state["epoch"] == 3

    # In this process: the first run uninterrupted on fresh engines, then the killed run rerun
    # with the same parameters on the same, now warm, engines.
    uninterrupted = cluster.run_training(
        validate({**runs[0].params, "RESULTS_DIR": str(tmp_path / "u")})
    )
    resumed = cluster.run_training(killed)
    assert pids(resumed) == pids(uninterrupted)
    assert resumed[0]["resumed_from_epoch"] == 3
    for key in SAME_RESULT:
        if key != "weights_digest":
            assert first[key] == uninterrupted[0][key], key  # retried after a lost rank
            assert resumed[0][key] == second[key], key  # killed, resumed on warm engines
    assert {r["weights_digest"] for r in first["ranks"] + uninterrupted} == {
        uninterrupted[0]["weights_digest"]
    }
    assert {r["weights_digest"] for r in second["ranks"] + resumed} == {
        second["ranks"][0]["weights_digest"]
    }


INTERRUPTED_STUDY = """
import signal, sys
# As at a terminal, whatever SIGINT disposition the test process inherited (a background job's
# is "ignore"): Ctrl-C raises KeyboardInterrupt.
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from hiresmed_nb import study
runs = study.expand({config!r})
slots = study.SlotRequest(slots={slots!r})  # None: one run at a time
study.run_study(runs, Path(sys.argv[1]), report=False, progress=False, slots=slots)
"""


RUNNER_BOUND_SECONDS = 900  # generous: the first tiny run trains on a shared 2-core machine


def lines_until_done(runner: subprocess.Popen, bound: float | None = None) -> list[str]:
    """The runner's lines up to its first ``done`` line (a run finished and recorded). Fails the
    test, after ending the runner and its engines, if it ends first or prints none in ``bound``
    seconds: a thread reads, so a silent runner cannot hang the test."""
    import queue
    import threading

    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        for line in runner.stdout:
            lines.put(line)
        lines.put(None)  # end of output: the runner closed it or ended

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    bound = RUNNER_BOUND_SECONDS if bound is None else bound
    deadline = time.monotonic() + bound
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line, why = None, f"printed no 'done' line in {bound:.0f} s"
        else:
            why = "ended before any run was done"
        if line is None:
            leftovers = processes_of_clusters_owned_by(runner.pid)
            runner.kill()  # the runner this test started, by its Popen (pid)
            runner.wait(timeout=60)
            for process in leftovers:  # its engines and controller, ours by their owner marker
                process.kill()
            psutil.wait_procs(leftovers, timeout=30)
            pytest.fail(f"the study {why}; its output:\n{''.join(seen)}")
        seen.append(line)
        if line.startswith("done"):
            return seen


def interrupt_after_first_run(config: dict, folder, slots: int | None = None) -> set[str]:
    """Run a study of ``config`` (on ``slots`` CPU slots) in a process of its own, press Ctrl-C
    there once its first run is done, and check that it failed and left no kernel or engine of
    its own running, and that every run it called done has its record (not a failure's).
    Returns the run ids called done."""
    kernels_before = {p.pid for p in kernel_processes()}
    script = INTERRUPTED_STUDY.format(config=config, slots=slots)
    runner = subprocess.Popen(
        [sys.executable, "-u", "-c", script, str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = lines_until_done(runner)  # the runner prints one line per finished run
    runner.send_signal(signal.SIGINT)  # Ctrl-C, while the next runs train
    rest, _ = runner.communicate(timeout=300)
    output += rest.splitlines(keepends=True)
    assert runner.returncode != 0
    leftovers = processes_of_clusters_owned_by(runner.pid)
    leftovers += [p for p in kernel_processes() if p.pid not in kernels_before]
    _, alive = psutil.wait_procs(leftovers, timeout=30)
    assert alive == []
    done = {line.split()[1] for line in output if line.startswith("done")}
    for run_id in done:
        record = folder / "runs" / f"{run_id}.json"
        assert record.is_file(), f"{run_id} was called done but has no record"
        assert not (folder / "runs" / f"{run_id}.failed.json").exists()
        assert json.loads(record.read_text())["run_id"] == run_id
    return done


@pytest.mark.notebook
def test_an_interrupted_study_leaves_nothing_running(tmp_path, skin_dir):
    # It checks that the run called done has its record, and that nothing is left running.
    interrupt_after_first_run({**SMOKE_DISTRIBUTED, "EPOCHS": 1, "SEEDS": [0, 1, 2]}, tmp_path)


def test_a_cluster_started_by_ipcluster_itself_can_be_attached(tmp_path):
    """What the Slurm recipe does inside an allocation (with the local launcher here): its
    engines become one run's Horovod ranks. Training on an attached cluster: test_slurm.py and
    test_multihost.py."""
    ipcluster = [sys.executable, "-m", "ipyparallel.cluster"]
    profile = f"--profile-dir={tmp_path / 'profile'}"
    subprocess.run(
        [*ipcluster, "start", profile, "-n", "2", "--ip=127.0.0.1", "--daemonize"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:
        [cluster_file] = (tmp_path / "profile" / "security").glob("cluster-*.json")
        params = tiny_params(tmp_path / "runs", IPP_CLUSTER_FILE=str(cluster_file))
        assert params["N_RANKS"] == 2  # N_RANKS 0: the cluster's engines
        ranks = cluster.kernel_pool().run(params.placement, horovod_world)
        cluster.kernel_pool().close()
        engine_pids = assert_one_horovod_world(ranks)
        assert all(psutil.pid_exists(pid) for pid in engine_pids)  # not ours to stop
    finally:
        subprocess.run([*ipcluster, "stop", profile], capture_output=True, timeout=300)
