"""Keras' distribution API on kcookbook models: 8 virtual CPU devices (one JAX subprocess), the
same tiny BERT and Mixtral-style models unsharded, data parallel (8-way batch) and model parallel
(2 x 4 mesh, kcookbook.distribution.transformer_layout_map): the same outputs and the same training
losses, and the weights really are split as the layout says."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sharded_run.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sharded") / "results.npz")
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, SCRIPT, out], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(out + ".layout.json") as f:
        layout = json.load(f)
    return dict(np.load(out)), layout


@pytest.mark.parametrize("model", ["bert", "mixtral"])
@pytest.mark.parametrize("distribution", ["data_parallel", "model_parallel"])
def test_sharded_outputs_equal_the_single_device_outputs(run, model, distribution):
    results, _ = run
    expected = results[f"{model}/unsharded"]
    assert np.abs(expected).max() > 0.1  # a real output, not zeros
    np.testing.assert_allclose(results[f"{model}/{distribution}"], expected, atol=1e-5)


@pytest.mark.parametrize("distribution", ["data_parallel", "model_parallel"])
def test_sharded_training_follows_the_single_device_losses(run, distribution):
    results, _ = run
    losses = results["train/unsharded"]
    assert losses[-1] < losses[0] - 0.1  # it trains
    np.testing.assert_allclose(results[f"train/{distribution}"], losses, rtol=1e-5)
    np.testing.assert_allclose(results[f"train/{distribution}/final_weight"],
                               results["train/unsharded/final_weight"], atol=1e-5)


def test_model_parallel_splits_the_big_weights_and_replicates_the_rest(run):
    _, layout = run
    for model in ("bert", "mixtral"):
        placed = layout[f"{model}/model_parallel"]
        for path, (shard_shape, devices) in placed.items():
            assert devices == 8, path
        # (per-device shape) on a 2 x 4 mesh: "model" axis of size 4, weights replicated over "batch".
        assert placed["token_embedding/embeddings"][0] == [16, 16]                  # 64 rows / 4
        assert placed["transformer_layer_1/attention/qkv/kernel"][0][1] * 4 == \
            (48 if model == "bert" else 32)                                          # columns / 4
        assert placed["transformer_layer_0/attention/output/kernel"][0] == [4, 16]  # rows / 4
    bert = layout["bert/model_parallel"]
    assert bert["transformer_layer_0/ffn_intermediate/kernel"][0] == [16, 8]
    assert bert["transformer_layer_0/ffn_output/kernel"][0] == [8, 16]
    assert bert["transformer_layer_0/attention_norm/gamma"][0] == [16]               # replicated
    mixtral = layout["mixtral/model_parallel"]
    assert mixtral["transformer_layer_0/feed_forward/expert_gate_up"][0] == [1, 16, 64]  # 1 expert each
    assert mixtral["transformer_layer_0/feed_forward/router/kernel"][0] == [16, 4]      # replicated
    # Data parallel keeps every weight whole on every device.
    for path, (shard_shape, devices) in layout["mixtral/data_parallel"].items():
        assert devices == 8 and 0 not in shard_shape, path
    assert layout["mixtral/data_parallel"]["token_embedding/embeddings"][0] == [64, 16]
