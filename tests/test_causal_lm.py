"""CausalLM: preprocessing, training on raw strings, cached compiled generation, bad input."""

import keras
import numpy as np
import pytest

from helpers import tiny_llama_config
from kcookbook.backbones import GPT2Backbone, LlamaBackbone
from kcookbook.components import WordPieceTokenizer
from kcookbook.components.samplers import BeamSampler, ContrastiveSampler
from kcookbook.tasks import CausalLM, CausalLMPreprocessor

TEXTS = ["the film was good", "i love this movie and the food", "bad service", "a very good day"]


@pytest.fixture(scope="module")
def tokenizer(tiny_vocabulary):
    return WordPieceTokenizer(tiny_vocabulary)


@pytest.fixture(scope="module")
def lm(tokenizer):
    keras.utils.set_random_seed(3)
    backbone = LlamaBackbone(**tiny_llama_config(tokenizer.vocabulary_size))
    for variable in backbone.weights:  # larger random weights: distinct, confident predictions
        variable.assign(np.random.default_rng(0).normal(0, 0.5, variable.shape))
    return CausalLM(backbone, CausalLMPreprocessor(tokenizer, sequence_length=12))


def test_preprocessor_shifts_labels_and_masks_padding(tokenizer):
    pre = CausalLMPreprocessor(tokenizer, sequence_length=8)
    x, y, weights = pre(["good film", "i love this movie and the food"])
    ids = [tokenizer.start_token_id] + tokenizer("good film") + [tokenizer.end_token_id]
    assert x["token_ids"][0, :4].tolist() == ids and x["padding_mask"][0].tolist() == [1] * 4 + [0] * 4
    assert y[0, :3].tolist() == ids[1:] and weights[0].tolist() == [1] * 3 + [0] * 5
    assert x["token_ids"].shape == y.shape == weights.shape == (2, 8)
    np.testing.assert_array_equal(x["token_ids"][1, 1:], y[1, :-1])  # truncated row: full shift


def test_preprocessor_in_tf_data_gives_the_same_arrays(tokenizer):
    import tensorflow as tf

    pre = CausalLMPreprocessor(tokenizer, sequence_length=8)
    eager = pre(TEXTS)
    x, y, w = next(iter(tf.data.Dataset.from_tensor_slices(TEXTS).batch(4).map(pre)))
    np.testing.assert_array_equal(x["token_ids"].numpy(), eager[0]["token_ids"])
    np.testing.assert_array_equal(y.numpy(), eager[1])
    np.testing.assert_array_equal(w.numpy(), eager[2])


