"""Faults, interrupts, resume, bad input (fuzzed), reproducibility and network exposure."""

import json
import os
import shutil
import signal
import stat
import string
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from small_images import SMALL_SKIN

from hiresmed_nb import cluster, study
from hiresmed_nb.cluster import HorovodCluster, RankLostError
from hiresmed_nb.cluster.errors import RunTimeoutError
from hiresmed_nb.cluster.undertaker import reap_orphans
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import PARAMETERS, resolve_path, validate
from hiresmed_nb.science import checkpoints, data, records, training

TINY = {
    "DATA_DIR": SMALL_SKIN,
    "IMAGE_SIZE": 32,
    "IMAGES_PER_CLASS": 4,
    "TEST_IMAGES_PER_CLASS": 4,
    "BATCH_SIZE": 4,
    "EPOCHS": 3,
}
JOIN_HOROVOD = "__import__('horovod.tensorflow', fromlist=['init']).init()"


def tiny_params(tmp_path, **overrides):
    return validate({**TINY, "RESULTS_DIR": str(tmp_path / "runs"), **overrides})


# Faults -------------------------------------------------------------------------------------


@pytest.mark.distributed
def test_a_rank_killed_before_joining_is_named_and_nothing_is_left(skin_dir):
    kill_rank_1 = (
        "__import__('os').kill(__import__('os').getpid(), 9) "
        f"if __import__('os').environ['HOROVOD_RANK'] == '1' else {JOIN_HOROVOD}"
    )
    with pytest.raises(RankLostError) as raised:
        with HorovodCluster(2) as running:
            running.run(eval, kill_rank_1)
    assert raised.value.rank == 1
    assert "rank 1" in str(raised.value)
    assert cluster.cluster_processes(running.cluster_id) == []


@pytest.mark.distributed
def test_a_hung_rank_ends_the_run_with_the_time_limit_error_and_nothing_is_left(
    tmp_path, skin_dir, monkeypatch
):
    # Rank 1 waits for ever after its first epoch; rank 0 then waits in the next allreduce. The
    # engines import TensorFlow before the timed run, so its limit needs to cover only a tiny
    # model's first epoch (a few seconds here) before the hang.
    hanging = tmp_path / "rank-1-hangs"
    monkeypatch.setenv("HIRESMED_INJECT_FAULT", f"hang-rank:1:0:{hanging}")
    config = tiny_params(tmp_path, MODE="distributed", N_RANKS=2, EPOCHS=2, RUN_TIMEOUT=30)
    split = training.make_split(config)
    with pytest.raises(RunTimeoutError) as raised:
        with HorovodCluster(2) as running:
            running.run(eval, "__import__('tensorflow') and None")
            running.run(training.train, config, (), split)
    assert hanging.exists(), "the run's limit passed before rank 1 reached its hang"
    assert raised.value.seconds == 30
    assert "RUN_TIMEOUT" in str(raised.value)
    assert running.broken
    assert cluster.cluster_processes(running.cluster_id) == []
    assert not any(psutil.pid_exists(pid) for pid in running.engine_pids)
    assert not (tmp_path / "runs" / f"{config.run_id}.json").exists()


# A rank lost mid-training, the run retried from its checkpoint on a restarted cluster:
# tests/test_warm.py (the study's retry).


@pytest.mark.distributed
def test_an_interrupt_stops_every_rank_and_the_next_cluster_is_undisturbed(monkeypatch, tmp_path):
    # Each rank says it started, then waits for ever: only an interrupt ends its task.
    wait_for_ever = (
        f"[open({str(tmp_path)!r} + '/started-' + __import__('os').environ['HOROVOD_RANK'], 'w')"
        ".close(), __import__('threading').Event().wait()]"
    )

    def interrupted_once_every_rank_runs(self, futures, timeout=None):  # Ctrl-C, ranks busy
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("started-*"))) < 2:
            assert time.monotonic() < deadline, "the ranks never started their task"
            time.sleep(0.05)
        raise KeyboardInterrupt

    with HorovodCluster(2) as first:
        with monkeypatch.context() as patch:
            patch.setattr(HorovodCluster, "_wait", interrupted_once_every_rank_runs)
            with pytest.raises(KeyboardInterrupt):
                first.run(eval, wait_for_ever)
        # The interrupt ended every rank's task: each engine, still running, takes new work.
        answered = [view.apply_async(os.getpid).get(timeout=30) for view in first.engines.views]
        assert answered == first.engine_pids
    assert cluster.cluster_processes(first.cluster_id) == []
    assert not any(psutil.pid_exists(pid) for pid in first.engine_pids)
    with HorovodCluster(2) as second:
        assert second.run(eval, "__import__('os').environ['HOROVOD_SIZE']") == ["2", "2"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, skin_dir) -> dict:
    """The serial run of ``TINY`` trained once, start to end: the twin every serial test here
    compares against."""
    return training.train(tiny_params(tmp_path_factory.mktemp("uninterrupted")))


