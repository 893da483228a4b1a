"""This machine's GPUs, and the slots a packed study runs on: one engine per slot.

GPUs are found without importing TensorFlow (``nvidia-smi``, else the driver's
``/proc/driver/nvidia/gpus``), so the process that plans the slots never touches a device. A
slot is one engine's share of a host: exactly one GPU, never shared, or on a host without GPUs an
equal share of its cores. :func:`slot_environment` gives the variables an engine must start with
(before TensorFlow is imported in it): ``CUDA_VISIBLE_DEVICES`` naming only its GPU, and its
TensorFlow and OpenMP thread counts.

An attached cluster's engines (``IPP_CLUSTER_FILE``: a Slurm allocation's recipe, ``cluster
start``) already have their ``CUDA_VISIBLE_DEVICES``: each reports what it sees
(:func:`engine_devices`, run on the engine), and :func:`slots_of_engines` makes one slot per
engine of the reports, refusing an engine that sees several GPUs or two engines of one machine
that see the same GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hiresmed_nb.cluster.ranks import threads_per_rank
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.placement import HostSlots, parse_hosts

NVIDIA_SMI = ("nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader")
PROC_GPUS = Path("/proc/driver/nvidia/gpus")
LOCAL_HOST = "localhost"
_NEGATIVE = re.compile(r"^-\d+$")


@dataclass(frozen=True)
class Gpu:
    """One GPU: its number (``nvidia-smi`` order) and the ``CUDA_VISIBLE_DEVICES`` entry that
    names it alone (its UUID when known, which no device ordering can change).

    ``order`` is the ``CUDA_DEVICE_ORDER`` that entry assumes ('' leaves the engine's own).
    """

    index: int
    device: str
    order: str = ""


@dataclass(frozen=True)
class Slot:
    """One engine's place: ``host`` (a ``--hosts`` name, or 'localhost'), ``index`` on that
    host, the ``CUDA_VISIBLE_DEVICES`` value it must get (one GPU; '' on a host without GPUs),
    that GPU's number (None: no GPU) and its intra-op thread share of the host's cores."""

    host: str
    index: int
    cuda_visible_devices: str
    gpu_index: int | None
    threads: int
    device_order: str = ""

    @property
    def key(self) -> str:
        """Names the slot in records and on the console: ``host/index``."""
        return f"{self.host}/{self.index}"


# ---------------------------------------------------------------------------------------------
# Finding GPUs
# ---------------------------------------------------------------------------------------------


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """The GPUs in ``nvidia-smi --query-gpu=index,uuid --format=csv,noheader`` output."""
    gpus = []
    for line in output.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit():
            index, uuid = int(fields[0]), fields[1]
            gpus.append(Gpu(index, uuid if uuid.startswith("GPU-") else str(index), "PCI_BUS_ID"))
    return sorted(gpus, key=lambda gpu: gpu.index)


def gpus_from_proc(folder: Path = PROC_GPUS) -> list[Gpu]:
    """The GPUs the driver lists in ``folder`` (one sub-folder per PCI bus id, numbered in bus
    order as ``nvidia-smi`` numbers them); [] when the folder is missing."""
    if not folder.is_dir():
        return []
    gpus = []
    for index, bus in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        uuid = ""
        information = bus / "information"
        if information.is_file():
            for line in information.read_text(errors="replace").splitlines():
                name, _, value = line.partition(":")
                if name.strip() == "GPU UUID" and value.strip().startswith("GPU-"):
                    uuid = value.strip()
        gpus.append(Gpu(index, uuid or str(index), "PCI_BUS_ID"))
    return gpus


def _run_nvidia_smi() -> str | None:
    try:
        done = subprocess.run(NVIDIA_SMI, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def installed_gpus(
    query: Callable[[], str | None] = _run_nvidia_smi, proc: Path = PROC_GPUS
) -> list[Gpu]:
    """Every GPU of this machine: ``nvidia-smi``'s list, else the driver's, else none."""
    output = query()
    found = parse_nvidia_smi(output) if output is not None else []
    return found or gpus_from_proc(proc)


def visible_entries(value: str) -> list[str]:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value, as CUDA reads them: in order, up to the
    first empty or negative one ('' and '-1' mean no GPU)."""
    entries = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry or _NEGATIVE.match(entry):
            break
        entries.append(entry)
    return entries


def _match_entry(entry: str, installed: Sequence[Gpu], value: str) -> int:
    """The number of the installed GPU that a ``CUDA_VISIBLE_DEVICES`` entry names."""
    if entry.isdigit():
        if int(entry) < len(installed):
            return int(entry)
    else:  # a UUID, or enough of its start to name one GPU
        matches = [gpu.index for gpu in installed if gpu.device.startswith(entry)]
        if len(matches) == 1:
            return matches[0]
    shown = ", ".join(f"{gpu.index} ({gpu.device})" for gpu in installed)
    raise HiresmedError(
        f"CUDA_VISIBLE_DEVICES={value!r}: {entry!r} names none of this machine's GPUs "
        f"({shown}); unset it or list GPUs that exist"
    )


def visible_gpus(installed: Sequence[Gpu], environ: Mapping[str, str]) -> list[Gpu]:
    """The GPUs this process may use: the installed ones, or exactly the entries of an existing
    ``CUDA_VISIBLE_DEVICES``, in its order.

    Each entry is passed on to an engine as written (with the ``CUDA_DEVICE_ORDER`` in force), so
    it means there what it means here. Entries naming no installed GPU raise
    :class:`HiresmedError`, unless no GPU could be listed at all (no ``nvidia-smi``, no driver
    folder) or they name MIG instances: then they are trusted as given.
    """
    if "CUDA_VISIBLE_DEVICES" not in environ:
        return list(installed)
    value = environ["CUDA_VISIBLE_DEVICES"]
    order = environ.get("CUDA_DEVICE_ORDER", "")
    entries = visible_entries(value)
    if not installed or any(entry.startswith("MIG-") for entry in entries):
        # Nothing to check against (MIG instances are not in nvidia-smi's GPU list).
        return [Gpu(number, entry, order) for number, entry in enumerate(entries)]
    numbers = [_match_entry(entry, installed, value) for entry in entries]
    if len(set(numbers)) < len(numbers):
        raise HiresmedError(f"CUDA_VISIBLE_DEVICES={value!r} lists one GPU twice")
    return [Gpu(number, entry, order) for number, entry in zip(numbers, entries, strict=True)]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset``
    narrow), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def this_host() -> dict[str, object]:
    """What a host of ``--hosts`` tells the head over ssh: the GPUs its engines may use (its
    own ``CUDA_VISIBLE_DEVICES`` respected) and its cores, as JSON-ready values."""
    gpus = visible_gpus(installed_gpus(), os.environ)
    return {
        "gpus": [[gpu.index, gpu.device, gpu.order] for gpu in gpus],
        "cores": available_cores(),
    }


