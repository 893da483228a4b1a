"""On a real Slurm (Debian's slurmctld, slurmd and munge) with two simulated nodes.

One Slurm serves every test of this module (``tests/simslurm.py``): each node has its own network,
host name, /tmp and process table, and shares the rest of the filesystem. Every test leaves no job
behind and nothing running on either node.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import simhosts
import simslurm
from ipyparallel import Client
from small_images import SMALL_SKIN
from test_train_notebook import TINY

from hiresmed_nb import cluster
from hiresmed_nb.cluster import command, slots_cluster
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import resolve_path, validate

pytestmark = pytest.mark.slurm

PROJECT = Path(__file__).resolve().parent.parent


def hiresmed(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m hiresmed_nb ARGS`` from the project, as a user on the login node runs it."""
    argv = [sys.executable, "-m", "hiresmed_nb", *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT, timeout=timeout)


def job_state(slurm: simslurm.SimSlurm, job: str) -> str:
    """A job's final state as slurmctld keeps it for a while after it ended (CANCELLED...)."""
    shown = slurm.run(["scontrol", "show", "job", job]).stdout
    return re.search(r"JobState=(\w+)", shown).group(1)


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
    left = {"jobs": slurm.wait_for_no_jobs(), **slurm.wait_for_idle_nodes()}
    assert not any(left.values()), f"left behind: {left}"


def test_srun_on_two_nodes_runs_on_each_node(idle_slurm):
    done = idle_slurm.run(["srun", "-N2", "hostname"])
    assert sorted(done.stdout.split()) == ["nodeA", "nodeB"]


def test_each_node_has_its_own_tmp_and_process_table(idle_slurm):
    script = "echo $(hostname) $(ls /tmp | tr '\\n' /) $(tr '\\0' ' ' </proc/1/cmdline)"
    done = idle_slurm.run(["srun", "-N2", "sh", "-c", script])
    seen = {line.split()[0]: line.split(maxsplit=2)[1:] for line in done.stdout.splitlines()}
    assert sorted(seen) == ["nodeA", "nodeB"]
    # The rig's folder, and the project's when it lies under /tmp (a clone made there).
    bound = simhosts.folders_to_bind([idle_slurm.directory, *simhosts.PROJECT_DIRS])
    expected = sorted({folder.relative_to("/tmp").parts[0] for folder in bound})
    for node, (tmp_entries, init) in seen.items():
        found = sorted(tmp_entries.strip("/").split("/"))
        assert found == expected, f"{node}'s /tmp holds more than the rig's and project's folders"
        assert f"slurmd -D -N {node}" in init, f"{node}'s pid 1 is not its own: {init}"


def test_a_two_rank_run_on_engines_submitted_by_cluster_start_slurm_has_a_rank_on_each_node(
    idle_slurm, skin_dir
):
    started = hiresmed("cluster", "start", "--slurm", "2")
    assert started.returncode == 0, started.stderr
    cluster_file = started.stdout.strip()
    cluster_id = json.loads(Path(cluster_file).read_text())["cluster"]["cluster_id"]
    try:
        [job] = [line.split()[0] for line in idle_slurm.jobs()]
        config = validate(
            {
                **TINY,
                "MODE": "distributed",
                "N_RANKS": 2,
                "IPP_CLUSTER_FILE": cluster_file,
                "RESULTS_DIR": str(idle_slurm.shared / "runs"),
            },
            cluster.attached_engine_count,
        )
        ranks = cluster.run_training(config)
    finally:
        cluster.kernel_pool().close()
        stopped = hiresmed("cluster", "stop", cluster_file)
    assert sorted(rank["hostname"] for rank in ranks) == ["nodeA", "nodeB"]
    assert ranks[0]["weights_digest"] == ranks[1]["weights_digest"]
    assert stopped.returncode == 0, stopped.stderr
    assert f"Slurm job {job}: cancelled" in stopped.stderr
    assert job_state(idle_slurm, job) == "CANCELLED"
    assert cluster.cluster_processes(cluster_id) == []  # the controller is gone too
    # ipyparallel's batch script went to the profile folder, not the working directory, and
    # left with the cluster.
    assert not list(PROJECT.glob("*.sbatch"))
    assert not list(resolve_path(cluster.IPP_PROFILE_DIR).glob(f"*{cluster_id}*"))


def test_a_slurm_job_still_pending_is_named_with_its_id_and_state(idle_slurm, monkeypatch):
    output = str(idle_slurm.shared / "blocker.out")
    blocker = idle_slurm.run(["sbatch", "--parsable", "-N2", "-o", output, "--wrap", "sleep 600"])
    blocker_id = blocker.stdout.strip()
    monkeypatch.setattr(slots_cluster, "REGISTRATION_SECONDS", 10)
    try:
        with pytest.raises(
            HiresmedError, match=r"Slurm job \d+: PENDING \((Resources|Priority)\)"
        ) as raised:
            command.start_detached(slurm_tasks=2)
    finally:
        idle_slurm.run(["scancel", blocker_id])
    # The job named is the engines' own (not the blocker), and the failed start cancelled it.
    [named] = re.findall(r"Slurm job (\d+): PENDING", str(raised.value))
    assert named != blocker_id
    assert job_state(idle_slurm, named) == "CANCELLED"


