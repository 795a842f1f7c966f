"""int8 weights with Keras's own ``model.quantize("int8")`` on kcookbook's backbones.

Every backbone quantises right after it is built or loaded (the SmolLM2 failure was a weightless
rotary layer that no call ever built), its projections become int8, its logits stay close to the
float model's, and an int8 model exports to transformers dequantised, saying so.
"""

import json

import keras
import numpy as np
import pytest
import torch
import transformers

from kcookbook.components import MixtureOfExperts
from kcookbook.tasks import CausalLM

from test_decoder_hf_parity import VOCAB, save_tiny_hf_model


@pytest.mark.one_backend  # Keras's int8 save/load; the int8 numerics run on every backend below
def test_int8_preset_round_trip_keeps_the_int8_model(tmp_path):
    save_tiny_hf_model("llama", str(tmp_path / "source"))
    lm = CausalLM.from_preset(str(tmp_path / "source"))
    lm.backbone.quantize("int8")
    lm.save_to_preset(str(tmp_path / "int8"))
    again = CausalLM.from_preset(str(tmp_path / "int8"))
    assert again.backbone.token_embedding.quantization_mode == "int8"
    assert set(_projection_modes(again.backbone).values()) == {"int8"}
    token_ids = np.random.default_rng(2).integers(3, VOCAB, (1, 8)).astype("int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(inputs)),
                               keras.ops.convert_to_numpy(lm(inputs)), atol=1e-5)


def test_weight_only_int8_saves_and_reloads_weight_only(tmp_path):
    """Keras rebuilds an int8 ``Dense`` from config with per-token activation quantisation; a
    weight-only model must come back weight-only, computing with the dequantised kernels."""
    save_tiny_hf_model("llama", str(tmp_path / "source"))
    lm = CausalLM.from_preset(str(tmp_path / "source"))
    token_ids = np.random.default_rng(3).integers(3, VOCAB, (2, 8)).astype("int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    w8a8 = CausalLM.from_preset(str(tmp_path / "source"))
    w8a8.backbone.quantize("int8")
    lm.backbone.quantize("int8", config=keras.quantizers.Int8QuantizationConfig(activation_quantizer=None))
    weight_only = keras.ops.convert_to_numpy(lm(inputs))

    # The reference: the float model with every projection's kernel replaced by int8 / scale.
    reference = CausalLM.from_preset(str(tmp_path / "source"))
    quantized = {layer.path: layer for layer in lm.backbone._flatten_layers(include_self=False)
                 if isinstance(layer, keras.layers.Dense) and layer.quantization_mode == "int8"}
    assert len(quantized) >= 8
    assert lm.backbone.token_embedding.inputs_quantizer is None
    for layer in reference.backbone._flatten_layers(include_self=False):
        if layer.path in quantized:
            source = quantized[layer.path]
            layer.kernel.assign(keras.ops.convert_to_numpy(source._kernel).astype("float32")
                                / keras.ops.convert_to_numpy(source.kernel_scale))
    reference.backbone.token_embedding.quantize(  # the table stays int8 in both: same rounding
        "int8", config=keras.quantizers.Int8QuantizationConfig(activation_quantizer=None))
    np.testing.assert_allclose(weight_only, keras.ops.convert_to_numpy(reference(inputs)), atol=1e-4)

    lm.save_to_preset(str(tmp_path / "weight_only"))
    config = json.loads((tmp_path / "weight_only" / "config.json").read_text())["config"]
    assert set(config["int8_activation_quantizers"]) == set(quantized) | {lm.backbone.token_embedding.path}
    again = CausalLM.from_preset(str(tmp_path / "weight_only"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(inputs)), weight_only, atol=1e-5)
    # The check can fail: the same weights with activations quantised give other logits.
    assert np.abs(keras.ops.convert_to_numpy(w8a8(inputs)) - weight_only).max() > 1e-3

    config["int8_activation_quantizers"] = {"no/such/layer": None}
    with pytest.raises(ValueError, match="no/such/layer.*not int8 Dense"):
        type(again.backbone).from_config(config)


def _projection_modes(backbone):
    return {layer.name: layer.quantization_mode for layer in backbone._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.Dense)}


# llama on every backend; the other families quantise the same Dense/embedding layers (mixtral's experts:
# the per-expert test below runs everywhere), so they run in the torch pass only.
@pytest.mark.parametrize("family", ["llama"] + [pytest.param(f, marks=pytest.mark.one_backend)
                                                for f in ("gemma", "mixtral", "gpt2")])
