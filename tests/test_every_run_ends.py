"""Every run ends as a record or a `.failed.json`: engines that cannot be replaced, slots that
leave a packed study, a notebook past its time limit, and the study's exit status (fake engines
and executors, no training)."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import nbformat
import pytest
import yaml
from small_images import SMALL_SKIN
from test_stop import start_cluster_from_the_command_line

from hiresmed_nb import study
from hiresmed_nb.__main__ import main
from hiresmed_nb.cluster import slots_cluster
from hiresmed_nb.cluster.devices import Slot
from hiresmed_nb.cluster.errors import RunTimeoutError
from hiresmed_nb.cluster.slots_cluster import SlotsCluster
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.params import DEFAULT_RUN_TIMEOUT, validate
from hiresmed_nb.study import runner
from hiresmed_nb.study.executor import papermill_executor
from hiresmed_nb.study.kernels import live_kernels
from hiresmed_nb.study.packed import SlotsLost, run_packed
from hiresmed_nb.study.packing import in_given_order

ATTACHED_RUN = {
    "STUDY": "attached",
    "DATASET": "synthetic-skin",
    "ARCH": "compact",
    "IMAGE_SIZE": 32,
    "IMAGES_PER_CLASS": 4,
    "TEST_IMAGES_PER_CLASS": 4,
    "BATCH_SIZE": 4,
    "EPOCHS": 1,
    "MODE": "serial",
    "DATA_DIR": SMALL_SKIN,
}
TINY = {
    "STUDY": "ends",
    "DATA_DIR": SMALL_SKIN,
    "IMAGE_SIZE": 32,
    "IMAGES_PER_CLASS": 4,
    "EPOCHS": 1,
    "MODE": "serial",
}


class RankLost(Exception):
    """What papermill raises when the notebook's cell raised RankLostError (it names it)."""

    ename = "RankLostError"
    evalue = "the engine process of rank 0 is gone"


class FakeEngines:
    """A packed study's slot engines: replacing the engine of ``broken_slot`` raises."""

    def __init__(self, slots: list[Slot], broken_slot: str):
        self.slots = slots
        self.broken_slot = broken_slot
        self.engine_of = {slot.key: index for index, slot in enumerate(slots)}
        self.replaced: list[str] = []
        self.stopped = False

    @property
    def cluster_file(self) -> str:
        return "fake-cluster.json"

    def engine_ids(self, slots):
        return [self.engine_of[slot.key] for slot in slots]

    def replace(self, slots):
        for slot in slots:
            if slot.key == self.broken_slot:
                raise HiresmedError(f"no engine registered within 120 s for slot(s) {slot.key}")
            self.replaced.append(slot.key)

    def check(self, slots):
        pass

    def recycle_outgrown(self, slots):
        return None

    def stop(self):
        self.stopped = True

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()


def fake_executor(failing_engine: int, ran_on: dict[str, list[int]]):
    """Write the run's record, except on ``failing_engine``, where a rank is lost."""

    def execute(notebook, output, parameters, cwd, **options):
        if notebook.name != "01_train.ipynb":
            return
        run_id = validate(
            {k: v for k, v in parameters.items() if k not in ("POOL_CLUSTER_FILE", "POOL_ENGINES")}
        ).run_id
        ran_on.setdefault(run_id, []).extend(parameters["POOL_ENGINES"])
        if failing_engine in parameters["POOL_ENGINES"]:
            raise RankLost()
        record = Path(parameters["RESULTS_DIR"]) / f"{run_id}.json"
        record.write_text(json.dumps({"run_id": run_id}))

    return execute


