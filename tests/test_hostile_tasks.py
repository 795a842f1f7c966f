"""Hostile inputs to tasks and backbones (issue 24): every bad value is refused where it enters, with
an error that names it, and a refused call leaves the model as it was (jax detached the variables).

Run on every backend; jax is where a failed call used to poison the model.
"""

import io
import math
import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kcookbook
from helpers import real_tweets
from kcookbook.backbones import (
    BertBackbone,
    EfficientNetBackbone,
    GPT2Backbone,
    LlamaBackbone,
    ResNetBackbone,
    ViTBackbone,
)
from kcookbook.backbones.backbone import check_backbone_config
from kcookbook.backbones.efficientnet import EfficientNetLiteBackbone
from kcookbook.components import (
    BytePairTokenizer,
    HuggingFaceTokenizer,
    ImageConverter,
    SentencePieceTokenizer,
    WordPieceTokenizer,
)
from kcookbook.tasks import (
    CausalLM,
    ImageClassifier,
    MaskedLM,
    TextClassifier,
    TextClassifierPreprocessor,
    TextEmbedder,
)
from kcookbook.tasks.image_classifier import ImageClassifierPreprocessor

TEXTS = ["good film", "bad day", "the car", "i love this movie"]


@pytest.fixture(scope="module")
def tokenizer(tiny_vocabulary):
    return WordPieceTokenizer(tiny_vocabulary)


@pytest.fixture(scope="module")
def backbone(tiny_bert_config):
    keras.utils.set_random_seed(11)
    return BertBackbone(**{**tiny_bert_config, "num_layers": 1})


def _classifier(backbone, tokenizer, **kwargs):
    keras.utils.set_random_seed(3)
    return TextClassifier(backbone, num_classes=3, dropout=0.0,
                          preprocessor=TextClassifierPreprocessor(tokenizer, sequence_length=8), **kwargs)


@pytest.fixture
def classifier(backbone, tokenizer):
    return _classifier(backbone, tokenizer)


def _weights(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]


def _assert_same_weights(before, model):
    after = _weights(model)
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _assert_still_usable(model, texts, labels, before, tmp_path):
    """After a refused call: the weights are the ones from before it; predict, fit and
    save_to_preset work."""
    _assert_same_weights(before, model)
    predictions = model.predict(texts, verbose=0)
    assert predictions.shape == (len(texts), 3) and np.isfinite(predictions).all()
    model.fit(texts, labels, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(model))), "fit did not train"
    model.save_to_preset(str(tmp_path / "after_bad_call"))
    assert os.path.exists(tmp_path / "after_bad_call" / "model.weights.h5")


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize("bad, shown", [(7, "holds 7"), (-1, "holds -1"), (3, "holds 3")])
def test_class_ids_outside_num_classes_are_named(classifier, bad, shown):
    labels = [0, 1, bad, 2]
    for call in (classifier.fit, classifier.evaluate):
        with pytest.raises(ValueError, match=shown) as error:
            call(TEXTS, labels, verbose=0)
        assert "num_classes=3" in str(error.value) and "index (2,)" in str(error.value)


def test_fractional_labels_are_named(classifier):
    with pytest.raises(ValueError, match="holds 0.5 .* not an integer id") as error:
        classifier.fit(TEXTS, np.array([0, 0.5, 1, 2]), verbose=0)
    assert "num_classes=3" in str(error.value)
    classifier.fit(TEXTS, np.array([0.0, 1.0, 2.0, 1.0]), epochs=1, verbose=0)  # whole floats are ids


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_labels_are_named(classifier, bad):
    with pytest.raises(ValueError, match="finite") as error:
        classifier.fit(TEXTS, np.array([0.0, bad, 1.0, 2.0]), verbose=0)
    assert str(bad) in str(error.value) and "y (the labels)" in str(error.value)


