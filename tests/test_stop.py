"""Stopping a cluster ends the processes the project started for it, and no others: not the
caller of ``cluster stop`` (under ``timeout`` or a shell), not a bystander that merely names the
cluster (a ``tail -f`` of its file or of an engine's log)."""

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hiresmed_nb.cluster import processes
from hiresmed_nb.cluster.horovod_cluster import IPP_PROFILE_DIR
from hiresmed_nb.cluster.undertaker import reap_orphans
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path

CLUSTER_ID = "hiresmed-detached-0badc0de"


def marked(cluster_id: str = CLUSTER_ID) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", **processes.marker_environment(cluster_id)}


def test_only_marked_processes_belong_to_a_cluster_never_the_caller_or_its_parents(tmp_path):
    named = tmp_path / f"{CLUSTER_ID}.log"
    named.write_text("")
    bystander = subprocess.Popen(["tail", "-f", str(named)])  # names the id, is not marked
    ours = subprocess.Popen(["tail", "-f", "/dev/null"], env=marked())
    other_cluster = subprocess.Popen(["tail", "-f", "/dev/null"], env=marked(CLUSTER_ID + "1"))
    # A marked shell runs a marked Python that looks for the cluster: neither may find itself.
    lookup = (
        "from hiresmed_nb.cluster.processes import cluster_processes; "
        f"print(sorted(p.pid for p in cluster_processes({CLUSTER_ID!r})))"
    )
    shell = f"{shlex.quote(sys.executable)} -c {shlex.quote(lookup)}; true"
    try:
        found = [p.pid for p in processes.cluster_processes(CLUSTER_ID)]
        inside = subprocess.run(
            ["bash", "-c", shell],
            env={**marked(), "PYTHONPATH": str(Path(__file__).parents[1])},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    finally:
        for process in (bystander, ours, other_cluster):
            process.kill()
            process.wait()
    assert found == [ours.pid]
    assert json.loads(inside[0]) == [ours.pid]  # not the marked shell (its parent), not itself


def test_a_process_identity_tells_a_reused_pid_from_the_owner():
    me = processes.process_identity()
    assert not processes.owner_gone(me)
    host, _, rest = me.partition("/")
    pid, started = rest.split("@")
    assert host == processes.host_identity() and int(pid) == os.getpid()
    assert processes.owner_gone(f"{host}/{pid}@{float(started) - 1:.3f}")  # another process


def test_only_the_owners_own_host_may_find_it_gone():
    gone = subprocess.Popen(["true"])
    gone.wait()
    here = processes.process_identity()
    pid, started = here.partition("/")[2].split("@")
    assert processes.owner_gone(f"{processes.host_identity()}/{gone.pid}@{started}")
    # Not in this host's process table, but of another host: only that host can say.
    assert not processes.owner_gone(f"another-host/{gone.pid}@{started}")
    # An identity without its host (or unreadable) is never judged gone.
    assert not processes.owner_gone(f"{gone.pid}@{started}")
    assert not processes.owner_gone("not-an-identity")


def test_a_machine_cloned_with_this_host_name_judges_only_its_own_owners(tmp_path, monkeypatch):
    gone = subprocess.Popen(["true"])
    gone.wait()
    started = processes.process_identity().partition("@")[2]
    other_machine = tmp_path / "machine-id"
    other_machine.write_text("0123456789abcdef0123456789abcdef\n")
    with monkeypatch.context() as clone:  # the same host name, another machine
        clone.setattr(processes, "MACHINE_ID_FILES", (other_machine,))
        on_clone = f"{processes.host_identity()}/{gone.pid}@{started}"
        assert processes.owner_gone(on_clone)  # the clone judges its own owner
    assert on_clone.partition("+")[0] == socket.gethostname()
    assert not processes.owner_gone(on_clone)  # this machine never does


@pytest.mark.parametrize("host", ["vm", "node-12", "n-1-2.345", "gpu07.cluster.example", "a_b"])
def test_an_owned_cluster_id_names_its_owner_to_its_host_only(monkeypatch, host):
    monkeypatch.setattr(processes.socket, "gethostname", lambda: host)
    cluster_id = processes.owned_cluster_id(os.getpid(), "0badc0de")
    owner = processes.local_owner_in_name(f"ipengine-{cluster_id}-1733-0.log")
    assert str(owner) == processes.process_identity()
    assert owner is not None and owner.host.partition("+")[0] == host and owner.pid == os.getpid()
    assert processes.local_owner_in_name(CLUSTER_ID) is None  # a detached cluster has no owner
    monkeypatch.setattr(processes.socket, "gethostname", lambda: host[:-1] or "other")
    assert processes.local_owner_in_name(f"ipengine-{cluster_id}-1733-0.log") is None


@pytest.mark.reaps
def test_only_files_of_clusters_whose_owner_this_host_finds_gone_are_removed(tmp_path, monkeypatch):
    temporary = tmp_path / "tmp"  # this host's temporary folder, with each cluster's folder
    temporary.mkdir()
    monkeypatch.setattr(processes.tempfile, "tempdir", str(temporary))
    gone = subprocess.Popen(["true"])
    gone.wait()
    here = processes.owned_cluster_id(os.getpid(), "0000000a")
    started = here.split("_")[-2]
    dead_here = f"hiresmed-{processes.host_identity()}_{gone.pid}_{started}_0000000b"
    dead_elsewhere = f"hiresmed-another-host_{gone.pid}_{started}_0000000c"
    # A machine cloned with this host name: its owners are its own to judge.
    dead_on_clone = f"hiresmed-{socket.gethostname()}+{'0' * 12}_{gone.pid}_{started}_0000000d"
    names = {
        cluster_id: [f"security/ipcontroller-{cluster_id}-client.json", f"log/{cluster_id}.log"]
        for cluster_id in (here, dead_here, dead_elsewhere, dead_on_clone, CLUSTER_ID)
    }
    for cluster_id, paths in names.items():
        paths.append(f"tmp/{cluster_id}/tmpautograph.py")
        for name in paths:
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_text("{}")
    reap_orphans(tmp_path)
    left = {
        cluster_id: [(tmp_path / n).exists() for n in paths] for cluster_id, paths in names.items()
    }
    assert left == {
        here: [True, True, True],
        dead_here: [False, False, False],
        dead_elsewhere: [True, True, True],
        dead_on_clone: [True, True, True],
        CLUSTER_ID: [True, True, True],
    }
    assert not (temporary / dead_here).exists()


@pytest.mark.orphans
def test_a_marked_process_names_its_owner_and_one_without_the_owners_host_is_never_reaped():
    me = processes.process_identity()
    assert str(processes.marked_owner(processes.marker_environment(CLUSTER_ID, me))) == me
    with pytest.raises(HiresmedError, match="owner: '123@1.000'"):
        processes.marker_environment(CLUSTER_ID, "123@1.000")  # without its host
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead_owner = f"{processes.host_identity()}/{gone.pid}@1.000"
    orphan, unjudged = CLUSTER_ID + "1", CLUSTER_ID + "2"
    without_host = processes.marker_environment(unjudged, dead_owner)
    del without_host[processes.OWNER_HOST_VARIABLE]  # as an earlier version marked its processes
    children = [
        subprocess.Popen(["tail", "-f", "/dev/null"], env={"PATH": "/usr/bin:/bin", **env})
        for env in (processes.marker_environment(orphan, dead_owner), without_host)
    ]
    try:
        found = processes.orphaned_cluster_ids()
        assert orphan in found and unjudged not in found
        assert orphan in reap_orphans()
        assert children[0].wait(timeout=60) is not None
        assert children[1].poll() is None  # never judged: its owner's host is unknown
    finally:
        for child in children:
            child.kill()
            child.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_live_owner_stays_alive_across_a_clock_step(monkeypatch, tmp_path):
    """psutil's start times follow the wall clock (boot time now plus ticks): a step of the clock
    or a VM's pause moved every owner's, so each undertaker stopped its live owner's cluster
    (seen on a fresh clone: two runs lost their engines at a VM snapshot). An identity is
    unchanged by one, for a process whose name holds a parenthesis and spaces too."""
    import psutil
    import psutil._pslinux

    odd = tmp_path / "odd) name ("  # /proc/PID/stat shows the name in parentheses
    odd.symlink_to(Path(sys.executable))
    child = subprocess.Popen(
        [str(odd), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        process = psutil.Process(child.pid)
        since_boot = process.create_time() - psutil.boot_time()
        assert abs(float(processes.start_mark(process)) - since_boot) < 0.02
        identities = [processes.process_identity(), processes.process_identity(child.pid)]
        booted = psutil._pslinux.boot_time()
        monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: booted + 37.0)  # a 37 s step
        assert [processes.owner_gone(identity) for identity in identities] == [False, False]
    finally:
        child.communicate(b"")
    assert processes.owner_gone(identities[1])  # ended: gone


def test_an_undertaker_refuses_an_owner_of_another_host():
    from hiresmed_nb.cluster.undertaker import start_undertaker

    mine = processes.process_identity()
    foreign = "another-host/" + mine.partition("/")[2]
    with pytest.raises(HiresmedError, match="owner: .*another-host"):
        start_undertaker(foreign, CLUSTER_ID, "/nonexistent/cluster.json")


def start_cluster_from_the_command_line() -> tuple[str, str]:
    """``cluster start -n 2`` as a user types it; returns (cluster file, cluster id)."""
    started = subprocess.run(
        [sys.executable, "-m", "hiresmed_nb", "cluster", "start", "-n", "2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    cluster_file = started.stdout.strip().splitlines()[-1]
    return cluster_file, json.loads(Path(cluster_file).read_text())["cluster"]["cluster_id"]


def engine_log(cluster_id: str) -> Path:
    logs = sorted((resolve_path(IPP_PROFILE_DIR) / "log").glob(f"ipengine-{cluster_id}-*"))
    assert logs, f"no engine log of {cluster_id}"
    return logs[0]


def tail_bystanders(*paths: Path | str) -> list[subprocess.Popen]:
    """``tail -f`` of each path: processes that name the cluster but are not ours."""
    return [
        subprocess.Popen(["tail", "-f", str(path)], stdout=subprocess.DEVNULL) for path in paths
    ]


@pytest.mark.distributed
def test_cluster_stop_under_wrappers_exits_0_and_ends_only_the_cluster():
    """``cluster stop`` under ``timeout`` under a shell: neither its parent (``timeout``, in a
    process group of its own) nor its grandparent (a shell kept alive by a command after it),
    both naming the cluster file, is ended, and it exits 0 through both."""
    cluster_file, cluster_id = start_cluster_from_the_command_line()
    running = processes.cluster_processes(cluster_id)
    bystanders = tail_bystanders(cluster_file, engine_log(cluster_id))
    stop = [sys.executable, "-m", "hiresmed_nb", "cluster", "stop", cluster_file]
    under_timeout = shlex.join(["timeout", "120", *stop])
    argv = ["bash", "-c", f'{under_timeout}; echo "shell survived, stop exited $?"']
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        still_running = [process.poll() is None for process in bystanders]
    finally:
        for process in bystanders:
            process.kill()
            process.wait()
    assert done.returncode == 0, done.stderr
    assert "shell survived, stop exited 0" in done.stdout, done.stderr  # timeout's exit, too
    assert f"stopped cluster {cluster_id}" in done.stderr
    assert "controller (pid" in done.stderr and "engine (pids " in done.stderr
    assert all(still_running), "a bystander naming the cluster was ended"
    assert len(running) >= 3  # a controller and two engines (and their nannies)
    assert processes.cluster_processes(cluster_id) == []
    assert not any(process.is_running() for process in running)
    assert not Path(cluster_file).exists()
