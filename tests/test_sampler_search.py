"""The sampler owns the search: ``sampler(next, token_ids, padding_mask, cache, index, ...)``.

A toy model stands in for a task: a bigram table plus a per-row bias that lives in the cache, the
way an encoder-decoder keeps its fixed cross-attention keys and values there (a dict cache, rows
first). The searches are compared with exhaustive enumeration in numpy.
"""

import itertools

import numpy as np
import pytest
from keras import ops

from kcookbook.components.samplers import BeamSampler, GreedySampler, Sampler, TopKSampler

VOCABULARY = 5
rng = np.random.default_rng(4)
BIGRAM = rng.normal(0, 2.0, (VOCABULARY, VOCABULARY)).astype("float32")
ROW_BIAS = rng.normal(0, 2.0, (2, VOCABULARY)).astype("float32")  # fixed, like cross-attention
POSITION_BIAS = rng.normal(0, 2.0, (8, VOCABULARY)).astype("float32")  # breaks bigram-order ties


def toy_next(token_ids, cache, index):
    """One step of the toy model: logits after the last token (at position ``index``); the cache
    counts steps per row and carries each row's fixed bias, returned unchanged."""
    last = ops.convert_to_tensor(token_ids, "int32")[:, -1]
    position = ops.take(ops.convert_to_tensor(POSITION_BIAS), ops.reshape(index, (1,)), axis=0)
    logits = ops.take(ops.convert_to_tensor(BIGRAM), last, axis=0) + cache["fixed"] + position
    hidden = ops.one_hot(last, VOCABULARY)
    return logits, hidden, {"fixed": cache["fixed"], "steps": cache["steps"] + 1}


def toy_cache(rows):
    return {"fixed": ops.convert_to_tensor(ROW_BIAS[rows]), "steps": ops.zeros((len(rows), 1), "int32")}


def log_probability(row, sequence, start):
    """Sum of log p(token | previous) over the positions from ``start`` on."""
    total = 0.0
    for position in range(start, len(sequence)):
        logits = (BIGRAM[sequence[position - 1]].astype("float64") + ROW_BIAS[row]
                  + POSITION_BIAS[position - 1])
        total += logits[sequence[position]] - np.log(np.exp(logits).sum())
    return total


PROMPTS = [[1, 3], [4, 0, 2]]  # row 1's third token is a prompt token, forced
MAX_LENGTH = 5


def padded(prompts):
    token_ids = np.zeros((len(prompts), MAX_LENGTH), "int32")
    padding_mask = np.zeros_like(token_ids)
    for row, prompt in enumerate(prompts):
        token_ids[row, :len(prompt)] = prompt
        padding_mask[row, :len(prompt)] = 1
    return token_ids, padding_mask


def run(sampler, stop_token_ids=()):
    token_ids, padding_mask = padded(PROMPTS)
    start = ops.convert_to_tensor(min(len(p) for p in PROMPTS), "int32")
    out, valid = sampler(toy_next, token_ids, padding_mask, toy_cache([0, 1]), start,
                         stop_token_ids, ops.convert_to_tensor(0, "int32"))
    return ops.convert_to_numpy(out), ops.convert_to_numpy(valid)


def best_sequence(row):
    """Exhaustive search over every continuation of the row's prompt."""
    prompt = PROMPTS[row]
    candidates = [prompt + list(rest)
                  for rest in itertools.product(range(VOCABULARY), repeat=MAX_LENGTH - len(prompt))]
    return max(candidates, key=lambda s: log_probability(row, s, len(prompt)))


def test_greedy_search_follows_the_most_likely_token_and_keeps_prompt_tokens():
    out, valid = run(GreedySampler())
    for row, prompt in enumerate(PROMPTS):
        expected = list(prompt)
        while len(expected) < MAX_LENGTH:
            position = len(expected) - 1
            expected.append(int(np.argmax(BIGRAM[expected[-1]] + ROW_BIAS[row] + POSITION_BIAS[position])))
        assert out[row].tolist() == expected
    assert valid.tolist() == [[1] * MAX_LENGTH] * 2


