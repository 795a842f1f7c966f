"""SentencePiece: ids equal to transformers' LlamaTokenizer / T5Tokenizer for the same ``.model`` on real
tweets, eagerly and in tf.data, plus round trips and preset assets.

Two small models are trained here on Shakespeare with the ``sentencepiece`` trainer, shaped like the real
ones: a Llama/Gemma-style BPE with byte fallback, identity normalisation and user-defined chat tokens, and
a T5-style unigram model (pad 0, eos 1, unk 2). transformers converts each ``.model`` to its own fast
tokenizer; it differs from SentencePiece itself in two known places, which the tests name: leading
spaces (Llama) and runs of unknown characters (T5, where SentencePiece emits one ``<unk>`` per run).
"""

import glob
import io
import os

import pytest
import tensorflow as tf
import transformers

from helpers import TRICKY_SENTENCES, package_path, real_tweets
from kcookbook import presets
from kcookbook.components import Tokenizer
from kcookbook.components.sentencepiece import SentencePieceTokenizer
import sentencepiece  # noqa: E402  (the engine; pinned sentencepiece==0.2.3)

pytestmark = pytest.mark.backend_independent  # a tokenizer against transformers': the same on every backend


@pytest.fixture(scope="module")
def shakespeare_lines():
    files = sorted(glob.glob(os.path.join(package_path("shksprdata", "texts"), "*_gut.txt")))[:3]
    lines = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines += [line for line in f.read().split("\n") if line.strip()]
    return lines


def _train(lines, folder, filename, **options):
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                             vocab_size=800, minloglevel=2, **options)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, filename)
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return path


@pytest.fixture(scope="module")
def llama_model(tmp_path_factory, shakespeare_lines):
    folder = str(tmp_path_factory.mktemp("llama_spm"))
    return _train(shakespeare_lines, folder, "tokenizer.model", model_type="bpe", byte_fallback=True,
                  normalization_rule_name="identity", remove_extra_whitespaces=False, unk_id=0, bos_id=1,
                  eos_id=2, pad_id=-1, user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])


@pytest.fixture(scope="module")
def t5_model(tmp_path_factory, shakespeare_lines):
    folder = str(tmp_path_factory.mktemp("t5_spm"))
    return _train(shakespeare_lines, folder, "spiece.model", model_type="unigram", pad_id=0, eos_id=1,
                  unk_id=2, bos_id=-1)


@pytest.fixture(scope="module")
def texts():
    return real_tweets(1500) + TRICKY_SENTENCES + ["Hello <start_of_turn>user there<end_of_turn>"]


def test_llama_style_ids_match_transformers(llama_model, texts):
    reference = transformers.LlamaTokenizer.from_pretrained(os.path.dirname(llama_model))
    tokenizer = SentencePieceTokenizer(llama_model)
    comparable = [t for t in texts if not t.startswith(" ")]  # transformers drops one leading space
    assert len(comparable) == len(texts) - 1
    assert tokenizer(comparable) == reference(comparable, add_special_tokens=False)["input_ids"]
    assert (tokenizer.start_token_id, tokenizer.end_token_id) == (reference.bos_token_id, reference.eos_token_id)
    assert tokenizer.add_start_token is True
    ids = tokenizer("<start_of_turn>user")
    assert ids.count(tokenizer.token_to_id("<start_of_turn>")) == 1  # user-defined pieces stay whole
    # Byte fallback + identity normalisation: lossless, like the real Llama/Gemma models.
    assert tokenizer.detokenize(tokenizer(texts)) == texts
    batch = tokenizer(comparable[:100])
    assert tokenizer.detokenize(batch) == reference.batch_decode(batch, skip_special_tokens=True)


def test_t5_style_ids_match_transformers(t5_model, texts):
    reference = transformers.T5Tokenizer.from_pretrained(os.path.dirname(t5_model))
    tokenizer = SentencePieceTokenizer(t5_model)
    unk = tokenizer.token_to_id("<unk>")
    files = sorted(glob.glob(os.path.join(package_path("shksprdata", "texts"), "*_gut.txt")))
    with open(files[20], encoding="utf-8", errors="replace") as f:  # a play the model was not trained on
        held_out = [line for line in f.read().split("\n") if line.strip()][:1500]
    candidates = held_out + texts
    ours = tokenizer(candidates)
    # Texts whose every character the model knows (no <unk> run to encode differently).
    comparable = [(t, ids) for t, ids in zip(candidates, ours) if unk not in ids]
    assert len(comparable) > 1000
    expected = reference([t for t, _ in comparable], add_special_tokens=False)["input_ids"]
    assert [ids for _, ids in comparable] == expected
    assert (tokenizer.start_token_id, tokenizer.end_token_id, tokenizer.pad_token_id) == (
        None, reference.eos_token_id, reference.pad_token_id)
    assert tokenizer.add_start_token is False


