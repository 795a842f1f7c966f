"""T5 and encoder-decoder generation, against transformers 5.24 and keras_hub 0.32.

Tiny random ``T5ForConditionalGeneration`` checkpoints (v1.0: ReLU, tied, output scaled; v1.1:
gated-GELU, unscaled; weights perturbed away from transformers' initialisation so every tensor
matters) are saved with ``save_pretrained`` and loaded with ``from_preset(folder)``; logits (with
padding in encoder and decoder), greedy generation and beam search are compared with transformers.
A ``T5Backbone`` preset written by keras_hub loads with keras_hub's outputs. The tokenizer is a
SentencePiece model trained here on real tweets, read by transformers' ``T5Tokenizer`` (which adds
the ``<extra_id_N>`` sentinels) and by kcookbook from the folder it saves.
"""

import io
import json
import os

import keras
import numpy as np
import pytest
import sentencepiece
import torch
import transformers
from helpers import real_tweets
from keras import ops

from kcookbook.backbones import Backbone, T5Backbone
from kcookbook.components.relative_position_bias import relative_position_bucket
from kcookbook.components.samplers import BeamSampler
from kcookbook.presets import PresetError
from kcookbook.tasks import Seq2SeqLM

VOCAB = 300  # 200 SentencePiece pieces + 100 sentinels
CONFIGS = {
    "v1.0": dict(feed_forward_proj="relu"),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def hf_config(version):
    return transformers.T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=6, d_ff=24, num_layers=2, num_decoder_layers=1, num_heads=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **CONFIGS[version])


def randomize(model):
    """Weights far from transformers' tiny initialisation, so generation does not repeat one token."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0.0, 0.6 if "shared" in name or "relative" in name else 0.4)
    return model


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    """A SentencePiece unigram model with T5's special pieces, trained on real tweets."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(real_tweets(600)), model_writer=model, vocab_size=VOCAB - 100,
        minloglevel=2, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>")
    folder = tmp_path_factory.mktemp("spiece")
    (folder / "spiece.model").write_bytes(model.getvalue())
    return str(folder)


_CHECKPOINTS = {}


def checkpoint(version, tmp_path_factory, spiece):
    """(folder, transformers model) of a tiny random T5 with its tokenizer, once per session."""
    if version not in _CHECKPOINTS:
        torch.manual_seed(0)
        model = randomize(transformers.T5ForConditionalGeneration(hf_config(version)).eval())
        folder = str(tmp_path_factory.mktemp(f"t5_{version}"))
        model.save_pretrained(folder)
        transformers.T5Tokenizer.from_pretrained(spiece).save_pretrained(folder)
        _CHECKPOINTS[version] = (folder, model)
    return _CHECKPOINTS[version]


_MODELS = {}


def converted(version, tmp_path_factory, spiece):
    """(our Seq2SeqLM without preprocessor, transformers model) of ``checkpoint(version)``; converted
    once per session, so its compiled generation loops are shared by the tests."""
    if version not in _MODELS:
        folder, reference = checkpoint(version, tmp_path_factory, spiece)
        _MODELS[version] = (Seq2SeqLM.from_preset(folder, preprocessor=None), reference)
    return _MODELS[version]


def batch(rng, encoder_length=9, decoder_length=7):
    """Token ids with right padding in both encoder and decoder (as transformers takes them)."""
    encoder_mask = np.ones((3, encoder_length), "int32")
    encoder_mask[1, 6:] = 0
    encoder_mask[2, 3:] = 0
    decoder_mask = np.ones((3, decoder_length), "int32")
    decoder_mask[0, 5:] = 0
    encoder_ids = rng.integers(3, VOCAB, encoder_mask.shape).astype("int32") * encoder_mask
    decoder_ids = rng.integers(3, VOCAB, decoder_mask.shape).astype("int32") * decoder_mask
    decoder_ids[:, 0] = 0
    return {"encoder_token_ids": encoder_ids, "encoder_padding_mask": encoder_mask,
            "decoder_token_ids": decoder_ids, "decoder_padding_mask": decoder_mask}


def hf_outputs(model, x):
    with torch.no_grad():
        return model(input_ids=torch.tensor(x["encoder_token_ids"], dtype=torch.long),
                     attention_mask=torch.tensor(x["encoder_padding_mask"]),
                     decoder_input_ids=torch.tensor(x["decoder_token_ids"], dtype=torch.long),
                     decoder_attention_mask=torch.tensor(x["decoder_padding_mask"]),
                     output_hidden_states=True)


