"""What ssh says of the hosts of ``HOSTS`` (parsed by :mod:`hiresmed_nb.placement`).

Before any engine starts, every host is asked over ssh (all hosts at once), twice: when its slots
are planned, for its GPUs and cores (:func:`ask_devices`), and as its engines start, at which
address it sees this machine (:func:`ask_hosts`, which also makes the cluster's folder there):
that address is where the controller and the rendezvous server listen, and where engines find
them. Either question first checks that the remote interpreter can import what an engine needs,
and names what it lacks.
"""

from __future__ import annotations

import concurrent.futures
import json
import shlex
import subprocess
from dataclasses import dataclass

from hiresmed_nb.cluster.devices import Gpu, host_answer
from hiresmed_nb.errors import HiresmedError
from hiresmed_nb.placement import HostSlots

SSH_TIMEOUT_SECONDS = 20
ENGINE_MODULES = ("ipyparallel", "horovod", "tensorflow", "hiresmed_nb")
# What both questions below evaluate on a host (after `import importlib.util`): the modules an
# engine imports that its interpreter lacks (found, not imported).
_MISSING_MODULES = f"[m for m in {ENGINE_MODULES!r} if importlib.util.find_spec(m) is None]"
# Runs on each host: reports what an engine needs, and prepares the cluster's own folder there
# as `ipython profile create` would (owner-only; empty IPython configs; log/, where engines write
# their output), so the engines' launcher (hiresmed_nb.cluster.launchers) need not run it.
_QUESTION_SCRIPT = (
    """
import importlib.util, json, os, socket, sys
folder = sys.argv[1]
for made in (folder, os.path.join(folder, "log")):
    os.makedirs(made, mode=0o700, exist_ok=True)
for name in ("ipython_config.py", "ipython_kernel_config.py"):
    open(os.path.join(folder, name), "a").close()
print(json.dumps({
    "ssh_connection": os.environ.get("SSH_CONNECTION", ""),
    "hostname": socket.gethostname(),
    "missing": %s,
}))
""".strip()
    % _MISSING_MODULES
)

# Runs on each host of HOSTS or --hosts before its slots are planned: what an engine needs that
# the interpreter lacks, else the host's GPUs and cores (hiresmed_nb.cluster.devices).
_DEVICES_SCRIPT = (
    """
import importlib.util, json
missing = %s
if missing:
    print(json.dumps({"missing": missing}))
else:
    from hiresmed_nb.cluster.devices import this_host
    print(json.dumps({"missing": [], **this_host()}))
""".strip()
    % _MISSING_MODULES
)

SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=10")  # never prompt; dead host: 10 s


@dataclass(frozen=True)
class HostAnswer:
    """What one host said over ssh: its host name and the address it sees this machine at."""

    host: str
    hostname: str
    head_address: str


def run_python_over_ssh(host: str, remote_python: str, script: str, *args: str) -> str:
    """Run ``remote_python -c script args`` on ``host`` over ssh; its standard output.

    Raises :class:`HiresmedError` naming the host and the fix when ssh fails or the interpreter
    does not run the script.
    """
    remote_command = shlex.join([remote_python, "-c", script, *args])
    command = ["ssh", *SSH_OPTIONS, host, remote_command]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=SSH_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise HiresmedError(
            f"HOSTS: {host} did not answer over ssh within {SSH_TIMEOUT_SECONDS} s: check that "
            f"`ssh {host}` works without a password from this machine"
        ) from None
    stderr = done.stderr.strip().splitlines()
    last = stderr[-1] if stderr else f"exit status {done.returncode}"
    if done.returncode == 255:
        raise HiresmedError(
            f"HOSTS: cannot ssh to {host}: {last}. Fix: make `ssh {host}` work from this machine "
            "without a password (keys, ~/.ssh/config)"
        )
    if done.returncode != 0:
        raise HiresmedError(
            f"HOSTS: on {host}, REMOTE_PYTHON={remote_python!r} does not run: {last}. Fix: set "
            "REMOTE_PYTHON to the project's interpreter on that host (e.g. <project>/.venv/bin/"
            "python at the same path as here)"
        )
    return done.stdout


def ask_host(host: str, remote_python: str, folder: str) -> HostAnswer:
    """Ask ``host`` over ssh whether ``remote_python`` can run an engine there, and create the
    cluster's ``folder`` on it.

    Raises :class:`HiresmedError` naming the host and the fix when ssh fails, the interpreter
    is missing, or it lacks a module an engine imports.
    """
    answer = _answer(host, remote_python, _QUESTION_SCRIPT, folder)
    fields = answer["ssh_connection"].split()
    return HostAnswer(host, answer["hostname"], fields[0] if fields else "")


def _answer(host: str, remote_python: str, script: str, *args: str) -> dict:
    """The JSON that ``script`` printed last on ``host``; raises :class:`HiresmedError` naming
    the host and the fix when it lists modules an engine needs that ``remote_python`` lacks."""
    output = run_python_over_ssh(host, remote_python, script, *args)
    answer = json.loads(output.strip().splitlines()[-1])
    if answer["missing"]:
        raise HiresmedError(
            f"HOSTS: on {host}, REMOTE_PYTHON={remote_python!r} cannot import "
            f"{', '.join(answer['missing'])}. Fix: install the project there (`make venv` in a "
            "checkout at the same path) or point REMOTE_PYTHON at an interpreter that has it"
        )
    return answer


def ask_devices(hosts: list[HostSlots], remote_python: str) -> dict[str, tuple[list[Gpu], int]]:
    """Every host's GPUs (as ``nvidia-smi`` or its driver lists them there, narrowed by its own
    ``CUDA_VISIBLE_DEVICES``) and cores, asked over ssh at once: host -> (GPUs, cores).

    Raises :class:`HiresmedError` naming the host and the fix, as :func:`ask_host` does, when
    ssh fails or ``remote_python`` does not run or lacks a module an engine imports.
    """

    def ask(host: str) -> tuple[list[Gpu], int]:
        return host_answer(_answer(host, remote_python, _DEVICES_SCRIPT))

    names = list(dict.fromkeys(entry.host for entry in hosts))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return dict(zip(names, pool.map(ask, names), strict=True))


def ask_hosts(hosts: list[HostSlots], remote_python: str, folder: str) -> list[HostAnswer]:
    """:func:`ask_host` on every host at once; the first failure is raised."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        futures = [pool.submit(ask_host, entry.host, remote_python, folder) for entry in hosts]
        return [future.result() for future in futures]


def head_address(answers: list[HostAnswer]) -> str:
    """The one address at which every host sees this machine (loopback sessions aside).

    Raises :class:`HiresmedError` when hosts see this machine at different addresses: the
    controller and the rendezvous server listen on one address, so RENDEZVOUS_ADDR must be set.
    """
    seen = {answer.head_address for answer in answers if answer.head_address}
    outside = {address for address in seen if not address.startswith("127.")}
    if len(outside) > 1:
        detail = ", ".join(f"{a.host} sees {a.head_address}" for a in answers)
        raise HiresmedError(
            f"HOSTS reach this machine at different addresses ({detail}): set RENDEZVOUS_ADDR "
            "to the one address every host can reach"
        )
    if outside:
        return outside.pop()
    return "127.0.0.1"