def test_beam_search_as_wide_as_every_prefix_finds_the_most_likely_continuation():
    """With as many beams as there are continuations of the prompt but one token, beam search is
    exact: it equals exhaustive search, row by row (each with its own fixed bias from the cache)."""
    beams = VOCABULARY ** (MAX_LENGTH - min(len(p) for p in PROMPTS) - 1)
    out, _ = run(BeamSampler(num_beams=beams))
    for row in range(len(PROMPTS)):
        assert out[row].tolist() == best_sequence(row)


def test_one_beam_is_greedy_and_a_narrow_beam_scores_at_least_greedy():
    greedy, _ = run(GreedySampler())
    one, _ = run(BeamSampler(num_beams=1))
    np.testing.assert_array_equal(one, greedy)
    two, _ = run(BeamSampler(num_beams=2))
    for row, prompt in enumerate(PROMPTS):
        assert (log_probability(row, two[row].tolist(), len(prompt))
                >= log_probability(row, greedy[row].tolist(), len(prompt)) - 1e-6)


def test_a_stop_token_ends_the_row_after_it():
    greedy, _ = run(GreedySampler())
    stop = int(greedy[0, 2])  # row 0's first generated token
    out, valid = run(GreedySampler(), stop_token_ids=(stop,))
    assert valid[0].tolist() == [1, 1, 1, 0, 0] and out[0, 2] == stop
    beam_out, beam_valid = run(BeamSampler(num_beams=3), stop_token_ids=(stop,))
    first = [i for i in range(2, MAX_LENGTH) if beam_out[0, i] == stop]
    if first:
        assert beam_valid[0].tolist() == [1] * (first[0] + 1) + [0] * (MAX_LENGTH - first[0] - 1)


def test_a_sampler_that_only_picks_tokens_runs_in_the_base_loop():
    """A subclass with only ``next_token`` (as in recipe nlp/04) gets the whole search; ``next``
    is called once per generated position."""
    calls = []

    class LowestLogit(Sampler):
        def next_token(self, logits, seed, step):
            return ops.cast(ops.argmin(logits, axis=-1), "int32")

    def counting_next(token_ids, cache, index):
        calls.append(index)
        return toy_next(token_ids, cache, index)

    token_ids, padding_mask = padded(PROMPTS)
    out, _ = LowestLogit()(counting_next, token_ids, padding_mask, toy_cache([0, 1]),
                           ops.convert_to_tensor(2, "int32"))
    out = ops.convert_to_numpy(out)
    assert out[0, 2] == int(np.argmin(BIGRAM[3] + ROW_BIAS[0] + POSITION_BIAS[1]))
    assert out[1, 2] == 2  # row 1's prompt token, forced
    assert len(calls) in (1, MAX_LENGTH - 2)  # traced once (jax, TensorFlow) or once per step


def test_random_samplers_are_reproducible_and_stay_within_top_k():
    a, _ = run(TopKSampler(k=2))
    b, _ = run(TopKSampler(k=2))
    np.testing.assert_array_equal(a, b)
    for row, prompt in enumerate(PROMPTS):
        for position in range(len(prompt), MAX_LENGTH):
            logits = BIGRAM[a[row, position - 1]] + ROW_BIAS[row] + POSITION_BIAS[position - 1]
            assert a[row, position] in np.argsort(-logits)[:2]


def test_a_sampler_without_next_token_names_what_is_missing():
    token_ids, padding_mask = padded(PROMPTS)
    with pytest.raises(NotImplementedError, match="Sampler implements neither next_token nor __call__"):
        Sampler()(toy_next, token_ids, padding_mask, toy_cache([0, 1]), ops.convert_to_tensor(2, "int32"))
