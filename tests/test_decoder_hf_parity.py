"""Decoder LMs converted from tiny random ``transformers`` checkpoints match transformers' logits.

Each family is saved with ``save_pretrained`` (safetensors, no tokenizer files), loaded with
``CausalLM.from_preset(folder)`` and compared with transformers in eval mode on the same token ids,
with padding. Weights are perturbed away from transformers' tiny initialisation so every tensor
(norm scales included) matters. Greedy generation through our key/value cache is compared with
transformers' own ``generate``.
"""

import os

import keras
import numpy as np
import pytest

import torch
import transformers

from kcookbook.components.samplers import BeamSampler  # noqa: E402
from kcookbook.presets import PresetError  # noqa: E402
from kcookbook.tasks import CausalLM  # noqa: E402

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)


def hf_configs():
    return {
        "llama": (transformers.LlamaConfig, dict(COMMON, rope_theta=500.0)),
        "mistral": (transformers.MistralConfig, dict(COMMON, sliding_window=4)),
        "gemma": (transformers.GemmaConfig, dict(COMMON, head_dim=16)),
        "mixtral": (transformers.MixtralConfig, dict(COMMON, num_local_experts=4, num_experts_per_tok=2)),
        "gpt2": (transformers.GPT2Config, dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                                n_positions=64, bos_token_id=1, eos_token_id=2)),
    }


def save_tiny_hf_model(family, folder):
    """A random transformers model of ``family`` saved at ``folder``; returns the torch model."""
    config_cls, options = hf_configs()[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config_cls(**options)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(folder)
    return model


_CONVERTED = {}


def convert(family, tmp_path_factory):
    """(family, transformers model, our CausalLM), built once per family per test session."""
    if family not in _CONVERTED:
        folder = str(tmp_path_factory.mktemp(family))
        reference = save_tiny_hf_model(family, folder)
        _CONVERTED[family] = (family, reference, CausalLM.from_preset(folder))
    return _CONVERTED[family]


@pytest.fixture(params=["llama", "mistral", "gemma", "mixtral", "gpt2"])
def converted(request, tmp_path_factory):
    return convert(request.param, tmp_path_factory)


@pytest.fixture(params=["llama", "gpt2"])  # one rotary and one learned-position family
def converted_for_beams(request, tmp_path_factory):
    return convert(request.param, tmp_path_factory)


def test_logits_match_transformers_with_padding(converted):
    family, reference, lm = converted
    rng = np.random.default_rng(0)
    token_ids = rng.integers(3, VOCAB, (2, 10)).astype("int32")
    padding_mask = np.ones_like(token_ids)
    padding_mask[1, 6:] = 0  # a shorter second row, right-padded
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(token_ids, dtype=torch.long),
                             attention_mask=torch.tensor(padding_mask)).logits.numpy()
    ours = keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))
    assert ours.shape == (2, 10, VOCAB)
    real = padding_mask.astype(bool)
    assert np.abs(expected[real]).max() > 0.5  # the comparison is not between near-zero logits
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-4, rtol=0)


def test_cached_greedy_generation_matches_transformers_generate(converted):
    family, reference, lm = converted
    prompt = np.array([[5, 17, 33, 9, 41, 12]], "int32")
    with torch.no_grad():
        expected = reference.generate(torch.tensor(prompt, dtype=torch.long), do_sample=False,
                                      max_new_tokens=10, min_new_tokens=10, pad_token_id=0,
                                      eos_token_id=None).numpy()
    ours = lm.generate({"token_ids": prompt, "padding_mask": np.ones_like(prompt)},
                       max_length=16, stop_token_ids=None)
    np.testing.assert_array_equal(ours["token_ids"], expected)


def test_beam_search_matches_transformers_beam_search(converted_for_beams):
    family, reference, lm = converted_for_beams
    prompt = np.array([[5, 17, 33, 9], [7, 8, 40, 3]], "int32")
    with torch.no_grad():
        expected = reference.generate(torch.tensor(prompt, dtype=torch.long), num_beams=3,
                                      do_sample=False, max_new_tokens=6, min_new_tokens=6,
                                      eos_token_id=None, pad_token_id=0, early_stopping=False).numpy()
    ours = lm.generate({"token_ids": prompt, "padding_mask": np.ones_like(prompt)}, max_length=10,
                       sampler=BeamSampler(num_beams=3), stop_token_ids=None)
    np.testing.assert_array_equal(ours["token_ids"], expected)


def test_folder_without_tokenizer_loads_without_preprocessor(converted):
    _, _, lm = converted
    assert lm.preprocessor is None
    with pytest.raises(ValueError, match="no preprocessor"):
        lm.generate("some text", max_length=8)


def test_unsupported_model_type_and_config_fields_are_named(tmp_path):
    save_tiny_hf_model("llama", str(tmp_path))
    config_path = os.path.join(tmp_path, "config.json")
    import json

    with open(config_path) as f:
        config = json.load(f)
    for change, message in [({"model_type": "falcon_mamba"}, "falcon_mamba"),
                            ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
                            ({"hidden_act": "relu2"}, "relu2"),
                            ({"mlp_bias": True}, "mlp_bias")]:
        with open(config_path, "w") as f:
            json.dump({**config, **change}, f)
        with pytest.raises(PresetError, match=message):
            CausalLM.from_preset(str(tmp_path))


@pytest.mark.one_backend  # keras_hub's file layout; GPT-2's numerics: the transformers parity above
def test_keras_hub_gpt2_preset_loads_with_identical_outputs(tmp_path):
    import keras_hub
    keras.utils.set_random_seed(7)
    reference = keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=2, num_heads=4,
                                              hidden_dim=32, intermediate_dim=64,
                                              max_sequence_length=32)
    for variable in reference.weights:  # keras_hub initialises biases and norms to 0/1
        variable.assign(variable + np.random.default_rng(0).normal(0, 0.2, variable.shape))
    reference.save_to_preset(str(tmp_path))
    rng = np.random.default_rng(1)
    inputs = {"token_ids": rng.integers(0, VOCAB, (2, 9)).astype("int32"),
              "padding_mask": np.array([[1] * 9, [1] * 5 + [0] * 4], "int32")}
    expected = keras.ops.convert_to_numpy(reference.token_embedding(reference(inputs), reverse=True))
    lm = CausalLM.from_preset(str(tmp_path))
    ours = keras.ops.convert_to_numpy(lm(inputs))
    real = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-5, rtol=0)
