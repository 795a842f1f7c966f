"""``export_to_transformers``: kcookbook models and tokenizers written as transformers folders that
transformers loads with its own code.

The reference is transformers itself: a tiny random checkpoint is converted into kcookbook, exported
back, and (1) the exported tensors equal the original checkpoint's, (2) transformers' model loaded
from the export gives kcookbook's logits, also after LoRA training moved the weights, (3)
``AutoTokenizer`` on the exported tokenizer gives the ids kcookbook's preprocessor gives.

Writing names and arrays is numpy work, the same on every backend: those tests run once (the
backends' forward passes are checked against transformers in test_decoder_hf_parity.py). Reading
weights through LoRA goes through the backend, so that test runs on all three.
"""

import json
import os

import keras
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from helpers import real_tweets, tiny_llama_config
from kcookbook.backbones import Backbone
from kcookbook.backbones.llama import LlamaBackbone
from kcookbook.backbones.vit import ViTBackbone
from kcookbook.components import BytePairTokenizer, WordPieceTokenizer
from kcookbook.components.sentencepiece import SentencePieceTokenizer
from kcookbook.presets import PresetError
from kcookbook.tasks import CausalLM, CausalLMPreprocessor

from test_decoder_hf_parity import VOCAB, save_tiny_hf_model
from test_sentencepiece import llama_model, shakespeare_lines  # noqa: F401 (fixtures)

DECODERS = ["llama", "mistral", "gemma", "mixtral", "gpt2"]


def _exported_tensors(folder):
    return safetensors.numpy.load_file(os.path.join(folder, "model.safetensors"))


def _ids_and_mask():
    rng = np.random.default_rng(3)
    token_ids = rng.integers(3, VOCAB, (2, 9)).astype("int32")
    padding_mask = np.ones_like(token_ids)
    padding_mask[1, 5:] = 0
    return token_ids, padding_mask


def _hf_logits(folder, token_ids, padding_mask):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(token_ids, dtype=torch.long),
                     attention_mask=torch.tensor(padding_mask)).logits.numpy()


@pytest.mark.backend_independent
@pytest.mark.parametrize("family", DECODERS)
def test_decoder_export_gives_back_the_checkpoint_and_transformers_runs_it(family, tmp_path):
    source = tmp_path / "source"
    save_tiny_hf_model(family, str(source))
    lm = CausalLM.from_preset(str(source))
    lm.export_to_transformers(str(tmp_path / "export"))

    original = safetensors.numpy.load_file(str(source / "model.safetensors"))
    exported = _exported_tensors(tmp_path / "export")
    assert sorted(exported) == sorted(original)
    for name, value in exported.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)

    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model_type"] == family and config["kcookbook_export"]["notes"] == []
    token_ids, padding_mask = _ids_and_mask()
    expected = _hf_logits(str(tmp_path / "export"), token_ids, padding_mask)
    ours = keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))
    real = padding_mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_tuned_model_exports_with_the_update_folded_in(family, tmp_path):
    save_tiny_hf_model(family, str(tmp_path / "source"))
    lm = CausalLM.from_preset(str(tmp_path / "source"))
    lm.backbone.enable_lora(2)
    rng = np.random.default_rng(0)
    for variable in lm.backbone.trainable_weights:  # as if training had moved the adapters
        variable.assign(rng.normal(0, 0.3, variable.shape).astype("float32"))
    lm.export_to_transformers(str(tmp_path / "export"))

    token_ids, padding_mask = _ids_and_mask()
    ours = keras.ops.convert_to_numpy(lm({"token_ids": token_ids, "padding_mask": padding_mask}))
    before = _hf_logits(str(tmp_path / "source"), token_ids, padding_mask)
    after = _hf_logits(str(tmp_path / "export"), token_ids, padding_mask)
    real = padding_mask.astype(bool)
    assert np.abs(after[real] - before[real]).max() > 1e-2  # LoRA changed the function
    np.testing.assert_allclose(ours[real], after[real], atol=1e-4, rtol=0)
    notes = json.loads((tmp_path / "export" / "config.json").read_text())["kcookbook_export"]["notes"]
    assert notes == ["LoRA updates folded into the kernels"]


@pytest.mark.backend_independent
def test_bert_export_loads_in_transformers_with_our_outputs(tmp_path):
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37, max_position_embeddings=40, type_vocab_size=2)
    torch.manual_seed(0)
    transformers.BertModel(config).eval().save_pretrained(tmp_path / "source")
    backbone = Backbone.from_preset(str(tmp_path / "source"))
    backbone.export_to_transformers(str(tmp_path / "export"))

    original = safetensors.numpy.load_file(str(tmp_path / "source" / "model.safetensors"))
    for name, value in _exported_tensors(tmp_path / "export").items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)
    token_ids, padding_mask = _ids_and_mask()
    model = transformers.AutoModel.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(token_ids, dtype=torch.long),
                         attention_mask=torch.tensor(padding_mask)).last_hidden_state.numpy()
    ours = backbone({"token_ids": token_ids, "padding_mask": padding_mask,
                     "segment_ids": np.zeros_like(token_ids)})
    ours = keras.ops.convert_to_numpy(ours["sequence_output"])
    real = padding_mask.astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.backend_independent
def test_export_to_bfloat16_halves_the_file_and_stays_close(tmp_path):
    save_tiny_hf_model("llama", str(tmp_path / "source"))
    lm = CausalLM.from_preset(str(tmp_path / "source"))
    lm.export_to_transformers(str(tmp_path / "fp32"))
    lm.export_to_transformers(str(tmp_path / "bf16"), dtype="bfloat16")
    size = {d: os.path.getsize(tmp_path / d / "model.safetensors") for d in ("fp32", "bf16")}
    assert size["bf16"] < 0.52 * size["fp32"]
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert exported.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- tokenizers

