"""WordPiece: ids identical to Hugging Face's ``BertTokenizerFast`` on real tweets, eagerly and inside
``tf.data`` (on every backend), plus the packed ``[CLS] … [SEP]`` + padding form and round trips.

The reference is MiniLM's own tokenizer folder read by transformers.
"""

import numpy as np
import pytest
import tensorflow as tf
import transformers

import kcookbook
from helpers import TRICKY_SENTENCES
from kcookbook.components import WordPieceTokenizer
from kcookbook.tasks import TextClassifierPreprocessor

pytestmark = pytest.mark.backend_independent  # a tokenizer against transformers': the same on every backend


@pytest.fixture(scope="module")
def hf_tokenizer(minilm_path):
    return transformers.BertTokenizerFast.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def tokenizer():
    return kcookbook.components.Tokenizer.from_preset("all_minilm_l6_v2")


@pytest.fixture(scope="module")
def texts(tweets):
    return list(tweets[:1500]) + TRICKY_SENTENCES


def _first_difference(ours, expected, texts):
    for text, a, b in zip(texts, ours, expected):
        if list(a) != list(b):
            return f"{text!r}: ours {list(a)[:20]} vs HF {list(b)[:20]}"
    return None


def test_ids_match_hf_on_real_tweets(tokenizer, hf_tokenizer, texts):
    expected = hf_tokenizer(texts, add_special_tokens=False)["input_ids"]
    ours = tokenizer(texts)
    assert len(ours) == len(texts) >= 1000
    assert ours == expected, _first_difference(ours, expected, texts)


def test_single_string_and_numpy_array_inputs(tokenizer, hf_tokenizer, texts):
    text = texts[7]
    expected = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer(text) == expected
    assert tokenizer(np.array(texts[:5])) == hf_tokenizer(texts[:5], add_special_tokens=False)["input_ids"]


def test_ids_match_inside_tf_data_map(tokenizer, hf_tokenizer, texts):
    subset = texts[:300]
    expected = hf_tokenizer(subset, add_special_tokens=False)["input_ids"]

    batched = tf.data.Dataset.from_tensor_slices(subset).batch(64).map(tokenizer)
    ours = [row for ragged in batched for row in ragged.to_list()]
    assert ours == expected, _first_difference(ours, expected, subset)

    unbatched = tf.data.Dataset.from_tensor_slices(subset[:40]).map(tokenizer)
    assert [t.numpy().tolist() for t in unbatched] == expected[:40]


def test_special_tokens_written_in_text_are_kept_whole(tokenizer, hf_tokenizer):
    text = "The [MASK] sat on the [MASK]. [SEP] done"
    ids = tokenizer(text)
    assert ids == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.mask_token_id) == 2
    assert tokenizer.mask_token_id == hf_tokenizer.mask_token_id
    assert (tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id) == (
        hf_tokenizer.cls_token_id, hf_tokenizer.sep_token_id, hf_tokenizer.pad_token_id)


def test_detokenize_matches_hf_decode_and_round_trips(tokenizer, hf_tokenizer, texts):
    batch = tokenizer(texts[:200])
    decoded = tokenizer.detokenize(batch)
    expected = hf_tokenizer.batch_decode(batch, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert decoded == expected
    # Decoded text is already normalised, so tokenizing it again gives the same ids (no [UNK] rows).
    known = [i for i, ids in enumerate(batch) if hf_tokenizer.unk_token_id not in ids]
    assert len(known) > 150
    assert tokenizer([decoded[i] for i in known]) == [batch[i] for i in known]
    assert tokenizer.detokenize(tokenizer("hello world")) == "hello world"


@pytest.mark.parametrize("sequence_length", [16, 64])
def test_packed_single_segment_matches_hf_padding_and_truncation(tokenizer, hf_tokenizer, texts,
                                                                 sequence_length):
    subset = texts[:400]
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=sequence_length)
    ours = preprocessor(subset)
    expected = hf_tokenizer(subset, padding="max_length", truncation=True, max_length=sequence_length,
                            return_tensors="np")
    np.testing.assert_array_equal(ours["token_ids"], expected["input_ids"])
    np.testing.assert_array_equal(ours["padding_mask"], expected["attention_mask"])
    np.testing.assert_array_equal(ours["segment_ids"], expected["token_type_ids"])


def test_packed_pairs_match_hf_longest_first_truncation(tokenizer, hf_tokenizer, texts):
    # With an even number of free slots (25 - 3 special tokens = 22), round-robin truncation keeps the
    # same tokens as HF's longest_first. (With an odd number they differ on purpose: round robin gives
    # the spare slot to the first segment, as keras_hub does; HF gives it to the longer one.)
    first, second = texts[:200], texts[200:400]
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=25, truncate="round_robin")
    ours = preprocessor((first, second))
    expected = hf_tokenizer(first, second, padding="max_length", truncation="longest_first",
                            max_length=25, return_tensors="np")
    np.testing.assert_array_equal(ours["token_ids"], expected["input_ids"])
    np.testing.assert_array_equal(ours["segment_ids"], expected["token_type_ids"])
    np.testing.assert_array_equal(ours["padding_mask"], expected["attention_mask"])


def test_preprocessor_inside_tf_data_matches_eager(tokenizer, texts):
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=32)
    eager = preprocessor(texts[:100])
    dataset = tf.data.Dataset.from_tensor_slices(texts[:100]).batch(32).map(preprocessor)
    graph = {k: np.concatenate([batch[k].numpy() for batch in dataset]) for k in eager}
    for key in eager:
        np.testing.assert_array_equal(graph[key], eager[key])
    # keras_hub's usual order: map over single strings, then batch.
    unbatched = tf.data.Dataset.from_tensor_slices(texts[:100]).map(preprocessor).batch(50)
    rows = {k: np.concatenate([batch[k].numpy() for batch in unbatched]) for k in eager}
    for key in eager:
        np.testing.assert_array_equal(rows[key], eager[key])


def test_cased_and_accent_options_match_hf(tmp_path, tweets):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Café", "café", "cafe", "The", "the",
                  "##s", "é", "e", "c", "a", "f"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    text = ["The Café cafés café the", "THE CAFE"]
    for lowercase, strip_accents in [(True, None), (False, None), (True, False), (False, True)]:
        reference = transformers.BertTokenizerFast.from_pretrained(
            str(tmp_path), do_lower_case=lowercase, strip_accents=strip_accents)
        ours = WordPieceTokenizer(vocabulary, lowercase=lowercase, strip_accents=strip_accents)
        assert ours(text) == reference(text, add_special_tokens=False)["input_ids"], (
            lowercase, strip_accents)


def test_duplicate_vocabulary_lines_map_to_the_last_one_as_hf_does(tmp_path):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "x", "i", "x", "##i"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    reference = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    text = "x i xi"
    assert WordPieceTokenizer(vocabulary)(text) == reference(text, add_special_tokens=False)["input_ids"]


def test_non_string_elements_are_rejected_with_a_clear_message(tokenizer):
    with pytest.raises(TypeError, match="takes strings"):
        tokenizer(["fine", 3])


def test_trained_vocabulary_tokenizes_as_hf_does_with_it(tmp_path, tweets):
    trained = WordPieceTokenizer.train(tweets[:800], vocabulary_size=400)
    vocabulary = trained.get_vocabulary()
    assert vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 100 < len(vocabulary) <= 400
    (tmp_path / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    reference = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    held_out = list(tweets[1000:1300])
    assert trained(held_out) == reference(held_out, add_special_tokens=False)["input_ids"]
