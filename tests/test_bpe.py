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

from conftest import TRICKY_SENTENCES, package_path, real_tweets
from kcookbook import presets
from kcookbook.components import BytePairTokenizer, HuggingFaceTokenizer, Tokenizer


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


def test_train_learns_a_vocabulary_of_the_requested_size(shakespeare_files):
    with open(shakespeare_files[0], encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    trained = BytePairTokenizer.train(lines, vocabulary_size=400)
    assert trained.vocabulary_size == 400
    sample = [line for line in lines if line.strip()][:100]
    assert trained.detokenize(trained(sample)) == sample


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
