"""Byte-level BPE and tokenizer.json tokenizers: ids identical to Hugging Face's GPT2TokenizerFast on
real tweets and Shakespeare, eagerly and inside tf.data, with special tokens, decoding and preset
round trips.

The vocabulary is a 1,000-token GPT-2 style ``vocab.json`` + ``merges.txt`` trained here with the
``tokenizers`` library's own ByteLevelBPETokenizer on three Shakespeare plays (no download); the
reference is transformers' GPT2TokenizerFast reading those files.
"""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import transformers

from helpers import TRICKY_SENTENCES, package_path, real_tweets
from kcookbook import presets
from kcookbook.components import BytePairTokenizer, HuggingFaceTokenizer, Tokenizer

pytestmark = pytest.mark.backend_independent  # a tokenizer against transformers': the same on every backend


@pytest.fixture(scope="module")
def shakespeare_files():
    files = sorted(glob.glob(os.path.join(package_path("shksprdata", "texts"), "*_gut.txt")))
    assert len(files) > 30
    return files


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory, shakespeare_files):
    from tokenizers.implementations import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("gpt2_tiny")
    trainer = ByteLevelBPETokenizer()
    trainer.train(shakespeare_files[:3], vocab_size=1000, special_tokens=["<|endoftext|>"], show_progress=False)
    trainer.save_model(str(folder))
    return folder / "vocab.json", folder / "merges.txt"


@pytest.fixture(scope="module")
def hf_tokenizer(gpt2_files):
    return transformers.GPT2TokenizerFast(str(gpt2_files[0]), str(gpt2_files[1]))


@pytest.fixture(scope="module")
def tokenizer(gpt2_files):
    return BytePairTokenizer(*gpt2_files, end_token="<|endoftext|>")


@pytest.fixture(scope="module")
def texts(shakespeare_files):
    with open(shakespeare_files[10], encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().split("\n") if line.strip()][:1000]
    # Shakespeare from plays the vocabulary was not trained on, real tweets, hand-written hard cases.
    return lines + real_tweets(1500) + TRICKY_SENTENCES + [
        "end of one<|endoftext|>start of another", "<|endoftext|>", "  two  spaces  ", "tab\tnew\nline\r\n"]


def _first_difference(ours, expected, texts):
    for text, a, b in zip(texts, ours, expected):
        if list(a) != list(b):
            return f"{text!r}: ours {list(a)[:20]} vs HF {list(b)[:20]}"
    return None


def test_ids_match_gpt2_tokenizer_fast(tokenizer, hf_tokenizer, texts):
    expected = hf_tokenizer(texts, add_special_tokens=False)["input_ids"]
    ours = tokenizer(texts)
    assert len(ours) > 2500
    assert ours == expected, _first_difference(ours, expected, texts)
    assert tokenizer(texts[3]) == expected[3]
    assert tokenizer(np.array(texts[:4])) == expected[:4]


def test_special_token_stays_whole_and_ids_are_named(tokenizer, hf_tokenizer):
    ids = tokenizer("one<|endoftext|>two")
    assert ids.count(hf_tokenizer.eos_token_id) == 1
    assert tokenizer.end_token_id == tokenizer.pad_token_id == hf_tokenizer.eos_token_id == 0
    assert tokenizer.start_token_id is None and tokenizer.special_token_ids == [0]
    assert tokenizer.vocabulary_size == len(hf_tokenizer) == 1000
    assert tokenizer.id_to_token(ids[0]) == hf_tokenizer.convert_ids_to_tokens(ids[0])


def test_ids_match_inside_tf_data(tokenizer, hf_tokenizer, texts):
    subset = texts[:200] + texts[-30:]
    expected = hf_tokenizer(subset, add_special_tokens=False)["input_ids"]
    batched = tf.data.Dataset.from_tensor_slices(subset).batch(32).map(tokenizer)
    assert [row for ragged in batched for row in ragged.to_list()] == expected
    single = tf.data.Dataset.from_tensor_slices(subset[:20]).map(tokenizer)
    assert [t.numpy().tolist() for t in single] == expected[:20]