def test_train_gives_t5s_layout_with_transformers_ids(shakespeare_lines, tmp_path, texts):
    """``SentencePieceTokenizer.train``: T5's special ids, the same model from the same texts, and
    the saved ``spiece.model`` read by transformers' ``T5Tokenizer`` with our ids on held-out text."""
    tokenizer = SentencePieceTokenizer.train(shakespeare_lines, vocabulary_size=600)
    again = SentencePieceTokenizer.train(shakespeare_lines, vocabulary_size=600)
    assert tokenizer.get_vocabulary() == again.get_vocabulary()  # seeded, single-threaded
    assert tokenizer.vocabulary_size == 600
    assert tokenizer.get_vocabulary()[:3] == ["<pad>", "</s>", "<unk>"]
    assert (tokenizer.pad_token_id, tokenizer.end_token_id, tokenizer.start_token_id) == (0, 1, None)
    tokenizer.save_model(tmp_path / "spiece.model")
    reference = transformers.T5Tokenizer.from_pretrained(str(tmp_path))
    files = sorted(glob.glob(os.path.join(package_path("shksprdata", "texts"), "*_gut.txt")))
    with open(files[20], encoding="utf-8", errors="replace") as f:  # a play the model was not trained on
        held_out = [line for line in f.read().split("\n") if line.strip()][:1500]
    candidates = held_out + texts
    comparable = [t for t, ids in zip(candidates, tokenizer(candidates)) if 2 not in ids]  # no <unk> runs
    assert len(comparable) > 1000
    assert tokenizer(comparable) == reference(comparable, add_special_tokens=False)["input_ids"]
    with pytest.raises(TypeError, match="not one string"):
        SentencePieceTokenizer.train("to be or not to be", vocabulary_size=20)
    with pytest.raises(ValueError, match="smaller vocabulary_size"):
        SentencePieceTokenizer.train(["to be"], vocabulary_size=500)
    with pytest.raises(ValueError, match="model_type"):
        SentencePieceTokenizer.train(["to be"], vocabulary_size=20, model_type="word")


def test_tf_data_and_preset_round_trip(llama_model, texts, tmp_path):
    tokenizer = SentencePieceTokenizer(llama_model, chat_template="{% for m in messages %}<start_of_turn>"
                                       "{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}")
    expected = tokenizer(texts[:200])
    dataset = tf.data.Dataset.from_tensor_slices(texts[:200]).batch(50).map(tokenizer)
    assert [row for ragged in dataset for row in ragged.to_list()] == expected

    from kcookbook.backbones.bert import BertBackbone

    backbone = BertBackbone(vocabulary_size=16, num_layers=1, num_heads=1, hidden_dim=4, intermediate_dim=8,
                            max_sequence_length=8)
    presets.save_preset(tmp_path / "p", backbone=backbone, tokenizer=tokenizer)
    assert os.listdir(tmp_path / "p" / "assets" / "tokenizer") == ["vocabulary.spm"]
    loaded = Tokenizer.from_preset(str(tmp_path / "p"))
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded(texts) == tokenizer(texts)
    assert loaded.get_config() == tokenizer.get_config()
    assert SentencePieceTokenizer.from_config(tokenizer.get_config())(texts[:20]) == expected[:20]
    chat = loaded.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert chat == "<start_of_turn>user\nHi<end_of_turn>\n"


def test_bad_inputs(tmp_path, llama_model):
    with pytest.raises(FileNotFoundError, match="not found"):
        SentencePieceTokenizer(tmp_path / "missing.model")
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x00\x01 definitely not a protobuf")
    with pytest.raises(ValueError, match="Not a valid SentencePiece model"):
        SentencePieceTokenizer(corrupt)
    with pytest.raises(ValueError, match="end_token='<eos>' is not a piece"):
        SentencePieceTokenizer(llama_model, end_token="<eos>")