def host_answer(answer: Mapping[str, object]) -> tuple[list[Gpu], int]:
    """:func:`this_host`'s answer, read back on the head: (GPUs, cores)."""
    gpus = [Gpu(int(index), str(device), str(order)) for index, device, order in answer["gpus"]]
    return gpus, int(answer["cores"])


# ---------------------------------------------------------------------------------------------
# Planning the slots
# ---------------------------------------------------------------------------------------------


def host_slots(host: str, count: int, gpus: Sequence[Gpu], cores: int, flag: str) -> list[Slot]:
    """``count`` slots on ``host``: one GPU each (the first ``count`` of ``gpus``), or on a host
    without GPUs an equal share of its ``cores`` each (at least one thread). ``flag`` names the
    option that asked for ``count`` in the error raised when the host has too few GPUs."""
    if gpus and count > len(gpus):
        shown = ", ".join(str(gpu.index) for gpu in gpus)
        raise HiresmedError(
            f"{flag} asks for {count} slots on {host}, which shows {len(gpus)} GPU"
            f"{'s' * (len(gpus) != 1)} ({shown}): a slot is one GPU, never shared; "
            f"ask for at most {len(gpus)}"
        )
    threads = threads_per_rank(cores, count)
    if not gpus:
        return [Slot(host, index, "", None, threads) for index in range(count)]
    return [
        Slot(host, index, gpu.device, gpu.index, threads, gpu.order)
        for index, gpu in enumerate(gpus[:count])
    ]


# What the user gave the slot count and the hosts as: a packed study's options, or a run's
# placement parameters.
STUDY_OPTIONS = ("--slots", "--hosts")
RUN_PARAMETERS = ("N_RANKS", "HOSTS")


def check_slot_count(slots: int | None) -> None:
    if slots is not None and (isinstance(slots, bool) or not isinstance(slots, int) or slots < 1):
        raise HiresmedError(f"--slots {slots!r}: give a positive number of slots, e.g. --slots 2")


