"""generate's arguments are checked before anything is allocated or compiled.

Each bad argument is a ValueError that names the argument (and the fix); a failed call leaves the
model usable: a good generate afterwards gives the same tokens as before it.
"""

import math
import time

import keras
import numpy as np
import pytest

from kcookbook.backbones import LlamaBackbone
from kcookbook.components import WordPieceTokenizer
from kcookbook.components.samplers import (
    BeamSampler,
    ContrastiveSampler,
    TemperatureSampler,
    TopKSampler,
    TopPSampler,
    get_sampler,
)
from kcookbook.tasks import CausalLM, CausalLMPreprocessor

PROMPTS = {"token_ids": np.array([[2, 10, 11], [2, 20, 0]], "int32"),
           "padding_mask": np.array([[1, 1, 1], [1, 1, 0]], "int32")}


def tiny_backbone(vocabulary_size):
    keras.utils.set_random_seed(5)
    return LlamaBackbone(vocabulary_size=vocabulary_size, num_layers=1, num_heads=2,
                         num_key_value_heads=1, hidden_dim=8, intermediate_dim=16,
                         max_sequence_length=16)


@pytest.fixture(scope="module")
def tokenizer(tiny_vocabulary):
    return WordPieceTokenizer(tiny_vocabulary)


@pytest.fixture(scope="module")
def lm(tokenizer):
    return CausalLM(tiny_backbone(tokenizer.vocabulary_size),
                    CausalLMPreprocessor(tokenizer, sequence_length=8))


@pytest.fixture(scope="module")
def ids_lm():
    """No preprocessor: generate takes token ids."""
    return CausalLM(tiny_backbone(40))


@pytest.fixture(scope="module")
def expected(lm):
    """Tokens of a good call, made before any bad one."""
    return lm.generate(PROMPTS, max_length=8, stop_token_ids=None)["token_ids"]


def assert_still_generates(lm, expected):
    out = lm.generate(PROMPTS, max_length=8, stop_token_ids=None)
    np.testing.assert_array_equal(out["token_ids"], expected)


@pytest.mark.parametrize("max_length", [10**9, 17])
def test_max_length_beyond_the_model_is_refused_before_allocating(lm, expected, max_length):
    """max_length=10**9 once allocated ~11 GB for three prompts before its check."""
    begin = time.perf_counter()
    with pytest.raises(ValueError, match=f"max_length={max_length} is more than the model's "
                                         "max_sequence_length=16"):
        lm.generate(["hello"] * 3, max_length=max_length)
    assert time.perf_counter() - begin < 5
    assert_still_generates(lm, expected)


@pytest.mark.parametrize("max_length", [2.5, "10", True, np.float32(8)])
def test_max_length_must_be_an_int(lm, expected, max_length):
    with pytest.raises(ValueError, match="max_length must be an int"):
        lm.generate(PROMPTS, max_length=max_length)
    assert_still_generates(lm, expected)


@pytest.mark.parametrize("max_length", [1, 0, -5])
def test_max_length_below_two_is_refused(lm, max_length):
    with pytest.raises(ValueError, match=f"max_length={max_length} leaves no room"):
        lm.generate(PROMPTS, max_length=max_length)


def test_max_length_must_leave_room_after_the_longest_prompt(lm, ids_lm, expected):
    with pytest.raises(ValueError, match="max_length=3 leaves no room to generate: a prompt has 3 "
                                         r"tokens. Pass max_length > 3"):
        lm.generate(PROMPTS, max_length=3)
    with pytest.raises(ValueError, match="max_length=3 leaves no room"):  # default: the widest prompt
        ids_lm.generate([[1, 2, 3], [4]])
    assert_still_generates(lm, expected)


def test_numpy_integer_max_length_is_accepted(lm, expected):
    out = lm.generate(PROMPTS, max_length=np.int64(8), stop_token_ids=None)
    np.testing.assert_array_equal(out["token_ids"], expected)


@pytest.mark.parametrize("inputs", [[], (), {"token_ids": np.zeros((0, 4), "int32")}])
def test_no_prompts_is_named(lm, expected, inputs):
    """Was 'zero-size array to reduction operation maximum which has no identity'."""
    with pytest.raises(ValueError, match="generate got no prompts"):
        lm.generate(inputs, max_length=8)
    assert_still_generates(lm, expected)


@pytest.mark.parametrize("bad_id", [10**6, -7, 40])
def test_token_ids_outside_the_vocabulary_are_refused(ids_lm, bad_id):
    before = ids_lm.generate([[1, 2, 3]], max_length=6)["token_ids"]
    with pytest.raises(ValueError, match=r"inputs holds token ids outside the vocabulary \[0, 40\): "
                                         rf"\[{bad_id}\]"):
        ids_lm.generate([[1, bad_id, 3]], max_length=6)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 40\)"):
        ids_lm.generate({"token_ids": np.array([[1, bad_id, 3]]), "padding_mask": np.ones((1, 3))},
                        max_length=6)
    np.testing.assert_array_equal(ids_lm.generate([[1, 2, 3]], max_length=6)["token_ids"], before)


def test_non_integer_token_ids_are_refused(ids_lm):
    with pytest.raises(ValueError, match="inputs must hold integer token ids, got float64"):
        ids_lm.generate([[1.5, 2.0]], max_length=6)


