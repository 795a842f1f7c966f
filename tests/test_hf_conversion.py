"""Hugging Face checkpoints: tiny random ``transformers`` BERTs saved with ``save_pretrained`` load from
their folders and give the outputs transformers gives (torch, eval mode), within 1e-5.

The folders are written by transformers itself, so the file layout, tensor names and numerics are an
independent reference. LayerNorm weights are randomised too (transformers initialises them to 1/0,
which would hide a swapped gamma/beta).
"""

import keras
import numpy as np
import pytest
import torch
import transformers

import kcookbook

TOLERANCE = 1e-5


def _hf_config(vocabulary_size, hidden_act="gelu"):
    return transformers.BertConfig(
        vocab_size=vocabulary_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, type_vocab_size=2, hidden_act=hidden_act,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12)


def _randomise(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            parameter.copy_(noise + (1.0 if name.endswith("LayerNorm.weight") else 0.0))
    return model.eval()


def _save(tmp_path_factory, model, vocabulary, name):
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    transformers.BertTokenizerFast.from_pretrained(str(folder)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def inputs(tiny_vocabulary):
    """Real words through HF's own tokenizer of the tiny vocabulary, padded: (batch 3, length 12)."""
    rng = np.random.default_rng(0)
    token_ids = rng.integers(5, len(tiny_vocabulary), size=(3, 12)).astype("int32")
    token_ids[:, 0] = tiny_vocabulary.index("[CLS]")
    padding_mask = np.ones((3, 12), "int32")
    padding_mask[1, 7:] = 0
    padding_mask[2, 3:] = 0
    token_ids[padding_mask == 0] = 0
    segment_ids = np.zeros((3, 12), "int32")
    segment_ids[0, 6:] = 1
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


def _hf_outputs(model, inputs):
    with torch.no_grad():
        return model(input_ids=torch.tensor(inputs["token_ids"], dtype=torch.long),
                     token_type_ids=torch.tensor(inputs["segment_ids"], dtype=torch.long),
                     attention_mask=torch.tensor(inputs["padding_mask"], dtype=torch.long))


def _ours(folder, inputs):
    backbone = kcookbook.backbones.Backbone.from_preset(str(folder))
    out = backbone(inputs)
    return backbone, {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_bert_model_folder_matches_transformers(tmp_path_factory, tiny_vocabulary, inputs, hidden_act):
    torch.manual_seed(0)
    model = _randomise(transformers.BertModel(_hf_config(len(tiny_vocabulary), hidden_act)), seed=1)
    folder = _save(tmp_path_factory, model, tiny_vocabulary, f"bert_{hidden_act}")
    reference = _hf_outputs(model, inputs)

    backbone, ours = _ours(folder, inputs)

    assert isinstance(backbone, kcookbook.backbones.BertBackbone)
    assert backbone.num_layers == 2 and backbone.hidden_dim == 16
    np.testing.assert_allclose(ours["sequence_output"], reference.last_hidden_state.numpy(),
                               atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(ours["pooled_output"], reference.pooler_output.numpy(),
                               atol=TOLERANCE, rtol=0)
    # The two activations really differ on these weights, so the test can tell them apart.
    assert backbone.activation == {"gelu": "gelu", "gelu_new": "gelu_approximate"}[hidden_act]


def test_masked_lm_folder_with_bert_prefix_and_no_pooler(tmp_path_factory, tiny_vocabulary, inputs):
    torch.manual_seed(0)
    model = _randomise(transformers.BertForMaskedLM(_hf_config(len(tiny_vocabulary))), seed=2)
    folder = _save(tmp_path_factory, model, tiny_vocabulary, "bert_mlm")
    reference = _hf_outputs(model.bert, inputs)

    _, ours = _ours(folder, inputs)

    np.testing.assert_allclose(ours["sequence_output"], reference.last_hidden_state.numpy(),
                               atol=TOLERANCE, rtol=0)


def test_sequence_classification_folder(tmp_path_factory, tiny_vocabulary, inputs):
    torch.manual_seed(0)
    config = _hf_config(len(tiny_vocabulary))
    config.num_labels = 3
    model = _randomise(transformers.BertForSequenceClassification(config), seed=3)
    folder = _save(tmp_path_factory, model, tiny_vocabulary, "bert_cls")
    reference = _hf_outputs(model.bert, inputs)

    _, ours = _ours(folder, inputs)

    np.testing.assert_allclose(ours["sequence_output"], reference.last_hidden_state.numpy(),
                               atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(ours["pooled_output"], reference.pooler_output.numpy(),
                               atol=TOLERANCE, rtol=0)


def test_tokenizer_from_hf_folder_matches_hf(tmp_path_factory, tiny_vocabulary, tweets):
    folder = tmp_path_factory.mktemp("vocab_only")
    (folder / "vocab.txt").write_text("\n".join(tiny_vocabulary) + "\n", encoding="utf-8")
    # transformers 5 ignores vocab_file= in the constructor; from_pretrained reads vocab.txt.
    reference = transformers.BertTokenizerFast.from_pretrained(str(folder))
    reference.save_pretrained(folder)
    (folder / "config.json").write_text(_hf_config(len(tiny_vocabulary)).to_json_string())

    tokenizer = kcookbook.components.Tokenizer.from_preset(str(folder))

    texts = tweets[:300]
    expected = reference(texts, add_special_tokens=False)["input_ids"]
    assert tokenizer(texts) == expected
