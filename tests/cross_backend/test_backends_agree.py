"""The three backends agree: the same presets, run in one subprocess per backend, give the same
outputs within 1e-4 (MiniLM's real weights, and a tiny random BERT saved as a kcookbook preset)."""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import TRICKY_SENTENCES

BACKENDS = ("jax", "tensorflow", "torch")
TOLERANCE = 1e-4
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compute_outputs.py")


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory, tiny_vocabulary, tiny_bert_config):
    import keras

    import kcookbook

    keras.utils.set_random_seed(21)
    backbone = kcookbook.backbones.BertBackbone(**tiny_bert_config)
    directory = tmp_path_factory.mktemp("cross_backend") / "tiny_bert"
    tokenizer = kcookbook.components.WordPieceTokenizer(tiny_vocabulary)
    preprocessor = kcookbook.tasks.TextClassifierPreprocessor(tokenizer, sequence_length=24)
    kcookbook.presets.save_preset(str(directory), backbone, preprocessor=preprocessor)
    rng = np.random.default_rng(0)
    mask = np.ones((3, 12), "int32")
    mask[1, 8:] = 0
    mask[2, 4:] = 0
    np.savez(directory / "inputs.npz",
             token_ids=rng.integers(0, len(tiny_vocabulary), (3, 12)).astype("int32"),
             segment_ids=(rng.random((3, 12)) < 0.5).astype("int32"), padding_mask=mask)
    return directory


@pytest.fixture(scope="module")
def outputs(tiny_preset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("outputs")
    runs = {}
    for backend in BACKENDS:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        runs[backend] = subprocess.Popen(
            [sys.executable, SCRIPT, str(folder / f"{backend}.npz"), str(tiny_preset)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = {}
    for backend, process in runs.items():
        log, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{backend} run failed:\n{log[-3000:]}"
        with np.load(folder / f"{backend}.npz") as data:
            results[backend] = {k: data[k] for k in data.files}
    return results


def test_each_run_used_its_backend(outputs):
    assert {backend: str(out["backend"]) for backend, out in outputs.items()} == {b: b for b in BACKENDS}


@pytest.mark.parametrize("name", ["minilm", "tiny_embeddings", "tiny_sequence_output",
                                  "tiny_pooled_output"])
def test_backends_agree_pairwise(outputs, name):
    for a, b in itertools.combinations(BACKENDS, 2):
        x, y = outputs[a][name], outputs[b][name]
        assert x.shape == y.shape and np.isfinite(x).all()
        difference = float(np.abs(x - y).max())
        assert difference < TOLERANCE, f"{name}: {a} vs {b} differ by {difference}"


def test_outputs_are_not_trivially_equal(outputs):
    minilm = outputs["jax"]["minilm"]
    assert minilm.shape == (24 + len(TRICKY_SENTENCES), 384)
    assert np.abs(minilm[0] - minilm[1]).max() > 1e-2