def test_detokenize_matches_hf_decode(tokenizer, hf_tokenizer, texts):
    batch = tokenizer(texts[:300] + texts[-30:])
    for skip in (True, False):
        assert tokenizer.detokenize(batch, skip_special_tokens=skip) == hf_tokenizer.batch_decode(
            batch, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    # Byte-level BPE is lossless on text without special tokens.
    plain = [t for t in texts[:500] if "<|endoftext|>" not in t]
    assert tokenizer.detokenize(tokenizer(plain)) == plain


def test_preset_round_trip_keeps_ids_and_writes_gpt2_files(tokenizer, tmp_path, texts):
    from kcookbook.backbones.bert import BertBackbone

    backbone = BertBackbone(vocabulary_size=16, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=8,
                            max_sequence_length=8)
    presets.save_preset(tmp_path / "p", backbone=backbone, tokenizer=tokenizer)
    assets = tmp_path / "p" / "assets" / "tokenizer"
    assert sorted(os.listdir(assets)) == ["merges.txt", "vocabulary.json"]
    # The asset files are themselves GPT-2 files transformers reads.
    reread = transformers.GPT2TokenizerFast(str(assets / "vocabulary.json"), str(assets / "merges.txt"))
    assert reread(texts[:100], add_special_tokens=False)["input_ids"] == tokenizer(texts[:100])
    loaded = Tokenizer.from_preset(str(tmp_path / "p"))
    assert isinstance(loaded, BytePairTokenizer)
    assert loaded(texts) == tokenizer(texts)
    assert loaded.get_config() == tokenizer.get_config()
    assert BytePairTokenizer.from_config(tokenizer.get_config())(texts[:50]) == tokenizer(texts[:50])


def test_tokenizer_json_folder_matches(hf_tokenizer, tmp_path, texts):
    hf_tokenizer.save_pretrained(tmp_path / "hf")
    assert os.path.exists(tmp_path / "hf" / "tokenizer.json")
    ours = HuggingFaceTokenizer.from_hf_folder(tmp_path / "hf")
    assert ours(texts) == hf_tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert (ours.start_token, ours.end_token) == (hf_tokenizer.bos_token, hf_tokenizer.eos_token)
    config = ours.get_config()
    assert HuggingFaceTokenizer.from_config(config)(texts[:50]) == ours(texts[:50])
    json.loads(config["tokenizer_json"])  # the whole pipeline travels in the config


@pytest.fixture(scope="module")
def training_lines(shakespeare_files):
    """Lines of two plays to train on, and lines of a third (never seen in training) to encode."""
    def lines(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line for line in f.read().split("\n") if line.strip()]

    return lines(shakespeare_files[0])[:2500] + lines(shakespeare_files[1])[:2500], lines(shakespeare_files[2])[:800]


def test_train_matches_the_tokenizers_byte_level_bpe_trainer(training_lines):
    from tokenizers.implementations import ByteLevelBPETokenizer

    train, held_out = training_lines
    trained = BytePairTokenizer.train(train, vocabulary_size=600, end_token="<|endoftext|>")
    # The independent reference: the library's own ByteLevelBPETokenizer, same texts and settings.
    reference = ByteLevelBPETokenizer()
    reference.train_from_iterator(train, vocab_size=600, min_frequency=2,
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    assert trained.vocabulary_size == reference.get_vocab_size() == 600
    assert trained.get_vocabulary() == [reference.id_to_token(i) for i in range(600)]
    expected = [encoding.ids for encoding in reference.encode_batch(held_out)]
    assert trained(held_out) == expected, _first_difference(trained(held_out), expected, held_out)
    assert trained.detokenize(trained(held_out)) == held_out  # byte-level BPE loses nothing
    assert trained.end_token_id == trained.token_to_id("<|endoftext|>") == 0
    assert trained("to be<|endoftext|>")[-1] == 0


def test_trained_tokenizer_travels_in_a_causal_lm_preset(training_lines, tmp_path):
    from kcookbook.backbones import GPT2Backbone
    from kcookbook.tasks import CausalLM, CausalLMPreprocessor

    train, held_out = training_lines
    trained = BytePairTokenizer.train(train[:1500], vocabulary_size=400, end_token="<|endoftext|>")
    backbone = GPT2Backbone(vocabulary_size=400, num_layers=1, num_heads=2, hidden_dim=8,
                            intermediate_dim=16, max_sequence_length=32)
    lm = CausalLM(backbone, CausalLMPreprocessor(trained, sequence_length=16))
    lm.save_to_preset(tmp_path / "toy", metadata={"description": "random toy model"})
    # GPT-2's own file format: transformers reads the saved vocabulary and merges to the same ids.
    assets = tmp_path / "toy" / "assets" / "tokenizer"
    reread = transformers.GPT2TokenizerFast(str(assets / "vocabulary.json"), str(assets / "merges.txt"))
    assert reread(held_out[:200], add_special_tokens=False)["input_ids"] == trained(held_out[:200])
    loaded = CausalLM.from_preset(str(tmp_path / "toy"))
    assert loaded.preprocessor.tokenizer(held_out) == trained(held_out)
    assert loaded.preprocessor.tokenizer.end_token_id == 0


def test_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocabulary_size=100 is too small.*at least 257"):
        BytePairTokenizer.train(["some text"], vocabulary_size=100)
    with pytest.raises(TypeError, match="not one string"):
        BytePairTokenizer.train("some text", vocabulary_size=300)


def test_bad_inputs_say_what_is_wrong(gpt2_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="Merges file not found"):
        BytePairTokenizer(gpt2_files[0], tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="Unknown pre_tokenizer 'bert'.*gpt2"):
        BytePairTokenizer(gpt2_files[0], gpt2_files[1], pre_tokenizer="bert")
    with pytest.raises(ValueError, match="not a pair"):
        BytePairTokenizer({"a": 0}, ["a b c"])
    with pytest.raises(ValueError, match="end_token='<eos>' is not in the vocabulary"):
        BytePairTokenizer(gpt2_files[0], gpt2_files[1], end_token="<eos>")
    with pytest.raises(ValueError, match="no chat template"):
        BytePairTokenizer(gpt2_files[0], gpt2_files[1]).apply_chat_template([{"role": "user", "content": "hi"}])