def test_string_labels_say_to_map_them_to_ids(classifier):
    with pytest.raises(ValueError, match="must be numbers.*ids"):
        classifier.fit(TEXTS, ["pos", "neg", "pos", "neg"], verbose=0)


def test_one_hot_labels_for_a_sparse_loss_say_what_to_do(classifier):
    with pytest.raises(ValueError, match="one-hot") as error:
        classifier.fit(TEXTS, np.eye(3)[[0, 1, 2, 0]], verbose=0)
    assert "argmax" in str(error.value) and "CategoricalCrossentropy" in str(error.value)


def test_integer_labels_for_a_categorical_loss_say_to_one_hot_them(classifier):
    classifier.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="to_categorical") as error:
        classifier.fit(TEXTS, [0, 1, 2, 0], verbose=0)
    assert "num_classes=3" in str(error.value)
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        classifier.fit(TEXTS, np.eye(3)[[0, 1, 2, 0]] * 2, verbose=0)
    classifier.fit(TEXTS, np.eye(3)[[0, 1, 2, 0]], epochs=1, verbose=0)  # one-hot rows are right here


def test_labels_of_an_image_classifier_are_checked():
    backbone = ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                           intermediate_dim=16)
    task = ImageClassifier(backbone, num_classes=4, preprocessor=ImageClassifierPreprocessor(
        ImageConverter((8, 8))))
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype="uint8")
    with pytest.raises(ValueError, match="holds 4 .*num_classes=4"):
        task.fit(images, [0, 4, 1], verbose=0)
    task.fit(images, [0, 3, 1], epochs=1, verbose=0)


def test_labels_in_a_dataset_are_checked_in_the_pipeline(classifier, tmp_path):
    good = tf.data.Dataset.from_tensor_slices((TEXTS, [0, 1, 2, 1])).batch(2)
    bad = tf.data.Dataset.from_tensor_slices((TEXTS, [0, 1, 9, 1])).batch(2)
    classifier.fit(good, epochs=1, verbose=0)
    before = _weights(classifier)
    with pytest.raises(ValueError, match=r"outside \[0, 3\) .*\(num_classes=3\); the batch holds \[9 1\]"):
        classifier.evaluate(bad, verbose=0)
    _assert_same_weights(before, classifier)
    with pytest.raises(ValueError, match=r"outside \[0, 3\) .*\(num_classes=3\); the batch holds \[9 1\]"):
        classifier.fit(bad, epochs=1, verbose=0)
    classifier.fit(good, epochs=1, verbose=0)
    assert np.isfinite(classifier.predict(TEXTS, verbose=0)).all()


def test_one_hot_labels_in_a_dataset_are_refused_before_training(classifier):
    one_hot = tf.data.Dataset.from_tensor_slices((TEXTS, np.eye(3, dtype="float32")[[0, 1, 2, 1]])).batch(2)
    with pytest.raises(ValueError, match="one-hot.*tf.argmax"):
        classifier.fit(one_hot, epochs=1, verbose=0)


def test_fit_without_labels_and_bad_sample_weights(classifier):
    with pytest.raises(ValueError, match="needs labels here: pass y"):
        classifier.fit(TEXTS, verbose=0)
    with pytest.raises(ValueError, match="sample_weight holds nan"):
        classifier.fit(TEXTS, [0, 1, 2, 1], sample_weight=[1.0, math.nan, 1.0, 1.0], verbose=0)
    with pytest.raises(ValueError, match="sample_weight holds -1"):
        classifier.fit(TEXTS, [0, 1, 2, 1], sample_weight=[1.0, -1.0, 1.0, 1.0], verbose=0)


# ----------------------------------------------------------------------------- a refused call changes nothing


def test_empty_predict_is_named_and_the_model_stays_usable(classifier, tmp_path):
    classifier.fit(TEXTS, [0, 1, 2, 1], epochs=1, verbose=0)
    before = _weights(classifier)
    for empty in ([], np.array([], dtype=str)):
        with pytest.raises(ValueError, match="got no examples"):
            classifier.predict(empty, verbose=0)
    _assert_still_usable(classifier, TEXTS, [0, 1, 2, 1], before, tmp_path)