def test_int8_quantisation_after_from_preset_keeps_logits_close(family, tmp_path):
    save_tiny_hf_model(family, str(tmp_path / "source"))
    lm = CausalLM.from_preset(str(tmp_path / "source"))
    token_ids = np.random.default_rng(0).integers(3, VOCAB, (2, 8)).astype("int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    float_logits = keras.ops.convert_to_numpy(lm(inputs))

    lm.backbone.quantize("int8")
    assert lm.backbone.token_embedding.quantization_mode == "int8"  # the largest matrix of a small LM
    experts = [v.dtype for v in lm.backbone.weights if v.name in ("expert_gate_up", "expert_output")]
    assert experts == (["int8"] * 4 if family == "mixtral" else [])  # 2 layers × 2 matrices
    modes = _projection_modes(lm.backbone)
    assert {mode for name, mode in modes.items() if name != "router"} == {"int8"}
    assert {mode for name, mode in modes.items() if name == "router"} <= {None}  # routers stay float
    int8_logits = keras.ops.convert_to_numpy(lm(inputs))
    scale = np.abs(float_logits).max()
    error = np.abs(int8_logits - float_logits).max(axis=-1)  # per token
    assert error.max() > 0  # the int8 path ran
    # A mixture of experts can route a token near a tie to another expert after rounding (its error is
    # then that of a different expert); every other token stays within 10% of the largest logit (tiny
    # random models with 32-wide layers are the worst case for per-channel int8; measured ≤ 7.3%).
    close = error < 0.1 * scale
    assert close.all() if family != "mixtral" else close.mean() >= 0.75, (error / scale).round(3)
    agreement = (int8_logits.argmax(-1) == float_logits.argmax(-1)).mean()
    assert agreement > 0.8


@pytest.mark.one_backend  # export writes files; dequantisation is numpy
def test_int8_model_exports_dequantised(tmp_path):
    save_tiny_hf_model("llama", str(tmp_path / "source"))
    lm = CausalLM.from_preset(str(tmp_path / "source"))
    lm.backbone.quantize("int8")
    lm.export_to_transformers(str(tmp_path / "export"))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["kcookbook_export"]["notes"] == ["int8 embeddings dequantised to float",
                                                   "int8 kernels dequantised to float"]

    token_ids = np.random.default_rng(1).integers(3, VOCAB, (1, 8)).astype("int32")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        exported = model(input_ids=torch.tensor(token_ids, dtype=torch.long)).logits.numpy()
    ours = keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}))
    # Ours also quantises the activations (Keras's int8 matmul): close, not equal.
    assert np.abs(exported - ours).max() < 0.1 * np.abs(ours).max()


@pytest.mark.parametrize("tokens", [1, 12])  # 1: each token gathers its experts; 12: every expert runs
def test_int8_experts_have_per_expert_per_channel_scales_and_stay_close(tokens):
    keras.utils.set_random_seed(3)
    layer = MixtureOfExperts(num_experts=4, top_k=2, intermediate_dim=24)
    x = np.random.default_rng(3).normal(size=(1, tokens, 16)).astype("float32")
    layer(x)
    rng = np.random.default_rng(4)  # experts of very different magnitudes: one scale each is needed
    float_weights = {name: getattr(layer, name).numpy() * rng.uniform(0.1, 10, (4, 1, 1)).astype("float32")
                     for name in ("expert_gate_up", "expert_output")}
    for name, value in float_weights.items():
        getattr(layer, name).assign(value)
    expected = keras.ops.convert_to_numpy(layer(x))

    layer.quantize("int8")
    assert layer.quantization_mode == "int8" and layer.router.quantization_mode is None
    for name, value in float_weights.items():
        assert getattr(layer, name).dtype == "int8"
        assert tuple(getattr(layer, f"{name}_scale").shape) == (4, 1, value.shape[2])
        # absmax rounding: every weight within half a step (column max / 127 / 2) of its float value
        step = np.abs(value).max(axis=1, keepdims=True) / 127
        error = np.abs(keras.ops.convert_to_numpy(layer.expert_kernel(name)) - value)
        assert (error <= step / 2 + 1e-6).all()
    out = keras.ops.convert_to_numpy(layer(x))
    # int8 weights, float activations: measured 0.4% of the largest output (1 and 12 tokens)
    assert np.abs(out - expected).max() < 0.02 * np.abs(expected).max()
    other = MixtureOfExperts(num_experts=4, top_k=2, intermediate_dim=8)
    other(x)
    with pytest.raises(NotImplementedError, match="MixtureOfExperts .* quantises to 'int8', not 'int4'"):
        other.quantize("int4")


