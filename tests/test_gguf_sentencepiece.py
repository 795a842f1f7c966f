"""A llama-architecture GGUF whose embedded tokenizer is SentencePiece-style
(``tokenizer.ggml.model == "llama"``: pieces, scores and piece types, as llama.cpp stores Llama-2,
Mistral and TinyLlama), read into kcookbook's SentencePieceTokenizer.

The file is written here the way llama.cpp's converter writes one: a SentencePiece model trained on
Hamlet with Llama-2's settings (BPE, byte fallback, no normalisation, ``<unk>``=0 ``<s>``=1 ``</s>``=2)
and a tiny random transformers Llama. References: the ``sentencepiece`` library on the original
``.model`` file, and transformers loading the same GGUF (its own GGUF tokenizer converter and model).
"""

import io
import os

import gguf
import keras
import numpy as np
import pytest
import sentencepiece
import torch
import transformers

from helpers import TRICKY_SENTENCES
from kcookbook.components.sentencepiece import SentencePieceTokenizer
from kcookbook.data import load_shakespeare
from kcookbook.presets.errors import PresetError
from kcookbook.formats.gguf import GGUFCheckpoint
from kcookbook.tasks import CausalLM
from test_gguf import write_tiny_llama_gguf

VOCABULARY = 600
FILE = "tiny-llama2-spm.gguf"


@pytest.fixture(scope="module")
def plays():
    hamlet, macbeth = load_shakespeare(works=["hamlet", "macbeth"])
    train = [line for line in hamlet.text.split("\n") if line.strip()][:800]
    return train, [line for line in macbeth.text.split("\n") if line.strip()][:1000] + TRICKY_SENTENCES


@pytest.fixture(scope="module")
def model_file(plays, tmp_path_factory):
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(plays[0]), model_writer=model, vocab_size=VOCABULARY, minloglevel=2,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return str(path)


def llama_cpp_tokenizer_keys(model_file, scores=True, space_prefix=None, user_defined=()):
    """What llama.cpp's convert_hf_to_gguf.py (``_set_vocab_sentencepiece``) writes for a .model."""
    sp = sentencepiece.SentencePieceProcessor(model_file=model_file)

    def piece_type(i):  # gguf.TokenType: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6
        if sp.id_to_piece(i) in user_defined:
            return gguf.TokenType.USER_DEFINED
        for test, kind in ((sp.is_unknown, gguf.TokenType.UNKNOWN), (sp.is_control, gguf.TokenType.CONTROL),
                           (sp.is_unused, gguf.TokenType.UNUSED), (sp.is_byte, gguf.TokenType.BYTE)):
            if test(i):
                return kind
        return gguf.TokenType.NORMAL

    def add(writer):
        writer.add_tokenizer_model("llama")
        writer.add_token_list([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
        if scores:
            writer.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
        writer.add_token_types([piece_type(i) for i in range(sp.get_piece_size())])
        writer.add_unk_token_id(sp.unk_id())
        writer.add_bos_token_id(sp.bos_id())
        writer.add_eos_token_id(sp.eos_id())
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        if space_prefix is not None:
            writer.add_add_space_prefix(space_prefix)
    return add


@pytest.fixture(scope="module")
def gguf_folder(model_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    write_tiny_llama_gguf(folder / FILE, gguf.GGMLQuantizationType.F32, vocab_size=VOCABULARY,
                          add_metadata=llama_cpp_tokenizer_keys(model_file))
    return folder


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_folder):
    return transformers.AutoTokenizer.from_pretrained(str(gguf_folder), gguf_file=FILE)


@pytest.mark.backend_independent
def test_ids_match_sentencepiece_and_transformers_gguf_tokenizer(gguf_folder, model_file, hf_tokenizer,
                                                                 plays):
    texts = plays[1]
    tokenizer = GGUFCheckpoint(gguf_folder / FILE).tokenizer()
    assert isinstance(tokenizer, SentencePieceTokenizer)
    ids = tokenizer(texts)
    assert ids == sentencepiece.SentencePieceProcessor(model_file=model_file).encode(texts)
    comparable = [t for t in texts if not t.startswith(" ")]  # transformers drops one leading space
    assert len(comparable) >= len(texts) - 3
    assert tokenizer(comparable) == hf_tokenizer(comparable, add_special_tokens=False)["input_ids"]
    assert (tokenizer.start_token_id, tokenizer.end_token_id) == (hf_tokenizer.bos_token_id,
                                                                  hf_tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.add_start_token is True
    assert tokenizer.detokenize(ids) == texts  # byte fallback, no normalisation: lossless


def test_causal_lm_on_strings_matches_transformers_on_the_same_gguf(gguf_folder, hf_tokenizer, plays):
    lm = CausalLM.from_preset(str(gguf_folder / FILE))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_folder), gguf_file=FILE).eval()
    texts = [t for t in plays[1][200:204] if not t.startswith(" ")] + ["To be, or not to be"]
    token_ids, padding_mask = lm.preprocessor.generate_preprocess(texts, 32)
    logits = keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))
    for row, text in enumerate(texts):
        expected_ids = hf_tokenizer(text)["input_ids"]  # with <s>, as llama.cpp's add_bos_token says
        length = int(padding_mask[row].sum())
        assert token_ids[row, :length].tolist() == expected_ids
        with torch.no_grad():
            expected = reference(torch.tensor([expected_ids])).logits[0].numpy()
        np.testing.assert_allclose(logits[row, :length], expected, atol=1e-4, rtol=0)

    prompt = "Fair is foul, and foul"
    with torch.no_grad():
        out = reference.generate(**hf_tokenizer(prompt, return_tensors="pt"), max_length=20, do_sample=False)
    assert lm.generate(prompt, max_length=20) == hf_tokenizer.decode(out[0], skip_special_tokens=True)


