"""keras_hub compatibility: a preset written by keras_hub 0.32's own ``save_to_preset`` (the format of
every KerasHub preset on Kaggle) loads into kcookbook with keras_hub's outputs, within 1e-5.

keras_hub is the reference: it builds the model, writes the files and computes the expected outputs.
"""

import os

import keras
import numpy as np
import pytest

import kcookbook

import keras_hub  # the test-only reference, installed --no-deps by make setup

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def keras_hub_preset(tmp_path_factory, tiny_vocabulary):
    keras.utils.set_random_seed(0)
    reference = keras_hub.models.BertBackbone(
        vocabulary_size=len(tiny_vocabulary), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=32, dropout=0.0)
    rng = np.random.default_rng(0)
    for variable in reference.weights:  # layer norms too: their 1/0 initial values would hide a swap
        noise = rng.normal(0.0, 0.2, variable.shape).astype("float32")
        variable.assign(noise + (1.0 if variable.path.endswith("gamma") else 0.0))
    directory = str(tmp_path_factory.mktemp("keras_hub") / "bert_tiny")
    reference.save_to_preset(directory)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=tiny_vocabulary, lowercase=True)
    tokenizer.save_to_preset(directory)
    keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=20).save_to_preset(directory)
    return directory, reference, tokenizer


@pytest.fixture(scope="module")
def inputs(tiny_vocabulary):
    rng = np.random.default_rng(1)
    token_ids = rng.integers(5, len(tiny_vocabulary), size=(3, 10)).astype("int32")
    padding_mask = np.array([[1] * 10, [1] * 6 + [0] * 4, [1] * 2 + [0] * 8], "int32")
    segment_ids = np.array([[0] * 5 + [1] * 5, [0] * 10, [0] * 10], "int32")
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


def test_preset_written_by_keras_hub_has_the_kerashub_layout(keras_hub_preset):
    directory, _, _ = keras_hub_preset
    entries = set(os.listdir(directory))
    assert {"config.json", "model.weights.h5", "tokenizer.json", "preprocessor.json",
            "metadata.json"} <= entries
    assert os.path.exists(os.path.join(directory, "assets", "tokenizer", "vocabulary.txt"))


def test_keras_hub_backbone_preset_loads_with_the_same_outputs(keras_hub_preset, inputs):
    directory, reference, _ = keras_hub_preset
    expected = {k: keras.ops.convert_to_numpy(v) for k, v in reference(inputs).items()}

    backbone = kcookbook.backbones.Backbone.from_preset(directory)
    ours = {k: keras.ops.convert_to_numpy(v) for k, v in backbone(inputs).items()}

    assert isinstance(backbone, kcookbook.backbones.BertBackbone)
    assert set(backbone.input) == {"token_ids", "segment_ids", "padding_mask"}
    for name in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(ours[name], expected[name], atol=TOLERANCE, rtol=0, err_msg=name)


def test_keras_hub_backbone_preset_without_weights_builds_the_architecture(keras_hub_preset):
    directory, reference, _ = keras_hub_preset
    backbone = kcookbook.backbones.Backbone.from_preset(directory, load_weights=False)
    assert backbone.count_params() == reference.count_params()


def test_keras_hub_tokenizer_in_the_preset_loads(keras_hub_preset):
    directory, _, reference = keras_hub_preset
    tokenizer = kcookbook.components.Tokenizer.from_preset(directory)
    texts = ["the good film", "I love this car", "bad day", "a b c"]
    for text in texts:  # plain ASCII: where keras_hub's normaliser and BERT's agree
        assert tokenizer(text) == keras.ops.convert_to_numpy(reference(text)).tolist()
    assert tokenizer.get_vocabulary() == list(reference.get_vocabulary())


def test_text_classifier_on_a_keras_hub_preset_takes_its_sequence_length(keras_hub_preset, inputs):
    directory, reference, _ = keras_hub_preset
    classifier = kcookbook.tasks.TextClassifier.from_preset(directory, num_classes=2)
    assert classifier.preprocessor.sequence_length == 20  # from keras_hub's preprocessor.json
    assert classifier.predict(["the good film", "bad"], verbose=0).shape == (2, 2)
    expected = keras.ops.convert_to_numpy(reference(inputs)["pooled_output"])
    ours = keras.ops.convert_to_numpy(classifier.backbone(inputs)["pooled_output"])
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=0)