@pytest.mark.one_backend  # files again; the experts' int8 numerics run on every backend
def test_int8_mixtral_round_trips_and_exports_dequantised(tmp_path):
    save_tiny_hf_model("mixtral", str(tmp_path / "source"))
    lm = CausalLM.from_preset(str(tmp_path / "source"))
    lm.backbone.quantize("int8")
    lm.save_to_preset(str(tmp_path / "int8"))
    again = CausalLM.from_preset(str(tmp_path / "int8"))
    assert {v.dtype for v in again.backbone.weights if v.name.startswith("expert_")} == {"int8", "float32"}
    token_ids = np.random.default_rng(5).integers(3, VOCAB, (2, 8)).astype("int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    ours = keras.ops.convert_to_numpy(lm(inputs))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(inputs)), ours, atol=1e-5)

    lm.export_to_transformers(str(tmp_path / "export"))
    notes = json.loads((tmp_path / "export" / "config.json").read_text())["kcookbook_export"]["notes"]
    assert "int8 expert weights dequantised to float" in notes
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        exported = model(input_ids=torch.tensor(token_ids, dtype=torch.long)).logits.numpy()
    assert np.abs(exported - ours).max() < 0.1 * np.abs(ours).max()


@pytest.mark.backend_independent
def test_closeness_measures_against_their_definitions():
    """kcookbook.metrics' closeness numbers against torch's cross-entropy and a direct cosine loop."""
    from kcookbook.metrics import embedding_closeness, logits_closeness, next_token_nll

    rng = np.random.default_rng(5)
    ids = rng.integers(0, 11, (3, 9))
    reference = rng.normal(0, 3, (3, 9, 11))
    changed = reference + rng.normal(0, 0.5, reference.shape)
    expected = torch.nn.functional.cross_entropy(torch.tensor(reference[:, :-1]).reshape(-1, 11),
                                                 torch.tensor(ids[:, 1:]).reshape(-1)).item()
    assert next_token_nll(reference, ids) == pytest.approx(expected, rel=1e-12)
    closeness = logits_closeness(changed, reference, ids)
    changed_nll = torch.nn.functional.cross_entropy(torch.tensor(changed[:, :-1]).reshape(-1, 11),
                                                    torch.tensor(ids[:, 1:]).reshape(-1)).item()
    assert closeness["perplexity_ratio"] == pytest.approx(np.exp(changed_nll - expected), rel=1e-12)
    assert closeness["max_logit_diff"] == np.abs(changed - reference).max()
    assert 0 < closeness["argmax_agreement"] < 1

    vectors = rng.normal(size=(6, 4))
    moved = vectors * 2.0  # same directions: cosine 1, same neighbours
    moved[0] = -moved[0]  # one text turned around
    cosines = [v @ m / np.linalg.norm(v) / np.linalg.norm(m) for v, m in zip(vectors, moved)]
    result = embedding_closeness(moved, vectors)
    assert result["min_cosine"] == pytest.approx(min(cosines)) == pytest.approx(-1.0)
    assert 0 < result["nearest_agreement"] <= 1


def test_filters_leave_the_token_table_float_and_the_preset_reloads_so(tmp_path):
    """``quantize("int8", filters=...)`` (the CPU-speed option in ``Backbone.quantize``'s docstring):
    the token table, and with it the tied LM head, stays float32 and the preset reloads that way."""
    save_tiny_hf_model("llama", str(tmp_path / "source"))
    lm = CausalLM.from_preset(str(tmp_path / "source"))
    float_table = keras.ops.convert_to_numpy(lm.backbone.token_embedding.embeddings)
    lm.backbone.quantize("int8", filters=lambda layer: not isinstance(layer, keras.layers.Embedding))
    modes = {layer.path: layer.quantization_mode for layer in lm.backbone._flatten_layers(include_self=False)
             if isinstance(layer, (keras.layers.Dense, keras.layers.Embedding))}
    assert modes[lm.backbone.token_embedding.path] is None
    assert sum(mode == "int8" for mode in modes.values()) >= 8
    token_ids = np.random.default_rng(4).integers(3, VOCAB, (2, 8)).astype("int32")
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    logits = keras.ops.convert_to_numpy(lm(inputs))

    lm.save_to_preset(str(tmp_path / "filtered"))
    again = CausalLM.from_preset(str(tmp_path / "filtered"))
    assert again.backbone.token_embedding.quantization_mode is None
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again.backbone.token_embedding.embeddings), float_table)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(inputs)), logits, atol=1e-5)
