"""A cluster's owner is a process of one host: only that host may judge it gone.

On simulated hosts that each have their own process table (tests/simhosts.py), as real nodes do,
a second head on another host (a second notebook or a batch job of the same user, with the same
shared home) reaps orphans before it starts its own cluster. The engines this head keeps on that
host, and this head's files in the shared profile folder, are not orphans of that host. When this
head's kernel is killed, a later head on this host stops its engines there.
"""

import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from simhosts import HostSpec
from test_multihost import nothing_left, on_path

from hiresmed_nb.cluster import HorovodCluster, Placement, parse_hosts, processes
from hiresmed_nb.cluster.undertaker import reap_orphans

pytestmark = pytest.mark.multihost

ENGINE_PID = "__import__('os').getpid()"


def reap_orphans_on(sim, alias: str, profile_dir: Path) -> str:
    """Run ``reap_orphans(profile_dir)`` on a host, as a head starting there does; its output."""
    code = (
        "from pathlib import Path; from hiresmed_nb.cluster.undertaker import reap_orphans; "
        f"print(reap_orphans(Path({str(profile_dir)!r})))"
    )
    return sim.run(alias, shlex.join([sys.executable, "-c", code]), timeout=120).stdout


def cluster_files(profile_dir: Path, cluster_id: str) -> list[Path]:
    return sorted(
        path
        for folder in ("log", "security")
        for path in (profile_dir / folder).glob(f"*{cluster_id}*")
    )


def test_a_head_on_another_host_spares_this_heads_engines_and_files_there(
    simulated_hosts, monkeypatch, tmp_path
):
    sim = simulated_hosts(HostSpec("hostB"))
    on_path(monkeypatch, sim)
    profile = tmp_path / "profile"  # shared by both heads, as a profile in a shared home is
    placement = Placement(1, hosts=tuple(parse_hosts("hostB:1")))
    with HorovodCluster(placement=placement, profile_dir=profile) as running:
        files = cluster_files(profile, running.cluster_id)
        assert any(path.name.endswith("-client.json") for path in files), files
        reaped = reap_orphans_on(sim, "hostB", profile)
        assert reaped == "[]\n"
        assert running.run(eval, ENGINE_PID) == running.engine_pids  # the engine still answers
        assert [path for path in files if not path.exists()] == []
    nothing_left(sim)


KERNEL = """
import sys
from hiresmed_nb.cluster import HorovodCluster, Placement, parse_hosts
placement = Placement(1, hosts=tuple(parse_hosts("hostB:1")))
cluster = HorovodCluster(placement=placement, profile_dir=sys.argv[1])
cluster.start()
print(cluster.cluster_id, flush=True)
sys.stdin.read()  # hold the cluster until this process is killed
"""


@pytest.mark.orphans
def test_a_killed_kernels_engines_on_other_hosts_are_stopped_by_the_next_head_of_its_host(
    simulated_hosts, monkeypatch, tmp_path
):
    sim = simulated_hosts(HostSpec("hostB"))
    on_path(monkeypatch, sim)
    profile = tmp_path / "profile"
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL, str(profile)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        orphan_id = kernel.stdout.readline().strip()
        assert orphan_id and sim.leftover_processes("hostB"), "its engine should run on hostB"
        folder = processes.cluster_folder(orphan_id)
        assert sim.run("hostB", f"test -d {folder} && echo made").stdout == "made\n"
        for process in processes.cluster_processes(orphan_id):  # its undertaker dies with it
            if processes.describe_process(process).startswith("undertaker"):
                process.send_signal(signal.SIGKILL)
    finally:
        kernel.kill()  # like the OOM killer: no clean-up runs
        kernel.wait()
    assert orphan_id in reap_orphans(profile)
    nothing_left(sim)  # its engine on hostB was stopped from here, the owner's host
    folder = processes.cluster_folder(orphan_id)  # the engine's folder in hostB's own /tmp
    assert sim.run("hostB", f"test -e {folder} && echo left || echo removed").stdout == "removed\n"
    assert processes.cluster_processes(orphan_id) == []
    assert cluster_files(profile, orphan_id) == []
