"""Distributed runs across hosts, on simulated hosts: network namespaces on a bridge, each with
its own sshd and host name (hiresmed_nb.simhosts). The root filesystem is shared, so the
project's .venv and data are at the same path on every host, as the README asks of real hosts.

Every test tears its hosts down (the fixture), and checks that nothing it started still runs in
any of them. Runs are tiny: 32 px, 4 training and 4 test images per class, 1 epoch.
"""

import json
import os
import subprocess
import sys

import psutil
import pytest
from simhosts import HostSpec
from test_cluster import TEMPORARY_FILE
from test_train_notebook import TINY, execute

from hiresmed_nb import cluster, study
from hiresmed_nb.cluster import HorovodCluster, Placement, RankLostError, parse_hosts
from hiresmed_nb.cluster.devices import available_cores
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path, validate
from hiresmed_nb.study.occupancy import slot_overlaps

pytestmark = pytest.mark.multihost

PROFILE = resolve_path(cluster.IPP_PROFILE_DIR)
# No test here checks accuracy: rank 0 evaluates 4 images per class, not the whole test set.
SMALL_TEST_SET = {"TEST_IMAGES_PER_CLASS": 4}


PLACEMENT = (
    "[__import__('os').environ[k] for k in "
    "('HOROVOD_HOSTNAME', 'HOROVOD_LOCAL_RANK', 'HOROVOD_CROSS_RANK', 'HOROVOD_GLOO_IFACE')]"
)


def on_path(monkeypatch, sim) -> None:
    """Let plain `ssh hostA` reach the simulated hosts, from here and from kernels started here."""
    monkeypatch.setenv("PATH", f"{sim.bin_dir}{os.pathsep}{os.environ['PATH']}")


def nothing_left(sim) -> None:
    for alias in sim.aliases:
        assert sim.wait_for_no_leftovers(alias) == {}, f"still running on {alias}"


def tiny_run(tmp_path, hosts: str) -> list[dict]:
    params = validate(
        {
            **TINY,
            **SMALL_TEST_SET,
            "MODE": "distributed",
            "HOSTS": hosts,
            "RESULTS_DIR": str(tmp_path / "runs"),
        }
    )
    try:
        return cluster.run_training(params)
    finally:
        cluster.kernel_pool().close()


@pytest.mark.notebook
def test_a_notebook_runs_one_rank_on_each_of_two_hosts_given_by_hosts(
    simulated_hosts, monkeypatch, tmp_path, skin_dir
):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    on_path(monkeypatch, sim)
    record, _ = execute(tmp_path, **SMALL_TEST_SET, MODE="distributed", HOSTS="hostA:1,hostB:1")
    ranks = record["ranks"]
    assert record["n_ranks"] == 2
    assert [rank["hostname"] for rank in ranks] == ["hostA", "hostB"]
    assert [rank["host"] for rank in ranks] == ["hostA", "hostB"]
    assert [(rank["local_rank"], rank["local_size"]) for rank in ranks] == [(0, 1), (0, 1)]
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]
    assert record["data_locality"]["ok"] is True
    nothing_left(sim)  # the kernel's exit stopped the engines on both hosts
    # The hosts' helpers wrote into their own folder, never into the project's profile.
    assert list(PROFILE.glob("ipython*config.py")) == []


def test_two_ranks_per_host_listen_only_on_the_cluster_address_and_train_to_the_same_weights(
    simulated_hosts, monkeypatch, tmp_path, skin_dir
):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    on_path(monkeypatch, sim)
    params = validate(
        {
            **TINY,
            **SMALL_TEST_SET,
            # Two optimizer steps: 16 images on 4 ranks of batch 4 make one step an epoch, and
            # Horovod broadcasts rank 0's weights after the first step, equal with or without
            # averaged gradients; the second step's weights are equal only if averaged.
            "EPOCHS": 2,
            "MODE": "distributed",
            "HOSTS": "hostA:2,hostB:2",
            "RESULTS_DIR": str(tmp_path),
        }
    )
    try:
        running = cluster.kernel_pool().cluster(Placement.from_params(params))
        controller = [
            p
            for p in cluster.cluster_processes(running.cluster_id)
            if "controller" in " ".join(p.cmdline())
        ]
        listening = {
            conn.laddr.ip
            for process in controller
            for conn in process.net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
        assert running.rendezvous_addr == sim.head_address
        # The cluster-facing address (and loopback for its own processes), not every interface.
        assert sim.head_address in listening
        assert listening <= {sim.head_address, "127.0.0.1"}
        placed = running.run(eval, PLACEMENT)
        ranks = cluster.run_training(params)  # the same placement: on these engines
        assert [r["pid"] for r in ranks] == running.engine_pids
        left_files = running.run(eval, TEMPORARY_FILE)
    finally:
        cluster.kernel_pool().close()
    folder = str(cluster.processes.cluster_folder(running.cluster_id))
    assert [os.path.dirname(path) for path in left_files] == [folder] * 4  # each host's TMPDIR
    for host, path in zip(["hostA", "hostA", "hostB", "hostB"], left_files, strict=True):
        assert sim.run(host, f"test -e {path} && echo left || echo removed").stdout == "removed\n"
    assert placed == [
        ["hostA", "0", "0", "eth0"],
        ["hostA", "1", "0", "eth0"],
        ["hostB", "0", "1", "eth0"],
        ["hostB", "1", "1", "eth0"],
    ]
    assert [(r["host"], r["local_rank"], r["local_size"]) for r in ranks] == [
        ("hostA", 0, 2),
        ("hostA", 1, 2),
        ("hostB", 0, 2),
        ("hostB", 1, 2),
    ]
    assert len({r["weights_digest"] for r in ranks}) == 1
    nothing_left(sim)


def test_hosts_sharing_one_host_name_run_under_their_addresses(
    simulated_hosts, monkeypatch, tmp_path, skin_dir
):
    sim = simulated_hosts(HostSpec("hostA", "node"), HostSpec("hostB", "node"))
    on_path(monkeypatch, sim)
    ranks = tiny_run(tmp_path, "hostA:1,hostB:1")
    assert [r["hostname"] for r in ranks] == ["node", "node"]
    # Not folded into one host with local ranks 0 and 1: each is its own host, by address.
    assert [r["host"] for r in ranks] == [sim.address("hostA"), sim.address("hostB")]
    assert [(r["local_rank"], r["local_size"]) for r in ranks] == [(0, 1), (0, 1)]
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]
    nothing_left(sim)