def test_one_hot_fit_after_integer_fit_keeps_the_trained_weights(classifier, tmp_path):
    classifier.fit(TEXTS, [0, 1, 2, 1], epochs=1, verbose=0)
    before = _weights(classifier)
    with pytest.raises(ValueError, match="one-hot"):
        classifier.fit(TEXTS, np.eye(3)[[0, 1, 2, 1]], epochs=1, verbose=0)
    _assert_still_usable(classifier, TEXTS, [0, 1, 2, 1], before, tmp_path)


def test_a_failure_inside_the_trainer_gives_the_variables_back(classifier, tmp_path):
    """A failure no input check can see (here a loss that raises while it is traced) happens after
    Keras's jax trainer has detached every variable's value: the task puts them back."""
    classifier.fit(TEXTS, [0, 1, 2, 1], epochs=1, verbose=0)
    before = _weights(classifier)

    def broken_loss(y_true, y_pred):
        raise RuntimeError("loss exploded (simulated)")

    classifier.compile(loss=broken_loss)
    for call in (classifier.fit, classifier.evaluate):
        with pytest.raises(RuntimeError, match="simulated"):
            call(TEXTS, [0, 1, 2, 1], verbose=0)
        assert all(getattr(v, "_value", 0) is not None for v in classifier.variables)
    classifier.compile()
    _assert_still_usable(classifier, TEXTS, [0, 1, 2, 1], before, tmp_path)


def test_a_failing_predict_callback_leaves_the_weights(classifier, tmp_path):
    before = _weights(classifier)

    class Stop(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            raise RuntimeError("stopped (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        classifier.predict(TEXTS, verbose=0, callbacks=[Stop()])
    _assert_still_usable(classifier, TEXTS, [0, 1, 2, 1], before, tmp_path)


# ----------------------------------------------------------------------------- backbone configs

BERT = dict(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
            max_sequence_length=16)
GPT2 = dict(BERT)
LLAMA = dict(vocabulary_size=50, num_layers=1, num_heads=4, num_key_value_heads=2, hidden_dim=16,
             intermediate_dim=32, max_sequence_length=64)
VIT = dict(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16)
RESNET = dict(stackwise_num_filters=[8, 16], stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2],
              block_type="basic", stem_filters=8)
EFFICIENTNET = dict(stackwise_num_blocks=[1, 1], stackwise_kernel_sizes=[3, 3], stackwise_strides=[1, 2],
                    stackwise_expansion_ratios=[1, 6], stackwise_output_filters=[8, 16],
                    stackwise_squeeze_excite_ratios=[0.25, 0.25], stem_filters=8, head_filters=16)
BACKBONES = {"bert": (BertBackbone, BERT), "gpt2": (GPT2Backbone, GPT2), "llama": (LlamaBackbone, LLAMA),
             "vit": (ViTBackbone, VIT), "resnet": (ResNetBackbone, RESNET),
             "efficientnet": (EfficientNetBackbone, EFFICIENTNET)}


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "vit"])
@pytest.mark.parametrize("value", [0, -1, 10**6, 2.5, "3", True, None])
def test_num_layers_is_checked_before_building(family, value):
    cls, config = BACKBONES[family]
    with pytest.raises(ValueError, match=r"num_layers must be an integer in \[1, 512\]") as error:
        cls(**{**config, "num_layers": value})
    assert cls.__name__ in str(error.value) and repr(value)[:10] in str(error.value)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("value", [10**12, 0, -5, 1.5])
def test_vocabulary_size_is_checked_before_allocating(family, value):
    cls, config = BACKBONES[family]
    with pytest.raises(ValueError, match=r"vocabulary_size must be an integer in \[1, 1048576\]") as error:
        cls(**{**config, "vocabulary_size": value})
    assert str(value) in str(error.value)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "vit"])
