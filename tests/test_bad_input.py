"""Bad input gets a clear error that names the problem (and the file, layer or handle) and the fix."""

import json
import os
import shutil
import time

import keras
import numpy as np
import pytest

import kcookbook
from kcookbook.backbones import Backbone, BertBackbone
from kcookbook.components import WordPieceTokenizer
from kcookbook.presets import PresetError
from kcookbook.tasks import TextClassifier, TextClassifierPreprocessor, TextEmbedder


@pytest.fixture(scope="module")
def backbone(tiny_bert_config):
    keras.utils.set_random_seed(5)
    return BertBackbone(**tiny_bert_config)


@pytest.fixture(scope="module")
def tokenizer(tiny_vocabulary):
    return WordPieceTokenizer(tiny_vocabulary)


@pytest.fixture(scope="module")
def saved_preset(tmp_path_factory, backbone, tokenizer):
    directory = tmp_path_factory.mktemp("good") / "bert"
    kcookbook.presets.save_preset(str(directory), backbone, tokenizer=tokenizer)
    return directory


@pytest.fixture
def preset_copy(tmp_path, saved_preset):
    directory = tmp_path / "copy"
    shutil.copytree(saved_preset, directory)
    return directory


def _tiny_hf_folder(folder, vocabulary_size, **config_changes):
    import transformers
    config = transformers.BertConfig(vocab_size=vocabulary_size, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(folder)
    hf_config = json.loads((folder / "config.json").read_text())
    hf_config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(hf_config))
    return folder


# ----------------------------------------------------------------------------- handles


@pytest.mark.parametrize("typo,suggestion", [("all_minilm_l6", "all_minilm_l6_v2"),
                                             ("bert_tiny_en_uncase", "bert_tiny_en_uncased"),
                                             ("minilm_l6_v2", "all_minilm_l6_v2")])
def test_unknown_preset_name_lists_the_closest_names(typo, suggestion):
    with pytest.raises(PresetError, match="Unknown preset") as error:
        Backbone.from_preset(typo)
    message = str(error.value)
    assert repr(typo) in message and suggestion in message and "list_presets()" in message


def test_missing_directory_says_the_path_does_not_exist(tmp_path):
    with pytest.raises(PresetError, match="does not exist"):
        Backbone.from_preset(str(tmp_path / "nowhere" / "bert"))


def test_kaggle_handle_offline_fails_fast_and_says_what_it_needs(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    start = time.monotonic()
    with pytest.raises(PresetError) as error:
        Backbone.from_preset("kaggle://keras/bert/keras/bert_tiny_en_uncased/3")
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"took {elapsed:.1f} s"
    message = str(error.value)
    assert "kaggle://keras/bert/keras/bert_tiny_en_uncased/3" in message
    assert "network" in message and "cache" in message and str(tmp_path / "kagglehub") in message


def test_builtin_kaggle_name_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))
    start = time.monotonic()
    with pytest.raises(PresetError, match="network"):
        TextClassifier.from_preset("bert_tiny_en_uncased", num_classes=2)
    assert time.monotonic() - start < 10


def test_malformed_kaggle_handle_shows_the_expected_form():
    with pytest.raises(PresetError, match="kaggle://owner/model/framework/variation"):
        Backbone.from_preset("kaggle://keras/bert")


