"""Run parameters: names, defaults, checks and the run id.

The names are those of the parameters cell of ``notebooks/01_train.ipynb``. Every check here runs
before any data is read or any cluster starts, and fails with one :class:`HiresmedError` that names
the parameter.
"""

from __future__ import annotations

import difflib
import json
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.placement import Placement, parse_hosts, total_slots

DATASETS = ("synthetic-skin", "synthetic-xray", "sd198", "nih")
SYNTHETIC_DATASETS = ("synthetic-skin", "synthetic-xray")
ARCHS = ("compact", "VGG16", "ResNet50", "DenseNet169")
MODES = ("serial", "distributed")
LR_SCALINGS = ("none", "linear")
LAUNCHERS = ("local", "ssh", "slurm")
# ipyparallel's MPI engines need mpi4py and an MPI library, which the project neither installs nor
# tests: refused with this reason rather than left to time out.
MPI_REFUSED = (
    "IPP_LAUNCHER='mpi' is not supported: ipyparallel's MPI engines need mpi4py and an MPI "
    "library, which this project does not install or test; under Slurm use IPP_LAUNCHER='slurm' "
    "with RENDEZVOUS_ADDR, `cluster start --slurm N`, or slurm/study.sbatch inside an allocation"
)
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
COMPRESSIONS = ("none", "fp16")
# Where the ranks run and how long they may: these parameters place or bound a run and leave what
# it computes alone (a checkpoint resumes whatever they are), but not always its digits: on CPU a
# placement sets each rank's thread count, and the intra-op thread count changes the order of
# floating-point sums, so the same run placed otherwise can end with other weights and metrics.
PLACEMENT_PARAMETERS = (
    "RUN_TIMEOUT",
    "HOSTS",
    "REMOTE_PYTHON",
    "IPP_CLUSTER_FILE",
    "POOL_CLUSTER_FILE",
    "POOL_ENGINES",
    "IPP_LAUNCHER",
    "RENDEZVOUS_ADDR",
    "NETWORK_INTERFACE",
)
# Set by the study runner for one execution (its warm cluster, the engines it reserved); a
# record keeps the placement the run asked for instead.
RUNNER_PARAMETERS = ("POOL_CLUSTER_FILE", "POOL_ENGINES")
LOCAL_N_RANKS = 2  # distributed ranks on this machine when N_RANKS is 0
# 12 hours: the wall time of the Slurm recipe's job (README), longer than any run of the
# study's grids on the hardware the README measures, yet a hung collective frees its slots
# the same day.
DEFAULT_RUN_TIMEOUT = 12 * 3600
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096


def _parameter(default: Any, help_text: str, *, shown: str | None = None) -> Any:
    """A run parameter's field: its default, its one-line help (the notebook's comment) and,
    where the notebook shows the default otherwise (``"none"`` for None), that spelling."""
    return field(default=default, metadata={"help": help_text, "shown": shown})