def plan_slots(
    slots: int | None,
    hosts: Sequence[HostSlots],
    gpus_by_host: Mapping[str, Sequence[Gpu]],
    cores_by_host: Mapping[str, int],
    names: tuple[str, str] = STUDY_OPTIONS,
) -> list[Slot]:
    """One :class:`Slot` per engine of a packed study (or of a run's ranks: ``names`` are then
    :data:`RUN_PARAMETERS`, named in errors).

    Without ``hosts`` (``--hosts``) the slots are this machine's ('localhost' in the maps): one
    per GPU found, or ``slots`` (``--slots``) of them, at most one per GPU; on a machine without
    GPUs ``slots`` CPU slots (default 1: one run at a time). With ``hosts`` each host gets its
    entry's slots, one GPU each when it has GPUs. ``cores_by_host`` splits a host's cores
    between its slots (a host missing from it gets one thread per slot, which cannot
    oversubscribe). Raises :class:`HiresmedError` naming ``--slots`` or ``--hosts``.
    """
    check_slot_count(slots)
    if not hosts:
        gpus = gpus_by_host.get(LOCAL_HOST, ())
        count = slots if slots is not None else max(1, len(gpus))
        return host_slots(LOCAL_HOST, count, gpus, cores_by_host.get(LOCAL_HOST, 1), names[0])
    total = sum(entry.slots for entry in hosts)
    if slots is not None and slots != total:
        raise HiresmedError(
            f"--slots {slots} and --hosts (which gives {total} slots) disagree: give only --hosts"
        )
    planned: list[Slot] = []
    for entry in hosts:
        gpus = gpus_by_host.get(entry.host, ())
        cores = cores_by_host.get(entry.host, 1)
        planned.extend(host_slots(entry.host, entry.slots, gpus, cores, names[1]))
    return planned


def parse_slot_hosts(text: str) -> list[HostSlots]:
    """``--hosts "a:4,b:4"`` (the ``HOSTS`` syntax; slots per host), errors naming --hosts."""
    try:
        return parse_hosts(text)
    except HiresmedError as error:
        raise HiresmedError(f"--hosts: {error}") from None


def plan_this_machine(
    slots: int | None = None,
    environ: Mapping[str, str] | None = None,
    installed: Sequence[Gpu] | None = None,
    cores: int | None = None,
    names: tuple[str, str] = STUDY_OPTIONS,
) -> list[Slot]:
    """The slots of this machine: its GPUs found without TensorFlow (``installed`` and
    ``cores`` can be given instead, as tests do) narrowed by ``CUDA_VISIBLE_DEVICES``."""
    environ = os.environ if environ is None else environ
    found = installed_gpus() if installed is None else installed
    gpus = visible_gpus(found, environ)
    try:
        cores_here = {LOCAL_HOST: cores or available_cores()}
        return plan_slots(slots, [], {LOCAL_HOST: gpus}, cores_here, names)
    except HiresmedError as error:
        if "CUDA_VISIBLE_DEVICES" not in environ:
            raise
        narrowed = f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r} narrows them"
        raise HiresmedError(f"{error} ({narrowed})") from None


def slot_environment(slot: Slot) -> dict[str, str]:
    """The variables an engine of ``slot`` must start with, before it imports TensorFlow: only
    its GPU visible (none on a CPU slot), its thread share for TensorFlow and OpenMP, and its
    slot's name and GPU for the run's record (``HIRESMED_SLOT``, ``HIRESMED_SLOT_GPU``)."""
    environment = {
        "CUDA_VISIBLE_DEVICES": slot.cuda_visible_devices,
        "TF_NUM_INTRAOP_THREADS": str(slot.threads),
        "TF_NUM_INTEROP_THREADS": str(min(2, slot.threads)),
        "OMP_NUM_THREADS": str(slot.threads),
        "HIRESMED_SLOT": slot.key,
        "HIRESMED_SLOT_GPU": "" if slot.gpu_index is None else str(slot.gpu_index),
        "HIRESMED_SLOT_THREADS": str(slot.threads),
    }
    if slot.device_order:
        environment["CUDA_DEVICE_ORDER"] = slot.device_order
    return environment


def slot_of_this_process(environ: Mapping[str, str] | None = None) -> dict[str, object] | None:
    """What a rank's record says of its slot (from :func:`slot_environment`'s variables): its
    ``key``, GPU number (None: CPU) and threads; None outside a slot's engine."""
    environ = os.environ if environ is None else environ
    if "HIRESMED_SLOT" not in environ:
        return None
    gpu = environ.get("HIRESMED_SLOT_GPU", "")
    return {
        "key": environ["HIRESMED_SLOT"],
        "gpu": int(gpu) if gpu.isdigit() else None,
        "threads": int(environ.get("HIRESMED_SLOT_THREADS", "0") or 0),
    }


