"""Gemma 2 and Gemma 3 in the Llama family, against transformers' Gemma2ForCausalLM / Gemma3ForCausalLM.

Tiny random checkpoints with a sliding window (4) shorter than the sequences, local and global
layers, soft-capping switched on with small caps (so that it changes the logits), a
``query_pre_attn_scalar`` other than ``head_dim`` and, for Gemma 3, rotary bases that differ per
layer kind. They are saved with ``save_pretrained``, loaded with ``CausalLM.from_preset(folder)``
and compared with transformers: logits, and greedy ids past the window with and without the cache.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest

import torch
import transformers

from kcookbook.backbones import Gemma2Backbone, Gemma3Backbone
from kcookbook.presets import PresetError
from kcookbook.tasks import CausalLM

VOCAB = 96
WINDOW = 4
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, sliding_window=WINDOW,
              query_pre_attn_scalar=24, attn_logit_softcapping=3.0, final_logit_softcapping=2.5,
              bos_token_id=2, eos_token_id=1, pad_token_id=0)
LAYERS = ["sliding_attention", "full_attention", "sliding_attention"]


def hf_configs():
    return {
        "gemma2": transformers.Gemma2Config(**COMMON, num_hidden_layers=3, layer_types=LAYERS),
        "gemma3": transformers.Gemma3TextConfig(
            **COMMON, num_hidden_layers=3, layer_types=LAYERS,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "default", "rope_theta": 50.0}}),
    }


def save_tiny_hf_model(family, folder):
    torch.manual_seed(0)
    config = hf_configs()[family]
    config._attn_implementation = "eager"  # soft-capping needs transformers' eager attention
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    model.save_pretrained(folder)
    return model


_CONVERTED = {}


@pytest.fixture(params=["gemma2", "gemma3"])
def converted(request, tmp_path_factory):
    family = request.param
    if family not in _CONVERTED:
        folder = str(tmp_path_factory.mktemp(family))
        reference = save_tiny_hf_model(family, folder)
        _CONVERTED[family] = (family, reference, CausalLM.from_preset(folder), folder)
    return _CONVERTED[family]


def test_converted_backbone_has_gemma_options(converted):
    family, _, lm, _ = converted
    backbone = lm.backbone
    assert type(backbone) is {"gemma2": Gemma2Backbone, "gemma3": Gemma3Backbone}[family]
    assert backbone.layer_types == LAYERS
    windows = [block.attention.sliding_window for block in backbone.blocks]
    assert windows == [WINDOW, None, WINDOW]
    if family == "gemma3":
        bases = [block.attention.rotary_max_wavelength for block in backbone.blocks]
        assert bases == [10000.0, 50.0, 10000.0]


def test_logits_match_transformers_past_the_window_with_padding(converted):
    family, reference, lm, _ = converted
    rng = np.random.default_rng(0)
    token_ids = rng.integers(3, VOCAB, (2, 12)).astype("int32")
    padding_mask = np.ones_like(token_ids)
    padding_mask[1, 9:] = 0
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(token_ids, dtype=torch.long),
                             attention_mask=torch.tensor(padding_mask)).logits.numpy()
    ours = keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))
    real = padding_mask.astype(bool)
    # the final soft cap (2.5) is active: logits are bounded by it and some come close
    assert np.abs(expected[real]).max() > 1.5 and np.abs(ours).max() < 2.5
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers_with_and_without_cache(converted):
    family, reference, lm, _ = converted
    prompt = np.array([[5, 17, 33]], "int32")
    new = 7  # 3 + 7 = 10 positions: past the window of 4
    with torch.no_grad():
        expected = reference.generate(torch.tensor(prompt, dtype=torch.long), do_sample=False,
                                      max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
                                      eos_token_id=None).numpy()
    cached = lm.generate({"token_ids": prompt, "padding_mask": np.ones_like(prompt)},
                         max_length=prompt.shape[1] + new, stop_token_ids=None)
    np.testing.assert_array_equal(cached["token_ids"], expected)
    ids = prompt
    for _ in range(new):  # greedy without a cache: whole sequences through the model each step
        logits = keras.ops.convert_to_numpy(lm({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
        ids = np.concatenate([ids, logits[:, -1].argmax(-1)[:, None].astype("int32")], axis=1)
    np.testing.assert_array_equal(ids, expected)


def test_backbone_config_round_trips(converted):
    _, _, lm, _ = converted
    backbone = lm.backbone
    clone = type(backbone).from_config(backbone.get_config())
    clone.set_weights(backbone.get_weights())
    inputs = {"token_ids": np.array([[3, 4, 5, 6, 7, 8]], "int32"),
              "padding_mask": np.ones((1, 6), "int32")}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(inputs)),
                               keras.ops.convert_to_numpy(backbone(inputs)), atol=1e-6)


def test_bad_layer_types_are_named():
    with pytest.raises(ValueError, match="layer_types"):
        Gemma3Backbone(vocabulary_size=16, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=8,
                       layer_types=["full_attention"])
    with pytest.raises(ValueError, match="layer_types"):
        Gemma2Backbone(vocabulary_size=16, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=8,
                       layer_types=["global", "local"])
    with pytest.raises(ValueError, match="sliding_window"):
        Gemma2Backbone(vocabulary_size=16, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=8,
                       sliding_window=None)


def test_bidirectional_and_scaled_local_rope_checkpoints_are_refused(converted, tmp_path):
    family, _, _, folder = converted
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    changes = [({"use_bidirectional_attention": True}, "use_bidirectional_attention")]
    if family == "gemma3":
        changes.append(({"rope_parameters": {
            "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 50.0}}}, "sliding_attention"))
    for file in os.listdir(folder):
        if file != "config.json":
            shutil.copy(os.path.join(folder, file), tmp_path / file)
    for change, message in changes:
        with open(tmp_path / "config.json", "w") as f:
            json.dump({**config, **change}, f)
        with pytest.raises(PresetError, match=message):
            CausalLM.from_preset(str(tmp_path))