@dataclass(frozen=True)
class RunConfig(Mapping[str, Any]):
    """One run's parameters, checked once on the head (:func:`validate`) and then read-only.

    The single source of every parameter's name, type, default and help: the parameters cell of
    ``notebooks/01_train.ipynb`` is rendered from it (:func:`parameters_cell`, and a test
    compares the two). Ranks receive it as it is and check nothing again. It reads like a
    mapping (``config["IMAGE_SIZE"]``, ``dict(config)``) as well as by attribute.
    """

    DATASET: str = _parameter("synthetic-skin", "synthetic-skin, synthetic-xray, sd198 or nih")
    DATA_DIR: str = _parameter(
        "", "dataset folder as downloaded; empty: the embedded dataset's cache"
    )
    ARCH: str = _parameter("compact", "compact, VGG16, ResNet50 or DenseNet169")
    WEIGHTS: str | None = _parameter(
        None, '"imagenet", "none" (random initialisation) or a weights file', shown="none"
    )
    IMAGE_SIZE: int = _parameter(64, "square input side, pixels")
    IMAGES_PER_CLASS: int = _parameter(20, "training images per class")
    TEST_IMAGES_PER_CLASS: int = _parameter(
        0, "cap on test images per class; 0: the whole test set"
    )
    CLASSES: tuple[str, ...] | None = _parameter(
        None, "class names; empty: the dataset's default classes", shown="[]"
    )
    MODE: str = _parameter("serial", '"serial" (this kernel) or "distributed" (Horovod ranks)')
    SITE_DIRS: tuple[str, ...] | None = _parameter(
        None, "per-site mode: one data folder per rank, read only by that rank", shown="[]"
    )
    N_RANKS: int = _parameter(
        0, "Horovod ranks; 0: the slots of HOSTS, the cluster file's engines, else 2"
    )
    BATCH_SIZE: int = _parameter(8, "images per step per rank")
    LEARNING_RATE: float = _parameter(1e-3, "Adam learning rate")
    LR_SCALING: str = _parameter("none", '"none" or "linear" (x ranks x accumulation steps)')
    EPOCHS: int = _parameter(10, "passes over the training set")
    ACCUMULATION_STEPS: int = _parameter(
        1, "batches whose gradients are averaged per optimizer step"
    )
    PRECISION: str = _parameter("float32", "float32, mixed_float16 (GPU) or mixed_bfloat16")
    COMPRESSION: str = _parameter("none", 'allreduce compression: "none" or "fp16"')
    SEED: int = _parameter(0, "seed for the split, shuffling and initialisation")
    RESULTS_DIR: str = _parameter("outputs/runs", "where the record goes; relative to the project")
    HOSTS: str = _parameter(
        "", 'ranks on other machines over ssh, "hostA:2,hostB:2"; empty: this one'
    )
    REMOTE_PYTHON: str = _parameter("", "interpreter on HOSTS; empty: this kernel's own path")
    IPP_CLUSTER_FILE: str = _parameter(
        "", "attach to a running cluster (its file); empty: start one"
    )
    POOL_CLUSTER_FILE: str = _parameter(
        "", "set by the study runner: its warm cluster for this run; empty: none"
    )
    POOL_ENGINES: tuple[int, ...] | None = _parameter(
        None, "set by the study runner: its engine ids for this run; empty: none", shown="[]"
    )
    IPP_LAUNCHER: str = _parameter("local", "ipyparallel engine launcher: local, ssh or slurm")
    RENDEZVOUS_ADDR: str = _parameter("auto", "this machine's address the ranks reach; auto: found")
    NETWORK_INTERFACE: str = _parameter(
        "auto", "interface Gloo uses; auto: each rank's route to here"
    )
    RUN_TIMEOUT: int = _parameter(
        DEFAULT_RUN_TIMEOUT, "seconds the run may take; past it its ranks are stopped"
    )
    OVERWRITE: bool = _parameter(False, "redo the run even if its record exists")

    def __getitem__(self, name: str) -> Any:
        if name not in PARAMETERS:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(PARAMETERS)

    def __len__(self) -> int:
        return len(PARAMETERS)

    @property
    def distributed(self) -> bool:
        return self.MODE == "distributed"

    @property
    def run_id(self) -> str:
        return run_id(self)

    @property
    def placement(self) -> Placement:
        """Where the run's ranks go (:mod:`hiresmed_nb.placement`): a serial run is one rank on
        one engine of this machine (or of the attached cluster), ``HOSTS`` apart."""
        return Placement.from_params(self)

    def as_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples), as papermill and JSON records take them."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in self.items()}

    def replace(self, **changes: Any) -> RunConfig:
        """A checked copy with ``changes`` (parameter names as keywords)."""
        return validate({**self, **changes})


def _accepted_types(annotation: Any) -> tuple[type, ...]:
    """The Python types a parameter's value may have before it is normalised."""
    accepted: list[type] = []
    for part in typing.get_args(annotation) or (annotation,):
        origin = typing.get_origin(part) or part
        if origin is tuple:
            accepted.extend((list, tuple))
        elif origin is float:
            accepted.extend((float, int))
        else:
            accepted.append(origin)
    return tuple(dict.fromkeys(accepted))


_HINTS = typing.get_type_hints(RunConfig)
# name: (default, accepted types, one-line help), in the order of the notebook's parameters cell.
PARAMETERS: dict[str, tuple[Any, tuple[type, ...], str]] = {
    item.name: (item.default, _accepted_types(_HINTS[item.name]), item.metadata["help"])
    for item in fields(RunConfig)
}


def parameters_cell() -> str:
    """The source of ``01_train``'s parameters cell, rendered from :class:`RunConfig`."""
    lines = []
    for item in fields(RunConfig):
        shown = item.metadata["shown"]
        default = shown if shown is not None else item.default
        if isinstance(default, str) and default != "[]":
            default = json.dumps(default)
        kind = "list" if shown == "[]" else type(item.default if shown is None else "").__name__
        lines.append(f"{item.name}: {kind} = {default}  # {item.metadata['help']}")
    return "\n".join(lines)


def defaults() -> dict[str, Any]:
    """Return a fresh dict of every parameter at its default."""
    return {name: spec[0] for name, spec in PARAMETERS.items()}


def project_root() -> Path:
    """Return the folder that holds ``hiresmed_nb/`` (the project's checkout)."""
    return Path(__file__).resolve().parent.parent


def resolve_path(path: str | Path) -> Path:
    """Resolve a relative path against the project root, so notebooks agree whatever their cwd."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """Return ' (did you mean X?)' for the nearest known name, or ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_choice(params: dict[str, Any], name: str, choices: tuple[str, ...]) -> None:
    if params[name] not in choices:
        raise HiresmedError(
            f"{name}={params[name]!r} is not one of {', '.join(choices)}"
            + suggest(str(params[name]), choices)
        )


