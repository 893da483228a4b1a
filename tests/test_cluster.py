"""Rank placement, GPU selection, and a real 2-rank cluster: results, errors, clean stop."""

import json
import logging
import os
import shlex
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sgd_steps

from hiresmed_nb import cluster
from hiresmed_nb.cluster import HorovodCluster, RankFailedError, assign_ranks, engine_tasks, memory
from hiresmed_nb.cluster.devices import available_cores
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.science import training


def test_ranks_on_two_hosts_get_horovods_local_and_cross_numbers():
    slots = assign_ranks(["a", "a", "b", "b", "b"])
    assert [s.local_rank for s in slots] == [0, 1, 0, 1, 2]
    assert [s.local_size for s in slots] == [2, 2, 3, 3, 3]
    assert [s.cross_rank for s in slots] == [0, 0, 1, 1, 0]
    assert [s.cross_size for s in slots] == [2, 2, 2, 2, 1]
    assert {s.size for s in slots} == {5}


def test_environment_carries_rank_and_rendezvous():
    slot = assign_ranks(["localhost", "localhost"])[1]
    env = cluster.horovod_environment(slot, "127.0.0.1", 4242, "lo", threads=1)
    assert env["HOROVOD_RANK"] == "1" and env["HOROVOD_SIZE"] == "2"
    assert env["HOROVOD_GLOO_RENDEZVOUS_PORT"] == "4242"
    assert env["HOROVOD_CONTROLLER"] == env["HOROVOD_CPU_OPERATIONS"] == "gloo"
    assert env["HOROVOD_GLOO_IFACE"] == "lo"


def test_threads_are_split_between_ranks_on_a_host():
    assert cluster.threads_per_rank(8, 2) == 4
    assert cluster.threads_per_rank(2, 4) == 1


def test_each_rank_selects_the_gpu_of_its_local_rank():
    gpus = ["gpu0", "gpu1", "gpu2"]
    assert [training.select_gpu(gpus, r) for r in range(3)] == gpus
    assert training.select_gpu([], 0) is None
    with pytest.raises(HiresmedError, match="local rank 3 has no GPU"):
        training.select_gpu(gpus, 3)


def test_pin_gpu_turns_on_memory_growth_and_hides_other_gpus(monkeypatch):
    import tensorflow as tf

    growth, visible = [], []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["g0", "g1"])
    monkeypatch.setattr(
        tf.config.experimental, "set_memory_growth", lambda gpu, on: growth.append((gpu, on))
    )
    monkeypatch.setattr(
        tf.config, "set_visible_devices", lambda gpu, kind: visible.append((gpu, kind))
    )
    training.pin_gpu(1)
    assert growth == [("g0", True), ("g1", True)]
    assert visible == [("g1", "GPU")]


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


RANK_AND_RENDEZVOUS = (
    "[__import__('os').environ[k] for k in "
    "('HOROVOD_RANK', 'HOROVOD_GLOO_RENDEZVOUS_ADDR', 'HOROVOD_GLOO_RENDEZVOUS_PORT')]"
)


# What TensorFlow's autograph does on an engine: a file in the temporary folder, left behind
# (it removes its files only at a clean exit, which a stopped engine never has).
TEMPORARY_FILE = "__import__('tempfile').mkstemp(suffix='.py')[1]"


SLOT_AND_GPU = (
    "[__import__('os').environ.get(k) for k in "
    "('HIRESMED_SLOT', 'CUDA_VISIBLE_DEVICES', 'TF_NUM_INTRAOP_THREADS')]"
)


