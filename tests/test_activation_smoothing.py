"""Activation smoothing before int8 (``DecoderBackbone.smooth_activations``, SmoothQuant)."""

import keras
import numpy as np
import pytest

from helpers import tiny_llama_config
from kcookbook.backbones import GPT2Backbone, LlamaBackbone
from kcookbook.components import RMSNormalization
from kcookbook.components.activation_smoothing import DenseColumns, MaximumRecordingCalls, smoothing_factors

VOCABULARY = 64


def _llama(**changes):
    keras.utils.set_random_seed(5)
    return LlamaBackbone(**tiny_llama_config(VOCABULARY, **changes))


def _gpt2():
    keras.utils.set_random_seed(5)
    return GPT2Backbone(vocabulary_size=VOCABULARY, num_layers=2, num_heads=2, hidden_dim=16,
                        intermediate_dim=32, max_sequence_length=32)


def _ids(rows=6, length=12, seed=0):
    return np.random.default_rng(seed).integers(0, VOCABULARY, size=(rows, length)).astype("int32")


def _hidden(backbone, ids):
    return keras.ops.convert_to_numpy(backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)}))


def _with_outlier_channels(backbone, channels=(3, 11), size=40.0):
    """Make two channels of every normalisation's output ``size`` times larger: the outliers real
    language models have (and that per-token int8 scales handle badly)."""
    for block in backbone.blocks:
        for norm, _ in block.smoothable_inputs():
            if isinstance(norm, DenseColumns):
                continue
            weight = norm.scale if isinstance(norm, RMSNormalization) else norm.gamma
            values = keras.ops.convert_to_numpy(weight).copy()
            values[list(channels)] *= size
            weight.assign(values)
    return backbone


@pytest.mark.parametrize("make", [_llama, lambda: _llama(norm_unit_offset=True), _gpt2],
                         ids=["rms", "rms_unit_offset", "layer_norm"])
def test_smoothing_keeps_the_float_model_and_equalises_the_maxima(make):
    backbone = make()
    ids = _ids()
    before = _hidden(backbone, ids)
    factors = backbone.smooth_activations(ids, strength=0.5)
    after = _hidden(backbone, ids)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    assert any(np.abs(np.log(f)).max() > 0.1 for f in factors)  # something moved
    # At strength 0.5 each channel's largest |input| now equals its largest |weight| (SmoothQuant's
    # definition), measured again from scratch on the rewritten model.
    pairs = [pair for block in backbone.blocks for pair in block.smoothable_inputs()]
    calls = MaximumRecordingCalls([dense for _, projections in pairs for dense in projections])
    backbone.hidden_states(ids, np.ones_like(ids), calls=calls)
    for _, projections in pairs:
        inputs = calls.maxima[id(projections[0])]
        weights = np.abs(keras.ops.convert_to_numpy(projections[0].kernel)).max(axis=1)
        np.testing.assert_allclose(inputs, weights, rtol=1e-3)


def test_smoothing_factors_follow_the_formula():
    a, w = np.array([8.0, 1.0, 0.0, 2.0]), np.array([0.5, 2.0, 1.0, 0.0])
    np.testing.assert_allclose(smoothing_factors(a, w, 0.5), [4.0, 0.5 ** 0.5, 1.0, 1.0])
    np.testing.assert_allclose(smoothing_factors(a, w, 1.0), [8.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        smoothing_factors(a, w, 1.5)


def test_smoothing_makes_int8_closer_to_float_with_outlier_channels():
    ids, held_out = _ids(seed=1), _ids(rows=4, seed=2)
    errors = {}
    for smoothed in (False, True):
        backbone = _with_outlier_channels(_llama())
        reference = _hidden(backbone, held_out)
        if smoothed:
            backbone.smooth_activations(ids)
        backbone.quantize("int8")
        errors[smoothed] = np.abs(_hidden(backbone, held_out) - reference).mean() / np.abs(reference).mean()
    assert errors[True] < 0.75 * errors[False], errors  # 0.52-0.66 over the seeds tried


def test_smoothing_refuses_what_it_cannot_rewrite():
    backbone = _llama()
    with pytest.raises(ValueError, match=r"shape \(examples, length\)"):
        backbone.smooth_activations(np.zeros((5,), "int32"))
    backbone.blocks[0].attention.qkv.enable_lora(2)
    with pytest.raises(ValueError, match="LoRA enabled: smooth and quantize first"):
        backbone.smooth_activations(_ids())
    quantized = _llama()
    quantized.quantize("int8")
    with pytest.raises(ValueError, match="already quantised"):
        quantized.smooth_activations(_ids())
