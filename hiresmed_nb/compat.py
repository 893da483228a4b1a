"""Every use of an upstream library's private attribute, in one place.

Each function below reaches into a library where its public API offers no way, and says why.
:data:`CHECKED_AGAINST` names the versions each was read and tested against; a test compares
them with what is installed and fails, naming the function to recheck, once a pin moves. Nothing
here imports the libraries at import time.
"""

from __future__ import annotations

import sys
from typing import Any

# module -> (the version the private uses below were checked against, which uses they are)
CHECKED_AGAINST: dict[str, tuple[str, str]] = {
    "horovod": ("0.28.1", "bind_rendezvous_server, close_rendezvous_server, allreduce_gradients"),
    "tensorflow": ("2.15.1", "gradient_registry"),
    "ipykernel": ("7.4.0", "engine_log_descriptor"),
    "jupyter_client": ("8.10.0", "KERNEL_MANAGER_HOOKS (study.kernels.RunnerKernelManager)"),
}

# The private coroutines of jupyter_client's AsyncKernelManager that the runner's kernel manager
# overrides (IPC sockets in a private folder, a quiet log): the public start_kernel has no hook
# between choosing the connection and launching the process.
KERNEL_MANAGER_HOOKS = (
    "_async_pre_start_kernel",
    "_async_launch_kernel",
    "_async_cleanup_resources",
)


RENDEZVOUS_POLL_SECONDS = 0.02


def bind_rendezvous_server(server: Any, addr: str) -> int:
    """Start Horovod's Gloo rendezvous ``server`` listening on ``addr`` only; returns its port.

    ``RendezvousServer.start`` binds every interface; the same handler is bound to one address
    through the attributes ``start`` itself sets (``_httpd``, ``_listen_thread``). Its loop
    checks for a stop every :data:`RENDEZVOUS_POLL_SECONDS` (the standard library's 0.5 s made
    every run wait that long for the server to stop)."""
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer
    from horovod.runner.util.threads import in_thread

    server._httpd = RendezvousHTTPServer((addr, 0), RendezvousHandler, 0)
    server._listen_thread = in_thread(
        target=server._httpd.serve_forever, args=(RENDEZVOUS_POLL_SECONDS,)
    )
    return int(server._httpd.server_address[1])


def close_rendezvous_server(server: Any) -> None:
    """Stop the server and close its socket (``stop`` leaves it listening until the object is
    garbage-collected)."""
    server.stop()
    server._httpd.server_close()


def allreduce_gradients(optimizer: Any, gradients: list[Any], variables: list[Any]) -> list[Any]:
    """Average ``gradients`` across Horovod ranks as ``optimizer`` (a ``DistributedOptimizer``)
    would in ``apply_gradients``; unchanged for a plain optimizer. Gradient accumulation applies
    the optimizer once per several batches, so it allreduces the accumulated sum itself."""
    if not hasattr(optimizer, "_allreduce"):
        return gradients
    return optimizer._allreduce(gradients, variables)


def gradient_registry() -> dict[str, Any] | None:
    """TensorFlow's global table of gradient functions (each traced run adds ``CustomGradient-*``
    entries that keep its graph alive), when TensorFlow is imported and keeps it where 2.15
    does; None otherwise."""
    ops = sys.modules.get("tensorflow.python.framework.ops")
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def engine_log_descriptor() -> int | None:
    """The file descriptor of an ipykernel process's original stderr (an engine's log file),
    which ipykernel's ``OutStream`` keeps privately; None outside such a process."""
    return getattr(sys.stderr, "_original_stdstream_copy", None)