@pytest.mark.trains
def test_an_interrupted_serial_run_resumes_with_the_same_record_fields(tmp_path, uninterrupted):
    """Also: a checkpoint of other parameters under the same run id is not resumed."""
    from faults import InterruptAtEpoch

    params = tiny_params(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        training.train(params, [InterruptAtEpoch(epoch=1)])
    directory = checkpoints.checkpoint_dir(params)
    assert checkpoints.load_state(directory, params)["epoch"] == 2
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith("epoch-0001")) == []
    other = tiny_params(tmp_path, BATCH_SIZE=2)  # same run id, other parameters
    assert checkpoints.checkpoint_dir(other) == directory
    assert checkpoints.load_state(directory, other) is None

    resumed = training.train(params)
    fresh = uninterrupted
    assert resumed["resumed_from_epoch"] == 2 and fresh["resumed_from_epoch"] == 0
    assert set(resumed) == set(fresh)
    assert len(resumed["history"]["loss"]) == len(fresh["history"]["loss"]) == 3
    assert resumed["history"] == fresh["history"]  # the resumed epoch too (tests/test_resume.py)
    assert resumed["weights_digest"] == fresh["weights_digest"]


def test_unwritable_or_full_results_dir_fails_before_training(tmp_path, monkeypatch):
    params = tiny_params(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(HiresmedError, match="RESULTS_DIR .* is not writable"):
        records.check_results_dir(blocker / "runs", params, overwrite=False)
    monkeypatch.setattr(records.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})())
    with pytest.raises(HiresmedError, match="RESULTS_DIR .* has only 0 MB free"):
        records.check_results_dir(tmp_path / "runs", params, overwrite=False)


# Reproducibility ----------------------------------------------------------------------------


@pytest.mark.trains
def test_same_parameters_and_seed_give_the_same_serial_metrics(tmp_path, uninterrupted):
    first, again = uninterrupted, training.train(tiny_params(tmp_path))
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "history"):
        assert first[key] == again[key], key
    assert first["weights_digest"] == again["weights_digest"]


# Distributed runs with the same seed give the same record on fresh and on warm clusters:
# tests/test_warm.py (first test).


# Network exposure ---------------------------------------------------------------------------


def listening_addresses(pids: set[int]) -> set[str]:
    return {
        conn.laddr.ip
        for pid in pids
        for conn in psutil.Process(pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    }


@pytest.mark.distributed
def test_the_run_listens_on_loopback_only_and_connection_files_are_private():
    with HorovodCluster(2) as running:
        pids = {os.getpid()} | {p.pid for p in cluster.cluster_processes(running.cluster_id)}
        controller_and_kernel = listening_addresses(pids)
        # During a run this kernel also holds the rendezvous server.
        server, port = cluster.start_rendezvous(running.rendezvous_addr)
        try:
            during_run = listening_addresses({os.getpid()})
        finally:
            cluster.stop_rendezvous(server)
        connection_files = list((running.profile_dir / "security").glob(f"*{running.cluster_id}*"))
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in connection_files}
    assert controller_and_kernel, "expected the controller to listen"
    assert controller_and_kernel | during_run <= {"127.0.0.1", "::1"}
    assert port > 0 and during_run
    assert modes
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes


# Bad input, fuzzed --------------------------------------------------------------------------

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=5), max_size=3),
)
names = st.one_of(
    st.sampled_from(sorted(PARAMETERS)), st.text(string.ascii_uppercase + "_", max_size=12)
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, values, max_size=6))
def test_fuzzed_parameters_fail_only_with_a_clear_project_error(candidate):
    try:
        validate(candidate)
    except HiresmedError as error:
        assert str(error) and "\n" not in str(error)


