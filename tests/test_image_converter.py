"""ImageConverter: the same numbers eagerly (on this backend), inside tf.data, and as TensorFlow's own
resize computes them; boxes that still cover their object after resizing; clear errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcookbook.components import ImageConverter
from kcookbook.presets.errors import PresetError


def chelsea():
    from skimage import data

    return data.chelsea()  # 300 × 451 × 3 uint8


def tf_reference(image, size, mean, std):
    """Center crop to the target aspect ratio, bilinear resize (tf.image), then (x/255 - mean)/std."""
    h, w = image.shape[:2]
    side = min(h, w)  # square target
    top, left = (h - side) // 2, (w - side) // 2
    crop = tf.constant(image[top:top + side, left:left + side], tf.float32)
    resized = tf.image.resize(crop, size, method="bilinear", antialias=False).numpy()
    return (resized / 255.0 - np.asarray(mean)) / np.asarray(std)


def test_eager_tf_data_and_tensorflow_agree():
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    converter = ImageConverter.from_mean_std((224, 224), mean, std)
    image = chelsea()
    eager = converter(image)
    assert isinstance(eager, np.ndarray) and eager.shape == (1, 224, 224, 3) and eager.dtype == np.float32
    in_tf_data = next(iter(tf.data.Dataset.from_tensors(image[None]).map(converter))).numpy()
    expected = tf_reference(image, (224, 224), mean, std)[None]
    # 1e-5 of a unit-variance value: the backends' bilinear kernels round differently in float32
    np.testing.assert_allclose(eager, expected, atol=2e-5, rtol=0)
    np.testing.assert_allclose(in_tf_data, expected, atol=2e-5, rtol=0)


def test_lists_of_differently_sized_images_are_resized_one_by_one():
    from skimage import data

    converter = ImageConverter((32, 48), scale=1 / 255)
    images = [data.chelsea(), data.coffee(), data.astronaut()]
    batch = converter(images)
    assert batch.shape == (3, 32, 48, 3)
    for image, row in zip(images, batch):
        np.testing.assert_allclose(row, converter(image)[0], atol=1e-6)
    assert 0.0 <= batch.min() and batch.max() <= 1.0


def test_per_channel_normalisation_is_what_from_mean_std_says():
    converter = ImageConverter.from_mean_std((4, 4), mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])
    image = np.empty((8, 8, 3), "uint8")
    image[..., 0], image[..., 1], image[..., 2] = 51, 102, 255
    out = converter(image)[0]
    expected = (np.array([51, 102, 255]) / 255 - np.array([0.5, 0.4, 0.3])) / np.array([0.2, 0.25, 0.5])
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)


@pytest.mark.parametrize("crop", [True, False])
def test_boxes_still_cover_the_same_pixels_after_resizing(crop):
    # a white rectangle on black: after the transform, the returned box must bound the white pixels
    image = np.zeros((1, 120, 200, 3), "uint8")
    x1, y1, x2, y2 = 70, 30, 150, 90
    image[0, y1:y2, x1:x2] = 255
    boxes = {"boxes": np.array([[[x1, y1, x2, y2]]], "float32"), "labels": np.array([[1]], "int32")}
    converter = ImageConverter((60, 60), scale=1 / 255, crop_to_aspect_ratio=crop,
                               interpolation="nearest", bounding_box_format="xyxy")
    out = converter(image, bounding_boxes=boxes)
    white = np.argwhere(out["images"][0, ..., 0] > 0.5)
    (top, left), (bottom, right) = white.min(0), white.max(0) + 1
    np.testing.assert_allclose(out["bounding_boxes"]["boxes"][0, 0], [left, top, right, bottom], atol=1.0)
    assert out["bounding_boxes"]["labels"].tolist() == [[1]]


def test_float_images_are_read_in_0_255_as_documented():
    converter = ImageConverter((8, 8), scale=1 / 255)
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3))
    np.testing.assert_allclose(converter(image.astype("float32")), converter(image.astype("uint8")),
                               atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\].*Multiply them by 255"):
        converter(image / 255.0)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        converter(image * 2.0)


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 8, 1), "uint8"), "1 channels.*np.repeat"),
    (np.zeros((2, 8, 8, 4), "uint8"), "4 channels.*alpha"),
    (np.zeros((8, 8), "uint8"), "channel axis"),
    (np.zeros((0, 8, 8, 3), "uint8"), "batch is empty"),
    ([], "empty list"),
    (np.zeros((2, 8, 8, 3), "bool"), "uint8 or float"),
])
def test_bad_images_are_clear_errors(images, message):
    with pytest.raises(ValueError, match=message):
        ImageConverter((4, 4))(images)


def test_config_round_trip_and_serialization():
    converter = ImageConverter.from_mean_std((10, 12), [0.5, 0.5, 0.5], [0.25, 0.5, 1.0],
                                             crop_to_aspect_ratio=False, interpolation="bicubic")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(converter))
    assert restored.get_config() == converter.get_config()
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3)).astype("uint8")
    np.testing.assert_array_equal(restored(image), converter(image))


def test_bad_arguments_and_non_vision_presets():
    with pytest.raises(ValueError, match="image_size"):
        ImageConverter((0, 4))
    with pytest.raises(ValueError, match="one float per channel"):
        ImageConverter((4, 4), scale=[[1.0]])
    with pytest.raises(PresetError, match="no image converter"):
        ImageConverter.from_preset("all_minilm_l6_v2")