STUDY = f"""STUDY: slurmstudy
DATASET: synthetic-skin
DATA_DIR: {SMALL_SKIN}
ARCH: compact
WEIGHTS: None
IMAGE_SIZE: 32
IMAGES_PER_CLASS: 4
TEST_IMAGES_PER_CLASS: 4
MODE: [serial, distributed]
N_RANKS: 2
BATCH_SIZE: 4
EPOCHS: 1
SEEDS: [0]
"""


def test_the_study_batch_script_packs_a_study_onto_engines_of_a_two_node_allocation(
    idle_slurm, skin_dir
):
    params = idle_slurm.shared / "study.yaml"
    params.write_text(STUDY)
    outputs = idle_slurm.shared / "outputs"
    log = idle_slurm.shared / "study.out"
    exports = f"ALL,PARAMS={params},OUTPUTS={outputs},RUN_ARGS=--no-report"
    # Polled at 0.2 s: `sbatch --wait` polls at 2, 8, then every 32 s.
    sbatch = ["sbatch", "--parsable", "-N2", f"--export={exports}", "-o", str(log)]
    submitted = idle_slurm.run([*sbatch, "slurm/study.sbatch"], cwd=PROJECT)
    job = submitted.stdout.strip().split(";")[0]
    state = idle_slurm.wait_for_job_end(job, timeout=900)
    output = log.read_text() if log.exists() else ""
    assert state == "COMPLETED", f"Slurm job {job}: {state}\n{output}"  # exit status 0
    assert f"Slurm job step {job}.0: cancelled" in output  # the engines' step, by `cluster stop`
    records = {
        path.stem: json.loads(path.read_text())
        for path in (outputs / "slurmstudy" / "runs").glob("*.json")
    }
    hosts = {run_id: [r["hostname"] for r in rec["ranks"]] for run_id, rec in records.items()}
    [distributed] = [h for run_id, h in hosts.items() if "distributed2" in run_id]
    [serial] = [h for run_id, h in hosts.items() if "serial1" in run_id]
    assert sorted(distributed) == ["nodeA", "nodeB"], output
    assert serial[0] in ("nodeA", "nodeB")
    assert all(r["host"] in ("nodeA", "nodeB") for rec in records.values() for r in rec["ranks"])
    assert not list(resolve_path(cluster.IPP_PROFILE_DIR).glob(f"*slurm-{job}*"))


# Rank 1 cancels its own engines' job (as an admin's scancel would), then both ranks wait.
CANCEL_OWN_JOB = (
    "(__import__('subprocess').run(['scancel', __import__('os').environ['SLURM_JOB_ID']]) "
    "if __import__('os').environ['HOROVOD_RANK'] == '1' else None, "
    "__import__('time').sleep(600))"
)


def test_a_cancelled_engine_job_is_named_in_the_run_with_its_engine_and_job(idle_slurm):
    started = hiresmed("cluster", "start", "--slurm", "2")
    assert started.returncode == 0, started.stderr
    cluster_file = started.stdout.strip()
    try:
        [job] = [line.split()[0] for line in idle_slurm.jobs()]
        placement = cluster.Placement(2, cluster_file=cluster_file)
        with pytest.raises(cluster.RankLostError) as raised:
            with cluster.HorovodCluster(placement=placement) as attached:
                attached.run(eval, CANCEL_OWN_JOB)
    finally:
        stopped = hiresmed("cluster", "stop", cluster_file)
    assert raised.value.host in ("nodeA", "nodeB")
    assert f"Slurm job {job}." in raised.value.cause and "CANCELLED" in raised.value.cause
    assert f"Slurm job {job}." in str(raised.value)
    assert stopped.returncode == 0, stopped.stderr


def test_cluster_stop_on_ipclusters_own_file_cancels_engines_started_as_job_steps(idle_slurm):
    """The controller of `ipcluster start -n 0` (no cluster id) on the login node; its engines
    started inside an allocation by `srun ipengine --file=...`, absent from its cluster file."""
    profile = idle_slurm.shared / "profile_slurm"
    ipcluster = [sys.executable, "-m", "ipyparallel.cluster", "start", "--n=0", "--daemonize"]
    ipcluster += [f"--profile-dir={profile}", f"--ip={idle_slurm.hosts.head_address}"]
    idle_slurm.run(ipcluster, timeout=120)
    cluster_file = profile / "security" / "cluster-.json"
    engine_file = profile / "security" / "ipcontroller-engine.json"
    engines_script = f"srun {sys.executable} -m ipyparallel.engine --file={engine_file}"
    log = str(idle_slurm.shared / "engines.out")
    submitted = idle_slurm.run(["sbatch", "--parsable", "-N2", "-o", log, "--wrap", engines_script])
    job = submitted.stdout.strip()
    try:
        client_file = str(profile / "security" / "ipcontroller-client.json")
        with contextlib.closing(Client(client_file, timeout=60)) as client:
            client.wait_for_engines(2, timeout=300, interactive=False)
        # Counted by the controller: the file lists none of them.
        attached = {"MODE": "distributed", "IPP_CLUSTER_FILE": str(cluster_file)}
        assert validate(attached, cluster.attached_engine_count).N_RANKS == 2
        controller_pid = json.loads(cluster_file.read_text())["controller"]["state"]["pid"]
    finally:
        stopped = hiresmed("cluster", "stop", str(cluster_file))
    assert stopped.returncode == 0, stopped.stderr
    assert f"Slurm job step {job}.0: cancelled" in stopped.stderr
    assert idle_slurm.wait_for_no_jobs() == []
    assert (profile / "log").is_dir() and not cluster_file.exists()
    assert not psutil.pid_exists(controller_pid)