def test_hidden_dim_must_divide_into_the_heads(family):
    cls, config = BACKBONES[family]
    with pytest.raises(ValueError, match="hidden_dim=10 is not a multiple of num_heads=4"):
        cls(**{**config, "hidden_dim": 10, "num_heads": 4, **({"num_key_value_heads": 2}
                                                              if family == "llama" else {})})


@pytest.mark.parametrize("family, field, value, shown", [
    ("bert", "num_heads", 0, r"num_heads must be an integer in \[1, 1024\]"),
    ("bert", "intermediate_dim", -16, r"intermediate_dim must be an integer"),
    ("bert", "max_sequence_length", 0, r"max_sequence_length must be an integer in \[1, 16777216\]"),
    ("bert", "num_segments", 0, r"num_segments must be an integer"),
    ("bert", "dropout", 1.5, r"dropout must be a number in \[0.0, 1.0\)"),
    ("bert", "layer_norm_epsilon", 0.0, r"layer_norm_epsilon must be a number in \(0.0, 1.0\]"),
    ("gpt2", "dropout", math.nan, r"dropout must be a number"),
    ("gpt2", "hidden_dim", 10**6, r"hidden_dim must be an integer in \[1, 65536\]"),
    ("llama", "num_key_value_heads", 3, "num_heads=4 is not a multiple of num_key_value_heads=3"),
    ("llama", "rope_max_wavelength", -1, r"rope_max_wavelength must be a number in \(0.0"),
    ("llama", "sliding_window", 0, r"sliding_window must be an integer"),
    ("llama", "head_dim", 2.5, r"head_dim must be an integer in \[1, 4096\] or None"),
    ("llama", "num_experts_per_token", 0, r"num_experts_per_token must be an integer"),
    ("vit", "patch_size", 0, r"patch_size must be an integer in \[1, 1024\]"),
    ("vit", "image_shape", (0, 8, 3), r"image_shape\[0\] must be an integer in \[1, 16384\]"),
    ("vit", "image_shape", (8, 8), r"image_shape must be \(height, width, channels\)"),
    ("resnet", "stackwise_num_blocks", [1, -1], r"stackwise_num_blocks\[1\] must be an integer"),
    ("resnet", "stackwise_num_filters", "8, 16", r"stackwise_num_filters must be a non-empty list"),
    ("resnet", "stem_filters", 0, r"stem_filters must be an integer"),
    ("efficientnet", "stackwise_kernel_sizes", [3, 2.5], r"stackwise_kernel_sizes\[1\] must be an integer"),
    ("efficientnet", "stackwise_squeeze_excite_ratios", [0.25, 2.0],
     r"stackwise_squeeze_excite_ratios\[1\] must be a number in \[0.0, 1.0\]"),
    ("efficientnet", "drop_connect_rate", -0.1, r"drop_connect_rate must be a number"),
    ("llama", "tie_word_embeddings", "false", r"tie_word_embeddings must be True or False, got 'false'"),
    ("vit", "use_class_token", 1, r"use_class_token must be True or False, got 1"),
])
def test_every_config_field_names_itself_and_its_range(family, field, value, shown):
    cls, config = BACKBONES[family]
    with pytest.raises(ValueError, match=shown) as error:
        cls(**{**config, field: value})
    assert cls.__name__ in str(error.value)


def test_mixture_of_experts_and_lite_coefficients():
    with pytest.raises(ValueError, match="num_experts_per_token=3 must be at most num_experts=2"):
        LlamaBackbone(**LLAMA, num_experts=2, num_experts_per_token=3)
    with pytest.raises(ValueError, match=r"EfficientNetLiteBackbone: depth_coefficient must be a number in "
                                         r"\(0.0, 16.0\], got 1000000.0"):
        EfficientNetLiteBackbone(depth_coefficient=1e6)


