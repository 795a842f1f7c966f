"""OpenCLIP state dicts (``open_clip_config.json`` + ``open_clip_model.safetensors``) against open_clip.

Independent reference: tiny RANDOMLY INITIALISED OpenCLIP models (no pretrained weights) built and run
by open-clip-torch 3.3.0 itself in a venv of its own (tests/fixtures/make_open_clip_fixtures.py):
their state dicts, configs, inputs (token ids from open_clip's own tokenizer) and outputs
(``encode_image``, ``encode_text``, ``get_logits``, the eval image transform).
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from kcookbook.backbones import Backbone, CLIPBackbone
from kcookbook.components.preset_entry import load_preset
from kcookbook.presets.errors import PresetError
from kcookbook.tasks import ImageTextEmbedder
from kcookbook.tasks.preprocessor import TextClassifierPreprocessor

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
MODELS = ("quickgelu", "gelu")
TOLERANCE = 1e-4
MERGES = 40  # the fixtures' vocabulary: the first 40 merges of OpenAI's BPE file


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _reference(name):
    return dict(np.load(os.path.join(FIXTURES, f"open_clip_{name}_outputs.npz")))


def _copy(name, folder):
    shutil.copytree(os.path.join(FIXTURES, f"open_clip_{name}"), folder)
    return str(folder)


def _config(folder):
    with open(os.path.join(folder, "open_clip_config.json")) as f:
        return json.load(f)


def _write_config(folder, config):
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump(config, f)


def _check_outputs(backbone, reference):
    """One call (eager jax compiles every op per shape): the backbone's outputs are the projected
    features ``get_vision_embeddings`` / ``get_text_embeddings`` return, and the logits."""
    outputs = backbone({"images": reference["images"], "token_ids": reference["token_ids"]})
    for ours, theirs in (("vision_embeddings", "image_features"), ("text_embeddings", "text_features"),
                         ("logits_per_image", "logits_per_image")):
        np.testing.assert_allclose(_numpy(outputs[ours]), reference[theirs], atol=TOLERANCE, err_msg=ours)


@pytest.mark.parametrize("name", MODELS)
def test_features_and_logits_match_open_clip(name):
    backbone = Backbone.from_preset(os.path.join(FIXTURES, f"open_clip_{name}"))
    assert isinstance(backbone, CLIPBackbone)
    assert backbone.vision_encoder.activation == ("quick_gelu" if name == "quickgelu" else "gelu")
    _check_outputs(backbone, _reference(name))


@pytest.mark.parametrize("name", MODELS)
def test_image_converter_matches_open_clip_transform(name):
    reference = _reference(name)
    converter = load_preset(os.path.join(FIXTURES, f"open_clip_{name}")).load_image_converter()
    np.testing.assert_allclose(_numpy(converter(reference["photo"][None]))[0], reference["photo_preprocessed"],
                               atol=1e-5)


def test_image_text_embedder_with_tokenizer_files_matches_open_clip(tmp_path):
    """A folder with vocab.json + merges.txt (as LAION's repositories carry) embeds raw strings as
    open_clip does: the same ids as its SimpleTokenizer up to the end-of-text token (truncation
    included), the same unit text vectors."""
    from test_clip import _openai_merges, _write_tokenizer_files

    reference = _reference("quickgelu")
    folder = _copy("quickgelu", tmp_path / "with_tokenizer")
    _write_tokenizer_files(tmp_path / "with_tokenizer", _openai_merges(MERGES))
    loader = load_preset(folder)
    texts = [str(t) for t in reference["texts"]]
    ids = np.asarray(TextClassifierPreprocessor(loader.load_tokenizer(), sequence_length=16)(texts)["token_ids"])
    expected = reference["token_ids"]
    for row, expected_row in zip(ids, expected):
        end = int(np.argmax(expected_row)) + 1  # open_clip pads with 0 after <end_of_text>
        np.testing.assert_array_equal(row[:end], expected_row[:end])
    embedder = ImageTextEmbedder.from_preset(folder)
    features = reference["text_features"]
    np.testing.assert_allclose(embedder.embed_texts(texts), features / np.linalg.norm(features, axis=-1,
                                                                                       keepdims=True), atol=1e-5)


@pytest.mark.backend_independent
def test_openai_vocabulary_without_tokenizer_files_uses_open_clip_bpe(tmp_path):
    """An OpenCLIP folder with OpenAI's vocabulary and no tokenizer files (OpenCLIP's timm/ repositories)
    gets the tokenizer of the BPE file open-clip-torch ships; another vocabulary gets none."""
    from test_clip import _bpe_file

    from kcookbook.formats.converters.clip import tokenizer_from_bpe_file

    folder = _copy("quickgelu", tmp_path / "openai_vocabulary")
    assert load_preset(folder).load_tokenizer() is None  # 554 tokens: not OpenAI's vocabulary
    config = _config(folder)
    config["model_cfg"]["text_cfg"]["vocab_size"] = 49408
    _write_config(folder, config)
    tokenizer = load_preset(folder).load_tokenizer()
    texts = ["A photo of a café 🐈", "two dogs, running!"]
    expected = tokenizer_from_bpe_file(_bpe_file())(texts)
    assert [list(ids) for ids in tokenizer(texts)] == [list(ids) for ids in expected]
    assert tokenizer.vocabulary_size == 49408


@pytest.mark.one_backend
def test_torch_state_dicts_load(tmp_path):
    """``open_clip_pytorch_model.bin`` as a bare state dict and as a training checkpoint
    (``{"epoch", "state_dict"}`` with ``module.`` names, as open_clip's trainer writes it)."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    state = load_file(os.path.join(FIXTURES, "open_clip_gelu", "open_clip_model.safetensors"))
    half = {k: v.to(torch.bfloat16) for k, v in state.items()}
    for kind, content in (("bare", state), ("bfloat16", half),
                          ("training", {"epoch": 3, "name": "tiny",
                                        "state_dict": {"module." + k: v for k, v in state.items()}})):
        folder = _copy("gelu", tmp_path / kind)
        os.remove(os.path.join(folder, "open_clip_model.safetensors"))
        torch.save(content, os.path.join(folder, "open_clip_pytorch_model.bin"))
        if kind == "bfloat16":  # weights rounded to 8 bits of mantissa: 0.011 off on features up to 1.75 (measured)
            backbone = Backbone.from_preset(folder)
            np.testing.assert_allclose(_numpy(backbone.get_text_embeddings(_reference("gelu")["token_ids"])),
                                       _reference("gelu")["text_features"], atol=0.05)
            continue
        _check_outputs(Backbone.from_preset(folder), _reference("gelu"))


@pytest.mark.backend_independent
def test_pickled_model_refused(tmp_path):
    torch = pytest.importorskip("torch")
    folder = _copy("quickgelu", tmp_path / "pickled")
    os.remove(os.path.join(folder, "open_clip_model.safetensors"))
    torch.save(torch.nn.Linear(2, 2), os.path.join(folder, "open_clip_pytorch_model.bin"))  # a pickled module
    with pytest.raises(PresetError, match="never unpickled.*save_file\\(model.state_dict\\(\\)"):
        Backbone.from_preset(folder)
    os.remove(os.path.join(folder, "open_clip_pytorch_model.bin"))
    with pytest.raises(PresetError, match="no weights: expected open_clip_model.safetensors"):
        Backbone.from_preset(folder)


@pytest.mark.backend_independent
@pytest.mark.parametrize("edit, message", [
    (lambda c: c["model_cfg"].pop("embed_dim"), "not an OpenCLIP model config: it lacks \\['embed_dim'\\]"),
    (lambda c: c["model_cfg"].update(text_cfg=12), "not an OpenCLIP model config: it lacks \\['text_cfg'\\]"),
    (lambda c: c["model_cfg"]["vision_cfg"].update(layers=[3, 4, 6, 3]), "ModifiedResNet"),
    (lambda c: c["model_cfg"]["vision_cfg"].update(timm_model_name="convnext_base"),
     "vision_cfg.timm_model_name='convnext_base'"),
    (lambda c: c["model_cfg"]["text_cfg"].update(hf_model_name="xlm-roberta-base"), "text_cfg.hf_model_name"),
    (lambda c: c["model_cfg"].update(init_logit_bias=-10), "sets init_logit_bias=-10"),
    (lambda c: c["model_cfg"]["text_cfg"].update(pool_type="last"), "text_cfg.pool_type='last'"),
    (lambda c: c["model_cfg"]["text_cfg"].update(qk_norm=True), "text_cfg.qk_norm=True"),
    (lambda c: c["model_cfg"]["vision_cfg"].update(head_width=6), "width=16 is not a multiple of head_width=6"),
    (lambda c: c["model_cfg"]["text_cfg"].update(layers=0), "text_cfg.layers must be a positive integer"),
])
def test_bad_config_named(tmp_path, edit, message):
    folder = _copy("quickgelu", tmp_path / "bad")
    config = _config(folder)
    edit(config)
    _write_config(folder, config)
    with pytest.raises(PresetError, match=message):
        Backbone.from_preset(folder)


@pytest.mark.backend_independent
def test_default_values_written_out_are_accepted(tmp_path):
    folder = _copy("quickgelu", tmp_path / "explicit")
    config = _config(folder)
    config["model_cfg"]["vision_cfg"].update(block_type="default", pool_type="tok", attentional_pool=False,
                                             ls_init_value=None, act_kwargs={}, patch_dropout=0.5,
                                             output_tokens=True)
    config["model_cfg"]["text_cfg"].update(proj_type="linear", proj_bias=False, pool_type="argmax", qk_norm=False)
    _write_config(folder, config)
    assert isinstance(Backbone.from_preset(folder, load_weights=False), CLIPBackbone)


def test_config_and_weights_that_disagree_are_named(tmp_path):
    folder = _copy("quickgelu", tmp_path / "fewer")
    config = _config(folder)
    config["model_cfg"]["text_cfg"]["layers"] = 1
    _write_config(folder, config)
    with pytest.raises(PresetError, match="does not use: \\['transformer.resblocks.1"):
        Backbone.from_preset(folder)