@pytest.mark.distributed
def test_cluster_runs_on_every_rank_then_leaves_nothing_behind():
    with HorovodCluster(2) as running:
        first = running.run(eval, RANK_AND_RENDEZVOUS)
        second = running.run(eval, RANK_AND_RENDEZVOUS)
        left_files = [Path(path) for path in running.run(eval, TEMPORARY_FILE)]
        slots = running.run(eval, SLOT_AND_GPU)
        pids = running.engine_pids
    # Each rank's engine is a slot, started with its GPU (none here) and thread share.
    share = str(cluster.threads_per_rank(available_cores(), 2))
    assert sorted(slots) == [["localhost/0", "", share], ["localhost/1", "", share]]
    folder = cluster.processes.cluster_folder(running.cluster_id)
    assert [path.parent for path in left_files] == [folder, folder]  # the cluster's own TMPDIR
    assert not folder.exists()  # removed with what the engines left in it
    assert [rank for rank, _, _ in first] == ["0", "1"]
    assert {addr for _, addr, _ in first + second} == {"127.0.0.1"}  # loopback only
    # Every run has its own rendezvous server on a new port, closed when the run ends.
    ports = {int(port) for _, _, port in first + second}
    assert len(ports) == 2
    assert not any(port_is_open(port) for port in ports)
    assert len(set(pids)) == 2
    assert cluster.cluster_processes(running.cluster_id) == []