def test_a_packed_run_whose_slot_replacement_fails_is_recorded_and_its_slot_leaves(
    tmp_path, monkeypatch
):
    runs = study.expand({**TINY, "SEEDS": [0, 1, 2, 3]})
    slots = [Slot("localhost", 0, "", None, 1), Slot("localhost", 1, "", None, 1)]
    engines = FakeEngines(slots, broken_slot=slots[0].key)
    monkeypatch.setattr(runner, "slot_engines", lambda request, planned: engines)
    monkeypatch.setattr(runner, "study_slots", lambda request: slots)
    ran_on: dict[str, list[int]] = {}
    lines: list[str] = []
    result = study.run_study(
        runs,
        tmp_path / "ends",
        executor=fake_executor(failing_engine=0, ran_on=ran_on),
        report=False,
        progress=False,
        echo=lines.append,
        slots=study.SlotRequest(slots=2),
    )
    assert not result.ok
    [failed_id] = result.failed
    assert ran_on[failed_id] == [0]  # not retried: its slot had no engine to retry on
    failure = json.loads((tmp_path / "ends" / "runs" / f"{failed_id}.failed.json").read_text())
    assert failure["ename"] == "HiresmedError"
    assert "localhost/0" in failure["evalue"]
    assert failure["run_error"].startswith("RankLostError")
    # The slot left the study: every other run ran on the other slot, and ended with a record.
    assert sorted(result.executed) == sorted(r.run_id for r in runs if r.run_id != failed_id)
    assert all(ran_on[run_id] == [1] for run_id in result.executed)
    assert any("localhost/0 lost" in line for line in lines)
    assert engines.stopped


class TimedOut(Exception):
    ename = "RunTimeoutError"
    evalue = "the run exceeded its time limit of 5 s (RUN_TIMEOUT)"


class RecordingPool:
    """The runner's pool, minus engines: records what it was asked to retire."""

    def __init__(self):
        self.retired: list[str] = []

    def attach_parameters(self, parameters):
        return dict(parameters)

    def retire_parameters(self, parameters):
        self.retired.append(parameters["MODE"])


def test_a_timed_out_run_gives_up_its_engines_is_not_retried_and_is_recorded(tmp_path):
    [run] = study.expand(TINY)
    attempts: list[str] = []

    def executor(notebook, output, parameters, cwd, **options):
        attempts.append(notebook.name)
        raise TimedOut()

    pool = RecordingPool()
    result = runner.StudyResult(tmp_path)
    (tmp_path / "runs").mkdir()
    ok = runner._execute_run(
        run, tmp_path / "runs", tmp_path, executor, pool, False, result, lambda _: None
    )
    assert not ok and attempts == ["01_train.ipynb"]  # a hung run would hang again: no retry
    assert pool.retired == ["serial"]  # its engines may still run the hung task
    failure = json.loads((tmp_path / "runs" / f"{run.run_id}.failed.json").read_text())
    assert failure["ename"] == "RunTimeoutError" and "RUN_TIMEOUT" in failure["evalue"]


def test_runs_wider_than_the_slots_left_fail_and_the_others_go_on():
    slots = [Slot("localhost", i, "", None, 1) for i in range(2)]
    runs = ["loses-a-slot", "gang", "serial"]
    width = {"loses-a-slot": 1, "gang": 2, "serial": 1}.get

    def start(run, run_slots):
        return run, run_slots

    def wait(handles):
        ended = []
        for handle in handles:
            run, run_slots = handle
            error = SlotsLost(run_slots, "engine gone") if run == "loses-a-slot" else None
            ended.append((handle, error))
        return ended

    result = run_packed(
        runs, slots, start, wait, width=width, order=in_given_order, echo=lambda _: None
    )
    failed = {run: error for run, error in result.failed}
    assert set(failed) == {"loses-a-slot", "gang"}
    assert isinstance(failed["gang"], HiresmedError) and "only 1" in str(failed["gang"])
    assert result.done == ["serial"]
    assert result.placed["serial"] == (slots[1],)


def write_params(tmp_path: Path, **values) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, **values}))
    return path