# The largest real configurations of each field (their model cards' config.json): all must pass.
REAL_CONFIGS = {
    "gemma3_27b": dict(vocabulary_size=262_208, num_layers=62, num_heads=32, num_key_value_heads=16,
                       head_dim=128, hidden_dim=5376, intermediate_dim=21_504, max_sequence_length=131_072,
                       sliding_window=1024, rope_max_wavelength=1_000_000, rope_scaling_factor=8.0),
    "llama3.1_405b": dict(vocabulary_size=128_256, num_layers=126, num_heads=128, num_key_value_heads=8,
                          hidden_dim=16_384, intermediate_dim=53_248, max_sequence_length=131_072,
                          rope_max_wavelength=500_000, layer_norm_epsilon=1e-5),
    "llama4_scout": dict(vocabulary_size=202_048, num_layers=48, num_heads=40, num_key_value_heads=8,
                         head_dim=128, hidden_dim=5120, intermediate_dim=16_384,
                         max_sequence_length=10_485_760, num_experts=16, num_experts_per_token=1),
    "mixtral_8x22b": dict(vocabulary_size=32_768, num_layers=56, num_heads=48, num_key_value_heads=8,
                          hidden_dim=6144, intermediate_dim=16_384, max_sequence_length=65_536,
                          num_experts=8, num_experts_per_token=2, router_aux_loss_coefficient=0.001),
    "bert_large": dict(vocabulary_size=30_522, num_layers=24, num_heads=16, hidden_dim=1024,
                       intermediate_dim=4096, max_sequence_length=512, num_segments=2,
                       layer_norm_epsilon=1e-12, dropout=0.1),
    "vit_huge_14": dict(image_shape=(224, 224, 3), patch_size=14, num_layers=32, num_heads=16,
                        hidden_dim=1280, intermediate_dim=5120),
    "resnet152": dict(stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 8, 36, 3],
                      stackwise_num_strides=[1, 2, 2, 2], stem_filters=[32, 32, 64], stem_kernel_sizes=[3, 3, 3]),
    "efficientnet_b7": dict(stackwise_num_blocks=[4, 7, 7, 10, 10, 13, 4], stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
                            stackwise_strides=[1, 2, 2, 2, 1, 2, 1], stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6],
                            stackwise_output_filters=[32, 48, 80, 160, 224, 384, 640],
                            stackwise_squeeze_excite_ratios=[0.25] * 7, stem_filters=64, head_filters=2560,
                            image_shape=(600, 600, 3)),
}


@pytest.mark.parametrize("name", sorted(REAL_CONFIGS))
def test_the_largest_real_models_pass_the_bounds(name):
    check_backbone_config(name, REAL_CONFIGS[name])


# ----------------------------------------------------------------------------- token ids at the boundary


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(backbone, tokenizer, tiny_vocabulary):
    small = BertBackbone(**{**BERT, "vocabulary_size": len(tiny_vocabulary) - 10})
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=8)
    for build in (lambda: TextClassifier(small, num_classes=2, preprocessor=preprocessor),
                  lambda: TextEmbedder(small, preprocessor=preprocessor)):
        with pytest.raises(ValueError, match="no embedding") as error:
            build()
        message = str(error.value)
        assert f"has {len(tiny_vocabulary)} tokens" in message and \
            f"vocabulary_size={len(tiny_vocabulary) - 10}" in message
    task = TextClassifier(small, num_classes=2)
    with pytest.raises(ValueError, match="no embedding"):
        task.preprocessor = preprocessor
    assert task.preprocessor is None


def _token_inputs(token_ids, **extra):
    token_ids = np.asarray(token_ids, "int32")
    return {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids),
            "padding_mask": np.ones_like(token_ids), **extra}


