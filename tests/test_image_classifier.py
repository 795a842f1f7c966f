"""ImageClassifier on raw uint8 images: arrays, lists of different sizes, tf.data; heads kept or new;
presets saved and reloaded; generic over backbone outputs; clear errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcookbook.backbones import Backbone, EfficientNetLiteBackbone
from kcookbook.components import ImageConverter
from kcookbook.presets.errors import PresetError
from kcookbook.tasks import ImageClassifier, ImageClassifierPreprocessor


def tiny_backbone():
    """7 blocks, narrow (width × 0.25); the stem and head widths stay those of EfficientNet-Lite."""
    return EfficientNetLiteBackbone(width_coefficient=0.25, depth_coefficient=0.1, drop_connect_rate=0.0)


def conv_backbone():
    """A two-convolution feature extractor: the task needs only an image input and a feature map."""
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(images)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    return Backbone(inputs=images, outputs=x)


def tiny_classifier(num_classes=3, backbone=None, **kwargs):
    preprocessor = ImageClassifierPreprocessor(ImageConverter((32, 32), scale=1 / 127.5, offset=-1.0))
    return ImageClassifier(backbone or conv_backbone(), num_classes, preprocessor=preprocessor, **kwargs)


def random_images(rng, n, size=(40, 48)):
    return rng.integers(0, 256, (n, *size, 3)).astype("uint8")


def test_fit_and_predict_on_arrays_lists_and_tf_data(seeded):
    classifier = tiny_classifier()
    images, labels = random_images(seeded, 8), [0, 1, 2, 0, 1, 2, 0, 1]
    history = classifier.fit(images, labels, batch_size=4, epochs=1, verbose=0,
                             validation_data=(images[:4], labels[:4]))  # raw uint8 validation too
    assert np.isfinite(history.history["loss"][0]) and np.isfinite(history.history["val_loss"][0])
    from_array = classifier.predict(images, verbose=0)
    assert from_array.shape == (8, 3)

    sizes = [(40, 48), (64, 30), (33, 33)]
    mixed = [seeded.integers(0, 256, (*s, 3)).astype("uint8") for s in sizes]
    from_list = classifier.predict(mixed, verbose=0)
    one_by_one = np.concatenate([classifier.predict(image[None], verbose=0) for image in mixed])
    np.testing.assert_allclose(from_list, one_by_one, atol=1e-5)

    dataset = tf.data.Dataset.from_tensor_slices((images, np.array(labels))).batch(4)
    classifier.fit(dataset, epochs=1, verbose=0)
    from_dataset = classifier.predict(dataset.map(lambda x, y: x), verbose=0)
    np.testing.assert_allclose(from_dataset, classifier.predict(images, verbose=0), atol=1e-4)
    assert classifier.evaluate(dataset, verbose=0, return_dict=True)["accuracy"] >= 0


def test_training_learns_a_visible_difference(seeded):
    # dark images are class 0, bright ones class 1: a classifier that trains at all separates them
    dark = seeded.integers(0, 60, (16, 32, 32, 3)).astype("uint8")
    bright = seeded.integers(195, 256, (16, 32, 32, 3)).astype("uint8")
    images, labels = np.concatenate([dark, bright]), np.array([0] * 16 + [1] * 16)
    classifier = tiny_classifier(num_classes=2)
    classifier.fit(images, labels, batch_size=8, epochs=10, verbose=0)
    assert (classifier.predict(images, verbose=0).argmax(-1) == labels).mean() == 1.0


@pytest.mark.one_backend  # preset plumbing; the classifier's numerics run on every backend
def test_preset_keeps_the_head_or_builds_a_new_one(tmp_path, seeded):
    classifier = tiny_classifier(backbone=tiny_backbone(), class_names=["cat", "dog", "bird"])
    images = random_images(seeded, 2)
    expected = classifier.predict(images, verbose=0)
    classifier.save_to_preset(tmp_path / "preset")
    assert os.path.exists(tmp_path / "preset" / "image_converter.json")

    kept = ImageClassifier.from_preset(tmp_path / "preset")
    np.testing.assert_allclose(kept.predict(images, verbose=0), expected, atol=1e-5)
    assert kept.class_names == ["cat", "dog", "bird"]
    assert [name for name, _ in kept.decode_predictions(expected, top=3)[0]] == [
        ["cat", "dog", "bird"][i] for i in np.argsort(-expected[0])]

    fresh = ImageClassifier.from_preset(tmp_path / "preset", num_classes=5)
    assert fresh.predict(images, verbose=0).shape == (2, 5)
    backbone_weights = {v.path: keras.ops.convert_to_numpy(v) for v in fresh.backbone.weights}
    for v in classifier.backbone.weights:
        np.testing.assert_array_equal(backbone_weights[v.path], keras.ops.convert_to_numpy(v))

    small = ImageClassifier.from_preset(tmp_path / "preset", image_size=16)
    assert small.preprocessor.image_converter.image_size == (16, 16)
    assert small.preprocessor(images).shape == (2, 16, 16, 3)

    classifier.backbone.save_to_preset(tmp_path / "backbone_only")
    with pytest.raises(PresetError, match="num_classes"):
        ImageClassifier.from_preset(tmp_path / "backbone_only")


def test_generic_over_pooled_and_token_backbone_outputs(seeded):
    images = keras.Input((8, 8, 3))
    pooled = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(images))
    tokens = keras.layers.Reshape((64, 3))(images)  # a ViT-like (batch, tokens, dim) sequence
    x = seeded.random((2, 8, 8, 3)).astype("float32")
    for output, expected in ((pooled, None), (tokens, x.reshape(2, 64, 3)[:, 0, :])):
        classifier = ImageClassifier(Backbone(inputs=images, outputs=output), num_classes=2)
        head = classifier.get_layer("predictions")
        logits = keras.ops.convert_to_numpy(classifier(x))
        if expected is not None:  # the first token goes to the head
            kernel, bias = (keras.ops.convert_to_numpy(w) for w in head.weights)
            np.testing.assert_allclose(logits, expected @ kernel + bias, atol=1e-5)
        assert logits.shape == (2, 2)


def test_bad_inputs_are_clear_errors(seeded):
    classifier = tiny_classifier()
    with pytest.raises(ValueError, match="1 channels"):
        classifier.predict(np.zeros((2, 32, 32, 1), "uint8"))
    with pytest.raises(ValueError, match="empty"):
        classifier.predict(np.zeros((0, 32, 32, 3), "uint8"))
    with pytest.raises(ValueError, match="Multiply them by 255"):
        classifier.predict(seeded.random((2, 32, 32, 3)))
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassifier(conv_backbone(), num_classes=0)
    with pytest.raises(ValueError, match="class_names"):
        ImageClassifier(conv_backbone(), num_classes=2, class_names=["a"])
    bare = ImageClassifier(conv_backbone(), num_classes=2)
    with pytest.raises(ValueError, match="no preprocessor"):
        bare.predict(np.zeros((1, 32, 32, 3), "uint8"))
    assert bare.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).shape == (1, 2)


class NotATensor:
    """An arbitrary pickled object: ``torch.load(weights_only=True)`` refuses to build it."""


@pytest.mark.backend_independent  # file errors before any model runs
def test_corrupt_or_unsafe_checkpoints_are_clear_errors(tmp_path):
    import torch

    folder = tmp_path / "lite"
    folder.mkdir()
    checkpoint = folder / "efficientnet-lite0-deadbeef.pth"
    checkpoint.write_bytes(b"PK\x03\x04 this is not a torch zip file")
    with pytest.raises(PresetError, match="efficientnet-lite0-deadbeef.pth.*corrupt"):
        ImageClassifier.from_preset(str(folder))

    torch.save({"_conv_stem.weight": NotATensor()}, checkpoint)
    with pytest.raises(PresetError, match="weights_only"):
        ImageClassifier.from_preset(str(folder))

    checkpoint.write_bytes(b"")
    with pytest.raises(PresetError, match="empty"):
        ImageClassifier.from_preset(str(folder))


def test_unfreeze_backbone_keeps_batch_norm_statistics_and_trains_the_rest(seeded):
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2)(images)
    x = keras.layers.Activation("relu")(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    classifier = tiny_classifier(backbone=Backbone(inputs=images, outputs=keras.layers.BatchNormalization()(x)))
    classifier.backbone.trainable = False
    frozen = classifier.unfreeze_backbone()
    norms = [l for l in classifier.backbone._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    assert frozen == len(norms) > 0 and not any(norm.trainable for norm in norms)
    convolutions = [l for l in classifier.backbone._flatten_layers() if isinstance(l, keras.layers.Conv2D)]
    before = {id(v): keras.ops.convert_to_numpy(v).copy() for layer in norms + convolutions[:1] for v in layer.weights}
    classifier.compile(optimizer=keras.optimizers.Adam(1e-2))
    classifier.fit(random_images(seeded, 8), [0, 1, 2, 0, 1, 2, 0, 1], batch_size=4, epochs=1, verbose=0)
    for norm in norms:  # gamma, beta and the moving statistics stay the pretrained ones
        for v in norm.weights:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), before[id(v)])
    assert not np.allclose(keras.ops.convert_to_numpy(convolutions[0].kernel), before[id(convolutions[0].kernel)])
    assert classifier.unfreeze_backbone(batch_norm_trainable=True) == 0 and all(norm.trainable for norm in norms)
