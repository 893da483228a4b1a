"""The named steps of training.train that need no data: where a rank stands."""

import socket

from hiresmed_nb.science import training


def test_the_host_identity_is_horovods_hostname_else_the_machines(monkeypatch):
    monkeypatch.setenv("HOROVOD_HOSTNAME", "nodeA")
    assert training.horovod_host() == "nodeA"
    monkeypatch.setenv("HOROVOD_HOSTNAME", "")
    assert training.horovod_host() == socket.gethostname()
    monkeypatch.delenv("HOROVOD_HOSTNAME")
    assert training.horovod_host() == socket.gethostname()


def test_serial_mode_stands_alone_as_rank_0_of_1(monkeypatch):
    monkeypatch.setenv("HOROVOD_HOSTNAME", "nodeB")
    ranks = training.join_ranks(distributed=False)
    assert ranks == training.RankInfo(0, 1, 0, 1, "nodeB", False)