def test_the_study_exits_non_zero_when_a_run_failed(tmp_path, monkeypatch):
    slots = [Slot("localhost", 0, "", None, 1)]
    engines = FakeEngines(slots, broken_slot="")
    monkeypatch.setattr(runner, "slot_engines", lambda request, planned: engines)
    monkeypatch.setattr(runner, "study_slots", lambda request: slots)
    ran_on: dict[str, list[int]] = {}
    monkeypatch.setattr(runner, "papermill_executor", fake_executor(0, ran_on), raising=True)
    arguments = ["run", str(write_params(tmp_path)), "--slots", "1", "--no-report"]
    assert main([*arguments, "--outputs", str(tmp_path / "out")]) == 1
    assert list((tmp_path / "out" / "ends" / "runs").glob("*.failed.json"))


def test_run_timeout_reaches_every_run_and_must_be_positive(tmp_path, monkeypatch):
    seen: list[int] = []

    def run_study(runs, study_dir, **options):
        seen.extend(run.params["RUN_TIMEOUT"] for run in runs)
        return runner.StudyResult(study_dir)

    monkeypatch.setattr(study, "run_study", run_study)
    params = str(write_params(tmp_path, SEEDS=[0, 1]))
    assert main(["run", params, "--run-timeout", "90"]) == 0
    assert seen == [90, 90]
    seen.clear()
    assert main(["run", params]) == 0
    assert seen == [DEFAULT_RUN_TIMEOUT] * 2
    with pytest.raises(SystemExit):
        main(["run", params, "--run-timeout", "0"])
    with pytest.raises(HiresmedError, match="RUN_TIMEOUT"):
        validate({"RUN_TIMEOUT": 0})


@pytest.mark.notebook
def test_a_notebook_past_its_time_limit_has_its_kernel_killed_and_a_named_error(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "hiresmed", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell("RUN_TIMEOUT = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import threading\nthreading.Event().wait()  # hangs"),
    ]
    source = tmp_path / "hangs.ipynb"
    nbformat.write(notebook, source)
    output = tmp_path / "out" / "hangs.ipynb"
    output.parent.mkdir()
    with pytest.raises(RunTimeoutError) as raised:
        papermill_executor(source, output, {"RUN_TIMEOUT": 5}, tmp_path, grace_seconds=0)
    assert raised.value.seconds == 5
    assert "kernel was killed" in str(raised.value)
    assert output.exists()  # the executed notebook is kept, up to the cell that hung
    assert not live_kernels()


# The slots' cluster's lock ----------------------------------------------------------------------


class SlowRegistry:
    """An ipyparallel client and cluster whose replacement engine registers only when told."""

    def __init__(self):
        self.registered = [0, 1]
        self.started = threading.Event()
        self.register_new = threading.Event()
        self.starts: list[dict] = []

    @property
    def ids(self):
        if self.register_new.is_set() and 2 not in self.registered:
            self.registered.append(2)
        return list(self.registered)

    def __getitem__(self, engine_id):
        registry = self

        class View:
            def apply_async(self, function):
                class Reply:
                    def get(self, timeout=None):
                        return registry.slot_of(engine_id)

                return Reply()

        return View()

    def slot_of(self, engine_id):
        return {0: "localhost/0", 1: "localhost/1", 2: "localhost/0"}[engine_id]

    def stop_engines_sync(self, engine_set):
        pass

    def close(self):
        pass

    def start_engines_sync(self, n, **extra):
        self.starts.append(extra)
        self.started.set()
        return f"set-{len(self.starts)}"


def slots_cluster_with(registry: SlowRegistry) -> tuple[SlotsCluster, list[Slot]]:
    slots = [Slot("localhost", 0, "", None, 1), Slot("localhost", 1, "", None, 1)]
    cluster = SlotsCluster(slots)
    cluster._cluster = cluster._client = registry
    cluster.engine_of = {"localhost/0": 0, "localhost/1": 1}
    cluster._sets = {"localhost/0": "set-a", "localhost/1": "set-b"}
    cluster._seen = {0, 1}
    return cluster, slots