def test_hf_handle_offline_fails_fast_and_says_what_it_needs(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub reads these at import time, so set both the environment and its constants.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    start = time.monotonic()
    with pytest.raises(PresetError) as error:
        Backbone.from_preset("hf://google-bert/bert-base-uncased")
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert "hf://google-bert/bert-base-uncased" in message
    assert "network" in message and "cache" in message


def test_malformed_hf_handle_shows_the_expected_form():
    with pytest.raises(PresetError, match="hf://org/name"):
        Backbone.from_preset("hf://just-a-name")


# ----------------------------------------------------------------------------- broken files


def test_empty_weights_file_is_named(preset_copy):
    weights = preset_copy / "model.weights.h5"
    weights.write_bytes(b"")
    with pytest.raises(PresetError, match="empty") as error:
        Backbone.from_preset(str(preset_copy))
    assert str(weights) in str(error.value)


def test_truncated_weights_file_is_named(preset_copy):
    weights = preset_copy / "model.weights.h5"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(PresetError) as error:
        Backbone.from_preset(str(preset_copy))
    assert str(weights) in str(error.value)
    assert "re-download" in str(error.value) or "re-save" in str(error.value)


def test_corrupt_weights_file_is_named(preset_copy):
    weights = preset_copy / "model.weights.h5"
    weights.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(PresetError, match="corrupt") as error:
        Backbone.from_preset(str(preset_copy))
    assert str(weights) in str(error.value)


def test_missing_weights_file_is_named_and_load_weights_false_still_works(preset_copy):
    os.remove(preset_copy / "model.weights.h5")
    with pytest.raises(PresetError, match="Missing weights file") as error:
        Backbone.from_preset(str(preset_copy))
    assert "model.weights.h5" in str(error.value) and "load_weights=False" in str(error.value)
    assert isinstance(Backbone.from_preset(str(preset_copy), load_weights=False), BertBackbone)


def test_corrupt_config_json_is_named(preset_copy):
    (preset_copy / "config.json").write_text("{not json")
    with pytest.raises(PresetError, match="not valid JSON") as error:
        Backbone.from_preset(str(preset_copy))
    assert "config.json" in str(error.value)


@pytest.mark.parametrize("registered_name", ["kcookbook>NoSuchBackbone", "keras_hub>NoSuchBackbone"])
def test_config_naming_an_unknown_class(preset_copy, registered_name):
    config = json.loads((preset_copy / "config.json").read_text())
    config["class_name"] = "NoSuchBackbone"
    config["registered_name"] = registered_name
    (preset_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(PresetError) as error:
        Backbone.from_preset(str(preset_copy))
    message = str(error.value)
    assert "NoSuchBackbone" in message and "config.json" in message


def test_shape_mismatch_names_the_layer_in_a_kcookbook_preset(preset_copy):
    config = json.loads((preset_copy / "config.json").read_text())
    config["config"]["intermediate_dim"] = 48
    (preset_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(PresetError) as error:
        Backbone.from_preset(str(preset_copy))
    message = str(error.value)
    assert "model.weights.h5" in message
    assert "ffn_intermediate" in message or "transformer_layer_0" in message, message


def test_shape_mismatch_names_the_layer_in_a_hugging_face_folder(tmp_path, tiny_vocabulary):
    _tiny_hf_folder(tmp_path, len(tiny_vocabulary), intermediate_size=48)
    with pytest.raises(PresetError, match="Shape mismatch in layer 'transformer_layer_0/ffn_intermediate'"):
        Backbone.from_preset(str(tmp_path))


def test_corrupt_safetensors_is_named(tmp_path, tiny_vocabulary):
    _tiny_hf_folder(tmp_path, len(tiny_vocabulary))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PresetError, match="corrupt or truncated") as error:
        Backbone.from_preset(str(tmp_path))
    assert str(weights) in str(error.value)


def test_tokenizer_of_a_preset_without_one_says_so(tmp_path, backbone):
    backbone.save_to_preset(str(tmp_path / "bare"))
    with pytest.raises(PresetError, match="has no tokenizer"):
        kcookbook.components.Tokenizer.from_preset(str(tmp_path / "bare"))


def test_hugging_face_folder_of_an_unknown_model_type_lists_the_known_ones(tmp_path, tiny_vocabulary):
    _tiny_hf_folder(tmp_path, len(tiny_vocabulary), model_type="nosuchmodel")
    with pytest.raises(PresetError, match="'nosuchmodel'") as error:
        Backbone.from_preset(str(tmp_path))
    assert "bert" in str(error.value) and "config.json" in str(error.value)


def test_hugging_face_bert_with_an_unsupported_activation(tmp_path, tiny_vocabulary):
    _tiny_hf_folder(tmp_path, len(tiny_vocabulary), hidden_act="relu")
    with pytest.raises(PresetError, match="hidden_act='relu'"):
        Backbone.from_preset(str(tmp_path))


# ----------------------------------------------------------------------------- atomic writes


def _leftovers(parent):
    return [name for name in os.listdir(parent) if "partial" in name or name.endswith(".old")]


def test_failed_save_leaves_no_directory(tmp_path, backbone, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(backbone, "save_weights", fail)
    with pytest.raises(OSError, match="simulated"):
        backbone.save_to_preset(str(tmp_path / "bert"))
    assert os.listdir(tmp_path) == []


def test_failed_save_midway_keeps_the_existing_preset(tmp_path, backbone, tokenizer, monkeypatch):
    directory = tmp_path / "bert"
    kcookbook.presets.save_preset(str(directory), backbone, tokenizer=tokenizer)
    before = {name: (directory / name).read_bytes() for name in ("config.json", "model.weights.h5")}

    def fail_after_writing_some(path):  # weights already written to the staging directory
        (open(os.path.join(path, "vocabulary.txt"), "w")).write("[PAD]\n")
        raise RuntimeError("interrupted (simulated)")

    monkeypatch.setattr(tokenizer, "save_assets", fail_after_writing_some)
    with pytest.raises(RuntimeError, match="simulated"):
        kcookbook.presets.save_preset(str(directory), backbone, tokenizer=tokenizer)

    assert os.listdir(tmp_path) == ["bert"] and not _leftovers(tmp_path)
    assert {name: (directory / name).read_bytes() for name in before} == before
    monkeypatch.undo()
    assert kcookbook.components.Tokenizer.from_preset(str(directory)).get_vocabulary() == \
        tokenizer.get_vocabulary()


def test_save_refuses_a_directory_of_other_files(tmp_path, backbone):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(PresetError, match="holds other files"):
        backbone.save_to_preset(str(tmp_path))
    assert os.listdir(tmp_path) == ["notes.txt"]


# ----------------------------------------------------------------------------- task arguments and inputs


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, "3", True, None])
def test_num_classes_must_be_a_positive_integer(backbone, num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive integer") as error:
        TextClassifier(backbone, num_classes=num_classes)
    assert repr(num_classes) in str(error.value)


def test_num_classes_checked_through_from_preset(saved_preset):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        TextClassifier.from_preset(str(saved_preset), num_classes=0)


@pytest.mark.parametrize("bad", [[1, 2, 3], ["fine", 2.0], [None]])
def test_non_string_input_to_a_text_task(backbone, tokenizer, bad):
    task = TextClassifier(backbone, num_classes=2,
                          preprocessor=TextClassifierPreprocessor(tokenizer, sequence_length=8))
    with pytest.raises(TypeError, match="Text tasks take strings"):
        task.predict(bad, verbose=0)


def test_non_string_input_to_an_embedder(backbone, tokenizer):
    embedder = TextEmbedder(backbone, preprocessor=TextClassifierPreprocessor(tokenizer, sequence_length=8))
    with pytest.raises(TypeError, match="take strings"):
        embedder.predict(12345, verbose=0)


def test_raw_text_without_a_preprocessor_says_what_to_feed(backbone):
    task = TextClassifier(backbone, num_classes=2)
    with pytest.raises(ValueError, match="has no preprocessor"):
        task.predict(["some text"], verbose=0)
