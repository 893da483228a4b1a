"""Simulated hosts for multi-host tests and benchmarks: network namespaces with their own sshd.

Each host is a network namespace joined to a Linux bridge in the root namespace by a veth pair
(the head node holds ``.1`` of a private /24 on the bridge). Its sshd runs under the host's own
hostname (``unshare --uts``) with its own ``/etc/hosts`` (``/etc/netns/<ns>/hosts``, which
``ip netns exec`` bind-mounts for sshd and everything it starts). By default a host also has its
own process table (``unshare --pid --fork --mount-proc``: sshd is the namespace's init) and its
own ``/tmp`` (a tmpfs), as a real node has; the rest of the root filesystem is shared, so the
project's ``.venv`` is at the same path on every host (a project or interpreter under ``/tmp``
is bound into each host's ``/tmp``, as a shared project filesystem would be). Folders under
``/tmp`` that the hosts must share (the instance's keys and sshd config, a test's temporary
folder) are bound into each host's ``/tmp`` at the same path. A host's logins read no
``~/.bashrc`` (:func:`quiet_login_steps`). Needs root, ``ip netns``, ``unshare``
and ``/usr/sbin/sshd``; :func:`unavailable_reason` says which one is missing.

Names carry the creating pid (``hmt<pid><n>...``) so a later session can remove what a crashed
one left behind. Importing this module has no side effects.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hiresmed_nb.errors import HiresmedError

PREFIX = "hmt"
SSHD = "/usr/sbin/sshd"
TMP = Path("/tmp")
LOGIN_RC = Path.home() / ".bashrc"  # what bash reads for a command run over ssh
# The project and its interpreter: on a real cluster the project's filesystem is shared, so a
# checkout under /tmp (a clone made there) is bound into each host's own /tmp like the folders
# a test shares.
PROJECT_DIRS = (Path(__file__).resolve().parents[1], Path(sys.prefix).resolve())
NETNS_ETC = Path("/etc/netns")
LOCK_FILE = Path("/run/lock/hiresmed-simhosts.lock")
SUBNETS = ipaddress.ip_network("10.213.0.0/16")  # candidate /24s; the first unused one is taken
MAX_HOSTS = 10
_NAME = re.compile(rf"^{PREFIX}(\d+)[a-z]")  # every name this module makes; group 1 = creator pid
_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# sshd for one host: key-only root login, no PAM, keys in the instance's temp folder (StrictModes
# off: /tmp is world-writable); scp speaks SFTP since OpenSSH 9, hence the sftp subsystem.
SSHD_CONFIG = """HostKey {key}
AuthorizedKeysFile {keys}
PidFile none
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
"""
CLIENT_CONFIG = """Host {alias} {address}
  HostName {address}
  User root
  IdentityFile {identity}
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  GlobalKnownHostsFile /dev/null
  LogLevel ERROR
  BatchMode yes
  ConnectTimeout 5
  GSSAPIAuthentication no
