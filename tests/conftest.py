"""Shared fixtures: the embedded datasets, generated once into the project's data cache."""

import contextlib
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Kernels and engines the tests start import the tests' own helpers (sgd_steps, faults), and
# every training takes the callbacks HIRESMED_INJECT_FAULT asks for (tests/faults.py).
TESTS_DIR = str(Path(__file__).parent)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [TESTS_DIR, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)
os.environ["HIRESMED_CALLBACKS"] = "faults:injected_callbacks"

import sessions  # noqa: E402
import small_images  # noqa: E402

from hiresmed_nb.science import synthetic  # noqa: E402

sessions.tag_this_session()  # every process this session starts inherits it (tests/sessions.py)
# `make test` runs files on three workers, each file on one, longest first (by their durations in
# one process on a 2-core VM, 2026-12-06): a long file started last leaves other workers idle.
LONGEST_FIRST = (
    "test_bench.py",
    "test_multihost.py",
    "test_warm.py",
    "test_packed_study.py",
    "test_reliability.py",
    "test_slurm.py",
    "test_study.py",
    "test_horovodrun_magics.py",
    "test_resume.py",
    "test_every_run_ends.py",
    "test_train_notebook.py",
    "test_cluster.py",
    "test_real_data.py",
    "test_data.py",
    "test_simhosts.py",
    "test_owner_hosts.py",
)


@pytest.fixture(scope="session")
def skin_dir() -> Path:
    """The 1024 px dataset; also makes its 128 px copy (``small_images.SMALL_SKIN``), which the
    tests' 32 px runs read through their ``DATA_DIR``."""
    small_images.ensure_small("synthetic-skin")
    return synthetic.ensure_dataset("synthetic-skin")


@pytest.fixture(scope="session")
def xray_dir() -> Path:
    return synthetic.ensure_dataset("synthetic-xray")


@pytest.fixture(scope="session")
def serial_twin(tmp_path_factory, skin_dir) -> tuple[Path, dict, Path]:
    """The run of ``serial_twin.SERIAL_TWIN`` through 01_train, trained once per test run: its
    folder (``runs/`` holds its record), its record and its executed notebook. Tests only read
    it. On pytest-xdist workers the first worker to ask trains it, under a lock in the run's
    temporary folder (above every worker's), and names its folder there; the others wait on
    the lock and read that folder."""
    from serial_twin import SERIAL_TWIN
    from test_train_notebook import execute

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    trained = shared / "serial-twin.folder"  # written once the run succeeded
    with sessions.exclusive(shared / "serial-twin.lock"):
        if not trained.exists():
            folder = tmp_path_factory.mktemp("serial-twin")
            execute(folder, **SERIAL_TWIN)
            trained.write_text(str(folder))
    folder = Path(trained.read_text())
    [record_file] = (folder / "runs").glob("*.json")
    return folder, json.loads(record_file.read_text()), folder / "executed.ipynb"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``dataset`` every test that uses an embedded dataset (``make test-fast`` leaves them
    out: a fresh clone generates them first, minutes of 1024 px images). On xdist workers, put
    the longest files first."""
    for item in items:
        if {"skin_dir", "xray_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.dataset)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept


# Markers of the tests that start clusters (whose start reaps this host's orphans) or reap
# them themselves: these hold the machine's test lock; a test with none of them cannot disturb
# an `orphans` test, so it runs beside one.
REAPING_MARKERS = ("notebook", "distributed", "multihost", "slurm", "reaps")


# The machine's test lock, held alone from the first of consecutive ``orphans`` tests of a
# worker to the last: each wait for it drains every other worker's cluster tests first.
_held_alone: contextlib.ExitStack | None = None


def _markers(item: pytest.Item | None) -> set[str]:
    return {marker.name for marker in item.iter_markers()} if item is not None else set()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Hold the machine's test lock through a test's setup, call and teardown (module and
    session fixtures included): alone for an ``orphans`` test (kept for the next test when that
    is one too), shared for every other test that starts a cluster or reaps
    (:data:`REAPING_MARKERS`); the others take no lock."""
    global _held_alone
    markers = _markers(item)
    if "orphans" in markers:
        if _held_alone is None:  # the first of a run of `orphans` tests
            _held_alone = contextlib.ExitStack()
            _held_alone.enter_context(sessions.machine_share(alone=True))
        try:
            yield
        finally:
            if "orphans" not in _markers(nextitem):
                _held_alone.close()
                _held_alone = None
        return
    if not markers & set(REAPING_MARKERS):
        yield
        return
    with sessions.machine_share(alone=False):
        yield


@pytest.fixture(autouse=True)
def _no_warm_cluster_between_tests():
    """run_training keeps warm clusters in this process's pool, as a kernel does: close it after
    each test so one test's engines neither serve nor burden the next."""
    yield
    import sys

    if "hiresmed_nb.cluster.pool" in sys.modules:
        sys.modules["hiresmed_nb.cluster.pool"].kernel_pool().close()


# --- Simulated hosts (network namespaces with sshd) for multi-host tests: hiresmed_nb.simhosts ---


@pytest.fixture(scope="session")
def _simhosts_unavailable() -> str | None:
    """Why simulated hosts cannot be built on this machine (checked once), or None."""
    import simhosts

    return simhosts.unavailable_reason()


def _simhosts_factory(request: pytest.FixtureRequest, unavailable: str | None, tmp_path_factory):
    """Yield ``build(*specs) -> SimHosts``; every instance built is torn down afterwards.

    The hosts have their own /tmp but share the test session's temporary folder, as nodes share
    a home or scratch file system: a test's ``tmp_path`` is at the same path on every host."""
    import simhosts

    if request.node.get_closest_marker("multihost") is None:  # so `-m "not multihost"` works
        where = "the test" if request.scope == "function" else "the module (pytestmark = ...)"
        pytest.fail(f"{request.node.name} uses simulated hosts: mark {where} with multihost")
    if unavailable:
        pytest.skip(f"multihost: {unavailable}")
    built: list[simhosts.SimHosts] = []

    def build(*specs: simhosts.HostSpec, **options) -> simhosts.SimHosts:
        options.setdefault("shared_dirs", (tmp_path_factory.getbasetemp(),))
        hosts = simhosts.SimHosts(specs, **options)
        built.append(hosts)
        return hosts.start()

    yield build
    errors = []
    for hosts in reversed(built):
        try:
            hosts.close()
        except Exception as error:  # close every instance, then report all failures at once
            errors.append(str(error))
    if errors:
        raise RuntimeError("; ".join(errors))


@pytest.fixture
def simulated_hosts(request, _simhosts_unavailable, tmp_path_factory):
    """Factory: ``simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))`` -> started SimHosts,
    torn down after the test whatever its outcome. Skips (naming what is missing) where simulated
    hosts cannot be built. Tests using it must be marked ``@pytest.mark.multihost``."""
    yield from _simhosts_factory(request, _simhosts_unavailable, tmp_path_factory)


@pytest.fixture(scope="module")
def simulated_hosts_module(request, _simhosts_unavailable, tmp_path_factory):
    """Like ``simulated_hosts``, shared by a module's tests and torn down after the last one."""
    yield from _simhosts_factory(request, _simhosts_unavailable, tmp_path_factory)
