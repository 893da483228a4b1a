"""Unit tests of what running under Slurm needs, without a Slurm: ipcluster's id-less cluster
files, engines counted from the controller, GPUs seen by a rank, the launcher's batch file, engines
lost with their job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from hiresmed_nb.cluster import slurm, stopping
from hiresmed_nb.cluster.engines import Engines
from hiresmed_nb.cluster.ranks import EngineFacts
from hiresmed_nb.cluster.stopping import stop_cluster
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import validate
from hiresmed_nb.science import training


class _StoppedCluster:
    """Stands in for an ipyparallel Cluster whose processes are already gone."""

    def __init__(self, state: dict):
        self.state = state

    def to_dict(self) -> dict:
        return self.state

    def stop_cluster_sync(self) -> None:
        pass


def test_stop_of_an_id_less_cluster_removes_only_its_own_files(tmp_path: Path):
    profile = tmp_path / "profile_slurm"
    (profile / "log").mkdir(parents=True)
    (profile / "security").mkdir()
    controller_log = profile / "log" / "ipcontroller-123.log"
    own = [
        profile / "security" / "ipcontroller-client.json",
        profile / "security" / "ipcontroller-engine.json",
        controller_log,
        profile / "slurm_engine.sbatch",
    ]
    others = [
        profile / "security" / "ipcontroller-other-client.json",
        profile / "log" / "ipengine-other-0.log",
        profile / "log" / "ipcluster-99.log",
    ]
    for path in own + others:
        path.write_text("x")
    state = {
        "cluster": {"cluster_id": "", "profile_dir": str(profile)},
        "controller": {"state": {"output_file": str(controller_log)}},
        "engines": {"sets": {"1": {"batch_file_name": str(profile / "slurm_engine.sbatch")}}},
    }

    stopped = stop_cluster(_StoppedCluster(state), "", profile)

    assert stopped == ["this host: nothing was running"]
    assert [p.name for p in own if p.exists()] == []
    assert [p.name for p in others if not p.exists()] == []
    assert (profile / "log").is_dir()


def test_engines_of_an_attached_cluster_are_counted_by_the_given_counter(tmp_path: Path):
    """Engines started as job steps are not in the cluster file: the controller's count wins."""
    cluster_file = tmp_path / "cluster.json"
    cluster_file.write_text(json.dumps({"cluster": {}, "engines": {"sets": {"1": {"n": 0}}}}))
    params = {"MODE": "distributed", "IPP_CLUSTER_FILE": str(cluster_file)}
    asked = []

    def controller_count(path: str) -> int:
        asked.append(path)
        return 2

    assert validate(params, controller_count)["N_RANKS"] == 2  # N_RANKS=0: all of them
    assert validate({**params, "N_RANKS": 2}, controller_count)["N_RANKS"] == 2
    assert asked == [str(cluster_file)] * 2
    with pytest.raises(HiresmedError, match="N_RANKS=3 but IPP_CLUSTER_FILE=.* has 2 engines"):
        validate({**params, "N_RANKS": 3}, controller_count)


def test_a_rank_that_sees_one_gpu_uses_it_whatever_its_local_rank():
    assert [training.select_gpu(["GPU:0"], rank) for rank in range(4)] == ["GPU:0"] * 4


def test_a_rank_that_sees_several_gpus_uses_the_one_at_its_local_rank():
    gpus = ["GPU:0", "GPU:1"]
    assert [training.select_gpu(gpus, rank) for rank in range(2)] == gpus