def test_relative_position_buckets_are_transformers_buckets():
    distances = torch.arange(-300, 300)[None]
    for bidirectional in (True, False):
        theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            distances, bidirectional=bidirectional, num_buckets=32, max_distance=128).numpy()
        ours = ops.convert_to_numpy(relative_position_bucket(distances.numpy(), bidirectional, 32, 128))
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("version", sorted(CONFIGS))
def test_logits_match_transformers_with_padding(version, tmp_path_factory, spiece):
    lm, reference = converted(version, tmp_path_factory, spiece)
    assert lm.backbone.use_gated_activation == (version == "v1.1")
    x = batch(np.random.default_rng(0))
    expected = hf_outputs(reference, x).logits.numpy()
    np.testing.assert_allclose(ops.convert_to_numpy(lm(x)), expected, atol=1e-4, rtol=1e-4)


def test_untied_lm_head_of_an_older_v1_1_config(tmp_path_factory, spiece, tmp_path):
    """v1.1 checkpoints saved before transformers 5 say ``tie_word_embeddings: false`` and store
    ``lm_head.weight``: a separate output table, no scaling (logits = decoder output · lm_headᵀ)."""
    from safetensors.numpy import load_file, save_file

    folder, reference = checkpoint("v1.1", tmp_path_factory, spiece)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    head = np.random.default_rng(3).normal(size=(VOCAB, 16)).astype("float32")
    save_file({**tensors, "lm_head.weight": head}, str(tmp_path / "model.safetensors"))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config.pop("scale_decoder_outputs")
    config["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    lm = Seq2SeqLM.from_preset(str(tmp_path), preprocessor=None)
    assert not lm.backbone.tie_word_embeddings
    x = batch(np.random.default_rng(1))
    decoder_output = hf_outputs(reference, x).decoder_hidden_states[-1].numpy()
    np.testing.assert_allclose(ops.convert_to_numpy(lm(x)), decoder_output @ head.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("version,use_cache", [("v1.0", True), ("v1.1", True), ("v1.0", False)])
def test_greedy_generate_gives_transformers_ids(version, use_cache, tmp_path_factory, spiece):
    """With the caches, and without them (the decoder re-run on the whole prefix every step)."""
    lm, reference = converted(version, tmp_path_factory, spiece)
    x = batch(np.random.default_rng(2))
    encoder = {k: x[k] for k in ("encoder_token_ids", "encoder_padding_mask")}
    with torch.no_grad():
        expected = reference.generate(input_ids=torch.tensor(x["encoder_token_ids"], dtype=torch.long),
                                      attention_mask=torch.tensor(x["encoder_padding_mask"]),
                                      max_length=8, do_sample=False, num_beams=1).numpy()
    out = lm.generate(encoder, max_length=8, stop_token_ids=[1], use_cache=use_cache)
    ids, mask = out["decoder_token_ids"], out["decoder_padding_mask"]
    assert ids[:, 0].tolist() == [0, 0, 0]
    # transformers pads a finished row with 0 and stops when every row is done
    np.testing.assert_array_equal(ids[:, :expected.shape[1]], expected)
    assert not ids[:, expected.shape[1]:].any()
    ends = [list(row).index(1) if 1 in row else len(row) - 1 for row in ids]
    assert mask.sum(axis=1).tolist() == [end + 1 for end in ends]
    count = lm.generate_trace_count
    lm.generate(encoder, max_length=8, stop_token_ids=[1], use_cache=use_cache)
    assert lm.generate_trace_count == count  # the compiled loop is reused


def reference_beam_search(model, x, num_beams, max_length):
    """Beam search written out over transformers' full forward passes (no cache): per row, keep the
    ``num_beams`` prefixes of highest summed log-probability."""
    rows = []
    for row in range(len(x["encoder_token_ids"])):
        beams = [([0], 0.0)]
        for _ in range(max_length - 1):
            prefixes = torch.tensor([prefix for prefix, _ in beams])
            with torch.no_grad():
                logits = model(input_ids=torch.tensor(x["encoder_token_ids"][row:row + 1],
                                                      dtype=torch.long).repeat(len(beams), 1),
                               attention_mask=torch.tensor(x["encoder_padding_mask"][row:row + 1]
                                                           ).repeat(len(beams), 1),
                               decoder_input_ids=prefixes).logits[:, -1]
            log_p = torch.log_softmax(logits.double(), -1).numpy()
            candidates = [(prefix + [token], score + log_p[b, token])
                          for b, (prefix, score) in enumerate(beams) for token in range(log_p.shape[1])]
            beams = sorted(candidates, key=lambda c: -c[1])[:num_beams]
        rows.append(beams[0][0])
    return np.array(rows)


def test_beam_search_is_the_beam_search_of_transformers_scores(tmp_path_factory, spiece):
    lm, reference = converted("v1.1", tmp_path_factory, spiece)
    x = batch(np.random.default_rng(4))
    encoder = {k: x[k] for k in ("encoder_token_ids", "encoder_padding_mask")}
    out = lm.generate(encoder, max_length=6, sampler="beam", stop_token_ids=None)
    np.testing.assert_array_equal(out["decoder_token_ids"], reference_beam_search(reference, x, 5, 6))
    assert out["decoder_padding_mask"].all()


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_gives_transformers_generate_ids(use_cache, tmp_path_factory, spiece):
    """T5 v1.1 (gated-GELU, untied): ``generate(num_beams=3)`` of transformers, no end token, padded
    encoder rows, the same ids; without the caches too (beam search reorders the prefixes)."""
    lm, reference = converted("v1.1", tmp_path_factory, spiece)
    x = batch(np.random.default_rng(5))
    encoder = {k: x[k] for k in ("encoder_token_ids", "encoder_padding_mask")}
    inputs = dict(input_ids=torch.tensor(x["encoder_token_ids"], dtype=torch.long),
                  attention_mask=torch.tensor(x["encoder_padding_mask"]), do_sample=False, max_length=7,
                  min_length=7, eos_token_id=None, early_stopping=False)
    with torch.no_grad():
        expected = reference.generate(num_beams=3, **inputs).numpy()
        greedy = reference.generate(num_beams=1, **inputs).numpy()
    assert expected.shape == (3, 7) and (expected != greedy).any()  # the beams change the result
    out = lm.generate(encoder, max_length=7, sampler=BeamSampler(num_beams=3), stop_token_ids=None,
                      use_cache=use_cache)
    np.testing.assert_array_equal(out["decoder_token_ids"], expected)


def test_samplers_run_in_the_compiled_loop(tmp_path_factory, spiece):
    lm, _ = converted("v1.0", tmp_path_factory, spiece)
    encoder = {k: v for k, v in batch(np.random.default_rng(5)).items() if k.startswith("encoder")}
    for sampler in ("top_k", "top_p"):
        first = lm.generate(encoder, max_length=8, sampler=sampler, stop_token_ids=None, seed=3)
        again = lm.generate(encoder, max_length=8, sampler=sampler, stop_token_ids=None, seed=3)
        np.testing.assert_array_equal(first["decoder_token_ids"], again["decoder_token_ids"])
        assert (first["decoder_token_ids"][:, 0] == 0).all() and first["decoder_padding_mask"].all()


@pytest.mark.backend_independent
def test_tokenizer_ids_equal_transformers_t5_tokenizer(tmp_path_factory, spiece):
    folder, _ = checkpoint("v1.0", tmp_path_factory, spiece)
    theirs = transformers.T5Tokenizer.from_pretrained(folder)
    lm = Seq2SeqLM.from_preset(folder)
    held_out = real_tweets(20, start=5000) + ["translate English to German: <extra_id_0> is <extra_id_99>."]
    ours = lm.preprocessor.generate_preprocess(held_out)
    for text, ids, mask in zip(held_out, ours["encoder_token_ids"], ours["encoder_padding_mask"]):
        expected = theirs(text).input_ids[:lm.preprocessor.encoder_sequence_length]
        assert ids[mask.astype(bool)].tolist() == expected, text
    assert lm.preprocessor.tokenizer.token_to_id("<extra_id_0>") == VOCAB - 1


@pytest.mark.one_backend  # keras_hub's file layout; per-backend numerics: the transformers parity tests
def test_keras_hub_t5_preset_loads_with_keras_hub_outputs(tmp_path):
    import keras_hub

    theirs = keras_hub.models.T5Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=24,
        key_value_dim=6, activation="gelu", use_gated_activation=True, tie_embedding_weights=False,
        dropout=0.0)
    rng = np.random.default_rng(6)
    theirs.set_weights([rng.normal(0, 0.4, w.shape) for w in theirs.get_weights()])
    theirs.save_to_preset(str(tmp_path))
    ours = Backbone.from_preset(str(tmp_path))
    assert isinstance(ours, T5Backbone) and not ours.tie_word_embeddings
    x = batch(rng)
    expected = theirs(x)
    got = ours(x)
    for key in ("encoder_sequence_output", "decoder_sequence_output"):
        np.testing.assert_allclose(ops.convert_to_numpy(got[key]), ops.convert_to_numpy(expected[key]),
                                   atol=1e-4, rtol=1e-4)


def test_fit_on_string_pairs_learns_the_targets_only(tmp_path_factory, spiece):
    folder, _ = checkpoint("v1.0", tmp_path_factory, spiece)
    lm = Seq2SeqLM.from_preset(folder, preprocessor_kwargs={"encoder_sequence_length": 16,
                                                            "decoder_sequence_length": 8})
    inputs, targets = real_tweets(4, start=100), ["good", "bad", "good", "so so"]
    x, y, weights = lm.preprocessor((inputs, targets))
    target_ids = lm.preprocessor.tokenizer.encode_batch(targets)
    for row, ids in enumerate(target_ids):
        n = len(ids) + 1  # the target and the end token are learned; nothing else
        assert y[row, :n].tolist() == ids + [1] and weights[row].tolist() == [1.0] * n + [0.0] * (8 - n)
        assert x["decoder_token_ids"][row, :n].tolist() == [0] + ids
    lm.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = lm.fit(inputs, targets, epochs=4, batch_size=4, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_fit_on_a_tf_data_dataset_of_string_pairs_is_fit_on_the_lists(tmp_path_factory, spiece):
    """``fit(tf.data.Dataset of (input, target) strings)``: the same batches and the same losses as
    ``fit(inputs, targets)`` from the same weights."""
    import tensorflow as tf

    folder, _ = checkpoint("v1.0", tmp_path_factory, spiece)
    lm = Seq2SeqLM.from_preset(folder, preprocessor_kwargs={"encoder_sequence_length": 16,
                                                            "decoder_sequence_length": 8})
    inputs, targets = real_tweets(8, start=200), ["good", "bad", "so so", "good"] * 2
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(4)
    x, y, weights = lm.preprocessor(tf.constant(inputs[:4]), tf.constant(targets[:4]))
    expected = lm.preprocessor((inputs[:4], targets[:4]))
    for got, want in zip(keras.tree.flatten((x, y, weights)), keras.tree.flatten(expected)):
        np.testing.assert_array_equal(np.asarray(got), want)
    start = lm.get_weights()
    losses = {}
    for name, data in (("lists", (inputs, targets)), ("dataset", (dataset,))):
        lm.set_weights(start)
        lm.compile(optimizer=keras.optimizers.Adam(3e-3))
        history = lm.fit(*data, epochs=3, batch_size=None if name == "dataset" else 4, shuffle=False,
                         verbose=0)
        losses[name] = history.history["loss"]
    assert losses["lists"][-1] < losses["lists"][0]
    np.testing.assert_allclose(losses["dataset"], losses["lists"], rtol=1e-4)


def test_save_to_preset_round_trip(tmp_path_factory, spiece, tmp_path):
    folder, _ = checkpoint("v1.1", tmp_path_factory, spiece)
    lm = Seq2SeqLM.from_preset(folder, preprocessor_kwargs={"encoder_sequence_length": 12,
                                                            "decoder_sequence_length": 6})
    lm.save_to_preset(str(tmp_path / "saved"))
    again = Seq2SeqLM.from_preset(str(tmp_path / "saved"))
    x = batch(np.random.default_rng(7))
    np.testing.assert_allclose(ops.convert_to_numpy(again(x)), ops.convert_to_numpy(lm(x)), atol=1e-6)
    assert again.preprocessor.decoder_sequence_length == 6
    texts = real_tweets(2, start=300)
    assert again.generate(texts) == lm.generate(texts)
    config = lm.backbone.get_config()
    assert T5Backbone.from_config(config).get_config() == config


def test_a_decoder_prefix_longer_than_max_length_is_refused(tmp_path_factory, spiece):
    lm, _ = converted("v1.0", tmp_path_factory, spiece)
    x = batch(np.random.default_rng(8))
    with pytest.raises(ValueError, match="max_length=5"):
        lm.generate(x, max_length=5)  # a 7-token decoder prefix
    with pytest.raises(ValueError, match="max_sequence_length=512"):
        lm.generate(x, max_length=513)
    x["decoder_token_ids"][:, 0] = 4
    with pytest.raises(ValueError, match="decoder start token"):
        lm.generate(x, max_length=9)


@pytest.mark.backend_independent
def test_unknown_model_type_and_pickled_weights_are_refused(tmp_path_factory, spiece, tmp_path):
    folder, _ = checkpoint("v1.0", tmp_path_factory, spiece)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({**config, "model_type": "t6"}))
    with pytest.raises(PresetError, match="'t6'.*t5"):
        Seq2SeqLM.from_preset(str(unknown))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(PresetError, match="model.safetensors.*pickled"):
        Seq2SeqLM.from_preset(str(pickled), preprocessor=None)


def test_a_decoder_only_backbone_is_refused():
    from kcookbook.backbones import GPT2Backbone

    backbone = GPT2Backbone(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=8,
                            max_sequence_length=8)
    with pytest.raises(TypeError, match="Seq2SeqBackbone"):
        Seq2SeqLM(backbone)
