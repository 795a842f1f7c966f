"""The unit-test runner resumes after a native crash, and only then (tests/run_resuming_after_crash.py)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_resuming_after_crash.py")

pytestmark = pytest.mark.backend_independent

# A test file whose second test kills its process with SIGSEGV the first N times it runs (a file
# counts them), as TensorFlow's crash does: no assertion fails, pytest never reports.
CRASHING_TESTS = """
import os, signal

COUNT = os.path.join(os.path.dirname(__file__), "crashes.txt")


def test_first():
    with open(os.path.join(os.path.dirname(__file__), "first_runs.txt"), "a") as f:
        f.write("run\\n")


def test_second_crashes():
    crashes = open(COUNT).read().count("x") if os.path.exists(COUNT) else 0
    if crashes < {crashes}:
        with open(COUNT, "a") as f:
            f.write("x")
        os.kill(os.getpid(), signal.SIGSEGV)


def test_third():
    assert {third_passes}
"""


def _run(tmp_path, crashes, third_passes=True, resumes=1):
    (tmp_path / "test_crashing.py").write_text(
        textwrap.dedent(CRASHING_TESTS.format(crashes=crashes, third_passes=third_passes)))
    result = subprocess.run(
        [sys.executable, RUNNER, "--resumes", str(resumes), "--", "-q", "-p", "no:cacheprovider",
         "-p", "no:faulthandler", str(tmp_path / "test_crashing.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    first_runs = (tmp_path / "first_runs.txt").read_text().count("run")
    return result, first_runs


def test_a_crash_resumes_with_the_tests_that_had_not_passed(tmp_path):
    result, first_runs = _run(tmp_path, crashes=1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "killed by SIGSEGV" in result.stdout
    assert "The 1 test(s) that passed are not run again" in result.stdout
    assert first_runs == 1  # the test that passed before the crash was not repeated
    assert "2 passed, 1 deselected" in result.stdout


def test_a_failure_after_a_crash_still_fails_the_run(tmp_path):
    result, _ = _run(tmp_path, crashes=1, third_passes=False)
    assert result.returncode == 1
    assert "1 failed, 1 passed, 1 deselected" in result.stdout


def test_a_crash_past_the_last_resume_fails_the_run(tmp_path):
    result, first_runs = _run(tmp_path, crashes=2, resumes=1)
    assert result.returncode == 128 + signal.SIGSEGV
    assert "killed by SIGSEGV again after 1 resume(s)" in result.stdout
    assert first_runs == 1


def test_a_run_without_a_crash_runs_once(tmp_path):
    result, first_runs = _run(tmp_path, crashes=0, third_passes=False)
    assert result.returncode == 1
    assert "killed" not in result.stdout
    assert "1 failed, 2 passed" in result.stdout and first_runs == 1
