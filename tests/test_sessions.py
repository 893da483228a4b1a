"""The test lock of tests/sessions.py: an ``orphans`` test runs alone, and is not starved."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sessions

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/locks"), reason="needs /proc/locks (Linux)"
)


def test_an_orphans_test_waits_for_the_running_test_and_the_next_waits_for_it(tmp_path):
    lock, turnstile = tmp_path / "lock", tmp_path / "turnstile"
    entered = {name: threading.Event() for name in ("running", "orphans", "next")}
    leave = {name: threading.Event() for name in entered}

    def test(name: str, alone: bool) -> None:
        with sessions.machine_share(alone, lock, turnstile):
            entered[name].set()
            assert leave[name].wait(60)

    with ThreadPoolExecutor(3) as tests:
        done = [tests.submit(test, "running", False)]
        sessions.until(entered["running"].is_set, "the running test never entered")
        done.append(tests.submit(test, "orphans", True))
        sessions.until(lambda: sessions.flock_waiters(lock) == 1, "the orphans test never waited")
        done.append(tests.submit(test, "next", False))
        sessions.until(lambda: sessions.flock_waiters(turnstile) == 1, "the next test never waited")
        assert not entered["orphans"].is_set() and not entered["next"].is_set()
        leave["running"].set()
        sessions.until(entered["orphans"].is_set, "the orphans test never entered")
        assert not entered["next"].is_set()  # not beside the orphans test
        leave["orphans"].set()
        sessions.until(entered["next"].is_set, "the next test never entered")
        leave["next"].set()
        for test_done in done:
            test_done.result(timeout=60)