yaml_documents = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=st.one_of(yaml_documents, st.dictionaries(names, values, max_size=5)))
def test_fuzzed_parameter_files_fail_only_with_a_clear_project_error(tmp_path, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        study.expand(study.load_param_files([path]))
    except HiresmedError as error:
        assert str(error)


layouts = st.lists(
    st.tuples(
        st.sampled_from(["images", "images/a", "images/b", "images_001/images", "other"]),
        st.sampled_from(["x.png", "y.jpg", "Data_Entry_2017.csv", "test_list.txt", "z.txt"]),
        st.sampled_from(["", "Image Index,Finding Labels,Patient ID\nx.png,A,1\n", "\x00garbage"]),
    ),
    max_size=6,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(files=layouts, dataset=st.sampled_from(["sd198", "nih", "synthetic-skin", "synthetic-xray"]))
def test_fuzzed_folders_fail_only_with_a_clear_project_error(tmp_path_factory, files, dataset):
    root = tmp_path_factory.mktemp("layout")
    for folder, name, content in files:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_text(content)
    try:
        data.make_split(dataset, root, images_per_class=1, seed=0)
    except HiresmedError as error:
        assert str(error)


def test_records_are_written_atomically_and_never_half(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    records.write_json_atomic({"accuracy": 0.5}, target)

    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(records.json, "dump", broken_dump)
    with pytest.raises(OSError):
        records.write_json_atomic({"accuracy": 0.9}, target)
    assert json.loads(target.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert np.isclose(json.loads(target.read_text())["accuracy"], 0.5)


# Per-site mode -------------------------------------------------------------------------------


def make_sites(skin_dir, root, per_class=24):
    """Two site folders in the SD-198 layout, each linking its own disjoint images."""
    sites = []
    for site in range(2):
        for folder in sorted((skin_dir / "images").iterdir()):
            target = root / f"site{site}" / "images" / folder.name
            target.mkdir(parents=True)
            for image in sorted(folder.iterdir())[site * per_class : (site + 1) * per_class]:
                (target / image.name).symlink_to(image)
        sites.append(str(root / f"site{site}"))
    return sites


def test_site_dirs_need_one_folder_per_distributed_rank(tmp_path):
    with pytest.raises(HiresmedError, match="SITE_DIRS names 1 folders"):
        validate({"SITE_DIRS": ["a"], "MODE": "distributed", "N_RANKS": 2})
    with pytest.raises(HiresmedError, match="MODE='distributed'"):
        validate({"SITE_DIRS": ["a", "b"], "MODE": "serial"})
    assert validate({"SITE_DIRS": []})["SITE_DIRS"] is None


@pytest.mark.distributed
def test_in_per_site_mode_each_rank_reads_only_its_own_site(tmp_path, skin_dir):
    sites = make_sites(Path(SMALL_SKIN), tmp_path)
    params = tiny_params(
        tmp_path, MODE="distributed", N_RANKS=2, SITE_DIRS=sites, DATA_DIR="", EPOCHS=1
    )
    ranks = cluster.run_training(params)
    head = ranks[0]
    assert head["n_train"] == head["n_test"] == 2 * 4 * 4  # test: capped at 4 per class
    assert sum(map(sum, head["confusion_matrix"])) == head["n_test"]
    for rank, site in zip(ranks, sites, strict=True):
        assert rank["train_files"] and all(f.startswith(site + "/") for f in rank["train_files"])
        assert set(rank["opened_files"]) == set(rank["train_files"])
    assert records.data_locality(ranks, head["n_train"])["ok"]
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]


# As root, the orphan and the cluster that reaps it run under a host name of their own
# (`unshare --uts`): the reapers of other workers' clusters judge only their own host's owners, so
# they leave this orphan alone and these tests need not run alone. Elsewhere they do (`orphans`).
ORPHAN_HOST = f"orphan-{os.getpid()}"  # its own per test process: no other test reaps there
OWN_HOST = os.geteuid() == 0 and shutil.which("unshare") is not None
alone_unless_own_host = pytest.mark.distributed if OWN_HOST else pytest.mark.orphans


def on_the_orphans_host(code: str) -> list[str]:
    """The command running Python ``code`` on the orphan's host (see :data:`OWN_HOST`)."""
    if not OWN_HOST:
        return [sys.executable, "-c", code]
    named = f"import socket; socket.sethostname({ORPHAN_HOST!r})\n{code}"
    return ["unshare", "--uts", sys.executable, "-c", named]


REAP_THE_ORPHANS_HOST = """
from hiresmed_nb.cluster import IPP_PROFILE_DIR
from hiresmed_nb.cluster.undertaker import reap_orphans
from hiresmed_nb.params import resolve_path
reap_orphans(resolve_path(IPP_PROFILE_DIR))
"""


def reap_what_a_failure_left() -> None:
    """Whatever the test's outcome, nothing of its orphan is left: on its own host only that
    host's reaper would ever stop it (its processes and its files in the profile folder)."""
    if OWN_HOST:
        subprocess.run(on_the_orphans_host(REAP_THE_ORPHANS_HOST), check=True, timeout=120)


ORPHANING_KERNEL = """
import sys
from hiresmed_nb.cluster import HorovodCluster
cluster = HorovodCluster(2)
cluster.start()
print(cluster.cluster_id, cluster.cluster_file, flush=True)
sys.stdin.read()  # hold the cluster until this process is killed
"""


def kill_a_kernel_holding_a_cluster(
    undertaker_too: bool = False,
) -> tuple[str, list[subprocess.Popen]]:
    """Start a cluster in a child process, SIGKILL the child (no clean-up runs); return the id
    and two bystanders that name the cluster without being its own (``tail -f`` of its cluster
    file and of an engine's log), which the caller must end.

    ``undertaker_too``: first SIGKILL the undertaker that would stop the cluster."""
    from test_stop import engine_log, tail_bystanders

    kernel = subprocess.Popen(
        on_the_orphans_host(ORPHANING_KERNEL),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    orphan_id, cluster_file = kernel.stdout.readline().split()
    assert cluster.cluster_processes(orphan_id), "the cluster should be running"
    bystanders = tail_bystanders(cluster_file, engine_log(orphan_id))
    if undertaker_too:
        for process in cluster.cluster_processes(orphan_id):
            if cluster.describe_process(process).startswith("undertaker"):
                process.send_signal(signal.SIGKILL)  # a zombie of the kernel from here on
    kernel.kill()  # like papermill, a kernel restart or the OOM killer: no clean-up runs
    kernel.wait()
    return orphan_id, bystanders


def end_bystanders(bystanders: list[subprocess.Popen]) -> list[bool]:
    """Whether each bystander was still running; ends them."""
    running = [process.poll() is None for process in bystanders]
    for process in bystanders:
        process.kill()
        process.wait()
    return running


@alone_unless_own_host
@pytest.mark.distributed
def test_a_killed_kernels_cluster_is_stopped_by_its_undertaker_which_spares_bystanders():
    orphan_id, bystanders = kill_a_kernel_holding_a_cluster()
    try:
        _, still_running = psutil.wait_procs(cluster.cluster_processes(orphan_id), timeout=60)
    finally:
        bystanders_running = end_bystanders(bystanders)
        reap_what_a_failure_left()
    assert still_running == []  # the undertaker too, once it has stopped the cluster
    assert all(bystanders_running)


NEXT_CLUSTER = """
from hiresmed_nb.cluster import HorovodCluster
with HorovodCluster(2) as running:
    print(running.run(eval, "1 + 1"))
"""


@alone_unless_own_host
@pytest.mark.distributed
def test_a_killed_kernels_cluster_is_reaped_by_the_next_one_if_its_undertaker_died_too():
    orphan_id, bystanders = kill_a_kernel_holding_a_cluster(undertaker_too=True)
    try:
        assert cluster.cluster_processes(orphan_id), "without its undertaker the cluster lingers"
        if OWN_HOST:  # what another worker's cluster start does here: it judges its own host's
            reap_orphans(resolve_path(cluster.IPP_PROFILE_DIR))
            assert cluster.cluster_processes(orphan_id), "a reaper of another host stopped it"
        # The next cluster of the orphan's host, started as a user starts one.
        ran = subprocess.run(
            on_the_orphans_host(NEXT_CLUSTER), capture_output=True, text=True, timeout=300
        )
        assert ran.returncode == 0 and ran.stdout.strip() == "[2, 2]", ran.stderr[-3000:]
        left = cluster.cluster_processes(orphan_id)
    finally:
        bystanders_running = end_bystanders(bystanders)
        reap_what_a_failure_left()
    assert left == []
    assert all(bystanders_running)
