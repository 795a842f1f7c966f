"""CausalLM.score: per-token and continuation log-likelihoods against transformers' log-softmax.

The reference is a tiny random transformers Llama (converted as in test_decoder_hf_parity.py):
``torch.log_softmax`` of its logits, gathered at the next tokens and summed over the continuation.
Prompt/response training pairs are checked here too (loss on the response only).
"""

import keras
import numpy as np
import pytest

import torch

from kcookbook.components import WordPieceTokenizer
from kcookbook.tasks import CausalLM, CausalLMPreprocessor
from helpers import tiny_llama_config
from test_decoder_hf_parity import save_tiny_hf_model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("llama_score"))
    reference = save_tiny_hf_model("llama", folder)
    return reference, CausalLM.from_preset(folder)


def reference_log_probabilities(reference, ids):
    """log p(ids[t] | ids[:t]) for t >= 1 from transformers, on one unpadded sequence."""
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0]
    log_p = torch.log_softmax(logits.double(), dim=-1)[:-1]
    return log_p[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


PROMPTS = [[5, 17, 33, 9], [7, 8, 40, 3, 11, 12, 60], [21, 22, 23, 24, 25]]


def test_per_token_log_probabilities_match_transformers(llama):
    reference, lm = llama
    out = lm.score(PROMPTS, batch_size=2)  # 3 rows in batches of 2: the last batch is padded
    assert out["log_probabilities"].shape == out["token_ids"].shape == (3, 7)
    for row, ids in enumerate(PROMPTS):
        expected = reference_log_probabilities(reference, ids)
        assert out["token_ids"][row, :len(ids)].tolist() == ids
        np.testing.assert_allclose(out["log_probabilities"][row, 1:len(ids)], expected, atol=1e-4)
        assert out["log_probabilities"][row, 0] == 0 and not out["log_probabilities"][row, len(ids):].any()
        assert out["padding_mask"][row].sum() == len(ids)


def test_continuation_log_likelihoods_match_transformers(llama):
    reference, lm = llama
    candidates = [[[41], [42, 43, 44]], [[50, 51], [52]], [[60], [61]]]  # one- and many-token candidates
    scores = lm.score(PROMPTS, candidates, batch_size=2)
    assert scores.shape == (3, 2)
    for i, prompt in enumerate(PROMPTS):
        for j, continuation in enumerate(candidates[i]):
            expected = reference_log_probabilities(reference, prompt + continuation)[-len(continuation):].sum()
            assert scores[i, j] == pytest.approx(expected, abs=1e-4)
    one_each = lm.score(PROMPTS, [c[0] for c in candidates], batch_size=2)
    np.testing.assert_allclose(one_each, scores[:, 0], atol=1e-5)


def test_same_shapes_compile_once(llama):
    _, lm = llama
    lm.score(PROMPTS, batch_size=4)
    traced = lm.generate_trace_count
    first = lm.score([[9, 8, 7], [6, 5, 4, 3, 2, 10, 11, 12]], batch_size=4)  # same padded shape (4, 16)
    assert lm.generate_trace_count == traced
    assert first["log_probabilities"].shape == (2, 8)


@pytest.fixture(scope="module")
def text_lm(tiny_vocabulary):
    keras.utils.set_random_seed(3)
    from kcookbook.backbones import LlamaBackbone

    tokenizer = WordPieceTokenizer(tiny_vocabulary)
    backbone = LlamaBackbone(**tiny_llama_config(tokenizer.vocabulary_size, num_layers=1, num_heads=2,
                                                 num_key_value_heads=2))
    return CausalLM(backbone, CausalLMPreprocessor(tokenizer, sequence_length=16))


def test_strings_are_scored_as_their_token_ids(text_lm):
    tokenizer = text_lm.preprocessor.tokenizer
    prompts, labels = ["i love this film", "bad service"], ["good", "awful day"]
    ids = [[tokenizer.start_token_id] + tokenizer(p) for p in prompts]
    np.testing.assert_allclose(text_lm.score(prompts, [labels, labels]),
                               text_lm.score(ids, [[tokenizer(w) for w in labels]] * 2), atol=1e-6)
    one = text_lm.score("i love this film", labels)
    assert one.shape == (2,)
    np.testing.assert_allclose(one, text_lm.score(prompts, [labels, labels])[0], atol=1e-6)
    per_token = text_lm.score(prompts)
    assert per_token["token_ids"][1, :len(ids[1])].tolist() == ids[1]


def test_bad_score_input_is_named(text_lm, llama):
    with pytest.raises(ValueError, match="one continuation"):
        text_lm.score(["good film", "bad"], ["good"])
    with pytest.raises(ValueError, match="empty"):
        text_lm.score(["good film"], [""])
    with pytest.raises(ValueError, match="same number of candidates"):
        text_lm.score(["good", "bad"], [["a", "b"], ["a"]])
    with pytest.raises(ValueError, match="max_sequence_length"):
        text_lm.score(["good " * 40])
    with pytest.raises(ValueError, match="no preprocessor"):
        llama[1].score(["some text"])


@pytest.mark.slow
def test_prompt_response_pairs_weigh_only_the_response(text_lm):
    pre = text_lm.preprocessor
    tokenizer = pre.tokenizer
    x, y, weights = pre((["i love this film", "bad"], ["good", "awful day"]))
    for row, (prompt, response) in enumerate([("i love this film", "good"), ("bad", "awful day")]):
        full = [tokenizer.start_token_id] + tokenizer(prompt) + tokenizer(response) + [tokenizer.end_token_id]
        assert x["token_ids"][row, :len(full)].tolist() == full
        targets = y[row][weights[row] > 0].tolist()
        assert targets == tokenizer(response) + [tokenizer.end_token_id]
    with pytest.raises(ValueError, match="one response per prompt"):
        pre((["a", "b"], ["c"]))
    keras.utils.set_random_seed(0)
    text_lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = text_lm.fit((["i love this film", "bad service"], ["good", "awful"]), batch_size=2,
                          epochs=30, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    scores = text_lm.score(["i love this film", "bad service"], [["good", "awful"]] * 2)
    assert scores.argmax(axis=1).tolist() == [0, 1]  # the trained answers are now the likelier ones


def test_causal_lm_docstring_examples_run():
    import doctest

    from kcookbook.tasks import causal_lm

    result = doctest.testmod(causal_lm, globs=dict(vars(causal_lm)))
    assert result.attempted > 0 and result.failed == 0
