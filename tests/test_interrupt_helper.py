"""The helper that interrupts a study after its first run (test_warm.interrupt_after_first_run)
fails its test when the study hangs, dies before any run is done, or calls done a run that
left only a failure record. Stand-in runners (no training, no engines) play each case."""

import pytest
import test_warm

# Each stand-in replaces the study script (the helper fills in its {config} and {slots}, so a
# stand-in has no braces); like it, it gets the study folder as argv[1].
DIES_AT_ONCE = "import sys\nsys.exit(3)\n"
SILENT = "import time\ntime.sleep(3600)\n"
DONE_THEN_WAITS = """
import json, signal, sys, time
from pathlib import Path
signal.signal(signal.SIGINT, signal.default_int_handler)
runs = Path(sys.argv[1]) / "runs"
runs.mkdir(parents=True)
(runs / "xSUFFIX.json").write_text(json.dumps(dict(run_id="x")))
print("done   x (1 s)", flush=True)
time.sleep(3600)  # the next run 'trains' until Ctrl-C
"""


def interrupt_with(script: str, folder, monkeypatch) -> set[str]:
    monkeypatch.setattr(test_warm, "INTERRUPTED_STUDY", script)
    return test_warm.interrupt_after_first_run({}, folder)


def test_a_study_that_ends_before_any_run_is_done_fails_the_test(tmp_path, monkeypatch):
    with pytest.raises(pytest.fail.Exception, match="ended before any run was done"):
        interrupt_with(DIES_AT_ONCE, tmp_path, monkeypatch)


def test_a_study_that_prints_nothing_fails_the_test_within_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(test_warm, "RUNNER_BOUND_SECONDS", 2)
    with pytest.raises(pytest.fail.Exception, match="printed no 'done' line in 2 s"):
        interrupt_with(SILENT, tmp_path, monkeypatch)


def test_a_run_called_done_with_only_a_failure_record_fails_the_test(tmp_path, monkeypatch):
    with pytest.raises(AssertionError, match="x was called done but has no record"):
        interrupt_with(DONE_THEN_WAITS.replace("SUFFIX", ".failed"), tmp_path, monkeypatch)


def test_a_run_called_done_with_its_record_is_what_the_helper_returns(tmp_path, monkeypatch):
    assert interrupt_with(DONE_THEN_WAITS.replace("SUFFIX", ""), tmp_path, monkeypatch) == {"x"}