def test_logits_shape_and_loss_is_mean_over_real_tokens(lm):
    x, y, w = lm.preprocessor(TEXTS)
    logits = keras.ops.convert_to_numpy(lm(x))
    assert logits.shape == (4, 12, lm.backbone.vocabulary_size)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    token_loss = -np.take_along_axis(log_probs, y[..., None], axis=-1)[..., 0]
    expected = (token_loss * w).sum() / w.sum()
    loss = lm.evaluate(TEXTS, batch_size=4, verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(expected, rel=1e-4)


def test_fit_on_raw_strings_lowers_the_loss(tokenizer):
    keras.utils.set_random_seed(0)
    backbone = LlamaBackbone(**tiny_llama_config(tokenizer.vocabulary_size, num_layers=1, num_heads=2,
                                                 num_key_value_heads=2, max_sequence_length=16))
    lm = CausalLM(backbone, CausalLMPreprocessor(tokenizer, sequence_length=10))
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = lm.fit(TEXTS, batch_size=4, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]


def uncached_greedy(lm, token_ids, padding_mask, max_length):
    """Greedy continuation recomputing the whole sequence every step (no cache).

    Each step runs the full model on the sequence right-padded to ``max_length`` (one shape, so the
    backends compile once) and takes the argmax at the last real position: with a causal model the
    padding after it does not matter.
    """
    token_ids = np.array(token_ids, "int32")
    lengths = np.asarray(padding_mask).sum(axis=1)
    seqs = np.zeros((len(token_ids), max_length), "int32")
    seqs[:, :token_ids.shape[1]] = token_ids * np.asarray(padding_mask)
    for length in range(int(lengths.min()), max_length):
        logits = keras.ops.convert_to_numpy(lm({"token_ids": seqs,
                                                "padding_mask": np.ones_like(seqs)}))
        for row in range(len(seqs)):
            if lengths[row] <= length:
                seqs[row, length] = logits[row, length - 1].argmax()
        lengths = np.maximum(lengths, length + 1)
    return seqs


def test_cached_generation_equals_uncached_argmax_for_prompts_of_different_lengths(lm):
    prompts = {"token_ids": np.array([[2, 10, 11, 12, 13], [2, 20, 0, 0, 0]], "int32"),
               "padding_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], "int32")}
    out = lm.generate(prompts, max_length=11, stop_token_ids=None)
    expected = uncached_greedy(lm, prompts["token_ids"], prompts["padding_mask"], 11)
    np.testing.assert_array_equal(out["token_ids"], expected)
    np.testing.assert_array_equal(out["padding_mask"], np.ones((2, 11), "int32"))


@pytest.mark.parametrize("chunk", [4, 8])
def test_chunked_prefill_equals_uncached_argmax(lm, chunk):
    """The cache is filled with the prompts in fixed-width chunks up to the shortest prompt; the
    last chunk is moved back to end at max_length (with chunk 8: 0-8, 8-16, then 12-20)."""
    chunked = CausalLM(lm.backbone, lm.preprocessor)
    chunked.prefill_chunk_length = chunk
    rng = np.random.default_rng(chunk)
    token_ids = rng.integers(4, lm.backbone.vocabulary_size, (2, 20)).astype("int32")
    padding_mask = np.ones((2, 20), "int32")
    token_ids[1, 18:] = padding_mask[1, 18:] = 0  # prompts of 19 and 18 tokens: starts at 18
    token_ids[0, 19] = padding_mask[0, 19] = 0
    prompts = {"token_ids": token_ids, "padding_mask": padding_mask}
    out = chunked.generate(prompts, max_length=20, stop_token_ids=None)
    np.testing.assert_array_equal(out["token_ids"], uncached_greedy(lm, token_ids, padding_mask, 20))


@pytest.mark.parametrize("chunk", [0, -4, 2.5])
def test_prefill_chunk_length_must_be_a_positive_int(lm, chunk):
    bad = CausalLM(lm.backbone, lm.preprocessor)
    bad.prefill_chunk_length = chunk
    with pytest.raises(ValueError, match="prefill_chunk_length must be a positive int"):
        bad.generate({"token_ids": [[2, 10, 11]]}, max_length=6, stop_token_ids=None)


@pytest.mark.slow
def test_jit_compiled_one_token_step_equals_uncached_argmax(lm):
    """``jit_compile=True``: on torch the decode step runs under torch.compile (jax/TF compile the
    whole loop anyway); greedy tokens still equal the full-sequence argmax."""
    compiled = CausalLM(lm.backbone, lm.preprocessor)
    compiled.jit_compile = True
    prompts = {"token_ids": np.array([[2, 10, 11, 12], [2, 20, 21, 0]], "int32"),
               "padding_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]], "int32")}
    out = compiled.generate(prompts, max_length=9, stop_token_ids=None)
    expected = uncached_greedy(lm, prompts["token_ids"], prompts["padding_mask"], 9)
    np.testing.assert_array_equal(out["token_ids"], expected)


@pytest.mark.slow
def test_compiled_decoder_blocks_compile_one_block_for_every_layer(lm, monkeypatch):
    """On torch, ``jit_compile=True`` traces one decoder block and reuses the graph for every layer
    (a graph-counting backend stands in for inductor); a new max_length reuses it too. The tokens
    are the eager ones. On jax/TensorFlow the whole loop is compiled anyway and the option changes
    nothing."""
    from kcookbook.components import decoder_block, torch_speedups

    graphs = []
    if keras.backend.backend() == "torch":
        import torch

        def counting_backend(graph_module, example_inputs):
            graphs.append(graph_module)
            return graph_module.forward

        monkeypatch.setitem(torch_speedups.COMPILED_BLOCK_FUNCTIONS, decoder_block.run_block_with_cache,
                            torch.compile(decoder_block.run_block_with_cache, dynamic=True,
                                          backend=counting_backend))
    compiled = CausalLM(lm.backbone, lm.preprocessor)
    compiled.jit_compile = True
    prompts = {"token_ids": np.array([[2, 10, 11]], "int32"), "padding_mask": np.ones((1, 3), "int32")}
    for max_length in (8, 10):
        out = compiled.generate(prompts, max_length=max_length, stop_token_ids=None)
        expected = lm.generate(prompts, max_length=max_length, stop_token_ids=None)
        np.testing.assert_array_equal(out["token_ids"], expected["token_ids"])
    if keras.backend.backend() == "torch":
        assert len(lm.backbone.blocks) == 2 and len(graphs) == 1


@pytest.mark.slow
def test_compiled_decoder_blocks_fall_back_to_eager_with_a_warning_when_compilation_fails(
        lm, monkeypatch):
    """On torch, a compiler that cannot run (inductor without a C++ compiler, here a backend that
    raises) gives a warning naming torch.compile and the same tokens, decoded eagerly."""
    prompts = {"token_ids": np.array([[2, 10, 11]], "int32"), "padding_mask": np.ones((1, 3), "int32")}
    expected = lm.generate(prompts, max_length=7, stop_token_ids=None)
    compiled = CausalLM(lm.backbone, lm.preprocessor)
    compiled.jit_compile = True
    if keras.backend.backend() != "torch":  # nothing is torch-compiled: the loop is XLA already
        out = compiled.generate(prompts, max_length=7, stop_token_ids=None)
        np.testing.assert_array_equal(out["token_ids"], expected["token_ids"])
        return
    import torch

    from kcookbook.components import decoder_block, torch_speedups

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setitem(torch_speedups.COMPILED_BLOCK_FUNCTIONS, decoder_block.run_block_with_cache,
                        torch.compile(decoder_block.run_block_with_cache, dynamic=True,
                                      backend=broken_backend))
    with pytest.warns(UserWarning, match="torch.compile of the decoder block failed.*decoding eagerly"):
        out = compiled.generate(prompts, max_length=7, stop_token_ids=None)
    np.testing.assert_array_equal(out["token_ids"], expected["token_ids"])


def test_second_generate_with_same_shapes_does_not_recompile(lm):
    lm.generate(TEXTS[:2], max_length=10)
    traces = lm.generate_trace_count
    lm.generate(TEXTS[2:], max_length=10)
    assert lm.generate_trace_count == traces
    lm.generate(TEXTS[:2], max_length=11)  # a new shape compiles once more
    assert lm.generate_trace_count == traces + 1


def test_generate_strings_stop_tokens_and_strip_prompt(lm, tokenizer):
    single = lm.generate("the film", max_length=10, stop_token_ids=None)
    assert isinstance(single, str) and single.startswith("the film")
    batch = lm.generate(["the film", "good"], max_length=10, strip_prompt=True, stop_token_ids=None)
    assert isinstance(batch, list) and len(batch) == 2 and not batch[0].startswith("the film")
    # stop at whatever greedy generates first: the row ends right after it
    ids = {"token_ids": np.array([[2, 10, 11]], "int32"), "padding_mask": np.ones((1, 3), "int32")}
    free = lm.generate(ids, max_length=10, stop_token_ids=None)
    first = int(free["token_ids"][0, 3])
    stopped = lm.generate(ids, max_length=10, stop_token_ids=[first])
    assert stopped["padding_mask"][0].tolist() == [1, 1, 1, 1] + [0] * 6


def test_one_beam_and_contrastive_without_penalty_equal_greedy(lm):
    prompts = {"token_ids": np.array([[2, 10, 11], [2, 30, 31]], "int32"),
               "padding_mask": np.ones((2, 3), "int32")}
    greedy = lm.generate(prompts, max_length=9, stop_token_ids=None)["token_ids"]
    for sampler in (BeamSampler(num_beams=1), ContrastiveSampler(k=4, alpha=0.0)):
        np.testing.assert_array_equal(
            lm.generate(prompts, max_length=9, sampler=sampler, stop_token_ids=None)["token_ids"], greedy)
    beams = lm.generate(prompts, max_length=9, sampler=BeamSampler(num_beams=3), stop_token_ids=None)
    assert beams["token_ids"].shape == (2, 9)


def test_beam_and_contrastive_on_one_prompt_equal_the_prompt_in_a_batch(lm):
    """One row's cache repeated for beams or candidates is written in place on torch: it must be
    new memory, not a broadcast view of the row (which torch refuses to write)."""
    prompts = {"token_ids": np.array([[2, 10, 11], [2, 30, 31]], "int32"),
               "padding_mask": np.ones((2, 3), "int32")}
    one = {name: value[:1] for name, value in prompts.items()}
    for sampler in (BeamSampler(num_beams=3), ContrastiveSampler(k=3, alpha=0.6)):
        batch = lm.generate(prompts, max_length=8, sampler=sampler, stop_token_ids=None)
        alone = lm.generate(one, max_length=8, sampler=sampler, stop_token_ids=None)
        np.testing.assert_array_equal(alone["token_ids"], batch["token_ids"][:1])


def uncached_contrastive(lm, prompt, max_length, k, alpha):
    """Contrastive search from its definition (Su et al., 2022), recomputing everything: at each
    step the top ``k`` tokens by probability, each scored ``(1 - alpha) p - alpha max_j cos(h, h_j)``
    with ``h`` the candidate's final hidden state and ``h_j`` those of every token before it."""
    def run(sequences):  # right-padded to max_length (one shape); causal: the padding is unseen
        token_ids = np.zeros((len(sequences), max_length), "int32")
        for row, sequence in enumerate(sequences):
            token_ids[row, :len(sequence)] = sequence
        x = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
        return keras.ops.convert_to_numpy(lm.backbone(x)), keras.ops.convert_to_numpy(lm(x))

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    tokens = list(prompt)
    while len(tokens) < max_length:
        n = len(tokens)
        hidden, logits = run([tokens])
        logits = logits[0, n - 1].astype("float64")
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        candidates = np.argsort(-probabilities, kind="stable")[:k]
        candidate_hidden = run([tokens + [int(c)] for c in candidates])[0][:, n]
        similarity = (unit(candidate_hidden) @ unit(hidden[0, :n]).T).max(axis=1)
        scores = (1 - alpha) * probabilities[candidates] - alpha * similarity
        tokens.append(int(candidates[int(np.argmax(scores))]))
    return tokens


@pytest.mark.slow
def test_contrastive_search_equals_its_definition_recomputed_without_cache(lm):
    """Cached contrastive search, with the prompts prefilled in chunks of 2 (hidden states kept for
    the similarity) and prompts of different lengths, picks the tokens of the uncached definition."""
    chunked = CausalLM(lm.backbone, lm.preprocessor)
    chunked.prefill_chunk_length = 2
    prompts = [[2, 10, 11, 12, 13, 14, 15], [2, 30, 31, 32, 33, 34]]
    out = chunked.generate(prompts, max_length=12, sampler=ContrastiveSampler(k=3, alpha=0.6),
                           stop_token_ids=None)
    for row, prompt in enumerate(prompts):
        assert out["token_ids"][row].tolist() == uncached_contrastive(lm, prompt, 12, k=3, alpha=0.6)
    greedy = chunked.generate(prompts, max_length=12, stop_token_ids=None)["token_ids"]
    assert (out["token_ids"] != greedy).any()  # the penalty changed some choices


def test_random_samplers_generate_valid_tokens_reproducibly(lm):
    a = lm.generate(TEXTS[:2], max_length=10, sampler="top_p", seed=5)
    b = lm.generate(TEXTS[:2], max_length=10, sampler="top_p", seed=5)
    assert a == b


def test_gpt2_causal_lm_generates_on_token_ids_without_a_preprocessor():
    keras.utils.set_random_seed(1)
    lm = CausalLM(GPT2Backbone(vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=8,
                               intermediate_dim=16, max_sequence_length=16, dropout=0.0))
    out = lm.generate([[1, 2, 3], [4, 5]], max_length=8)
    expected = uncached_greedy(lm, np.array([[1, 2, 3], [4, 5, 0]]), np.array([[1, 1, 1], [1, 1, 0]]), 8)
    np.testing.assert_array_equal(out["token_ids"], expected)


def test_bad_input_is_named(lm):
    with pytest.raises(ValueError, match="Valid names"):
        lm.generate("the film", sampler="nucleus")
    with pytest.raises(ValueError, match="more than max_length=4"):
        lm.generate("i love this movie and the food", max_length=4)
    with pytest.raises(ValueError, match="max_sequence_length=32"):
        lm.generate("the film", max_length=64)


def test_saved_preset_reloads_with_the_same_logits_and_preprocessor(lm, tmp_path):
    lm.save_to_preset(str(tmp_path / "preset"))
    reloaded = CausalLM.from_preset(str(tmp_path / "preset"))
    x, _, _ = lm.preprocessor(TEXTS)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(lm(x)),
                               atol=1e-6)
    assert reloaded.preprocessor.sequence_length == 12
    assert reloaded.generate("the film", max_length=10) == lm.generate("the film", max_length=10)


def test_generate_and_predict_follow_lora_changes_after_compiling(tokenizer):
    """enable_lora/merge_lora after a first generate must not leave a stale compiled loop behind."""
    keras.utils.set_random_seed(5)
    backbone = LlamaBackbone(vocabulary_size=tokenizer.vocabulary_size, num_layers=1, num_heads=2,
                             num_key_value_heads=1, hidden_dim=8, intermediate_dim=16,
                             max_sequence_length=16)
    for variable in backbone.weights:
        variable.assign(np.random.default_rng(1).normal(0, 0.5, variable.shape))
    lm = CausalLM(backbone, CausalLMPreprocessor(tokenizer, sequence_length=8))
    prompts = {"token_ids": np.array([[2, 10, 11, 0], [2, 20, 21, 22]], "int32"),
               "padding_mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], "int32")}
    before = lm.generate(prompts, max_length=9, stop_token_ids=None)["token_ids"]
    lm.predict(prompts, verbose=0)
    backbone.enable_lora(2)
    rng = np.random.default_rng(2)
    for variable in backbone.trainable_weights:  # non-zero LoRA updates change the model
        variable.assign(rng.normal(0, 1.0, variable.shape))
    after = lm.generate(prompts, max_length=9, stop_token_ids=None)["token_ids"]
    np.testing.assert_array_equal(after, uncached_greedy(lm, prompts["token_ids"], prompts["padding_mask"], 9))
    assert not np.array_equal(after, before)
    reference = keras.ops.convert_to_numpy(lm(prompts))
    np.testing.assert_allclose(lm.predict(prompts, verbose=0), reference, atol=1e-5)
    backbone.merge_lora()
    np.testing.assert_array_equal(lm.generate(prompts, max_length=9, stop_token_ids=None)["token_ids"], after)
    np.testing.assert_allclose(lm.predict(prompts, verbose=0), reference, atol=1e-4)