def registered_engines(started: Any) -> int:
    """How many engines the controller of ``started`` (an ipyparallel Cluster) has registered,
    from the engine state file the controller rewrites at each registration."""
    state = Path(started.profile_dir) / "log" / f"engines{started.cluster_id}.json"
    try:
        return len(json.loads(state.read_text())["engines"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["ranks", "slots"])
def test_a_start_counts_every_engine_however_late_its_client_subscribes(monkeypatch, kind):
    """ipyparallel's client learns of engines from the controller's answer when it connects,
    then only from notifications: an engine that registers in between is in neither (seen once:
    a 4-engine start counted 3 for 120 s). Here a client's subscriptions wait, once engines are
    started, until the controller has registered both: a start whose client connects while
    its engines register (a run's ranks, or a study's slots) waits out REGISTRATION_SECONDS."""
    import ipyparallel
    import zmq
    from ipyparallel import util

    from hiresmed_nb.cluster import engines, slots_cluster
    from hiresmed_nb.cluster.devices import plan_this_machine

    started: list[Any] = []  # clusters whose engines were started
    start_engines, connect = ipyparallel.Cluster.start_engines, util.connect

    async def start_engines_and_note(self, *args, **kwargs):
        result = await start_engines(self, *args, **kwargs)
        started.append(self)
        return result

    def subscribe_once_registered(socket, url, **kwargs):
        if socket.socket_type == zmq.SUB and started:
            deadline = time.monotonic() + 60
            while registered_engines(started[-1]) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        return connect(socket, url, **kwargs)

    monkeypatch.setattr(ipyparallel.Cluster, "start_engines", start_engines_and_note)
    monkeypatch.setattr(util, "connect", subscribe_once_registered)
    for module in (engines, slots_cluster):
        monkeypatch.setattr(module, "REGISTRATION_SECONDS", 30)  # the bound when it fails
    if kind == "ranks":
        with HorovodCluster(2) as running:
            assert len(set(running.run(os.getpid))) == 2
            assert registered_engines(started[-1]) == 2
    else:
        slots = plan_this_machine(2, {}, [], cores=2)
        with slots_cluster.SlotsCluster(slots) as running:
            assert len(set(running.engine_ids(slots))) == 2
            assert registered_engines(started[-1]) == 2


@pytest.mark.distributed
def test_an_error_on_one_rank_is_raised_with_its_rank_and_traceback():
    failing = "1 // (1 - int(__import__('os').environ['HOROVOD_RANK']))"
    with pytest.raises(RankFailedError) as raised:
        with HorovodCluster(2) as running:
            running.run(eval, failing)
    assert raised.value.rank == 1
    assert raised.value.ename == "ZeroDivisionError"
    assert "ZeroDivisionError" in str(raised.value)
    assert cluster.cluster_processes(running.cluster_id) == []


def tiny_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eight 12 x 12 RGB images with labels covering three classes."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(8, 12, 12, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=8)
    labels[:3] = [0, 1, 2]
    return images, labels


def assert_same_weights(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for got_array, want_array in zip(got, want, strict=True):
        np.testing.assert_allclose(got_array, want_array, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def two_ranks():
    """One 2-rank cluster for the module's gradient checks (its lifecycle is tested above):
    every run is a fresh rendezvous and Horovod initialisation on the same warm engines."""
    with HorovodCluster(2) as running:
        yield running


@pytest.mark.distributed
def test_two_ranks_average_gradients_like_one_serial_step_on_both_halves(two_ranks):
    images, labels = tiny_batch(seed=0)
    serial = sgd_steps.one_sgd_step(images, labels, distributed=False)
    per_rank = two_ranks.run(sgd_steps.one_sgd_step, images, labels, True)
    initial = sgd_steps.one_sgd_step(images, labels, distributed=False, learning_rate=0.0)
    assert any(not np.allclose(a, b) for a, b in zip(serial, initial, strict=True))
    for rank_weights in per_rank:
        assert_same_weights(rank_weights, serial)


@pytest.mark.trains
def test_accumulated_micro_batches_give_the_weights_of_one_big_serial_step():
    images, labels = tiny_batch(seed=1)
    serial = sgd_steps.one_sgd_step(images, labels, distributed=False)
    accumulated = sgd_steps.one_sgd_step(images, labels, distributed=False, accumulation_steps=4)
    first_quarter_only = sgd_steps.one_sgd_step(images[:2], labels[:2], distributed=False)
    assert any(not np.allclose(a, b) for a, b in zip(serial, first_quarter_only, strict=True))
    assert_same_weights(accumulated, serial)


@pytest.mark.distributed
def test_two_accumulation_steps_on_one_rank_equal_one_step_on_two_ranks(two_ranks):
    images, labels = tiny_batch(seed=2)
    accumulated = sgd_steps.one_sgd_step(images, labels, distributed=False, accumulation_steps=2)
    per_rank = two_ranks.run(sgd_steps.one_sgd_step, images, labels, True, 0.1, 2)
    one_step = two_ranks.run(sgd_steps.one_sgd_step, images, labels, True)
    assert_same_weights(one_step[0], accumulated)
    assert_same_weights(per_rank[1], accumulated)  # both levers at once


# Hosts, host identities and preflight, without a cluster -----------------------------------


def facts(engine_id, hostname, route, resolves_to, machine_pid=100):
    return cluster.EngineFacts(
        engine_id=engine_id,
        hostname=hostname,
        pid=machine_pid + engine_id,
        launch_id="",
        route_address=route,
        interface="lo" if route.startswith("127.") else "eth0",
        hostname_addresses=tuple(resolves_to),
        addresses=() if route.startswith("127.") else (route,),
        cpu_count=2,
    )


def test_hosts_parse_horovodrun_syntax_and_refuse_bad_entries():
    assert cluster.parse_hosts("") == []
    parsed = cluster.parse_hosts("hostA:2, user@hostB ,hostC:1")
    assert [(h.host, h.slots) for h in parsed] == [("hostA", 2), ("user@hostB", 1), ("hostC", 1)]
    assert cluster.total_slots(parsed) == 4
    for bad, named in (("hostA:0", "positive"), ("a:1,,b:1", "not 'host'"), ("a,a:2", "twice")):
        with pytest.raises(HiresmedError, match=named):
            cluster.parse_hosts(bad)


def test_host_identities_are_names_unless_names_collide_or_resolve_elsewhere():
    local = [facts(0, "vm", "127.0.0.1", ["127.0.1.1"]), facts(1, "vm", "127.0.0.1", [])]
    assert cluster.host_identities(local)[0] == ["localhost", "localhost"]
    good = [
        facts(0, "hostA", "10.0.0.2", ["10.0.0.2"]),
        facts(1, "hostA", "10.0.0.2", ["10.0.0.2"]),
        facts(2, "hostB", "10.0.0.3", ["10.0.0.3"]),
    ]
    names, how = cluster.host_identities(good)
    assert names == ["hostA", "hostA", "hostB"] and "host names" in how
    clones = [
        facts(0, "node", "10.0.0.2", ["10.0.0.2"]),
        facts(1, "node", "10.0.0.3", ["10.0.0.3"]),
    ]
    names, how = cluster.host_identities(clones)
    assert names == ["10.0.0.2", "10.0.0.3"] and "same host name" in how
    assert [s.local_rank for s in assign_ranks(names)] == [0, 0]


def test_preflight_names_the_host_and_the_fix():
    from hiresmed_nb.cluster import preflight

    debian = [facts(0, "hostA", "10.0.0.2", ["127.0.1.1"]), facts(1, "hostB", "10.0.0.3", [])]
    with pytest.raises(
        HiresmedError, match=r"host hostA: .*127\.0\.1\.1.*map 'hostA' to 10\.0\.0\.2"
    ):
        preflight.check_host_names(debian)
    preflight.check_host_names([facts(0, "vm", "127.0.0.1", ["127.0.1.1"])])  # local: fine
    remote = [facts(0, "hostA", "10.0.0.2", ["10.0.0.2"])]
    with pytest.raises(HiresmedError, match="RENDEZVOUS_ADDR=127.0.0.1 is loopback.*hostA"):
        preflight.check_routes(remote, "127.0.0.1")
    no_route = [facts(0, "hostA", "", ["10.0.0.2"])]
    with pytest.raises(HiresmedError, match="hostA .*no route to the rendezvous address"):
        preflight.check_routes(no_route, "10.0.0.1")
    assert preflight.check_interface(remote, "auto") == ["eth0"]
    assert preflight.check_interface(remote, "ib0") == ["ib0"]


class AnsweringView:
    """A stand-in for an engine's view: runs the function here and returns its answer."""

    def __init__(self, replace=None):
        self.replace = replace

    def apply_async(self, function, *args):
        answer = function(*args) if self.replace is None else self.replace

        class Done:
            def get(self, timeout=None):
                return answer

        return Done()


def test_preflight_reports_a_host_that_cannot_reach_the_rendezvous_server():
    from hiresmed_nb.cluster import preflight

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        ok = [facts(0, "hostA", "10.0.0.2", ["10.0.0.2"])]
        preflight.check_rendezvous_reachable([AnsweringView()], ok, "127.0.0.1", port)
    refused = [AnsweringView("ConnectionRefusedError: [Errno 111] Connection refused")]
    with pytest.raises(HiresmedError, match=r"hostA .*cannot open a TCP connection.*:4242"):
        preflight.check_rendezvous_reachable(refused, ok, "10.0.0.1", 4242)


def test_results_dir_must_be_visible_from_rank_0s_host(tmp_path):
    from hiresmed_nb.cluster import preflight

    remote = facts(0, "hostA", "10.0.0.2", ["10.0.0.2"])
    preflight.check_results_dir(AnsweringView(), remote, tmp_path / "runs")  # shared: fine
    assert not list((tmp_path / "runs").iterdir())  # the probe file is removed
    with pytest.raises(HiresmedError, match="RESULTS_DIR=.* not visible from rank 0's host hostA"):
        preflight.check_results_dir(AnsweringView(False), remote, tmp_path / "runs")


def fake_ssh(returncode, stdout="", stderr=""):
    def run(command, **kwargs):
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    return run


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (fake_ssh(255, stderr="ssh: Could not resolve hostname hostA"), "cannot ssh to hostA"),
        (fake_ssh(127, stderr="sh: 1: /opt/py: not found"), "on hostA, REMOTE_PYTHON='/opt/py'"),
        (
            fake_ssh(0, '{"ssh_connection": "", "hostname": "a", "missing": ["ipyparallel"]}'),
            "cannot import ipyparallel",
        ),
    ],
)
def test_each_host_problem_is_one_error_naming_the_host_and_the_fix(monkeypatch, answer, named):
    """Both questions a host is asked: its devices (planning its slots, first) and, as its
    engines start, its address."""
    from hiresmed_nb.cluster import hosts
    from hiresmed_nb.placement import HostSlots

    monkeypatch.setattr(hosts.subprocess, "run", answer)
    with pytest.raises(HiresmedError, match=named):
        hosts.ask_devices([HostSlots("hostA", 1)], "/opt/py")
    with pytest.raises(HiresmedError, match=named):
        hosts.ask_host("hostA", "/opt/py", "/tmp/hiresmed-x")


def test_the_devices_question_names_what_the_remote_interpreter_lacks(tmp_path, monkeypatch):
    """The real question, through a stand-in `ssh` that runs the remote command here, with an
    interpreter without site-packages: the friendly error, not a traceback."""
    from hiresmed_nb.cluster import hosts
    from hiresmed_nb.placement import HostSlots

    for name, body in {
        "ssh": 'eval "${@: -1}"',  # ssh -o ... HOST COMMAND: run COMMAND
        "bare-python": f'exec {shlex.quote(sys.executable)} -I -S "$@"',  # no site-packages
    }.items():
        (tmp_path / name).write_text(f"#!/bin/bash\n{body}\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(HiresmedError, match=r"on hostA, REMOTE_PYTHON=.*cannot import ipyparallel"):
        hosts.ask_devices([HostSlots("hostA", 1)], str(tmp_path / "bare-python"))


def test_the_head_address_is_where_every_host_sees_this_machine():
    from hiresmed_nb.cluster.hosts import HostAnswer, head_address

    seen = [HostAnswer("a", "a", "10.0.0.1"), HostAnswer("b", "b", "10.0.0.1")]
    assert head_address(seen) == "10.0.0.1"
    assert head_address([HostAnswer("localhost", "vm", "127.0.0.1")]) == "127.0.0.1"
    with pytest.raises(HiresmedError, match="different addresses.*set RENDEZVOUS_ADDR"):
        head_address([*seen, HostAnswer("c", "c", "192.168.0.9")])


def test_files_created_while_a_cluster_starts_are_owner_only(tmp_path):
    from hiresmed_nb.cluster.engines import private_files

    umask_before = current_umask()
    with private_files():
        (tmp_path / "cluster-x.json").write_text("{}")
        (tmp_path / "security").mkdir()
    assert stat.S_IMODE((tmp_path / "cluster-x.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "security").stat().st_mode) == 0o700
    assert current_umask() == umask_before  # the process's umask is restored afterwards


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_stopped_engines_output_is_read_only_for_a_log_that_shows_it_and_is_kept(tmp_path):
    # For an ssh engine a read is two ssh sessions; a cluster logs at ERROR, which never shows it.
    from hiresmed_nb.cluster.launchers import LocalEngine

    output = tmp_path / "engine.out"
    output.write_text("last words\n")
    log = logging.getLogger("test-launcher-output")
    for level, exit_code, shown in [
        (logging.ERROR, 1, False),
        (logging.WARNING, 0, False),  # a clean exit's output is logged at debug level
        (logging.WARNING, 1, True),
        (logging.DEBUG, 0, True),
    ]:
        log.setLevel(level)
        engine = LocalEngine(log=log, output_file=str(output))
        reads = []
        engine.get_output = lambda remove=False, reads=reads: reads.append(remove) or ""
        engine.notify_stop({"exit_code": exit_code, "pid": 1, "identifier": "0"})
        assert bool(reads) is shown, (level, exit_code)
    LocalEngine(log=log, output_file=str(output)).notify_stop({"exit_code": 1})  # read, logged
    assert output.read_text() == "last words\n"  # and kept, for a lost rank's error


def test_stopping_ssh_engines_fetches_no_output_and_a_failed_start_still_reads_it():
    from hiresmed_nb.cluster.launchers import SSHEngines

    class Engine:  # stands in for an ssh engine, whose get_output is two ssh sessions
        reads: list[bool] = []

        def get_output(self, remove: bool = False) -> str:
            self.reads.append(remove)
            return "last words\n"

    engines = SSHEngines()
    engines.launchers = {"hostA/0": Engine()}
    assert engines.get_output(remove=True) == ""  # ipyparallel's stop_engines asks this
    assert Engine.reads == []
    assert "last words" in engines.get_output()  # what a failed start reports


def test_engine_memory_is_outgrown_only_past_the_bound_over_the_first_reading():
    mb = memory.MB
    watch = memory.EngineMemory()
    assert not watch.outgrown()  # nothing read yet
    assert watch.observe([700 * mb, 600 * mb]) == 0  # the first reading is the baseline
    assert watch.observe([790 * mb, 640 * mb]) == 90 * mb and not watch.outgrown()
    assert watch.observe([760 * mb, 701 * mb]) == 101 * mb and watch.outgrown()
    assert "101 MB" in watch.describe()


def test_release_memory_drops_the_custom_gradients_a_run_registered_and_keeps_older_ones():
    import tensorflow as tf

    @tf.custom_gradient
    def doubled(x):
        return 2 * x, lambda upstream: 2 * upstream

    tf.function(doubled)(tf.constant(1.0))  # traced in graph mode: registers one entry
    before = engine_tasks.custom_gradient_names()
    assert before
    tf.function(lambda x: doubled(x) + 1)(tf.constant(1.0))  # a run's own tracing
    assert len(engine_tasks.custom_gradient_names() - before) == 1
    engine_tasks.release_memory(before)
    assert engine_tasks.custom_gradient_names() == before


class RanOnceCluster:
    """A warm cluster whose run succeeds and whose engines then cannot report their memory."""

    description, runs, stopped, broken = "2 ranks on a stand-in", 0, False, False
    placement = cluster.Placement(2)

    def run(self, function, *args):
        self.runs += 1
        return ["rank 0's result", "rank 1's result"]

    def observe_memory(self):
        raise TimeoutError("engine 1 did not answer")

    def usable(self):
        return not self.broken

    def start(self):
        pass

    def stop(self):
        self.stopped = True


def test_a_finished_run_keeps_its_results_when_its_engines_cannot_report_memory(monkeypatch):
    from hiresmed_nb.cluster import pool as pool_module

    stand_ins = []
    monkeypatch.setattr(
        pool_module,
        "HorovodCluster",
        lambda placement: stand_ins.append(RanOnceCluster()) or stand_ins[-1],
    )
    pool = cluster.Pool()
    assert pool.run(cluster.Placement(2), print) == ["rank 0's result", "rank 1's result"]
    pool.cluster(cluster.Placement(2))  # its memory is read now: no answer, so it is replaced
    assert len(stand_ins) == 2 and stand_ins[0].stopped and not stand_ins[1].stopped
    pool.close()
    assert stand_ins[1].stopped


def test_a_stopped_rendezvous_server_no_longer_listens():
    server, port = cluster.start_rendezvous("127.0.0.1")
    cluster.stop_rendezvous(server)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_engines_sharing_a_launch_id_find_their_own_output_by_pid(tmp_path):
    """A packed study starts each slot's engine as an engine set of its own: every one is
    launch '0'; the tail must still come from the engine asked about."""
    from hiresmed_nb.cluster.engines import EngineLaunch, Engines
    from hiresmed_nb.cluster.ranks import EngineFacts

    launches, facts = [], []
    for engine_id, pid in enumerate((4001, 4002)):
        output = tmp_path / f"engine-{pid}.log"
        output.write_text(f"engine with pid {pid} says goodbye\n")
        launches.append(EngineLaunch("0", pid, output_file=str(output)))
        facts.append(
            EngineFacts(engine_id, "vm", pid, "0", "127.0.0.1", "lo", (), (), 2, slot_threads=1)
        )
    engines = Engines(None, [0, 1], "c", tmp_path, launches, facts)
    assert "pid 4002 says" in engines.output_tail(1)
    assert "pid 4001 says" in engines.output_tail(0)


def test_one_rule_gives_every_cluster_its_controller_address(monkeypatch):
    from hiresmed_nb.cluster import engines, slurm

    assert engines.controller_address("auto", "c") == "127.0.0.1"
    assert engines.controller_address("10.1.2.3", "c", launcher="pbs") == "10.1.2.3"
    monkeypatch.setattr(slurm, "controller_address", lambda: "10.9.9.9")
    assert engines.controller_address("auto", "c", launcher="slurm") == "10.9.9.9"
    with pytest.raises(HiresmedError, match="IPP_LAUNCHER='pbs'.*set RENDEZVOUS_ADDR"):
        engines.controller_address("auto", "c", launcher="pbs")


class _SilentView:
    """An engine that answers 'yes' unless it is engine 1, which never answers."""

    def __init__(self, engine_id):
        self.engine_id = engine_id

    def apply_async(self, function, *args):
        return self

    def get(self, timeout):
        if self.engine_id == 1:
            raise TimeoutError
        return "yes"


def test_a_question_to_the_engines_is_bounded_and_names_the_silent_engine(tmp_path):
    from hiresmed_nb.cluster.engines import Engines

    client = {engine_id: _SilentView(engine_id) for engine_id in (0, 1)}
    assert Engines(client, [0], "c", tmp_path).ask(print) == ["yes"]
    with pytest.raises(HiresmedError, match="engine 1 of cluster c did not answer within 30 s"):
        Engines(client, [0, 1], "c", tmp_path).ask(print, each=[(1,), (2,)])


def test_a_slots_cluster_is_given_its_slots_a_cluster_file_or_a_launched_count_only():
    from hiresmed_nb.cluster.devices import Slot
    from hiresmed_nb.cluster.slots_cluster import SlotsCluster

    one = [Slot("localhost", 0, "", None, 1)]
    for wrong in ({}, {"cluster_file": "cluster.json"}, {"launched": 2}):
        with pytest.raises(ValueError, match="one of slots, cluster_file or launched"):
            SlotsCluster(one if wrong else (), **wrong)
    with pytest.raises(ValueError, match="one of slots, cluster_file or launched"):
        SlotsCluster(cluster_file="cluster.json", launched=2)
    assert SlotsCluster(cluster_file="cluster.json").slots == []  # its engines', once started


@pytest.fixture
def dying_engines(monkeypatch, tmp_path):
    """Slots' engines started from now on die as they start (a broken environment on their
    host), saying why; a slot's engine gets 3 s to register."""
    from hiresmed_nb.cluster import slots_cluster

    (tmp_path / "sitecustomize.py").write_text(
        "import os\nprint('engine says: no GPU driver here', flush=True)\nos._exit(3)\n"
    )
    environment = slots_cluster.slot_environment

    def die() -> None:
        monkeypatch.setattr(
            slots_cluster,
            "slot_environment",
            lambda slot: {**environment(slot), "PYTHONPATH": str(tmp_path)},
        )
        monkeypatch.setattr(slots_cluster, "REGISTRATION_SECONDS", 3)

    return die


@pytest.mark.distributed
def test_a_slots_cluster_that_cannot_start_its_engine_says_what_the_engine_said(dying_engines):
    from hiresmed_nb.cluster.devices import plan_this_machine
    from hiresmed_nb.cluster.slots_cluster import SlotsCluster

    dying_engines()
    engines = SlotsCluster(plan_this_machine(1, {}, [], cores=1))
    with pytest.raises(HiresmedError) as failed:
        engines.__enter__()  # a failed start stops what it started
    message = str(failed.value)
    assert message.startswith("the cluster did not start 1 engine(s) with a controller on")
    assert "no engine registered within 3 s for slot(s) localhost/0 (start)" in message
    assert "engine says: no GPU driver here" in message
    assert cluster.cluster_processes(engines.cluster_id) == []


@pytest.mark.distributed
def test_a_slots_engine_that_cannot_be_replaced_says_what_the_new_engine_said(dying_engines):
    from hiresmed_nb.cluster.devices import plan_this_machine
    from hiresmed_nb.cluster.slots_cluster import SlotsCluster

    slots = plan_this_machine(1, {}, [], cores=1)
    with SlotsCluster(slots) as engines:
        dying_engines()  # the first engine started well; its replacement will not
        with pytest.raises(HiresmedError) as failed:
            engines.replace(slots)
    message = str(failed.value)
    assert message.startswith("no engine registered within 3 s for slot(s) localhost/0 (replace")
    assert "engine says: no GPU driver here" in message
    assert cluster.cluster_processes(engines.cluster_id) == []