@pytest.mark.backend_independent
def test_wordpiece_export_gives_our_packed_ids(minilm_path, tmp_path):
    from kcookbook.tasks import TextClassifierPreprocessor

    preprocessor = TextClassifierPreprocessor.from_preset(minilm_path, sequence_length=48)
    preprocessor.tokenizer.export_to_transformers(str(tmp_path / "tok"))
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    texts = real_tweets(300)[100:]
    expected = exported(texts, padding="max_length", truncation=True, max_length=48)["input_ids"]
    ours = keras.ops.convert_to_numpy(preprocessor(texts)["token_ids"])
    np.testing.assert_array_equal(ours, np.asarray(expected))


@pytest.mark.backend_independent
def test_byte_pair_export_gives_our_ids(tmp_path):
    lines = real_tweets(1500)
    tokenizer = BytePairTokenizer.train(lines[:1000], vocabulary_size=600, end_token="<|endoftext|>")
    tokenizer.export_to_transformers(str(tmp_path / "tok"))
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    held_out = lines[1000:]
    assert [exported(t)["input_ids"] for t in held_out] == [list(map(int, ids)) for ids in tokenizer(held_out)]
    assert exported.eos_token == "<|endoftext|>"


@pytest.mark.backend_independent
def test_sentencepiece_export_gives_our_ids_with_the_start_token(llama_model, tmp_path):  # noqa: F811
    tokenizer = SentencePieceTokenizer(llama_model, start_token="<s>", end_token="</s>", add_start_token=True)
    tokenizer.export_to_transformers(str(tmp_path / "tok"))
    exported = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    held_out = real_tweets(200)
    ours = [[tokenizer.start_token_id] + list(map(int, ids)) for ids in tokenizer(held_out)]
    assert [exported(t)["input_ids"] for t in held_out] == ours


@pytest.mark.one_backend  # generation's stop logic is the same on every backend (test_causal_lm.py)
def test_generation_config_makes_transformers_stop_where_we_stop(llama_model, tmp_path):  # noqa: F811
    """The exported ``generation_config.json`` carries the tokenizer's stop tokens (its end token and a
    chat model's end of turn), so transformers' ``generate`` on the export, reading nothing of ours but
    the files, stops on the same token as ``CausalLM.generate``. The random model's greedy reply is
    made to end early by declaring the third token it generates an end of turn."""
    tokenizer = SentencePieceTokenizer(llama_model, start_token="<s>", end_token="</s>", pad_token="<unk>")
    backbone = LlamaBackbone(**tiny_llama_config(tokenizer.vocabulary_size))
    rng = np.random.default_rng(0)
    for variable in backbone.weights:  # larger random weights: confident, varied predictions
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    prompt = np.array([[tokenizer.start_token_id] + list(map(int, tokenizer("To be, or not")))], "int32")
    width = prompt.shape[1] + 12
    free = CausalLM(backbone, None).generate({"token_ids": prompt}, max_length=width, stop_token_ids=None)
    reply = free["token_ids"][0, prompt.shape[1]:]
    end_of_turn = tokenizer.id_to_token(int(reply[2]))
    assert int(tokenizer.end_token_id) not in reply[:3].tolist()

    chat = SentencePieceTokenizer(llama_model, start_token="<s>", end_token="</s>", pad_token="<unk>",
                                  stop_tokens=(end_of_turn,))
    lm = CausalLM(backbone, CausalLMPreprocessor(chat, sequence_length=width))
    ours = lm.generate({"token_ids": prompt}, max_length=width)
    lm.export_to_transformers(str(tmp_path / "export"))

    generation = json.loads((tmp_path / "export" / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [chat.end_token_id, chat.token_to_id(end_of_turn)]
    assert generation["bos_token_id"] == chat.start_token_id
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        theirs = model.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=12, do_sample=False)
    kept = ours["token_ids"][0][ours["padding_mask"][0].astype(bool)]
    assert theirs[0].tolist() == kept.tolist()  # prompt, two tokens, the end of turn: then both stop
    assert len(kept) == prompt.shape[1] + 3


# ----------------------------------------------------------------------------- what export refuses

@pytest.mark.backend_independent
def test_a_family_without_an_exporter_is_named(tmp_path):
    backbone = ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=1, num_heads=2, hidden_dim=8,
                           intermediate_dim=16)
    with pytest.raises(PresetError, match=r"ViTBackbone.*exports .*BertBackbone.*save_to_preset"):
        backbone.export_to_transformers(str(tmp_path / "vit"))
    assert not (tmp_path / "vit").exists()


@pytest.mark.backend_independent
def test_a_setting_transformers_cannot_hold_is_named(tmp_path):
    backbone = LlamaBackbone(vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
                             scale_embeddings=True)
    with pytest.raises(PresetError, match=r"scale_embeddings.*llama"):
        backbone.export_to_transformers(str(tmp_path / "odd"))
    assert not (tmp_path / "odd").exists()


@pytest.mark.backend_independent
def test_export_never_replaces_a_folder_with_other_files(tmp_path):
    backbone = LlamaBackbone(vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16)
    target = tmp_path / "mine"
    backbone.export_to_transformers(str(target))
    backbone.export_to_transformers(str(target))  # an export folder may be replaced by an export
    (target / "notes.txt").write_text("mine")
    with pytest.raises(PresetError, match="notes.txt"):
        backbone.export_to_transformers(str(target))
    assert (target / "notes.txt").read_text() == "mine" and (target / "model.safetensors").exists()