def _check_at_least(params: dict[str, Any], name: str, minimum: float) -> None:
    if params[name] < minimum:
        raise HiresmedError(f"{name}={params[name]!r} must be at least {minimum}")


def validate(
    params: Mapping[str, Any], engines_of: Callable[[str], int] | None = None
) -> RunConfig:
    """Check run parameters and return them complete and normalised, as a :class:`RunConfig`.

    ``engines_of(cluster_file)`` counts a running cluster's engines for ``IPP_CLUSTER_FILE``:
    pass the launching layer's ``attached_engine_count``, which asks the controller (engines
    started elsewhere, such as Slurm job steps, are not in the file); without it the file's own
    list is counted (:func:`cluster_file_engines`).

    Missing names take their defaults; ``WEIGHTS`` "none"/"None" becomes None; empty
    ``CLASSES`` and ``SITE_DIRS`` become None (lists become tuples); serial runs get ``N_RANKS``
    1. Raises :class:`HiresmedError` on the first unknown name, wrong type or out-of-range
    value. Runs on the head only (it may read ``IPP_CLUSTER_FILE``); ranks get its result.
    """
    checked = defaults()
    for name, value in params.items():
        if name not in PARAMETERS:
            raise HiresmedError(f"unknown parameter {name!r}" + suggest(name, tuple(PARAMETERS)))
        checked[name] = value
    if isinstance(checked["WEIGHTS"], str) and checked["WEIGHTS"].lower() == "none":
        checked["WEIGHTS"] = None
    for name in ("CLASSES", "SITE_DIRS", "POOL_ENGINES"):
        if checked[name] == []:
            checked[name] = None
    for name, (_, types, description) in PARAMETERS.items():
        value = checked[name]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            allowed = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise HiresmedError(f"{name}={value!r} must be {allowed} ({description})")
    checked["LEARNING_RATE"] = float(checked["LEARNING_RATE"])
    if checked["IPP_LAUNCHER"] == "mpi":
        raise HiresmedError(MPI_REFUSED)
    for name, choices in (
        ("DATASET", DATASETS),
        ("ARCH", ARCHS),
        ("MODE", MODES),
        ("LR_SCALING", LR_SCALINGS),
        ("IPP_LAUNCHER", LAUNCHERS),
        ("PRECISION", PRECISIONS),
        ("COMPRESSION", COMPRESSIONS),
    ):
        _check_choice(checked, name, choices)
    if not MIN_IMAGE_SIZE <= checked["IMAGE_SIZE"] <= MAX_IMAGE_SIZE:
        raise HiresmedError(
            f"IMAGE_SIZE={checked['IMAGE_SIZE']} must be between {MIN_IMAGE_SIZE} and "
            f"{MAX_IMAGE_SIZE} pixels"
        )
    for name in ("BATCH_SIZE", "EPOCHS", "IMAGES_PER_CLASS", "ACCUMULATION_STEPS", "RUN_TIMEOUT"):
        _check_at_least(checked, name, 1)
    for name in ("N_RANKS", "TEST_IMAGES_PER_CLASS", "SEED"):
        _check_at_least(checked, name, 0)
    if not checked["LEARNING_RATE"] > 0:
        raise HiresmedError(f"LEARNING_RATE={checked['LEARNING_RATE']!r} must be positive")
    if checked["CLASSES"] is not None and len(checked["CLASSES"]) < 2:
        raise HiresmedError(f"CLASSES={checked['CLASSES']!r} must name at least two classes")
    if checked["MODE"] == "distributed":
        checked["N_RANKS"] = _distributed_ranks(checked, engines_of or cluster_file_engines)
    if checked["SITE_DIRS"] is not None:
        sites = checked["SITE_DIRS"]
        if checked["MODE"] != "distributed" or len(sites) != checked["N_RANKS"]:
            raise HiresmedError(
                f"SITE_DIRS names {len(sites)} folders: it needs MODE='distributed' and N_RANKS "
                f"equal to that number (one site per rank), not MODE={checked['MODE']!r}, "
                f"N_RANKS={checked['N_RANKS']}"
            )
        if not all(isinstance(site, str) and site for site in sites):
            raise HiresmedError(f"SITE_DIRS={sites!r} must be a list of folder paths")
    if checked["MODE"] == "serial":
        checked["N_RANKS"] = 1
    _check_pool_engines(checked)
    for name in ("CLASSES", "SITE_DIRS", "POOL_ENGINES"):
        if checked[name] is not None:
            checked[name] = tuple(checked[name])
    return RunConfig(**checked)