@pytest.mark.parametrize("bad_id", [10**6, -7])
def test_token_ids_outside_the_table_are_named_before_the_trainer(backbone, bad_id, tmp_path):
    task = TextClassifier(backbone, num_classes=3)
    good = _token_inputs([[2, 5, 6, 3], [2, 7, 3, 0]])
    task.fit(good, np.array([0, 1]), epochs=1, verbose=0)
    before = _weights(task)
    bad = _token_inputs([[2, 5, bad_id, 3], [2, 7, 3, 0]])
    for call in (lambda: task.predict(bad, verbose=0), lambda: task.fit(bad, np.array([0, 1]), verbose=0)):
        with pytest.raises(ValueError, match="token_ids") as error:
            call()
        assert f"holds {bad_id}" in str(error.value) and f"vocabulary_size={backbone.vocabulary_size}" in \
            str(error.value)
    _assert_same_weights(before, task)
    assert np.isfinite(task.predict(good, verbose=0)).all()


def test_other_bad_token_inputs(backbone):
    task = TextClassifier(backbone, num_classes=3)
    with pytest.raises(ValueError, match="'padding_mask' must hold 0 \\(padding\\) or 1"):
        task.predict(_token_inputs([[2, 5, 3]], padding_mask=np.array([[1, 2, 1]])), verbose=0)
    with pytest.raises(ValueError, match="has 40 positions; the model has 32"):
        task.predict(_token_inputs(np.full((1, 40), 5)), verbose=0)
    with pytest.raises(ValueError, match="missing \\['segment_ids'\\]"):
        task.predict({"token_ids": np.array([[2, 3]]), "padding_mask": np.array([[1, 1]])}, verbose=0)
    with pytest.raises(ValueError, match="'token_ids' has shape \\(2,\\)"):
        task.predict(_token_inputs([2, 3]), verbose=0)
    with pytest.raises(ValueError, match="'token_ids' must hold whole numbers, got 2.5"):
        task.predict({**_token_inputs([[2, 3]]), "token_ids": np.array([[2.5, 3.0]])}, verbose=0)


def test_a_masked_lm_fed_token_ids_checks_its_mask_positions(backbone):
    mlm = MaskedLM(backbone)
    inputs = _token_inputs([[2, 4, 5, 3]], mask_positions=np.array([[1, 9]], "int32"))
    with pytest.raises(ValueError, match=r"mask_positions holds 9 at index \(0, 1\), outside \[0, 4\)"):
        mlm.predict(inputs, verbose=0)
    assert mlm.predict({**inputs, "mask_positions": np.array([[1, 2]], "int32")}, verbose=0).shape == \
        (1, 2, backbone.vocabulary_size)


def test_a_causal_lm_fed_token_ids_checks_them():
    lm = CausalLM(GPT2Backbone(**GPT2))
    inputs = {"token_ids": np.array([[1, 2, 70]], "int32"), "padding_mask": np.ones((1, 3), "int32")}
    with pytest.raises(ValueError, match="holds 70 .*vocabulary_size=50"):
        lm.predict(inputs, verbose=0)
    with pytest.raises(ValueError, match="holds 70 .*classes=50"):
        lm.fit({**inputs, "token_ids": np.array([[1, 2, 3]], "int32")}, np.array([[2, 3, 70]]), verbose=0)


# ----------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def converter():
    return ImageConverter((4, 4))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_images_are_named(converter, bad):
    images = np.full((2, 8, 8, 3), 100.0, "float32")
    images[1, 2, 3, 0] = bad
    with pytest.raises(ValueError, match="finite") as error:
        converter(images)
    assert str(bad) in str(error.value) and "(1, 2, 3, 0)" in str(error.value)