"""
_instances = itertools.count()
_leftovers_removed = False


@dataclass(frozen=True)
class HostSpec:
    """One simulated host.

    ``alias`` is its ssh name on the head; ``hostname`` what ``hostname`` prints there (default:
    the alias; two hosts may share one). ``hosts_file``: ``"own"`` maps its hostname to its bridge
    address, ``"debian"`` to 127.0.1.1 (Debian's default); both map localhost and the other hosts'
    names and aliases. ``knows_head`` adds the head's hostname -> its bridge address. Names not
    in the file do not resolve (the host has no DNS). ``own_processes_and_tmp``: the host has its
    own process table and its own ``/tmp``, as a real node (False: it shares the head's).
    """

    alias: str
    hostname: str | None = None
    hosts_file: Literal["own", "debian"] = "own"
    interface: str = "eth0"
    knows_head: bool = False
    own_processes_and_tmp: bool = True

    @property
    def name(self) -> str:
        """The hostname the host reports."""
        return self.hostname or self.alias


@dataclass
class _Host:
    spec: HostSpec
    netns: str
    address: str
    veth: str  # root-namespace end, a port of the bridge
    sshd: subprocess.Popen | None = None  # with its own process table: the `unshare --fork` parent


def unavailable_reason() -> str | None:
    """Return why simulated hosts cannot be built here (the exact missing thing), or None."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces, bridges, sshd)"
    for tool, package in [
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
        ("ssh", "openssh-client"),
    ]:
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (Debian: apt-get install {package})"
    if shutil.which("ssh-keygen") is None:
        return "no `ssh-keygen` on PATH (Debian: apt-get install openssh-client)"
    if not os.access(SSHD, os.X_OK):
        return f"no {SSHD} (Debian: apt-get install openssh-server)"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if listed.returncode != 0:
        return f"`ip netns` does not work here: {listed.stderr.strip()}"
    return _probe()


def _probe() -> str | None:
    """Build and remove a namespace, a bridge and a veth pair; return the first failure or None."""
    base = f"{PREFIX}{os.getpid()}{_letters(next(_instances))}"
    netns, bridge, veth = base + "0", base + "br", base + "0r"
    steps = [
        ["ip", "netns", "add", netns],
        ["ip", "netns", "exec", netns, "unshare", "--uts", "hostname", "probe"],
        ["ip", "link", "add", bridge, "type", "bridge"],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", base + "0n"],
        ["ip", "link", "set", base + "0n", "netns", netns],
    ]
    try:
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                return f"cannot build a simulated host: `{shlex.join(argv)}`: {done.stderr.strip()}"
        return None
    finally:
        for argv in (["ip", "link", "del", veth], ["ip", "link", "del", bridge]):
            subprocess.run(argv, capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def remove_leftovers() -> list[str]:
    """Remove namespaces, links, /etc/netns folders and temp folders whose creating pid is gone.

    Kills every process still inside such a namespace first. Returns what was removed.
    """
    removed = []
    for netns in _netns_names():
        if _is_orphan(netns):
            _kill_namespace_processes([netns], children=[])
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
            removed.append(f"netns {netns}")
    for link in _link_names():
        if _is_orphan(link):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
            removed.append(f"link {link}")
    tmp = Path(tempfile.gettempdir())
    for folder in [*NETNS_ETC.glob(PREFIX + "*"), *tmp.glob(PREFIX + "*")]:
        if folder.is_dir() and _is_orphan(folder.name):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(f"folder {folder}")
    return removed


class SimHosts:
    """Simulated hosts, built on ``start()`` (or ``with``) and removed on ``close()``.

    ``close()`` always runs the whole teardown (processes TERM then KILL, namespaces, veths,
    bridge, /etc/netns folders, the temp folder) and raises once at the end if anything remains.
    A failed ``start()`` tears down what it built before raising.
    """

    def __init__(
        self,
        specs: Sequence[HostSpec],
        *,
        startup_timeout: float = 15.0,
        shared_dirs: Sequence[str | Path] = (),
    ) -> None:
        """``shared_dirs``: folders under /tmp that hosts with their own /tmp see too (the
        instance's own folder always is)."""
        self.specs = _checked(specs)
        self.startup_timeout = startup_timeout
        self.shared_dirs = tuple(Path(folder) for folder in shared_dirs)
        self._base = f"{PREFIX}{os.getpid()}{_letters(next(_instances))}"
        self.bridge = self._base + "br"  # the head's interface on the simulated network
        self.head_address = ""
        self.directory = Path()
        self._hosts: dict[str, _Host] = {}
        self._children: list[subprocess.Popen] = []
        self._started = False

    # -- building ---------------------------------------------------------------------------

    def start(self) -> SimHosts:
        """Build every host and wait until each sshd accepts TCP connections; return self."""
        global _leftovers_removed
        if self._started:
            raise HiresmedError("SimHosts.start: already started")
        self._started = True
        if not _leftovers_removed:
            remove_leftovers()
            _leftovers_removed = True
        try:
            self.directory = Path(tempfile.mkdtemp(prefix=self._base + "-"))
            self._make_keys()
            with _subnet_lock():
                subnet = _free_subnet()
                addresses = [str(a) for a in itertools.islice(subnet.hosts(), len(self.specs) + 1)]
                self.head_address = addresses[0]
                _ip("link", "add", self.bridge, "type", "bridge")
                _ip("addr", "add", f"{self.head_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (spec, address) in enumerate(zip(self.specs, addresses[1:], strict=True)):
                host = _Host(spec, f"{self._base}{i}", address, f"{self._base}{i}r")
                self._hosts[spec.alias] = host
                self._add_namespace(host, f"{self._base}{i}n")
            for host in self._hosts.values():
                self._write_etc(host)
                self._start_sshd(host)
            self._write_client_config()
            for host in self._hosts.values():
                self._wait_for_sshd(host)
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise
        return self

    def _make_keys(self) -> None:
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self._base, "-f"]
        subprocess.run([*keygen, str(self.directory / "id_ed25519")], check=True)
        public = (self.directory / "id_ed25519.pub").read_text()
        (self.directory / "authorized_keys").write_text(public)
        for spec in self.specs:
            subprocess.run([*keygen, str(self.directory / f"host_key_{spec.alias}")], check=True)

    def _add_namespace(self, host: _Host, peer: str) -> None:
        _ip("netns", "add", host.netns)
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge, "up")
        iface = host.spec.interface
        _ip("-n", host.netns, "link", "set", peer, "name", iface)
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", iface)
        _ip("-n", host.netns, "link", "set", iface, "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")

    def _write_etc(self, host: _Host) -> None:
        """Write the host's /etc/hosts and a resolv.conf without DNS (unknown names fail fast)."""
        spec = host.spec
        own = "127.0.1.1" if spec.hosts_file == "debian" else host.address
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines.append(f"{own}\t{_names(spec)}")
        for other in self._hosts.values():
            if other is not host:
                lines.append(f"{other.address}\t{_names(other.spec)}")
        if spec.knows_head:
            lines.append(f"{self.head_address}\t{socket.gethostname()}")
        folder = NETNS_ETC / host.netns
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "hosts").write_text("\n".join(lines) + "\n")
        (folder / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def _start_sshd(self, host: _Host) -> None:
        alias = host.spec.alias
        config = self.directory / f"sshd_config_{alias}"
        keys = self.directory / "authorized_keys"
        config.write_text(SSHD_CONFIG.format(key=self.directory / f"host_key_{alias}", keys=keys))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        argv = [SSHD, "-D", "-e", "-f", str(config), "-o", f"ListenAddress={host.address}"]
        with open(self.directory / f"sshd_{alias}.log", "wb") as log:
            host.sshd = self._spawn(
                host, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_for_sshd(self, host: _Host) -> None:
        """Poll a TCP connect to the host's port 22 until it succeeds or the deadline passes."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            with socket.socket() as probe:
                probe.settimeout(1.0)
                if probe.connect_ex((host.address, 22)) == 0:
                    return
            assert host.sshd is not None
            failed = "exited" if host.sshd.poll() is not None else None
            if failed is None and time.monotonic() > deadline:
                failed = f"is not listening after {self.startup_timeout} s"
            if failed:
                log = (self.directory / f"sshd_{host.spec.alias}.log").read_text()[-2000:]
                raise RuntimeError(f"sshd of {host.spec.alias} {failed}; its log: {log}")
            with contextlib.suppress(subprocess.TimeoutExpired):
                host.sshd.wait(timeout=0.02)  # poll interval; returns early if sshd dies

    def _write_client_config(self) -> None:
        identity = self.directory / "id_ed25519"
        blocks = [
            CLIENT_CONFIG.format(alias=h.spec.alias, address=h.address, identity=identity)
            for h in self._hosts.values()
        ]
        self.ssh_config.write_text("\n".join(blocks))
        self.bin_dir.mkdir()
        for tool in ("ssh", "scp"):
            wrapper = self.bin_dir / tool
            real = shutil.which(tool, path=os.defpath) or f"/usr/bin/{tool}"
            wrapper.write_text(
                f'#!/bin/sh\nexec {real} -F {shlex.quote(str(self.ssh_config))} "$@"\n'
            )
            wrapper.chmod(0o755)

    # -- using ------------------------------------------------------------------------------

    @property
    def ssh_config(self) -> Path:
        """The ssh client config: ``ssh -F <this> <alias> cmd`` works from the head."""
        return self.directory / "ssh_config"

    @property
    def bin_dir(self) -> Path:
        """A folder with ``ssh`` and ``scp`` wrappers that add ``-F ssh_config``: put it first on
        PATH so code that calls plain ``ssh <alias>`` (ipyparallel) reaches the hosts."""
        return self.directory / "bin"

    @property
    def aliases(self) -> list[str]:
        """The hosts' ssh aliases, in spec order."""
        return [spec.alias for spec in self.specs]

    def address(self, alias: str) -> str:
        """The host's address on the bridge."""
        return self._host(alias).address

    def netns(self, alias: str) -> str:
        """The host's network namespace name."""
        return self._host(alias).netns

    def run(
        self, alias: str, command: str | Sequence[str], *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the host through ssh; raise on a non-zero exit when ``check``."""
        self._host(alias)
        remote = command if isinstance(command, str) else shlex.join(command)
        argv = ["ssh", "-F", str(self.ssh_config), alias, remote]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"`{remote}` on {alias} exited {done.returncode}: {done.stderr}")
        return done

    def netns_exec(self, alias: str, argv: Sequence[str], **popen: object) -> subprocess.Popen:
        """Start ``argv`` directly inside the host (its namespace, hostname and /etc/hosts).

        Keyword arguments go to ``subprocess.Popen``. ``close()`` kills and reaps the process.
        """
        return self._spawn(self._host(alias), list(argv), **popen)

    def leftover_processes(self, alias: str) -> dict[int, str]:
        """Processes inside the host other than its sshd and its ssh sessions: pid -> cmdline."""
        host = self._host(alias)
        for child in self._children:
            child.poll()  # reap our own children, so none of them counts as left over
        pids = _namespace_pids(host.netns)
        sshd = {host.sshd.pid} if host.sshd else set()
        grew = True
        while grew:  # sshd's per-connection processes descend from the listener
            extra = {p for p in pids if p not in sshd and _ppid(p) in sshd and _exe(p) == SSHD}
            sshd |= extra
            grew = bool(extra)
        return {pid: _cmdline(pid) for pid in pids if pid not in sshd}

    def head_pid(self, alias: str, pid: int) -> int:
        """The head's pid of the process that the host knows as ``pid`` (the same number on a
        host that shares the head's process table)."""
        host = self._host(alias)
        if not host.spec.own_processes_and_tmp:
            return pid
        for candidate in _namespace_pids(host.netns):
            if _pid_in_namespace(candidate) == pid and _init_pid(host) in _lineage(candidate):
                return candidate
        raise HiresmedError(f"pid: no process {pid} runs on {alias}")

    def wait_for_no_leftovers(self, alias: str, timeout: float = 15.0) -> dict[int, str]:
        """Poll :meth:`leftover_processes` until it is empty or ``timeout`` passes; return it."""
        return _poll(lambda: self.leftover_processes(alias), timeout)

    # -- tearing down -----------------------------------------------------------------------

    def close(self) -> None:
        """Remove everything this instance built; raise RuntimeError naming what remains."""
        hosts = list(self._hosts.values())
        namespaces = [h.netns for h in hosts]
        for host in hosts:  # ending a pid namespace's init ends every process in it
            init = _init_pid(host)
            if init is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGKILL)
        survivors = _kill_namespace_processes(namespaces, self._children)
        for child in self._children:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
        for host in hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
            shutil.rmtree(NETNS_ETC / host.netns, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        if self.directory != Path():
            shutil.rmtree(self.directory, ignore_errors=True)
        remains = self.remains() + [f"process {pid} (survived KILL)" for pid in survivors]
        if remains:
            raise RuntimeError(f"simulated hosts not fully removed: {remains}")

    def remains(self) -> list[str]:
        """What of this instance still exists (namespaces, links, folders, processes)."""
        names = [h.netns for h in self._hosts.values()]
        links = [self.bridge] + [h.veth for h in self._hosts.values()]
        found = [f"netns {n}" for n in names if n in _netns_names()]
        found += [f"link {n}" for n in links if n in _link_names()]
        found += [f"folder {NETNS_ETC / n}" for n in names if (NETNS_ETC / n).exists()]
        if self.directory != Path() and self.directory.exists():
            found.append(f"folder {self.directory}")
        found += [f"process {c.pid}" for c in self._children if c.poll() is None]
        return found

    def __enter__(self) -> SimHosts:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------

    def _host(self, alias: str) -> _Host:
        if alias not in self._hosts:
            raise HiresmedError(f"alias: no simulated host {alias!r} (have {self.aliases})")
        return self._hosts[alias]

    def _spawn(self, host: _Host, argv: list[str], **popen: object) -> subprocess.Popen:
        if host.spec.own_processes_and_tmp and host.sshd is None:
            wrapped = self._new_host_command(host)
        elif host.spec.own_processes_and_tmp:  # join the running host's namespaces
            init = _init_pid(host)
            if init is None:
                raise RuntimeError(f"host {host.spec.alias}: its sshd (the namespace's init) ended")
            # nsenter forks, so that the program runs inside the host's pid namespace.
            wrapped = ["nsenter", "-t", str(init), "--net", "--uts", "--mount", "--pid", "--"]
        else:
            # `ip netns exec` execs (no fork), then unshare, then sh: the Popen pid is argv's pid.
            script = " && ".join(['hostname "$1"', "shift", *quiet_login_steps(), 'exec "$@"'])
            unshare = ["unshare", "--uts", "sh", "-c", script, "sh", host.spec.name]
            wrapped = ["ip", "netns", "exec", host.netns, *unshare]
        process = subprocess.Popen([*wrapped, *argv], **popen)  # type: ignore[call-overload]
        self._children.append(process)
        return process

    def _new_host_command(self, host: _Host) -> list[str]:
        """The command that starts a host's first process (its sshd) as the init of a new pid
        namespace, with the host's name and a tmpfs on /tmp into which the shared folders are
        bound back (each opened before the tmpfs hides it). The Popen pid is unshare's: the
        namespace's init is its one child."""
        steps = ['hostname "$1"', "shift"]
        steps += own_tmp_steps([self.directory, *self.shared_dirs])
        steps += quiet_login_steps()
        script = " && ".join([*steps, 'exec "$@"'])
        unshare = ["unshare", "--uts", "--pid", "--fork", "--mount-proc"]
        return [
            "ip",
            "netns",
            "exec",
            host.netns,
            *unshare,
            "sh",
            "-c",
            script,
            "sh",
            host.spec.name,
        ]


def _init_pid(host: _Host) -> int | None:
    """The init of a host's own pid namespace (the one child of the unshare we started), or
    None when it has none or it has ended."""
    if host.sshd is None or not host.spec.own_processes_and_tmp or host.sshd.poll() is not None:
        return None
    pid = host.sshd.pid
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _checked(specs: Sequence[HostSpec]) -> tuple[HostSpec, ...]:
    """Validate host specs; one HiresmedError naming the field at fault."""
    specs = tuple(specs)
    if not 1 <= len(specs) <= MAX_HOSTS:
        raise HiresmedError(f"specs: 1 to {MAX_HOSTS} hosts, got {len(specs)}")
    for spec in specs:
        if not isinstance(spec, HostSpec):
            raise HiresmedError(f"specs: expected HostSpec items, got {spec!r}")
        for field, value in (("alias", spec.alias), ("hostname", spec.name)):
            if not _LABEL.match(value):
                raise HiresmedError(f"{field}: {value!r} is not a one-label host name")
        if spec.hosts_file not in ("own", "debian"):
            raise HiresmedError(f"hosts_file: 'own' or 'debian', got {spec.hosts_file!r}")
        if not re.match(r"^[a-z][a-z0-9]{0,14}$", spec.interface):
            raise HiresmedError(f"interface: {spec.interface!r} is not a short interface name")
    aliases = [spec.alias for spec in specs]
    if len(set(aliases)) != len(aliases):
        raise HiresmedError(f"alias: duplicated in {aliases}")
    return specs


def _names(spec: HostSpec) -> str:
    return spec.name if spec.name == spec.alias else f"{spec.name} {spec.alias}"


def _letters(n: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa' ... (at most two letters, to fit interface names)."""
    if n >= 26 + 26 * 26:
        raise HiresmedError("SimHosts: too many instances in one process")
    return chr(97 + n) if n < 26 else chr(97 + n // 26 - 1) + chr(97 + n % 26)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`ip {shlex.join(args)}` failed: {done.stderr.strip()}")


@contextlib.contextmanager
def _subnet_lock():
    """Serialise subnet choice between concurrent test sessions on this machine."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of SUBNETS that overlaps no route or address of the root namespace."""
    out = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True
    ).stdout
    out += subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    used = []
    for word in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", out):
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(word, strict=False))
    for subnet in SUBNETS.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise RuntimeError(f"no free /24 left in {SUBNETS}")


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _link_names() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


def _is_orphan(name: str) -> bool:
    """Whether ``name`` follows this module's scheme and its creating pid no longer runs."""
    match = _NAME.match(name)
    return bool(match) and not Path(f"/proc/{match.group(1)}").exists()


def _namespace_pids(netns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return {int(word) for word in out.split()}


def _kill_namespace_processes(namespaces: list[str], children: list[subprocess.Popen]) -> set[int]:
    """TERM every process in the namespaces, wait up to 5 s, then KILL what is left.

    Returns the pids still alive after KILL (normally none).
    """

    def alive() -> set[int]:
        for child in children:
            child.poll()  # reap our own, so a zombie never counts as alive
        return set().union(*(_namespace_pids(n) for n in namespaces)) if namespaces else set()

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if not (survivors := _poll(alive, timeout=5.0)):
            break
    return survivors


def _poll(probe: Callable[[], dict | set], timeout: float) -> dict | set:
    """Call ``probe`` until it returns something empty or ``timeout`` passes; return the last."""
    deadline = time.monotonic() + timeout
    while (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval, not a wait for an event of known length
    return found


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _pid_in_namespace(pid: int) -> int:
    """The pid that the innermost pid namespace of ``pid`` knows it by, or -1."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    found = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
    return int(found.group(1).split()[-1]) if found else -1


def _lineage(pid: int) -> list[int]:
    """``pid`` and its ancestors, up to the head's init."""
    chain = [pid]
    while chain[-1] > 1 and len(chain) < 100:
        chain.append(_ppid(chain[-1]))
    return chain


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def own_tmp_steps(folders: Sequence[Path], tmpfs_name: str = "tmpfs") -> list[str]:
    """Shell steps that give a new mount namespace its own /tmp (a tmpfs named ``tmpfs_name``)
    with ``folders`` and the project (:data:`PROJECT_DIRS`) that lie under /tmp bound back at
    their paths, each opened before the tmpfs hides it."""
    under_tmp = folders_to_bind([*folders, *PROJECT_DIRS])
    steps = [f"exec {3 + i}<{shlex.quote(str(f))}" for i, f in enumerate(under_tmp)]
    steps.append(f"mount -t tmpfs -o mode=1777 {shlex.quote(tmpfs_name)} {TMP}")
    for i, folder in enumerate(under_tmp):
        quoted = shlex.quote(str(folder))
        steps.append(f"mkdir -p {quoted}")
        steps.append(f"mount -c --bind /proc/self/fd/{3 + i} {quoted}")
        steps.append(f"exec {3 + i}<&-")
    return steps


def quiet_login_steps() -> list[str]:
    """Shell steps that hide the shared home's :data:`LOGIN_RC` from a new mount namespace (a
    host's): bash reads it for every command run over ssh. The test machine's may write shared
    files at each login: pyenv's rehash there takes a lock file in the home, and a host torn down
    in the middle of a login leaves the lock behind, so that every later login, on any host or
    test run, waits 60 s for it. None when there is no such file."""
    if not LOGIN_RC.is_file():
        return []
    return [f"mount --bind /dev/null {shlex.quote(str(LOGIN_RC))}"]


def folders_to_bind(folders: Sequence[Path]) -> list[Path]:
    """The folders under /tmp (not /tmp itself) among ``folders`` that a host with its own /tmp
    must get bound back, each once, none inside another one bound (it comes with it)."""
    under_tmp = [f for f in dict.fromkeys(folders) if f.is_relative_to(TMP) and f != TMP]
    return [f for f in under_tmp if not any(f != g and f.is_relative_to(g) for g in under_tmp)]
