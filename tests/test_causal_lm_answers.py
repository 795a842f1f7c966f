"""Answer-token training (``kcookbook.tasks.causal_lm_answers``) and ``data.instruction_examples``:
the loss and one training step equal ``CausalLM.fit((prompts, answers))``'s, which runs the output
layer at every position; the answer positions are where the packed answer tokens are; bad sizes are
named."""

import keras
import numpy as np
import pytest

from helpers import tiny_llama_config
from kcookbook.backbones import LlamaBackbone
from kcookbook.components import WordPieceTokenizer
from kcookbook.data import SENTIMENT_LABELS, TextSplit, instruction_examples
from kcookbook.tasks import CausalLM, CausalLMPreprocessor
from kcookbook.tasks.causal_lm_answers import answer_token_data, answer_token_model

PROMPTS = ["the film was good ?", "i hate this movie and the food ?", "bad service ?", "a day ?"]
ANSWERS = ["great", "awful", "bad", "just a day"]


def _lm(tokenizer, lora=True):
    keras.utils.set_random_seed(5)
    backbone = LlamaBackbone(**tiny_llama_config(tokenizer.vocabulary_size))
    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        variable.assign(rng.normal(0, 0.3, variable.shape))
    if lora:
        backbone.enable_lora(2)
        for variable in backbone.trainable_weights:  # B != 0: gradients reach both matrices
            variable.assign(rng.normal(0, 0.3, variable.shape))
    return CausalLM(backbone, CausalLMPreprocessor(tokenizer, sequence_length=12))


@pytest.fixture(scope="module")
def tokenizer(tiny_vocabulary):
    return WordPieceTokenizer(tiny_vocabulary)


def test_positions_point_at_the_answer_tokens(tokenizer):
    pre = CausalLMPreprocessor(tokenizer, sequence_length=12)
    x, y, weights = answer_token_data(pre, PROMPTS, ANSWERS, answer_tokens=4)
    assert x["positions"].shape == y.shape == weights.shape == (4, 4)
    for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS)):
        prompt_length = 1 + len(tokenizer(prompt))  # start token + prompt
        expected = list(tokenizer(answer)) + [tokenizer.end_token_id]
        n = len(expected)
        # the token after input position p is an answer token: p runs from the prompt's last token
        assert x["positions"][i, :n].tolist() == list(range(prompt_length - 1, prompt_length - 1 + n))
        assert y[i, :n].tolist() == expected and weights[i].tolist() == [1.0] * n + [0.0] * (4 - n)
        assert x["token_ids"][i, prompt_length - 1] == (tokenizer(prompt)[-1])


def test_loss_and_one_training_step_equal_fit_on_every_position(tokenizer):
    """The answer-only model minimises the same loss as CausalLM.fit((prompts, answers)), which runs
    the output layer everywhere: same value, and one SGD step moves the LoRA weights the same way."""
    ours, full = _lm(tokenizer), _lm(tokenizer)
    x, y, weights = answer_token_data(ours.preprocessor, PROMPTS, ANSWERS, answer_tokens=4)
    trainer = answer_token_model(ours, answer_tokens=4, optimizer=keras.optimizers.SGD(0.5))
    full.compile(optimizer=keras.optimizers.SGD(0.5))
    loss = trainer.evaluate(x, y, sample_weight=weights, batch_size=4, verbose=0, return_dict=True)["loss"]
    reference = full.evaluate((PROMPTS, ANSWERS), batch_size=4, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(reference, rel=1e-5)
    before = [keras.ops.convert_to_numpy(v) for v in ours.trainable_weights]
    trainer.fit(x, y, sample_weight=weights, batch_size=4, epochs=1, verbose=0)
    full.fit((PROMPTS, ANSWERS), batch_size=4, epochs=1, verbose=0)
    moved = 0.0
    for old, a, b in zip(before, ours.trainable_weights, full.trainable_weights):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        np.testing.assert_allclose(a, b, atol=1e-5)
        moved = max(moved, float(np.abs(a - old).max()))
    assert moved > 1e-3  # the step did move them
    assert len(trainer.trainable_weights) == len(ours.backbone.trainable_weights) == 4  # LoRA only


def test_logits_at_positions_equal_the_full_models(tokenizer):
    lm = _lm(tokenizer, lora=False)
    x, _, _ = answer_token_data(lm.preprocessor, PROMPTS, ANSWERS, answer_tokens=4)
    trainer = answer_token_model(lm, answer_tokens=4)
    everywhere = keras.ops.convert_to_numpy(lm({"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}))
    picked = keras.ops.convert_to_numpy(trainer(x))
    np.testing.assert_allclose(picked, np.take_along_axis(everywhere, x["positions"][..., None], axis=1),
                               atol=1e-5)


@pytest.mark.backend_independent
def test_too_long_answers_and_prompts_are_named(tokenizer):
    pre = CausalLMPreprocessor(tokenizer, sequence_length=12)
    with pytest.raises(ValueError, match=r"Example 3 has 4 answer tokens.*answer_tokens=2"):
        answer_token_data(pre, PROMPTS, ANSWERS, answer_tokens=2)
    with pytest.raises(ValueError, match=r"Example 0: no answer token fits in sequence_length=12"):
        answer_token_data(pre, ["the film was good and i love this movie and the food"], ["great"], 2)
    with pytest.raises(ValueError, match="answer_tokens must be a positive int"):
        answer_token_data(pre, PROMPTS, ANSWERS, answer_tokens=0)


@pytest.mark.backend_independent
def test_instruction_examples_skip_what_does_not_fit_and_balance_labels():
    texts = ["good", "bad day", "a film", "great", "awful", "fine", "love it", "meh", "sad"]
    split = TextSplit(texts, np.array([2, 0, 1, 2, 0, 1, 2, 1, 0]))
    def short(prompt, answer):  # one-word texts only: "bad day", "a film", "love it" are skipped
        return " " not in prompt[len("Q: "):] and answer.startswith(" ")

    ex = instruction_examples(split, SENTIMENT_LABELS, 4, "Q: {text}?", " {label}", fits=short)
    assert ex.texts == ["good", "great", "awful", "fine"] and ex.labels.tolist() == [2, 2, 0, 1]
    assert ex.prompts[3] == "Q: fine?" and ex.answers[3] == " neutral" and len(ex) == 4
    balanced = instruction_examples(split, SENTIMENT_LABELS, 7, "Q: {text}?", " {label}", fits=short,
                                    balanced=True, seed=0)
    assert sorted(balanced.texts) == sorted(["good", "great", "awful", "fine", "meh", "sad"])
    assert np.bincount(balanced.labels).tolist() == [2, 2, 2]
    assert [SENTIMENT_LABELS[k] for k in balanced.labels] == [a.strip() for a in balanced.answers]
    again = instruction_examples(split, SENTIMENT_LABELS, 7, "Q: {text}?", " {label}", fits=short,
                                 balanced=True, seed=0)
    assert again.texts == balanced.texts  # the shuffle follows the seed
    with pytest.raises(ValueError, match=r"Only 6 of the 9 examples asked for fit.*'positive': 2"):
        instruction_examples(split, SENTIMENT_LABELS, 9, "Q: {text}?", " {label}", fits=short, balanced=True)