def test_a_batch_of_grayscale_images_is_not_read_as_one_image(converter):
    batch = np.zeros((1, 240, 320), "uint8")
    with pytest.raises(ValueError, match="ambiguous: one image with 320 channels, or 1 grayscale") as error:
        converter(batch)
    assert "images[..., None]" in str(error.value)
    gray = ImageConverter((4, 4), num_channels=1)
    assert gray(np.zeros((8, 6), "uint8")).shape == (1, 4, 4, 1)  # (height, width): one image
    assert gray(batch[..., None]).shape == (1, 4, 4, 1)
    assert gray([np.zeros((8, 6), "uint8"), np.zeros((5, 5), "uint8")]).shape == (2, 4, 4, 1)
    assert converter(np.zeros((8, 6, 3), "uint8")).shape == (1, 4, 4, 3)  # one RGB image still is one


@pytest.mark.parametrize("shape", [(0, 0, 3), (1, 0, 5, 3), (4, 0, 3)])
def test_a_zero_sized_image_is_named(converter, shape):
    with pytest.raises(ValueError, match="at least 1×1 pixels"):
        converter(np.zeros(shape, "uint8"))


def test_integer_images_outside_the_pixel_range(converter):
    with pytest.raises(ValueError, match=r"Integer images must hold pixel values in \[0, 255\].*1000"):
        converter(np.full((8, 8, 3), 1000, "int32"))
    assert converter(np.full((8, 8, 3), 255, "int64")).max() == pytest.approx(1.0)
    assert converter(np.full((8, 8, 3), 255, "uint8")).max() == pytest.approx(1.0)


def test_an_image_classifier_without_preprocessor_checks_its_arrays():
    backbone = ViTBackbone(**VIT)
    task = ImageClassifier(backbone, num_classes=2)
    images = np.zeros((2, 8, 8, 3), "float32")
    images[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="input 'images' holds nan"):
        task.predict(images, verbose=0)
    with pytest.raises(ValueError, match=r"has shape \(2, 8, 8, 1\); it takes \(batch, 8, 8, 3\)"):
        task.predict(np.zeros((2, 8, 8, 1), "float32"), verbose=0)


# ----------------------------------------------------------------------------- errors that used to be unclear


def test_a_preset_without_preprocessor_json_uses_the_backbones_length(tmp_path, backbone, tokenizer):
    kcookbook.presets.save_preset(str(tmp_path / "bert"), backbone, tokenizer=tokenizer)
    assert not os.path.exists(tmp_path / "bert" / "preprocessor.json")
    task = TextClassifier.from_preset(str(tmp_path / "bert"), num_classes=2)
    assert task.preprocessor.sequence_length == backbone.max_sequence_length == 32
    assert task.predict([" ".join(["good film"] * 40)], verbose=0).shape == (1, 2)
    assert TextClassifier.from_preset(str(tmp_path / "bert"), num_classes=2, preprocessor_kwargs={
        "sequence_length": 16}).preprocessor.sequence_length == 16
    with pytest.raises(ValueError, match="sequence_length=64 .*max_sequence_length=32"):
        TextClassifier.from_preset(str(tmp_path / "bert"), num_classes=2,
                                   preprocessor_kwargs={"sequence_length": 64})


def test_loading_a_plain_weights_file_as_lora_says_what_it_is(tmp_path):
    backbone = BertBackbone(**BERT)
    backbone.save_weights(str(tmp_path / "model.weights.h5"))
    with pytest.raises(ValueError, match="is not a LoRA adapter file") as error:
        backbone.load_lora_weights(str(tmp_path / "model.weights.h5"))
    assert "model.weights.h5" in str(error.value) and "save_lora_weights" in str(error.value)
    assert not any(getattr(layer, "lora_enabled", False) for layer in backbone._flatten_layers())