def describe_slots(slots: Sequence[Slot], cores_by_host: Mapping[str, int]) -> str:
    """One console line: how many slots on which hosts, and whether CPU slots share cores."""
    hosts = list(dict.fromkeys(slot.host for slot in slots))
    parts = []
    for host in hosts:
        mine = [slot for slot in slots if slot.host == host]
        kind = "GPU" if mine[0].gpu_index is not None else "CPU"
        part = f"{host}: {len(mine)} {kind} slot{'s' * (len(mine) != 1)}"
        cores = cores_by_host.get(host)
        if kind == "CPU" and cores is not None and len(mine) > cores:
            part += f" on {cores} cores (slots share cores)"
        elif kind == "CPU":
            part += f", {mine[0].threads} thread{'s' * (mine[0].threads != 1)} each"
        parts.append(part)
    return f"{len(slots)} slot{'s' * (len(slots) != 1)}: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# An attached cluster's engines as slots
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineDevices:
    """What one engine sees: the GPUs it may use (``gpus``: UUIDs when known; ``numbers``: as
    its ``CUDA_VISIBLE_DEVICES`` numbers them), that variable's value, and its CPUs."""

    engine_id: int
    gpus: tuple[str, ...]
    numbers: tuple[int, ...]
    cuda_visible_devices: str
    cpus: frozenset[int]


def engine_devices(engine_id: int) -> EngineDevices:
    """Run on an engine: the GPUs it sees (found without TensorFlow) and the CPUs it may use."""
    installed = installed_gpus()
    by_number = {gpu.index: gpu.device for gpu in installed}
    visible = visible_gpus(installed, os.environ)
    try:
        cpus = frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = frozenset(range(os.cpu_count() or 1))
    return EngineDevices(
        engine_id,
        tuple(by_number.get(gpu.index, gpu.device) for gpu in visible),
        tuple(gpu.index for gpu in visible),
        os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        cpus,
    )


def _thread_share(engine: EngineDevices, neighbours: Sequence[EngineDevices]) -> int:
    """The engine's CPUs divided between the engines of its machine that may run on them too
    (engines bound to their own CPUs, as Slurm binds tasks, keep all of theirs)."""
    sharing = sum(1 for other in neighbours if other.cpus & engine.cpus)
    return threads_per_rank(len(engine.cpus), sharing)


def slots_of_engines(engines: Sequence[EngineDevices], hosts: Sequence[str]) -> dict[int, Slot]:
    """Each engine's slot (by engine id), ``hosts[i]`` being engine ``i``'s host identity (as
    :func:`hiresmed_nb.cluster.ranks.host_identities` gives).

    Raises :class:`HiresmedError` naming ``IPP_CLUSTER_FILE`` when an engine sees more than one
    GPU or two engines of one machine see the same GPU (each would grab it).
    """
    if len(engines) != len(hosts):
        raise ValueError(f"{len(engines)} engines but {len(hosts)} host identities")
    by_host: dict[str, list[EngineDevices]] = {}
    for engine, host in zip(engines, hosts, strict=True):
        by_host.setdefault(host, []).append(engine)
    slots: dict[int, Slot] = {}
    for host, mine in by_host.items():
        _check_one_gpu_each(host, mine)
        for index, engine in enumerate(mine):
            number = engine.numbers[0] if engine.numbers else None
            # Its GPU as its CUDA_VISIBLE_DEVICES names it; by UUID when that variable is unset.
            device = (engine.cuda_visible_devices or engine.gpus[0]) if engine.gpus else ""
            slots[engine.engine_id] = Slot(host, index, device, number, _thread_share(engine, mine))
    return slots


def _check_one_gpu_each(host: str, engines: Sequence[EngineDevices]) -> None:
    for engine in engines:
        if len(engine.gpus) > 1:
            raise HiresmedError(
                f"IPP_CLUSTER_FILE: engine {engine.engine_id} on {host} sees "
                f"{len(engine.gpus)} GPUs (CUDA_VISIBLE_DEVICES={engine.cuda_visible_devices!r}):"
                " a slot is one GPU; start one engine per GPU with its own CUDA_VISIBLE_DEVICES "
                "(e.g. srun --gpus-per-task=1)"
            )
    seen: dict[str, int] = {}
    for engine in engines:
        for gpu in engine.gpus:
            if gpu in seen:
                raise HiresmedError(
                    f"IPP_CLUSTER_FILE: engines {seen[gpu]} and {engine.engine_id} on {host} "
                    f"both see GPU {gpu}: give each engine its own GPU"
                )
            seen[gpu] = engine.engine_id
