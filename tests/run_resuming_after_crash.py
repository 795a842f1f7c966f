"""Run pytest; if a native crash kills it, run the tests that had not yet passed in a new process.

TensorFlow 2.21's runtime can die with a segmentation fault inside ``fit`` after a tf.data pipeline
was abandoned mid-epoch (a dataset whose label check failed): CI's run of 2026-12-07 died that way in
``tests/test_hostile_tasks.py``, and a loop of that test's calls (fit, a failing evaluate and fit,
fit again) crashed twice in about 400 rounds here. The crash is in a thread that runs no Python
(faulthandler lists only the main thread, waiting in ``quick_execute``), not in a test's assertion,
and it takes every later test's result with it.

So a run killed by a signal is not the end of the run: this module, loaded into pytest as a plugin,
writes each test that finished without failing to a ledger; the run starts again in a new process
with those deselected, at most ``--resumes`` times, and says so. A test that failed is run again (and
fails again); a crash that recurs past the last resume fails the run. Exit status: pytest's last one.

Usage: python tests/run_resuming_after_crash.py [--resumes N] -- PYTEST_ARGS...
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile

LEDGER_VARIABLE = "KCOOKBOOK_PASSED_LEDGER"
RESUME_VARIABLE = "KCOOKBOOK_RESUME_FROM_LEDGER"
PLUGIN = os.path.splitext(os.path.basename(__file__))[0]

# ----- the plugin half: runs inside pytest -----
_failed_nodeids = set()


def pytest_runtest_logreport(report):
    """Append each test that ended without a failing phase to the ledger."""
    if report.failed:
        _failed_nodeids.add(report.nodeid)
    elif report.when == "teardown" and report.nodeid not in _failed_nodeids:
        with open(os.environ[LEDGER_VARIABLE], "a", encoding="utf-8") as f:
            f.write(report.nodeid + "\n")


def pytest_collection_modifyitems(config, items):
    """After a crash: leave out the tests the ledger lists."""
    ledger = os.environ.get(RESUME_VARIABLE)
    if not ledger or not os.path.exists(ledger):
        return
    with open(ledger, encoding="utf-8") as f:
        passed = set(f.read().splitlines())
    done = [item for item in items if item.nodeid in passed]
    if done:
        config.hook.pytest_deselected(items=done)
        items[:] = [item for item in items if item.nodeid not in passed]


# ----- the runner half -----


def _signal_name(returncode):
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run(pytest_args, resumes=1, python=sys.executable):
    with tempfile.TemporaryDirectory(prefix="kcookbook-ledger-") as folder:
        ledger = os.path.join(folder, "passed.txt")
        here = os.path.dirname(os.path.abspath(__file__))
        search_path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        environment = {**os.environ, LEDGER_VARIABLE: ledger, "PYTHONPATH": search_path}
        environment.pop(RESUME_VARIABLE, None)
        command = [python, "-m", "pytest", "-p", PLUGIN, *pytest_args]
        for attempt in range(resumes + 1):
            returncode = subprocess.call(command, env=environment)
            if returncode >= 0:
                return returncode
            passed = 0
            if os.path.exists(ledger):
                with open(ledger, encoding="utf-8") as f:
                    passed = len(set(f.read().split()))
            backend = os.environ.get("KERAS_BACKEND", "the default backend")
            if attempt == resumes:
                print(f"\n== pytest ({backend}) was killed by {_signal_name(returncode)} again after "
                      f"{resumes} resume(s); {passed} test(s) had passed. Failing the run.", flush=True)
                return 128 - returncode
            print(f"\n== pytest ({backend}) was killed by {_signal_name(returncode)}: a native crash, "
                  f"not a failed assertion (the stack above says where). The {passed} test(s) that "
                  "passed are not run again; the rest run in a new process.", flush=True)
            environment[RESUME_VARIABLE] = ledger
    return returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resumes", type=int, default=1, help="new processes after crashes (default 1)")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    pytest_args = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    return run(pytest_args, resumes=args.resumes)


if __name__ == "__main__":
    sys.exit(main())
