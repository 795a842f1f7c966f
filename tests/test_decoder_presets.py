"""KerasHub's Kaggle names for decoder LMs: listed with keras_hub's own handles, loaded from the
kagglehub cache with keras_hub's outputs, and a clear offline error when not cached.

No test touches the network: kagglehub is pointed at a closed local port (KAGGLE_API_ENVIRONMENT=TEST
is localhost:7777) and a temporary cache.
"""

import keras
import numpy as np
import pytest

import kcookbook
from kcookbook.presets import PresetError
from kcookbook.tasks import CausalLM

from keras_hub.src.models.gpt2.gpt2_presets import backbone_presets as keras_hub_gpt2_presets

GPT2_NAMES = ("gpt2_base_en", "gpt2_medium_en", "gpt2_large_en", "gpt2_extra_large_en",
              "gpt2_base_en_cnn_dailymail")


@pytest.fixture
def offline_kagglehub(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")
    return tmp_path


def test_gpt2_names_are_listed_with_keras_hubs_handles():
    rows = {row["name"]: row for row in kcookbook.presets.list_presets(family="gpt2")}
    assert set(GPT2_NAMES) <= set(rows)
    for name in GPT2_NAMES:
        assert rows[name]["handle"] == keras_hub_gpt2_presets[name]["kaggle_handle"], name
        assert rows[name]["offline"] is False and rows[name]["source"]


def test_uncached_kaggle_name_fails_offline_with_a_clear_error(offline_kagglehub):
    with pytest.raises(PresetError) as error:
        CausalLM.from_preset("gpt2_base_en")
    message = str(error.value)
    assert "kaggle://keras/gpt2/keras/gpt2_base_en/3" in message
    assert "network" in message and str(offline_kagglehub) in message


@pytest.mark.one_backend  # kagglehub cache lookup; keras_hub GPT-2 parity runs on every backend elsewhere
def test_gpt2_name_loads_a_keras_hub_preset_from_the_kagglehub_cache(offline_kagglehub):
    import keras_hub

    keras.utils.set_random_seed(5)
    # A tiny keras_hub GPT-2 stands in for the real download, at the cache path of gpt2_base_en.
    reference = keras_hub.models.GPT2Backbone(vocabulary_size=64, num_layers=1, num_heads=2,
                                              hidden_dim=16, intermediate_dim=32,
                                              max_sequence_length=16)
    for variable in reference.weights:
        variable.assign(variable + np.random.default_rng(0).normal(0, 0.2, variable.shape))
    variation = offline_kagglehub / "models" / "keras" / "gpt2" / "keras" / "gpt2_base_en"
    reference.save_to_preset(str(variation / "3"))
    (variation / "3.complete").write_text("")

    inputs = {"token_ids": np.random.default_rng(1).integers(0, 64, (1, 7)).astype("int32"),
              "padding_mask": np.ones((1, 7), "int32")}
    expected = keras.ops.convert_to_numpy(reference.token_embedding(reference(inputs), reverse=True))
    lm = CausalLM.from_preset("gpt2_base_en")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lm(inputs)), expected, atol=1e-5, rtol=0)


def keras_hub_written(reference, folder):
    """Perturb keras_hub's initial weights (norms start at 0/1), save a preset, return its logits."""
    for variable in reference.weights:
        variable.assign(variable + np.random.default_rng(0).normal(0, 0.2, variable.shape))
    reference.save_to_preset(str(folder))
    inputs = {"token_ids": np.random.default_rng(1).integers(0, 64, (2, 12)).astype("int32"),
              "padding_mask": np.array([[1] * 12, [1] * 7 + [0] * 5], "int32")}
    expected = keras.ops.convert_to_numpy(reference.token_embedding(reference(inputs), reverse=True))
    return inputs, expected


@pytest.mark.parametrize("family", ["mistral", "gemma"])
@pytest.mark.one_backend  # keras_hub's file layout; per-backend numerics: the transformers parity tests
def test_keras_hub_mistral_and_gemma_presets_load_with_identical_outputs(tmp_path, family):
    import keras_hub

    keras.utils.set_random_seed(6)
    common = dict(vocabulary_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=2,
                  hidden_dim=16)
    if family == "mistral":  # a window shorter than the sequence, so the window matters
        reference = keras_hub.models.MistralBackbone(intermediate_dim=32, sliding_window=8, **common)
    else:
        reference = keras_hub.models.GemmaBackbone(intermediate_dim=64, head_dim=8, **common)
    inputs, expected = keras_hub_written(reference, tmp_path)
    lm = CausalLM.from_preset(str(tmp_path))
    assert type(lm.backbone).__name__ == type(reference).__name__
    ours = keras.ops.convert_to_numpy(lm(inputs))
    real = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=2e-5, rtol=0)

