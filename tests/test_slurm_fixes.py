"""Unit tests of what running under Slurm needs, without a Slurm: ipcluster's id-less cluster
files, engines counted from the controller, GPUs seen by a rank, the launcher's batch file."""

from __future__ import annotations

from pathlib import Path

from hiresmed_nb.cluster.engines import stop_cluster


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
