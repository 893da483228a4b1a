"""Finding GPUs without TensorFlow, and the slots of a packed study: which CUDA_VISIBLE_DEVICES
and thread share each engine gets, on one host and across hosts (no GPU needed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hiresmed_nb.cluster import devices
from hiresmed_nb.cluster.devices import EngineDevices, Gpu, Slot, engine_devices, slots_of_engines
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.placement import HostSlots, parse_hosts

UUIDS = [f"GPU-{n}a3f0c2e-1111-2222-3333-44445555666{n}" for n in range(4)]
SMI_OUTPUT = "".join(f"{n}, {uuid}\n" for n, uuid in enumerate(UUIDS))
FOUR_GPUS = devices.parse_nvidia_smi(SMI_OUTPUT)
RUN = devices.RUN_PARAMETERS  # a run's ranks: errors name N_RANKS and HOSTS


def test_nvidia_smi_output_gives_each_gpu_its_number_and_uuid():
    gpus = devices.parse_nvidia_smi("1, " + UUIDS[1] + "\n\n0, " + UUIDS[0] + "\nWarning: x\n")
    assert [gpu.index for gpu in gpus] == [0, 1]
    assert [gpu.device for gpu in gpus] == UUIDS[:2]


def test_a_fake_nvidia_smi_on_the_path_is_read(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '{SMI_OUTPUT}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert devices.installed_gpus(proc=tmp_path / "absent") == FOUR_GPUS


def test_without_nvidia_smi_the_driver_folder_lists_gpus_in_bus_order(tmp_path):
    for bus, uuid in (("0000:3b:00.0", UUIDS[1]), ("0000:1a:00.0", UUIDS[0])):
        (tmp_path / bus).mkdir()
        (tmp_path / bus / "information").write_text(f"Model: \t Tesla\nGPU UUID: \t {uuid}\n")
    gpus = devices.installed_gpus(query=lambda: None, proc=tmp_path)
    assert [(gpu.index, gpu.device) for gpu in gpus] == [(0, UUIDS[0]), (1, UUIDS[1])]


def test_no_nvidia_smi_and_no_driver_folder_means_no_gpus(tmp_path):
    assert devices.installed_gpus(query=lambda: None, proc=tmp_path / "absent") == []


@pytest.mark.parametrize(
    ("value", "entries"),
    [("0,1", ["0", "1"]), (" 2 , 3", ["2", "3"]), ("", []), ("-1", []), ("1,-1,2", ["1"])],
)
def test_cuda_visible_devices_is_read_as_cuda_reads_it(value, entries):
    assert devices.visible_entries(value) == entries


def test_an_existing_cuda_visible_devices_is_respected_in_its_order():
    environ = {"CUDA_VISIBLE_DEVICES": "3,1", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    gpus = devices.visible_gpus(FOUR_GPUS, environ)
    assert [(gpu.index, gpu.device, gpu.order) for gpu in gpus] == [
        (3, "3", "FASTEST_FIRST"),
        (1, "1", "FASTEST_FIRST"),
    ]
    by_uuid = devices.visible_gpus(FOUR_GPUS, {"CUDA_VISIBLE_DEVICES": UUIDS[2][:12]})
    assert [(gpu.index, gpu.device) for gpu in by_uuid] == [(2, UUIDS[2][:12])]


@pytest.mark.parametrize("value", ["4", "GPU-ffff", "1,1"])
def test_cuda_visible_devices_naming_no_gpu_or_one_twice_is_a_named_error(value):
    with pytest.raises(HiresmedError, match="CUDA_VISIBLE_DEVICES"):
        devices.visible_gpus(FOUR_GPUS, {"CUDA_VISIBLE_DEVICES": value})


def test_empty_cuda_visible_devices_on_a_gpu_machine_plans_cpu_slots():
    slots = devices.plan_this_machine(None, {"CUDA_VISIBLE_DEVICES": ""}, FOUR_GPUS, cores=8)
    assert slots == [Slot("localhost", 0, "", None, 8)]


def test_one_slot_per_gpu_each_engine_seeing_only_its_own():
    slots = devices.plan_this_machine(None, {}, FOUR_GPUS, cores=16)
    assert [slot.cuda_visible_devices for slot in slots] == UUIDS
    assert [slot.gpu_index for slot in slots] == [0, 1, 2, 3]
    environments = [devices.slot_environment(slot) for slot in slots]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in environments] == UUIDS  # one each, no commas
    assert {env["CUDA_DEVICE_ORDER"] for env in environments} == {"PCI_BUS_ID"}
    assert {env["TF_NUM_INTRAOP_THREADS"] for env in environments} == {"4"}


def test_slots_asks_for_the_first_gpus_and_never_shares_one():
    two = devices.plan_this_machine(2, {}, FOUR_GPUS, cores=16)
    assert [slot.cuda_visible_devices for slot in two] == UUIDS[:2]
    with pytest.raises(HiresmedError, match=r"--slots asks for 5 slots .* shows 4 GPUs"):
        devices.plan_this_machine(5, {}, FOUR_GPUS, cores=16)
    pinned = {"CUDA_VISIBLE_DEVICES": "2,3"}
    narrowed = r"--slots asks for 3 .*\(CUDA_VISIBLE_DEVICES='2,3' narrows them\)"
    with pytest.raises(HiresmedError, match=narrowed):
        devices.plan_this_machine(3, pinned, FOUR_GPUS, cores=16)
    assert [s.cuda_visible_devices for s in devices.plan_this_machine(2, pinned, FOUR_GPUS)] == [
        "2",
        "3",
    ]


@pytest.mark.parametrize(
    ("slots", "cores", "threads"), [(3, 8, 2), (2, 2, 1), (4, 2, 1), (1, 6, 6)]
)
def test_cpu_slots_share_the_cores_without_oversubscribing(slots, cores, threads):
    planned = devices.plan_this_machine(slots, {}, [], cores=cores)
    assert len(planned) == slots
    assert {slot.threads for slot in planned} == {threads}
    assert slots * threads <= max(cores, slots)  # at least one thread each
    assert {slot.cuda_visible_devices for slot in planned} == {""}


def test_without_gpus_or_slots_a_study_runs_one_run_at_a_time():
    assert len(devices.plan_this_machine(None, {}, [], cores=2)) == 1


@pytest.mark.parametrize("slots", [0, -2, True, 1.5])
def test_slots_must_be_a_positive_number(slots):
    with pytest.raises(HiresmedError, match="--slots"):
        devices.plan_this_machine(slots, {}, [], cores=2)


def test_hosts_get_their_slots_with_one_gpu_each_or_a_core_share():
    hosts = devices.parse_slot_hosts("a:2,b:3")
    gpus = {"a": FOUR_GPUS, "b": []}
    slots = devices.plan_slots(None, hosts, gpus, {"a": 32, "b": 12})
    assert [slot.key for slot in slots] == ["a/0", "a/1", "b/0", "b/1", "b/2"]
    assert [slot.cuda_visible_devices for slot in slots] == [*UUIDS[:2], "", "", ""]
    assert [slot.threads for slot in slots] == [16, 16, 4, 4, 4]
    on_a = [devices.slot_environment(s)["CUDA_VISIBLE_DEVICES"] for s in slots if s.host == "a"]
    assert len(set(on_a)) == len(on_a)


def test_two_gpu_hosts_each_number_their_own_gpus_from_zero():
    smi = devices.parse_nvidia_smi("0, GPU-b0\n1, GPU-b1\n")
    slots = devices.plan_slots(
        None, [HostSlots("a", 2), HostSlots("b", 2)], {"a": FOUR_GPUS, "b": smi}, {}
    )
    assert [(s.key, s.gpu_index, s.cuda_visible_devices) for s in slots] == [
        ("a/0", 0, UUIDS[0]),
        ("a/1", 1, UUIDS[1]),
        ("b/0", 0, "GPU-b0"),
        ("b/1", 1, "GPU-b1"),
    ]
    assert {s.threads for s in slots} == {1}  # cores unknown: one thread cannot oversubscribe


def fake_command(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def test_each_host_of_hosts_is_asked_over_ssh_for_its_gpus_and_cores(tmp_path, monkeypatch):
    """The real question, through a stand-in `ssh` that runs the remote command here, on a
    'host' whose nvidia-smi lists four GPUs and whose CUDA_VISIBLE_DEVICES keeps two."""
    from hiresmed_nb.cluster.hosts import ask_devices

    fake_command(tmp_path, "nvidia-smi", f"printf '{SMI_OUTPUT}'")
    fake_command(tmp_path, "ssh", 'eval "${@: -1}"')  # ssh -o ... HOST COMMAND: run COMMAND
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    found = ask_devices([HostSlots("a", 2), HostSlots("b", 1)], sys.executable)
    gpus, cores = found["a"]
    assert [(gpu.index, gpu.device) for gpu in gpus] == [(2, "2"), (0, "0")]
    assert cores == devices.available_cores()
    assert list(found) == ["a", "b"]


def test_a_packed_study_on_hosts_plans_each_hosts_gpus_and_cores(monkeypatch):
    from hiresmed_nb.cluster import slots_cluster
    from hiresmed_nb.study import packed

    answers = {"a": (FOUR_GPUS, 32), "b": ([], 12)}
    monkeypatch.setattr(slots_cluster, "ask_devices", lambda hosts, python: answers)
    slots = packed.study_slots(packed.SlotRequest(hosts="a:2,b:3"))
    assert [(s.key, s.cuda_visible_devices, s.threads) for s in slots] == [
        ("a/0", UUIDS[0], 16),
        ("a/1", UUIDS[1], 16),
        ("b/0", "", 4),
        ("b/1", "", 4),
        ("b/2", "", 4),
    ]
    answers["a"] = (FOUR_GPUS[:1], 32)  # a host with fewer GPUs than its slots: named
    with pytest.raises(HiresmedError, match="--hosts asks for 2 slots on a, which shows 1 GPU"):
        packed.study_slots(packed.SlotRequest(hosts="a:2,b:3"))


def test_a_runs_ranks_are_slots_one_gpu_each_and_errors_name_its_parameters(monkeypatch):
    from hiresmed_nb.cluster import slots_cluster

    answers = {"a": (FOUR_GPUS[:1], 32), "b": ([], 12)}
    monkeypatch.setattr(slots_cluster, "ask_devices", lambda hosts, python: answers)
    planned = slots_cluster.planned_slots(None, parse_hosts("a:1,b:2"), "", RUN)
    assert [(s.key, s.cuda_visible_devices, s.threads) for s in planned] == [
        ("a/0", UUIDS[0], 32),
        ("b/0", "", 6),
        ("b/1", "", 6),
    ]
    with pytest.raises(HiresmedError, match="HOSTS asks for 2 slots on a, which shows 1 GPU"):
        slots_cluster.planned_slots(None, parse_hosts("a:2"), "", RUN)
    with pytest.raises(HiresmedError, match=r"N_RANKS asks for 5 slots .* shows 4 GPUs"):
        devices.plan_this_machine(5, {}, FOUR_GPUS, cores=16, names=RUN)


def test_bad_hosts_are_named_errors():
    with pytest.raises(HiresmedError, match=r"--hosts asks for 4 slots on a, which shows 2 GPUs"):
        devices.plan_slots(None, [HostSlots("a", 4)], {"a": FOUR_GPUS[:2]}, {"a": 8})
    with pytest.raises(HiresmedError, match="--slots 3 and --hosts"):
        devices.plan_slots(3, [HostSlots("a", 2), HostSlots("b", 2)], {}, {})
    with pytest.raises(HiresmedError, match="--hosts"):
        devices.parse_slot_hosts("a:0")


def test_a_slot_engine_reports_its_slot_for_the_record():
    gpu_slot, cpu_slot = Slot("a", 1, UUIDS[3], 3, 4), Slot("b", 0, "", None, 2)
    assert devices.slot_of_this_process(devices.slot_environment(gpu_slot)) == {
        "key": "a/1",
        "gpu": 3,
        "threads": 4,
    }
    assert devices.slot_of_this_process(devices.slot_environment(cpu_slot))["gpu"] is None
    assert devices.slot_of_this_process({}) is None


def test_trusted_entries_when_no_gpu_can_be_listed():
    gpus = devices.visible_gpus([], {"CUDA_VISIBLE_DEVICES": "1,0"})
    assert gpus == [Gpu(0, "1", ""), Gpu(1, "0", "")]


def test_planning_slots_imports_no_tensorflow():
    code = (
        "import sys; from hiresmed_nb.cluster import devices; import hiresmed_nb.study.packed; "
        "devices.plan_this_machine(); print('tensorflow' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "False"


def test_the_console_line_says_when_cpu_slots_share_cores():
    slots = devices.plan_this_machine(4, {}, [], cores=2)
    assert "slots share cores" in devices.describe_slots(slots, {"localhost": 2})
    assert "2 threads each" in devices.describe_slots(
        devices.plan_this_machine(2, {}, [], cores=4), {"localhost": 4}
    )


# --- An attached cluster: one slot per engine it holds ----------------------------------------


def engine(engine_id, gpus=(), numbers=(), visible="", cpus=(0, 1)):
    return EngineDevices(engine_id, tuple(gpus), tuple(numbers), visible, frozenset(cpus))


def test_engines_of_a_slurm_allocation_become_one_slot_each():
    # Two nodes, two tasks each, every task confined to its own GPU (seen as 0) and its CPUs.
    engines = [
        engine(0, [UUIDS[0]], [0], "0", (0, 1, 2, 3)),
        engine(1, [UUIDS[1]], [0], "0", (4, 5, 6, 7)),
        engine(2, ["GPU-c0"], [0], "0", (0, 1, 2, 3)),
        engine(3, ["GPU-c1"], [0], "0", (4, 5, 6, 7)),
    ]
    slots = slots_of_engines(engines, ["n1", "n1", "n2", "n2"])
    assert [slots[i].key for i in range(4)] == ["n1/0", "n1/1", "n2/0", "n2/1"]
    assert {slot.threads for slot in slots.values()} == {4}  # bound CPUs are not shared
    assert {slot.cuda_visible_devices for slot in slots.values()} == {"0"}


def test_engines_sharing_cpus_split_them():
    slots = slots_of_engines([engine(i) for i in range(3)], ["localhost"] * 3)
    assert [slots[i].threads for i in range(3)] == [1, 1, 1]
    assert slots_of_engines([engine(7, cpus=range(8))], ["h"])[7].threads == 8


def test_an_engine_seeing_several_gpus_or_a_gpu_seen_twice_is_a_named_error():
    greedy = engine(5, UUIDS[:2], [0, 1], "0,1")
    with pytest.raises(HiresmedError, match=r"IPP_CLUSTER_FILE: engine 5 on h sees 2 GPUs"):
        slots_of_engines([greedy], ["h"])
    twins = [engine(0, UUIDS[:1], [0], "0"), engine(1, UUIDS[:1], [0], "0")]
    with pytest.raises(HiresmedError, match=r"engines 0 and 1 on h both see GPU"):
        slots_of_engines(twins, ["h", "h"])
    assert len(slots_of_engines(twins, ["h", "g"])) == 2  # one GPU name on two machines


def test_an_engine_reports_the_gpus_it_sees(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '{SMI_OUTPUT}'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    seen = engine_devices(3)
    assert (seen.gpus, seen.numbers, seen.cuda_visible_devices) == ((UUIDS[2],), (2,), "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert engine_devices(3).gpus == ()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # an engine left to see every GPU is refused
    with pytest.raises(HiresmedError, match="engine 3 on h sees 4 GPUs"):
        slots_of_engines([engine_devices(3)], ["h"])


def test_an_engine_on_a_one_gpu_machine_without_cuda_visible_devices_keeps_its_gpu():
    slot = slots_of_engines([engine(0, UUIDS[:1], [0], "")], ["h"])[0]
    assert (slot.cuda_visible_devices, slot.gpu_index) == (UUIDS[0], 0)
