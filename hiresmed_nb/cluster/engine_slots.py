"""The slots of an attached cluster (``IPP_CLUSTER_FILE``): one slot per engine it holds.

Engines started elsewhere (a Slurm allocation's recipe, ``cluster start``) already have their
``CUDA_VISIBLE_DEVICES``; each reports what it sees (:func:`engine_devices`, run on the engine),
and :func:`slots_of_engines` turns the reports into slots, refusing an engine that sees several
GPUs or two engines of one machine that see the same GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from hiresmed_nb.cluster.devices import Slot, installed_gpus, visible_gpus
from hiresmed_nb.cluster.ranks import threads_per_rank
from hiresmed_nb.errors import HiresmedError


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
