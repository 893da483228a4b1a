"""Rank placement, GPU selection, and a real 2-rank cluster: results, errors, clean stop."""

import socket

import numpy as np
import pytest

from hiresmed_nb import cluster, training
from hiresmed_nb.cluster import HorovodCluster, RankFailedError, assign_ranks
from hiresmed_nb.params import HiresmedError


def test_ranks_on_two_hosts_get_horovods_local_and_cross_numbers():
    slots = assign_ranks(["a", "a", "b", "b", "b"])
    assert [s.local_rank for s in slots] == [0, 1, 0, 1, 2]
    assert [s.local_size for s in slots] == [2, 2, 3, 3, 3]
    assert [s.cross_rank for s in slots] == [0, 0, 1, 1, 0]
    assert [s.cross_size for s in slots] == [2, 2, 2, 2, 1]
    assert {s.size for s in slots} == {5}


def test_environment_carries_rank_and_rendezvous():
    slot = assign_ranks(["localhost", "localhost"])[1]
    env = cluster.horovod_environment(slot, "127.0.0.1", 4242, "lo", threads=1)
    assert env["HOROVOD_RANK"] == "1" and env["HOROVOD_SIZE"] == "2"
    assert env["HOROVOD_GLOO_RENDEZVOUS_PORT"] == "4242"
    assert env["HOROVOD_CONTROLLER"] == env["HOROVOD_CPU_OPERATIONS"] == "gloo"
    assert env["HOROVOD_GLOO_IFACE"] == "lo"


def test_threads_are_split_between_ranks_on_a_host():
    assert cluster.threads_per_rank(8, 2) == 4
    assert cluster.threads_per_rank(2, 4) == 1


def test_each_rank_selects_the_gpu_of_its_local_rank():
    gpus = ["gpu0", "gpu1", "gpu2"]
    assert [training.select_gpu(gpus, r) for r in range(3)] == gpus
    assert training.select_gpu([], 0) is None
    with pytest.raises(HiresmedError, match="local rank 3 has no GPU"):
        training.select_gpu(gpus, 3)


def test_pin_gpu_turns_on_memory_growth_and_hides_other_gpus(monkeypatch):
    import tensorflow as tf

    growth, visible = [], []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: ["g0", "g1"])
    monkeypatch.setattr(
        tf.config.experimental, "set_memory_growth", lambda gpu, on: growth.append((gpu, on))
    )
    monkeypatch.setattr(
        tf.config, "set_visible_devices", lambda gpu, kind: visible.append((gpu, kind))
    )
    training.pin_gpu(1)
    assert growth == [("g0", True), ("g1", True)]
    assert visible == [("g1", "GPU")]


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


RANK_AND_RENDEZVOUS = (
    "[__import__('os').environ[k] for k in "
    "('HOROVOD_RANK', 'HOROVOD_GLOO_RENDEZVOUS_ADDR', 'HOROVOD_GLOO_RENDEZVOUS_PORT')]"
)


@pytest.mark.distributed
def test_cluster_runs_on_every_rank_then_leaves_nothing_behind():
    with HorovodCluster(2) as running:
        first = running.run(eval, RANK_AND_RENDEZVOUS)
        second = running.run(eval, RANK_AND_RENDEZVOUS)
        pids = running.engine_pids
    assert [rank for rank, _, _ in first] == ["0", "1"]
    assert {addr for _, addr, _ in first + second} == {"127.0.0.1"}  # loopback only
    # Every run has its own rendezvous server on a new port, closed when the run ends.
    ports = {int(port) for _, _, port in first + second}
    assert len(ports) == 2
    assert not any(port_is_open(port) for port in ports)
    assert len(set(pids)) == 2
    assert cluster.cluster_processes(running.cluster_id) == []


@pytest.mark.distributed
def test_an_error_on_one_rank_is_raised_with_its_rank_and_traceback():
    failing = "1 // (1 - int(__import__('os').environ['HOROVOD_RANK']))"
    with pytest.raises(RankFailedError) as raised:
        with HorovodCluster(2) as running:
            running.run(eval, failing)
    assert raised.value.rank == 1
    assert raised.value.ename == "ZeroDivisionError"
    assert "ZeroDivisionError" in str(raised.value)
    assert cluster.cluster_processes(running.cluster_id) == []


def tiny_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eight 12 x 12 RGB images with labels covering three classes."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(8, 12, 12, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=8)
    labels[:3] = [0, 1, 2]
    return images, labels


def assert_same_weights(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for got_array, want_array in zip(got, want, strict=True):
        np.testing.assert_allclose(got_array, want_array, rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
def test_two_ranks_average_gradients_like_one_serial_step_on_both_halves():
    images, labels = tiny_batch(seed=0)
    serial = training.one_sgd_step(images, labels, distributed=False)
    with HorovodCluster(2) as running:
        per_rank = running.run(training.one_sgd_step, images, labels, True)
    initial = training.one_sgd_step(images, labels, distributed=False, learning_rate=0.0)
    assert any(not np.allclose(a, b) for a, b in zip(serial, initial, strict=True))
    for rank_weights in per_rank:
        assert_same_weights(rank_weights, serial)


def test_accumulated_micro_batches_give_the_weights_of_one_big_serial_step():
    images, labels = tiny_batch(seed=1)
    serial = training.one_sgd_step(images, labels, distributed=False)
    accumulated = training.one_sgd_step(images, labels, distributed=False, accumulation_steps=4)
    first_quarter_only = training.one_sgd_step(images[:2], labels[:2], distributed=False)
    assert any(not np.allclose(a, b) for a, b in zip(serial, first_quarter_only, strict=True))
    assert_same_weights(accumulated, serial)


@pytest.mark.distributed
def test_two_accumulation_steps_on_one_rank_equal_one_step_on_two_ranks():
    images, labels = tiny_batch(seed=2)
    accumulated = training.one_sgd_step(images, labels, distributed=False, accumulation_steps=2)
    with HorovodCluster(2) as running:
        per_rank = running.run(training.one_sgd_step, images, labels, True, 0.1, 2)
        two_ranks = running.run(training.one_sgd_step, images, labels, True)
    assert_same_weights(two_ranks[0], accumulated)
    assert_same_weights(per_rank[1], accumulated)  # both levers at once
