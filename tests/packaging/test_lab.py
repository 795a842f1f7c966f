"""`make lab` starts everywhere, as root too (Jupyter refuses root without --allow-root): the Makefile's own
lab command, run headless on a free port, serves the recipes and shuts down when asked.

Runs once, not per backend (`make test-packaging`). Set-up is skipped (`make -o setup`): the command
runs the jupyter of the environment running this test.
"""

import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
START_TIMEOUT = 180  # seconds; the server usually answers within 10-30 s


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, token, method="GET"):
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode("utf-8")


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory):
    """`make lab` with headless options; yields (base url, token, its output so far); stops it after."""
    tmp_path = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    args = f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 --IdentityProvider.token={token}"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    log = open(tmp_path / "lab.log", "w+")
    started = time.perf_counter()
    server = subprocess.Popen(
        ["make", "-C", str(ROOT), "--no-print-directory", "-o", "setup", "lab", f"VENV={sys.prefix}",
         f"LAB_ARGS={args}"], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def output():
        log.seek(0)
        return log.read()[-3000:]

    try:
        while True:
            assert server.poll() is None, f"`make lab` exited with {server.returncode}:\n{output()}"
            assert time.perf_counter() - started < START_TIMEOUT, f"no answer in {START_TIMEOUT} s:\n{output()}"
            try:
                _get(f"{base}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        answered = time.perf_counter() - started
        print(f"jupyter lab answered after {answered:.1f} s")
        yield base, token, output
    finally:
        try:
            _get(f"{base}/api/shutdown", token, method="POST")
            server.wait(timeout=60)
        except Exception:  # the server never came up or did not stop: end the process group we started
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
        log.close()


def test_make_lab_starts_and_lists_the_recipes(lab_server):
    base, token, output = lab_server
    status, body = _get(f"{base}/api/contents", token)
    listing = {item["name"]: item["type"] for item in json.loads(body)["content"]}
    assert listing.get("nlp") == "directory" and listing.get("cv") == "directory", listing
    status, body = _get(f"{base}/api/contents/nlp", token)
    notebooks = sorted(item["name"] for item in json.loads(body)["content"] if item["type"] == "notebook")
    assert "01_zero_config_finetuning.ipynb" in notebooks, notebooks
    status, page = _get(f"{base}/lab", token)
    assert status == 200 and "JupyterLab" in page, page[:300]
    if os.getuid() == 0:
        assert "--allow-root" in output(), output()  # make echoes the command it ran


def test_a_request_without_the_token_is_refused(lab_server):
    base, _, _ = lab_server
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/api/contents", timeout=10)
    assert refused.value.code == 403
