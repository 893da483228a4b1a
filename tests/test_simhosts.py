"""The simulated-hosts fixture: hostnames, name resolution, reachability and a clean teardown."""

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import simhosts
from sessions import until
from simhosts import HostSpec, SimHosts

from hiresmed_nb.errors import HiresmedError

PYTHON = sys.executable  # the project's .venv python; the root filesystem is shared with hosts
WHO_AM_I = (
    "import socket, ipyparallel, horovod; "
    "print(socket.gethostname(), socket.gethostbyname(socket.gethostname()))"
)


def ssh(sim: SimHosts, alias: str, command: str) -> str:
    """Run a shell command through the fixture's ssh config, as a user would type it."""
    argv = ["ssh", "-F", str(sim.ssh_config), alias, command]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def python_on(sim: SimHosts, alias: str, code: str) -> str:
    """Run Python code on a host with the project's interpreter; return its stdout."""
    return ssh(sim, alias, shlex.join([PYTHON, "-c", code]))


def namespace_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def link_names() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def running(pid: int) -> bool:
    """Whether pid is a live process (a zombie has ended; orphans wait for init to reap them)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_bad_specs_are_named_errors():
    with pytest.raises(HiresmedError, match="hosts_file"):
        SimHosts([HostSpec("hostA", hosts_file="ubuntu")])  # type: ignore[arg-type]
    with pytest.raises(HiresmedError, match="alias: duplicated"):
        SimHosts([HostSpec("hostA"), HostSpec("hostA")])
    with pytest.raises(HiresmedError, match="hostname"):
        SimHosts([HostSpec("hostA", hostname="no such")])


def test_folders_under_tmp_are_bound_once_and_never_inside_one_bound():
    """A checkout cloned under /tmp (its .venv inside it) reaches the hosts with the test's own
    folders; /tmp itself and folders elsewhere are not bound."""
    project, basetemp = Path("/tmp/clone"), Path("/tmp/pytest-of-root/pytest-1")
    venv, elsewhere = project / ".venv", Path("/work/p")
    folders = [Path("/tmp/hmt1a"), basetemp, project, venv, elsewhere, Path("/tmp")]
    assert simhosts.folders_to_bind(folders) == [Path("/tmp/hmt1a"), basetemp, project]


def test_what_is_missing_is_named(monkeypatch):
    monkeypatch.setattr(simhosts.os, "geteuid", lambda: 1000)
    assert (
        simhosts.unavailable_reason()
        == "simulated hosts need root (network namespaces, bridges, sshd)"
    )
    monkeypatch.setattr(simhosts.os, "geteuid", lambda: 0)
    real_which = simhosts.shutil.which
    monkeypatch.setattr(
        simhosts.shutil, "which", lambda t: None if t == "unshare" else real_which(t)
    )
    assert (
        simhosts.unavailable_reason() == "no `unshare` on PATH (Debian: apt-get install util-linux)"
    )
    monkeypatch.setattr(simhosts.shutil, "which", lambda t: "/usr/bin/" + t)
    monkeypatch.setattr(simhosts, "SSHD", "/nonexistent/sshd")
    assert (
        simhosts.unavailable_reason()
        == "no /nonexistent/sshd (Debian: apt-get install openssh-server)"
    )


@pytest.mark.multihost
def test_each_host_answers_ssh_under_its_own_hostname(simulated_hosts):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    assert ssh(sim, "hostA", "hostname") == "hostA\n"
    assert ssh(sim, "hostB", "hostname") == "hostB\n"
    assert socket.gethostname() not in ("hostA", "hostB")  # the head keeps its own


@pytest.mark.multihost
def test_a_hosts_logins_read_no_rc_file_of_the_shared_home(simulated_hosts, tmp_path, monkeypatch):
    # A stand-in for ~/.bashrc, in the test's folder that every host shares.
    login_rc = tmp_path / "bashrc"
    login_rc.write_text("pyenv rehash  # a login that writes to the shared home\n")
    monkeypatch.setattr(simhosts, "LOGIN_RC", login_rc)
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB", own_processes_and_tmp=False))
    for alias in ("hostA", "hostB"):
        assert ssh(sim, alias, f"wc -c < {login_rc}") == "0\n", alias
    assert "pyenv rehash" in login_rc.read_text()  # the head's is untouched


@pytest.mark.multihost
def test_venv_python_on_a_host_resolves_its_name_as_its_hosts_file_says(simulated_hosts):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB", hosts_file="debian"))
    assert python_on(sim, "hostA", WHO_AM_I).split() == ["hostA", sim.address("hostA")]
    assert python_on(sim, "hostB", WHO_AM_I).split() == ["hostB", "127.0.1.1"]
    # Both hosts know each other's names at their bridge addresses.
    assert ssh(sim, "hostB", "getent hosts hostA").split()[0] == sim.address("hostA")


@pytest.mark.multihost
def test_two_hosts_may_share_one_hostname(simulated_hosts):
    sim = simulated_hosts(HostSpec("hostA", hostname="node"), HostSpec("hostB", hostname="node"))
    who = "import socket; print(socket.gethostname(), socket.gethostbyname(socket.gethostname()))"
    for alias in ("hostA", "hostB"):
        name, address = python_on(sim, alias, who).split()
        assert (name, address) == ("node", sim.address(alias))
    assert sim.address("hostA") != sim.address("hostB")


@pytest.mark.multihost
def test_head_and_hosts_reach_each_other_over_tcp(simulated_hosts):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    for alias in sim.aliases:  # head -> host: the host's sshd greets
        with socket.create_connection((sim.address(alias), 22), timeout=10) as conn:
            assert conn.recv(8) == b"SSH-2.0-"
    with socket.socket() as listener:  # host -> head, on the head's bridge address
        listener.bind((sim.head_address, 0))
        listener.listen()
        listener.settimeout(30)
        port = listener.getsockname()[1]
        for alias in sim.aliases:
            send_name = (
                f"import socket; c = socket.create_connection(({sim.head_address!r}, {port}), 10);"
                " c.sendall(socket.gethostname().encode()); c.close()"
            )
            python_on(sim, alias, send_name)
            conn, (peer, _) = listener.accept()
            with conn:
                assert (peer, conn.recv(64)) == (sim.address(alias), alias.encode())
    # host -> host: hostA reaches hostB's sshd by name
    greet = "import socket; print(socket.create_connection(('hostB', 22), 10).recv(8))"
    assert python_on(sim, "hostA", greet) == "b'SSH-2.0-'\n"


@pytest.mark.multihost
def test_netns_exec_runs_inside_the_host_and_is_listed_until_it_ends(simulated_hosts):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    serve_name = (
        f"import socket; s = socket.create_server(({sim.address('hostB')!r}, 0)); "
        "print(s.getsockname()[1], flush=True); c, _ = s.accept(); "
        "c.sendall(socket.gethostname().encode()); c.close()"
    )
    server = sim.netns_exec("hostB", [PYTHON, "-c", serve_name], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    assert server.pid in sim.leftover_processes("hostB")
    assert sim.leftover_processes("hostA") == {}
    with socket.create_connection((sim.address("hostB"), port), timeout=10) as conn:
        assert conn.recv(64) == b"hostB"
    assert server.wait(timeout=30) == 0
    server.stdout.close()
    assert sim.wait_for_no_leftovers("hostB") == {}


@pytest.mark.multihost
def test_teardown_removes_namespaces_links_folders_and_every_process(simulated_hosts):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB", hosts_file="debian"))
    # A process that detaches from its ssh session still lives in the namespace.
    detached = ssh(sim, "hostA", "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!")
    stray = sim.head_pid("hostA", int(detached))  # the head's pid for it
    assert stray in sim.leftover_processes("hostA")
    namespaces = [sim.netns(alias) for alias in sim.aliases]
    links = [sim.bridge] + [f"{ns}r" for ns in namespaces]
    pids = [pid for ns in namespaces for pid in namespace_pids(ns)]  # sshds and the stray
    assert stray in pids and len(pids) >= 3
    assert set(namespaces) <= set(netns_names()) and set(links) <= set(link_names())

    sim.close()

    assert not set(namespaces) & set(netns_names())
    assert not set(links) & set(link_names())
    assert not [ns for ns in namespaces if (simhosts.NETNS_ETC / ns).exists()]
    assert not sim.directory.exists()
    assert [pid for pid in pids if running(pid)] == []


@pytest.mark.multihost
def test_a_half_built_set_is_torn_down(simulated_hosts, monkeypatch):
    started = []
    real_start = SimHosts._start_sshd

    def start_only_the_first(self, host):
        started.append(self)
        if len(started) > 1:
            raise RuntimeError("injected: second sshd fails to start")
        real_start(self, host)

    monkeypatch.setattr(SimHosts, "_start_sshd", start_only_the_first)
    with pytest.raises(RuntimeError, match="injected"):
        simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    sim = started[0]
    assert sim.remains() == []
    assert not [ns for ns in netns_names() if ns.startswith(sim.bridge[:-2])]


@pytest.mark.multihost
def test_leftovers_of_a_crashed_session_are_removed_and_live_ones_kept(simulated_hosts):
    live = simulated_hosts(HostSpec("hostA"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert not Path(f"/proc/{gone.pid}").exists()
    base = f"{simhosts.PREFIX}{gone.pid}a"  # what a session with that pid would have made
    subprocess.run(["ip", "netns", "add", base + "0"], check=True)
    subprocess.run(["ip", "link", "add", base + "br", "type", "bridge"], check=True)
    (simhosts.NETNS_ETC / (base + "0")).mkdir(parents=True)
    inside = subprocess.Popen(["ip", "netns", "exec", base + "0", "sleep", "600"])
    try:
        # Only once it has entered the namespace (under load that can come after the cleanup).
        until(
            lambda: inside.pid in namespace_pids(base + "0"),
            "the process started in the leftover namespace never entered it",
        )
        removed = simhosts.remove_leftovers()
    finally:
        inside.kill()
        inside.wait()
    assert inside.returncode == -15  # TERMed by remove_leftovers, not by the kill above
    assert {f"netns {base}0", f"link {base}br"} <= set(removed)
    assert base + "0" not in netns_names() and base + "br" not in link_names()
    assert not (simhosts.NETNS_ETC / (base + "0")).exists()
    assert live.netns("hostA") in netns_names()
    assert ssh(live, "hostA", "hostname") == "hostA\n"


@pytest.mark.multihost
def test_each_host_has_its_own_process_table_and_tmp_but_shares_the_test_folder(
    simulated_hosts, tmp_path
):
    sim = simulated_hosts(HostSpec("hostA"), HostSpec("hostB"))
    head = os.getpid()
    mine = f"/tmp/{sim.bridge}-only-on-hostA"
    ssh(sim, "hostA", f"echo A > {mine} && echo shared > {tmp_path}/from-hostA")
    assert ssh(sim, "hostA", f"test -e /proc/{head} && echo seen || echo unseen") == "unseen\n"
    assert ssh(sim, "hostA", "cat /proc/1/comm") == "sshd\n"  # sshd is the host's init
    assert ssh(sim, "hostB", f"test -e {mine} && echo seen || echo unseen") == "unseen\n"
    assert not Path(mine).exists()
    assert (tmp_path / "from-hostA").read_text() == "shared\n"


@pytest.mark.multihost
def test_a_host_may_share_the_heads_process_table_and_tmp(simulated_hosts):
    sim = simulated_hosts(HostSpec("hostA", own_processes_and_tmp=False))
    head = os.getpid()
    assert ssh(sim, "hostA", f"test -e /proc/{head} && echo seen || echo unseen") == "seen\n"
    mine = Path(f"/tmp/{sim.bridge}-from-hostA")  # outside the shared test folder
    try:
        ssh(sim, "hostA", f"echo A > {mine}")
        assert mine.read_text() == "A\n"
    finally:
        mine.unlink(missing_ok=True)