@pytest.mark.backend_independent
def test_gguf_sentencepiece_tokenizer_round_trips_through_a_preset(gguf_folder, plays, tmp_path):
    lm = CausalLM.from_preset(str(gguf_folder / FILE))
    lm.save_to_preset(str(tmp_path / "preset"))
    again = CausalLM.from_preset(str(tmp_path / "preset")).preprocessor.tokenizer
    assert isinstance(again, SentencePieceTokenizer)
    assert again(plays[1]) == lm.preprocessor.tokenizer(plays[1])
    assert again.get_config() == lm.preprocessor.tokenizer.get_config()


@pytest.mark.backend_independent
def test_sentencepiece_gguf_without_scores_is_named(model_file, tmp_path):
    path = tmp_path / "no_scores.gguf"
    write_tiny_llama_gguf(path, gguf.GGMLQuantizationType.F32, vocab_size=VOCABULARY,
                          add_metadata=llama_cpp_tokenizer_keys(model_file, scores=False))
    with pytest.raises(PresetError, match="tokenizer.ggml.scores"):
        GGUFCheckpoint(path).tokenizer()


@pytest.mark.backend_independent
def test_gemma_style_pieces_without_space_prefix(plays, tmp_path):
    """No ``▁`` prefix (``add_space_prefix`` false), specials at Gemma's ids and user-defined chat
    pieces: the ids are still SentencePiece's on the original model."""
    model = io.BytesIO()
    chat = ["<start_of_turn>", "<end_of_turn>"]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(plays[0]), model_writer=model, vocab_size=VOCABULARY, minloglevel=2,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=False, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=chat)
    model_file = tmp_path / "gemma.model"
    model_file.write_bytes(model.getvalue())
    path = tmp_path / "gemma_style.gguf"
    spm = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    keys = llama_cpp_tokenizer_keys(str(model_file), space_prefix=False, user_defined=chat)

    def add_metadata(writer):
        keys(writer)
        writer.add_eot_token_id(spm.piece_to_id("<end_of_turn>"))  # llama.cpp's end-of-turn key

    write_tiny_llama_gguf(path, gguf.GGMLQuantizationType.F32, vocab_size=VOCABULARY,
                          add_metadata=add_metadata)
    tokenizer = GGUFCheckpoint(path).tokenizer()
    # generate(stop_token_ids="auto") stops at the end token and at the file's end-of-turn token.
    assert tokenizer.stop_token_ids == (spm.eos_id(), spm.piece_to_id("<end_of_turn>"))
    texts = plays[1] + ["<start_of_turn>user\nTo be?<end_of_turn>\n<start_of_turn>model\n"]
    assert tokenizer(texts) == sentencepiece.SentencePieceProcessor(model_file=str(model_file)).encode(texts)
    assert (tokenizer.start_token, tokenizer.end_token) == ("<bos>", "<eos>")
    assert tokenizer("<start_of_turn>user")[0] == tokenizer.token_to_id("<start_of_turn>")