def test_a_slot_replacement_waits_for_its_engine_without_blocking_the_other_slots(monkeypatch):
    monkeypatch.setattr(slots_cluster, "POLL_SECONDS", 0.01)
    registry = SlowRegistry()
    cluster, slots = slots_cluster_with(registry)
    replacing = threading.Thread(target=cluster.replace, args=([slots[0]],), daemon=True)
    replacing.start()
    assert registry.started.wait(timeout=120)
    answered: list[list[int]] = []
    asking = threading.Thread(target=lambda: answered.append(cluster.engine_ids([slots[1]])))
    asking.start()
    asking.join(timeout=120)  # generous: it only needs the lock
    registry.register_new.set()  # now let the replacement finish, whatever happened above
    replacing.join(timeout=120)
    assert answered == [[1]]
    assert cluster.engine_ids(slots) == [2, 1]
    assert cluster.replaced == 1


def test_no_engine_starts_after_the_slots_cluster_stopped(monkeypatch):
    registry = SlowRegistry()
    cluster, slots = slots_cluster_with(registry)
    monkeypatch.setattr(slots_cluster, "stop_cluster", lambda *args: None)
    cluster.stop()
    with pytest.raises(HiresmedError, match="stopped"):
        cluster.replace([slots[0]])
    assert registry.starts == []


# An attached cluster's lost engine ---------------------------------------------------------------


@pytest.mark.notebook
@pytest.mark.distributed
def test_a_lost_engine_of_an_attached_cluster_fails_its_run_by_name_and_its_slot_leaves(
    tmp_path, monkeypatch, skin_dir
):
    # The first run to end an epoch kills its engine (the engines inherit this: faults.py), as a
    # cancelled job would; the cluster is not ours, so nothing replaces it.
    marker = tmp_path / "an-engine-was-killed"
    monkeypatch.setenv("HIRESMED_INJECT_FAULT", f"kill-rank:0:0:{marker}")
    cluster_file, _ = start_cluster_from_the_command_line()
    try:
        runs = study.expand({**ATTACHED_RUN, "IPP_CLUSTER_FILE": cluster_file, "SEEDS": [0, 1, 2]})
        lines: list[str] = []
        result = study.run_study(
            runs,
            tmp_path / "attached",
            report=False,
            progress=False,
            echo=lines.append,
            slots=study.SlotRequest(cluster_file=cluster_file),
        )
    finally:
        stop = [sys.executable, "-m", "hiresmed_nb", "cluster", "stop", cluster_file]
        subprocess.run(stop, capture_output=True, timeout=300, check=False)
    assert marker.exists()
    assert not result.ok
    [failed_id] = result.failed
    runs_dir = tmp_path / "attached" / "runs"
    failure = json.loads((runs_dir / f"{failed_id}.failed.json").read_text())
    assert failure["ename"] == "EngineLostError"
    assert cluster_file in failure["evalue"] and " on " in failure["evalue"]
    assert failure["run_error"].startswith("RankLostError")
    # The other slot went on with every other run; the lost engine's slot took no further run.
    assert sorted(result.executed) == sorted(r.run_id for r in runs if r.run_id != failed_id)
    engines = {
        json.loads((runs_dir / f"{run_id}.json").read_text())["ranks"][0]["slot"]["engine"]
        for run_id in result.executed
    }
    assert len(engines) == 1
    assert f"engine {engines.pop()}" not in failure["evalue"]
    assert any("lost: EngineLostError" in line for line in lines)


def test_a_packed_study_recycles_slot_engines_only_while_a_run_waits_for_slots():
    from hiresmed_nb.study.packed import run_on_slots

    class CountingEngines(FakeEngines):
        def __init__(self, slots):
            super().__init__(slots, broken_slot="")
            self.recycled: list[tuple[str, ...]] = []

        def recycle_outgrown(self, slots):
            self.recycled.append(tuple(slot.key for slot in slots))
            return None

    engines = CountingEngines([Slot("localhost", 0, "", None, 1)])
    runs = study.expand({**TINY, "SEEDS": [0, 1, 2]})  # 3 serial runs, one after the other
    result = run_on_slots(
        runs, engines, lambda run, pool: True, echo=lambda line: None, on_interrupt=lambda: None
    )
    assert not result.failed
    # After the first two runs a run waits for the slot; after the last one none does.
    assert engines.recycled == [("localhost/0",)] * 2