def test_hosts_whose_name_resolves_to_127_0_1_1_are_refused_with_the_fix(
    simulated_hosts, monkeypatch, tmp_path, skin_dir
):
    sim = simulated_hosts(
        HostSpec("hostA", hosts_file="debian"), HostSpec("hostB", hosts_file="debian")
    )
    on_path(monkeypatch, sim)
    # Gloo would advertise 127.0.1.1 to the other rank and hvd.init() would abort: instead, one
    # named error before any rank joins Horovod (measured: also with one rank per host).
    with pytest.raises(HiresmedError, match=r"host hostA: .*127\.0\.1\.1.*/etc/hosts"):
        tiny_run(tmp_path, "hostA:1,hostB:1")
    nothing_left(sim)


def test_a_notebook_attaches_to_a_cluster_started_beforehand_and_leaves_it_running(
    simulated_hosts, monkeypatch, tmp_path, skin_dir
):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    on_path(monkeypatch, sim)
    command = [sys.executable, "-m", "hiresmed_nb", "cluster"]
    started = subprocess.run(
        [*command, "start", "--hosts", "hostA:1,hostB:1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    cluster_file = started.stdout.strip()
    try:
        record, _ = execute(
            tmp_path, **SMALL_TEST_SET, MODE="distributed", IPP_CLUSTER_FILE=cluster_file
        )
        assert [rank["hostname"] for rank in record["ranks"]] == ["hostA", "hostB"]
        assert record["params"]["N_RANKS"] == 2  # N_RANKS 0: the cluster's engines
        # The notebook did not start this cluster, so its end stopped nothing.
        for alias in sim.aliases:
            assert any(
                "ipyparallel.engine" in cmd for cmd in sim.leftover_processes(alias).values()
            )
        assert json.loads(open(cluster_file).read())["cluster"]["cluster_id"]
    finally:  # under `timeout`, whose command line names the cluster file too
        stopped = subprocess.run(
            ["timeout", "240", *command, "stop", cluster_file],
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert stopped.returncode == 0, stopped.stderr
    for alias in sim.aliases:  # it says what it stopped on each host
        assert f"{alias}: " in stopped.stderr
    nothing_left(sim)


def test_an_engine_killed_on_another_host_is_named_with_its_last_output(
    simulated_hosts, monkeypatch, skin_dir
):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    on_path(monkeypatch, sim)
    last_words = (
        "(__import__('os').write(2, b'rank 1 on hostB says goodbye\\n'), "
        "__import__('os').kill(__import__('os').getpid(), 9)) "
        "if __import__('os').environ['HOROVOD_RANK'] == '1' else "
        "__import__('horovod.tensorflow', fromlist=['init']).init()"
    )
    placement = Placement(2, hosts=tuple(parse_hosts("hostA:1,hostB:1")))
    with pytest.raises(RankLostError) as raised:
        with HorovodCluster(placement=placement) as running:
            running.run(eval, last_words)
    assert raised.value.rank == 1 and raised.value.host == "hostB"
    assert "rank 1 on hostB says goodbye" in raised.value.output_tail
    assert "says goodbye" in str(raised.value)
    nothing_left(sim)


@pytest.mark.notebook
def test_a_packed_study_on_two_hosts_runs_serial_runs_on_both_at_once(
    simulated_hosts, monkeypatch, tmp_path, skin_dir
):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    on_path(monkeypatch, sim)
    runs = study.expand(
        {**TINY, "STUDY": "hosts", "TEST_IMAGES_PER_CLASS": 4, "MODE": "serial", "SEEDS": [0, 1]}
    )
    lines: list[str] = []
    result = study.run_study(
        runs,
        tmp_path,
        report=False,
        progress=False,
        echo=lines.append,
        slots=study.SlotRequest(hosts="hostA:1,hostB:1"),
    )
    assert result.ok, result.failed
    # Both notebooks were handed a slot before either ended: one on each host at once.
    started = [line for line in lines if line.startswith("slots  ") and " on " in line]
    assert len(started) == 2 and started[1].endswith("(2/2 slots busy)"), lines
    records = [json.loads((tmp_path / "runs" / f"{run.run_id}.json").read_text()) for run in runs]
    assert slot_overlaps(records) == []
    ranks = [record["ranks"][0] for record in records]
    assert sorted(rank["hostname"] for rank in ranks) == ["hostA", "hostB"]
    assert sorted(rank["slot"]["key"] for rank in ranks) == ["hostA/0", "hostB/0"]
    # The hosts told their cores over ssh: each single slot has its host's whole share.
    assert all(rank["slot"]["threads"] == available_cores() for rank in ranks)
    nothing_left(sim)  # the study stopped the slots' engines on both hosts