def _check_pool_engines(checked: dict[str, Any]) -> None:
    """POOL_ENGINES (set by the study runner): one engine id per rank, with POOL_CLUSTER_FILE."""
    engines = checked["POOL_ENGINES"]
    if engines is None:
        return
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in engines):
        raise HiresmedError(f"POOL_ENGINES={engines!r} must be a list of engine ids")
    if not checked["POOL_CLUSTER_FILE"] or len(engines) != checked["N_RANKS"]:
        raise HiresmedError(
            f"POOL_ENGINES={engines!r} needs POOL_CLUSTER_FILE and one engine per rank "
            f"(N_RANKS={checked['N_RANKS']})"
        )


def _distributed_ranks(checked: dict[str, Any], engines_of: Callable[[str], int]) -> int:
    """N_RANKS of a distributed run: as given, or (0) what HOSTS or IPP_CLUSTER_FILE hold.

    Also checks that HOSTS, IPP_CLUSTER_FILE and IPP_LAUNCHER do not contradict each other.
    """
    hosts = parse_hosts(checked["HOSTS"])
    cluster_file = checked["IPP_CLUSTER_FILE"]
    if hosts and cluster_file:
        raise HiresmedError(
            "give HOSTS (start engines on those hosts) or IPP_CLUSTER_FILE (attach to a running "
            "cluster), not both"
        )
    if hosts and checked["IPP_LAUNCHER"] not in ("local", "ssh"):
        raise HiresmedError(
            f"HOSTS starts engines over ssh: it cannot go with IPP_LAUNCHER="
            f"{checked['IPP_LAUNCHER']!r} (leave IPP_LAUNCHER at 'local')"
        )
    n_ranks = checked["N_RANKS"]
    if hosts:
        slots = total_slots(hosts)
        if n_ranks not in (0, slots):
            raise HiresmedError(
                f"N_RANKS={n_ranks} does not match HOSTS={checked['HOSTS']!r}, which has {slots} "
                "slots: give N_RANKS=0 (the total) or the hosts' slots that add up to N_RANKS"
            )
        return slots
    if cluster_file:
        engines = engines_of(cluster_file)
        if n_ranks > engines:
            raise HiresmedError(
                f"N_RANKS={n_ranks} but IPP_CLUSTER_FILE={cluster_file!r} has {engines} engines"
            )
        return n_ranks or engines
    if n_ranks == 0 and checked["SITE_DIRS"]:
        return len(checked["SITE_DIRS"])  # one rank per site
    return n_ranks or LOCAL_N_RANKS


def cluster_file_engines(cluster_file: str) -> int:
    """How many engines the ipyparallel cluster file says its cluster started.

    Raises :class:`HiresmedError` naming IPP_CLUSTER_FILE when it is missing or not one.
    """
    import json

    path = resolve_path(cluster_file)
    try:
        content = json.loads(path.read_text())
        engine_sets = content["engines"]["sets"].values()
    except FileNotFoundError:
        raise HiresmedError(f"IPP_CLUSTER_FILE={cluster_file!r} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise HiresmedError(
            f"IPP_CLUSTER_FILE={cluster_file!r} is not an ipyparallel cluster file "
            "(`python -m hiresmed_nb cluster start` prints one)"
        ) from None
    return sum(len(s.get("engines", {})) or int(s.get("n", 0) or 0) for s in engine_sets)


def run_id(params: Mapping[str, Any]) -> str:
    """Spell a run: dataset, arch, size, images per class, mode with ranks, seed; then
    accumulation, precision, compression and learning rate (``_lr3e-4``) when they are not the
    defaults, so a grid over any of them gives distinct ids.

    >>> run_id({"DATASET": "synthetic-skin", "ARCH": "compact", "IMAGE_SIZE": 64,
    ...         "IMAGES_PER_CLASS": 20, "MODE": "distributed", "N_RANKS": 2, "SEED": 0})
    'synthetic-skin_compact_64px_20ipc_distributed2_seed0'
    """
    ranks = 1 if params["MODE"] == "serial" else params["N_RANKS"]
    levers = ""
    if params.get("ACCUMULATION_STEPS", 1) > 1:
        levers += f"_acc{params['ACCUMULATION_STEPS']}"
    if params.get("PRECISION", "float32") != "float32":
        levers += "_" + params["PRECISION"].replace("mixed_", "")
    if params.get("COMPRESSION", "none") != "none":
        levers += f"_{params['COMPRESSION']}allreduce"
    rate = params.get("LEARNING_RATE", PARAMETERS["LEARNING_RATE"][0])
    if rate != PARAMETERS["LEARNING_RATE"][0]:
        mantissa, exponent = f"{rate:e}".split("e")
        levers += f"_lr{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return (
        f"{params['DATASET']}_{params['ARCH']}_{params['IMAGE_SIZE']}px_"
        f"{params['IMAGES_PER_CLASS']}ipc_{params['MODE']}{ranks}{levers}_seed{params['SEED']}"
    )
