"""The private upstream attributes of hiresmed_nb.compat still exist where they were checked,
and the installed versions are those they were checked against: a moved pin fails here, naming
what to recheck, before it fails somewhere less clear."""

import importlib

import pytest

from hiresmed_nb import compat


@pytest.mark.parametrize("module", sorted(compat.CHECKED_AGAINST))
def test_the_installed_version_is_the_one_the_private_uses_were_checked_against(module):
    checked, uses = compat.CHECKED_AGAINST[module]
    installed = importlib.import_module(module).__version__
    assert installed == checked, (
        f"{module} is {installed}, but {uses} in hiresmed_nb/compat.py were checked against "
        f"{checked}: recheck them against {module} {installed}, then update CHECKED_AGAINST"
    )


def test_horovods_rendezvous_server_binds_one_address_and_closes_its_socket():
    import socket

    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer(verbose=0)
    port = compat.bind_rendezvous_server(server, "127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    assert server._httpd.server_address[0] == "127.0.0.1"
    compat.close_rendezvous_server(server)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_horovods_distributed_optimizer_still_has_its_allreduce():
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf

    optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.SGD(0.1))
    assert callable(getattr(optimizer, "_allreduce", None))
    plain = tf.keras.optimizers.SGD(0.1)
    assert compat.allreduce_gradients(plain, ["g"], ["v"]) == ["g"]


def test_tensorflows_gradient_registry_is_where_it_was():
    import tensorflow as tf  # noqa: F401  (the registry exists once TensorFlow is imported)

    assert isinstance(compat.gradient_registry(), dict)


def test_jupyter_clients_kernel_manager_still_has_the_overridden_hooks():
    from jupyter_client.manager import AsyncKernelManager

    missing = [
        name for name in compat.KERNEL_MANAGER_HOOKS if not hasattr(AsyncKernelManager, name)
    ]
    assert missing == [], f"jupyter_client no longer has {missing}: see study/executor.py"


def test_ipykernels_out_stream_keeps_the_original_descriptor_attribute():
    from ipykernel.iostream import OutStream

    assert "_original_stdstream_copy" in OutStream.__init__.__code__.co_names
