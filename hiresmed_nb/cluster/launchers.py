"""ipyparallel engine launchers that keep each engine's output and name each engine, and give
it the cluster's own temporary folder.

ipyparallel deletes an engine's output file when the engine stops, which loses what a dying
rank said (Gloo and TensorFlow write fatal errors there). These launchers keep the file until the
cluster is stopped, and give every engine ``HIRESMED_LAUNCH_ID`` (the launcher's identifier,
e.g. ``hostA/0``), so the cluster can tell which host and output file belong to which engine.
Every engine's ``TMPDIR`` is the cluster's folder on its host
(:func:`~hiresmed_nb.cluster.processes.cluster_folder`), which the cluster's stop removes with
whatever the engines' libraries left there.

When an engine stops, ipyparallel fetches its output only to log it (debug level; warning for a
failed exit), and again when it stops the engine set, to delete the files: these launchers
skip the first fetch when the launcher's log would not show it and the second always (for a
remote engine each is two ssh sessions).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ipyparallel.cluster import launcher as ipp_launcher
from traitlets import default

from hiresmed_nb.cluster.engine_tasks import LAUNCH_ID_VARIABLE
from hiresmed_nb.cluster.processes import CLUSTER_PREFIX, cluster_folder


class _KeepsOutput:
    """Mixin: never remove the output file; tag the environment with the launch id; fetch the
    output at a stop only for a log that shows it."""

    def get_output(self, remove: bool = False) -> str:
        return super().get_output(remove=False)

    def _log_output(self, stop_data: dict[str, Any] | None = None) -> None:
        failed = bool(stop_data) and stop_data.get("exit_code", 0) != 0
        if self.log.isEnabledFor(logging.WARNING if failed else logging.DEBUG):
            super()._log_output(stop_data)

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env[LAUNCH_ID_VARIABLE] = self.identifier
        if self.cluster_id.startswith(CLUSTER_PREFIX):  # the cluster's stop removes the folder
            env["TMPDIR"] = str(cluster_folder(self.cluster_id))
        return env


class LocalEngine(_KeepsOutput, ipp_launcher.LocalEngineLauncher):
    """One engine on this machine."""

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        if "TMPDIR" in env:  # an ssh engine's folder is made on its host before it starts
            Path(env["TMPDIR"]).mkdir(mode=0o700, exist_ok=True)
        return env


class LocalEngines(ipp_launcher.LocalEngineSetLauncher):
    """Engines on this machine (``IPP_LAUNCHER="local"``)."""

    launcher_class = LocalEngine
    # The name a cluster file records, which ipyparallel imports again (a dotted path).
    entrypoint_name = f"{__name__}.LocalEngines"


class SSHEngine(_KeepsOutput, ipp_launcher.SSHEngineLauncher):
    """One engine on a host reached over ssh; it finds the controller through its environment
    ($IPP_CONNECTION_INFO), so no connection file is copied to the host."""

    def start(self, hostname: str | None = None, user: str | None = None, port: Any = None) -> None:
        """ipyparallel's start without its two checks, each an ssh session running Python on
        the host: that REMOTE_PYTHON runs, and ``ipython profile create`` of the engine's
        folder. Before any engine starts, :func:`~.hosts.ask_hosts` has run that interpreter
        on every host and made the folder with the files the profile creation would write."""
        if hostname is not None:
            self.hostname = hostname
        if user is not None:
            self.user = user
        if port is not None:
            self.ssh_args += [] if "-p" in self.ssh_args else ["-p", str(port)]
            self.scp_args += [] if "-P" in self.scp_args else ["-P", str(port)]
        sender = self.ssh_sender  # one ssh session: learns the host's shell
        self.send_files()
        self.pid = sender.cmd_start(
            self.program + self.program_args,
            env=self.get_env(),
            output_file=self.remote_output_file,
        )
        self.notify_start({"host": self.location, "pid": self.pid})
        self._start_waiting()
        self.fetch_files()

    @default("to_send")
    def _no_files_to_send(self) -> list:
        return []


class SSHEngines(ipp_launcher.SSHEngineSetLauncher):
    """Engines on the hosts of ``HOSTS``, started over ssh."""

    launcher_class = SSHEngine
    entrypoint_name = f"{__name__}.SSHEngines"

    def get_output(self, remove: bool = False) -> str:
        """Every engine's output; '' when asked to remove it (ipyparallel's stop of the set, two
        ssh sessions per engine to fetch files it would delete): the cluster's stop removes the
        engines' folder on each host, and a lost rank's error reads its tail itself."""
        return "" if remove else super().get_output(remove=False)


LOCAL = LocalEngines.entrypoint_name
SSH = SSHEngines.entrypoint_name