def test_a_local_rank_past_the_visible_gpus_names_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with pytest.raises(HiresmedError, match=r"local rank 2 .*CUDA_VISIBLE_DEVICES='2,3'"):
        training.select_gpu(["GPU:0", "GPU:1"], 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(HiresmedError, match=r"local rank 2 .*CUDA_VISIBLE_DEVICES=unset"):
        training.select_gpu(["GPU:0", "GPU:1"], 2)


def test_a_serial_run_records_the_node_name_even_after_a_local_distributed_run(monkeypatch):
    monkeypatch.setenv("HOROVOD_HOSTNAME", "localhost")  # every rank of its cluster here
    # The record names a rank's host by node_name (training.rank_result).
    assert training.node_name(training.join_ranks(distributed=False).host) == socket.gethostname()
    assert training.node_name("localhost") == socket.gethostname()
    assert training.node_name("nodeB") == "nodeB"


def test_the_mpi_launcher_is_refused_with_the_reason_and_the_slurm_ways():
    with pytest.raises(HiresmedError, match=r"IPP_LAUNCHER='mpi' is not supported: .*mpi4py"):
        validate({"MODE": "distributed", "IPP_LAUNCHER": "mpi", "RENDEZVOUS_ADDR": "10.0.0.1"})


class _RegisteredClient:
    """Stands in for a client whose controller still lists every engine (no heartbeat missed)."""

    ids = [0, 1, 2, 3]


def test_engines_whose_slurm_job_ended_are_lost_at_the_next_remote_check(monkeypatch):
    """The controller drops a dead engine only after 30 s of silence; Slurm knows at once."""
    states = {"12": "CANCELLED", "13": "RUNNING", "14": "unknown (scontrol did not answer)"}
    asked = []

    def job_state(job: str) -> str:
        asked.append(job)
        return states[job]

    monkeypatch.setattr(slurm, "job_state", job_state)
    steps = ["12.0", "12.0", "13.0", "14.0"]
    facts = [
        EngineFacts(
            index, f"node{index}", 100, "0", f"10.0.0.{index + 2}", "eth0", (), (), 1, 0, step
        )
        for index, step in enumerate(steps)
    ]
    engines = Engines(_RegisteredClient(), [0, 1, 2, 3], "", Path(), [], facts)

    assert engines.lost(check_remote=False) == []
    assert asked == []
    assert engines.lost(check_remote=True) == [0, 1]  # the cancelled job's two engines
    assert sorted(asked) == ["12", "13", "14"]  # one scontrol per job


class _AskedClient:
    """Stands in for an ipyparallel Client of a controller with ``ids``; records what is asked."""

    def __init__(self, ids: list[int], steps: list[str]):
        self.ids, self.steps = ids, steps
        self.asked: list[str] = []

    def __getitem__(self, key):
        return self

    def apply_async(self, function):
        self.asked.append(function.__name__)
        return self

    def get(self, timeout: float) -> list[str]:
        return self.steps

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("registered", "expected"),
    # As many engines as launched; one more (a step of job 7); and one started in batch job 9
    # outside srun, which names the whole allocation: never cancelled.
    [([0, 1], []), ([0, 1, 2], ["7.0"]), ([0, 1, 2, 3], ["7.0"])],
)
def test_cluster_stop_asks_engines_for_their_job_step_only_past_what_its_launcher_started(
    tmp_path: Path, monkeypatch, registered, expected
):
    """A cluster's own Slurm job is cancelled whole; only engines beyond those its launcher
    started (srun ipengine in another allocation) are asked, so dead engines of a cancelled
    job, still registered, hold nothing up."""
    import ipyparallel

    state = {
        "cluster": {"cluster_id": "c1", "profile_dir": str(tmp_path)},
        "engines": {"sets": {"s1": {"n": 2, "job_id": "5"}}},
    }
    cluster_file = tmp_path / "cluster-c1.json"
    cluster_file.write_text(json.dumps(state))
    client = _AskedClient(registered, ["5.0", "5.0", "7.0", "9"][: len(registered)])
    monkeypatch.setattr(ipyparallel, "Client", lambda *args, **kwargs: client)

    steps = stopping._job_steps_of_engines(str(cluster_file), state)

    assert steps == expected  # the launcher's own job 5 is never a step to cancel
    assert client.asked == (["slurm_step"] if expected else [])


def test_cluster_stop_does_not_wait_for_a_controller_whose_process_has_ended(
    tmp_path: Path, monkeypatch
):
    """When the owner was judged gone on this host: its client would wait PROBE_SECONDS (30 s)
    for an answer that cannot come. A controller still running, or one whose owner nobody
    judged here, is asked as before."""
    import ipyparallel

    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its pid names no process
    state = {
        "cluster": {"cluster_id": "c1", "profile_dir": str(tmp_path)},
        "controller": {"class": "Local", "state": {"pid": ended.pid}},
        "engines": {"sets": {"s1": {"n": 2}}},
    }
    cluster_file = tmp_path / "cluster-c1.json"
    cluster_file.write_text(json.dumps(state))
    connected: list[int] = []
    client = _AskedClient([0, 1, 2], ["7.0", "7.0", "7.0"])
    monkeypatch.setattr(
        ipyparallel, "Client", lambda *args, **kwargs: connected.append(1) or client
    )
    # Its owner judged gone on this host (the undertaker, reap_orphans): not asked.
    assert stopping._job_steps_of_engines(str(cluster_file), state, owner_gone_here=True) == []
    assert connected == []
    # `cluster stop` judged nothing: the pid may be another host's (a shared profile folder).
    assert stopping._job_steps_of_engines(str(cluster_file), state) == ["7.0"]
    assert connected == [1]
    state["controller"]["state"]["pid"] = os.getpid()  # a live controller is asked
    assert stopping._job_steps_of_engines(str(cluster_file), state, owner_gone_here=True) == ["7.0"]
    assert connected == [1, 1]