def test_mismatched_token_ids_and_padding_mask_are_named(ids_lm):
    with pytest.raises(ValueError, match=r"inputs\['token_ids'\] and inputs\['padding_mask'\] must be "
                                         "2-D arrays of one shape"):
        ids_lm.generate({"token_ids": np.ones((1, 3), "int32"), "padding_mask": np.ones((1, 2))},
                        max_length=6)


def test_a_tokenizer_larger_than_the_backbone_vocabulary_is_named(tokenizer):
    """The tokenizer's ids beyond the embedding table gave NaN logits on jax: the task refuses the
    pair when it is built, before any generate (Task's check of tokenizer vs backbone)."""
    with pytest.raises(ValueError, match=r"has \d+ tokens but the backbone .* embeds only "
                                         r"vocabulary_size=8"):
        CausalLM(tiny_backbone(8), CausalLMPreprocessor(tokenizer, sequence_length=8))


@pytest.mark.parametrize("temperature", [math.nan, -0.5, math.inf, "hot", None])
def test_temperature_must_be_a_finite_number_at_least_zero(temperature):
    with pytest.raises(ValueError, match=r"TemperatureSampler: temperature must be a finite number in "
                                         r"\[0, inf\]"):
        TemperatureSampler(temperature)
    with pytest.raises(ValueError, match="TopKSampler: temperature"):
        TopKSampler(k=3, temperature=temperature)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_top_k_must_be_a_positive_int(k):
    with pytest.raises(ValueError, match=r"TopKSampler: k must be an int >= 1, got"):
        TopKSampler(k=k)
    with pytest.raises(ValueError, match=r"TopKSampler: k must be an int >= 1"):
        get_sampler("top_k", k=k)


@pytest.mark.parametrize("p", [0, -0.1, 1.5, math.nan, "0.9"])
def test_top_p_must_be_in_zero_one(p):
    with pytest.raises(ValueError, match=r"TopPSampler: p must be a finite number in \(0, 1\]"):
        TopPSampler(p=p)


def test_top_p_candidate_limit_must_be_a_positive_int():
    with pytest.raises(ValueError, match="TopPSampler: k must be an int >= 1"):
        TopPSampler(p=0.9, k=0)


@pytest.mark.parametrize("num_beams", [0, -2, 1.5, "3"])
def test_num_beams_must_be_a_positive_int(num_beams):
    with pytest.raises(ValueError, match="BeamSampler: num_beams must be an int >= 1"):
        BeamSampler(num_beams=num_beams)


@pytest.mark.parametrize("arguments, name", [({"k": 0}, "k"), ({"alpha": 1.5}, "alpha"),
                                             ({"alpha": math.nan}, "alpha"), ({"k": 2.0}, "k")])
def test_contrastive_parameters_are_checked(arguments, name):
    with pytest.raises(ValueError, match=f"ContrastiveSampler: {name} must be"):
        ContrastiveSampler(**arguments)


def test_valid_edge_values_are_accepted():
    assert TemperatureSampler(0).temperature == 0.0  # greedy
    assert TopPSampler(p=1).p == 1.0
    assert TopKSampler(k=np.int64(3)).k == 3
    assert ContrastiveSampler(k=1, alpha=0).alpha == 0.0


@pytest.mark.parametrize("seed", [-1, 2**31, 1.5, "7"])
def test_seed_must_be_an_int32(lm, expected, seed):
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2147483647\]"):
        lm.generate(PROMPTS, max_length=8, sampler="top_k", seed=seed)
    assert_still_generates(lm, expected)


def test_stop_token_ids_outside_the_vocabulary_are_named(lm, expected):
    with pytest.raises(ValueError, match=r"stop_token_ids has ids outside the vocabulary \[0, \d+\): "
                                         r"\[1000000\]"):
        lm.generate(PROMPTS, max_length=8, stop_token_ids=[3, 10**6])
    with pytest.raises(ValueError, match="stop_token_ids must hold integer token ids"):
        lm.generate(PROMPTS, max_length=8, stop_token_ids=["</s>"])
    assert_still_generates(lm, expected)


def test_strip_prompt_must_be_a_bool(lm):
    with pytest.raises(ValueError, match="strip_prompt must be True or False"):
        lm.generate(PROMPTS, max_length=8, strip_prompt="yes")


def test_every_sampler_after_failures_gives_the_tokens_of_a_fresh_model(lm, tokenizer):
    """Bad calls on one model, then each sampler: the same tokens as on a model that saw none."""
    fresh = CausalLM(lm.backbone, CausalLMPreprocessor(tokenizer, sequence_length=8))
    for bad in ({"max_length": 10**9}, {"max_length": 3}, {"seed": -1}, {"stop_token_ids": [-1]}):
        with pytest.raises(ValueError):
            lm.generate(PROMPTS, **{"max_length": 8, **bad})
    for sampler in ("greedy", "top_p", BeamSampler(2), ContrastiveSampler(k=2)):
        args = {"max_length": 8, "sampler": sampler, "stop_token_ids": None, "seed": 3}
        np.testing.assert_array_equal(lm.generate(PROMPTS, **args)["token_ids"],
                                      fresh.generate(PROMPTS, **args)["token_ids"])