@pytest.mark.parametrize("task_cls", [TextClassifier, TextEmbedder, MaskedLM])
@pytest.mark.parametrize("bad", [[None], [3, "ok"], [["nested", "list"]], [{"a": 1}]])
def test_texts_that_are_not_strings_are_named(backbone, tokenizer, task_cls, bad):
    from kcookbook.tasks.masked_lm import MaskedLMPreprocessor

    preprocessor_cls = MaskedLMPreprocessor if task_cls is MaskedLM else TextClassifierPreprocessor
    kwargs = {"num_classes": 2} if task_cls is TextClassifier else {}
    task = task_cls(backbone, preprocessor=preprocessor_cls(tokenizer, sequence_length=8), **kwargs)
    with pytest.raises(TypeError, match="take strings") as error:
        task.predict(bad, verbose=0)
    assert type(bad[0]).__name__ in str(error.value)


# ----------------------------------------------------------------------------- tokenizers on any text

SPECIAL_CHARACTERS = ["\ud800", "\udfff", "\ud83d", "\x00", "\x1b", "\x7f", "\u200b", "\u200d", "\ufeff",
                      "\u202e", "\u0301", "\U0010ffff", "\r\n", "[CLS]", "<|endoftext|>", " "]
HOSTILE_TEXT = st.lists(st.one_of(st.text(alphabet=st.characters(exclude_categories=()), max_size=20),
                                  st.sampled_from(SPECIAL_CHARACTERS)), max_size=12).map("".join)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, tiny_vocabulary):
    """One small tokenizer of each kind, trained here on real tweets (no download)."""
    import sentencepiece
    from tokenizers.implementations import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("hostile_tokenizers")
    lines = real_tweets(2000)
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(lines, vocab_size=500, special_tokens=["<|endoftext|>"], show_progress=False)
    trainer.save_model(str(folder))
    trainer.save(str(folder / "tokenizer.json"))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=400,
                                             minloglevel=2, model_type="bpe", byte_fallback=True)
    return {
        "wordpiece": WordPieceTokenizer(tiny_vocabulary),
        "byte_pair": BytePairTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                       end_token="<|endoftext|>"),
        "sentencepiece": SentencePieceTokenizer(model.getvalue()),
        "tokenizer_json": HuggingFaceTokenizer(str(folder / "tokenizer.json")),
    }


def _assert_ids(tokenizer, ids):
    assert all(isinstance(i, (int, np.integer)) and 0 <= i < tokenizer.vocabulary_size for i in ids), ids


@pytest.mark.parametrize("kind", ["wordpiece", "byte_pair", "sentencepiece", "tokenizer_json"])
@pytest.mark.backend_independent  # tokenizers give Python ids on every backend
def test_tokenizers_take_any_unicode(tokenizers, kind):
    tokenizer = tokenizers[kind]

    @settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
    @given(texts=st.lists(HOSTILE_TEXT, min_size=1, max_size=4))
    def check(texts):
        batch = tokenizer(texts)
        assert len(batch) == len(texts)
        for ids in batch:
            _assert_ids(tokenizer, ids)
        _assert_ids(tokenizer, tokenizer(texts[0]))

    check()
    assert tokenizer("a\ud800b") == tokenizer("a\ufffdb")  # a lone surrogate reads as U+FFFD


@pytest.mark.parametrize("kind", ["wordpiece", "byte_pair", "sentencepiece", "tokenizer_json"])
@pytest.mark.backend_independent  # tokenizers give Python ids on every backend
def test_tokenizers_on_a_megabyte_of_text(tokenizers, kind):
    tokenizer = tokenizers[kind]
    rng = np.random.default_rng(0)
    words = np.array(["good", "café", "東京", "😍", "\u200b", "x" * 50, "\x00", "[SEP]"])
    text = " ".join(rng.choice(words, 150_000))
    assert len(text.encode("utf-8")) > 1_000_000
    _assert_ids(tokenizer, tokenizer(text))
    _assert_ids(tokenizer, tokenizer("y" * 1_000_000))


def test_a_text_task_reads_lone_surrogates(classifier):
    assert np.isfinite(classifier.predict(["bad \udcff day", "\ud800"], verbose=0)).all()
