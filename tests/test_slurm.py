"""On a real Slurm (Debian's slurmctld, slurmd and munge) with two simulated nodes.

One Slurm serves every test of this module (``tests/simslurm.py``): each node has its own network,
host name, /tmp and process table, and shares the rest of the filesystem. Every test leaves no job
behind and nothing running on either node.
"""

from __future__ import annotations

import pytest
import simslurm

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm():
    """A started SimSlurm with ``SLURM_CONF`` in this process's environment, removed afterwards."""
    reason = simslurm.unavailable_reason()
    if reason:
        pytest.skip(f"slurm: {reason}")
    cluster = simslurm.SimSlurm(["nodeA", "nodeB"]).start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in cluster.env.items():
                patch.setenv(name, value)
            yield cluster
    finally:
        cluster.close()


@pytest.fixture
def idle_slurm(slurm):
    """The module's Slurm; after the test, no job may remain and nothing may run on a node."""
    yield slurm
    left = {"jobs": slurm.wait_for_no_jobs()}
    for node in slurm.nodes:
        left[node] = slurm.node_processes(node)
    assert not any(left.values()), f"left behind: {left}"


def test_srun_on_two_nodes_runs_on_each_node(idle_slurm):
    done = idle_slurm.run(["srun", "-N2", "hostname"])
    assert sorted(done.stdout.split()) == ["nodeA", "nodeB"]


def test_each_node_has_its_own_tmp_and_process_table(idle_slurm):
    script = "echo $(hostname) $(ls /tmp | wc -l) $(tr '\\0' ' ' </proc/1/cmdline)"
    done = idle_slurm.run(["srun", "-N2", "sh", "-c", script])
    seen = {line.split()[0]: line.split(maxsplit=2)[1:] for line in done.stdout.splitlines()}
    assert sorted(seen) == ["nodeA", "nodeB"]
    for node, (tmp_entries, init) in seen.items():
        assert tmp_entries == "1", f"{node}'s /tmp holds more than the rig's folder"
        assert f"slurmd -D -N {node}" in init, f"{node}'s pid 1 is not its own: {init}"
