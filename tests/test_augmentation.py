"""Augmentations and boxes: boxes stay on their pixels, NMS equals TensorFlow's, layers run in tf.data.

The box checks draw every box as a filled rectangle with its own value (100 + box id) on a dark
background (10 + image index), transform images and boxes together, and then look at the pixels:
inside each transformed box (away from its edge by the interpolation blur) every pixel still has that
box's value, and no box-coloured pixel is left outside the transformed boxes. Keras' own layers
(Resizing, RandomFlip) are checked the same way as ours (Mosaic, JitteredResize).

The NMS reference is ``tf.image.non_max_suppression``, an independent implementation.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcookbook.components import JitteredResize, Mosaic, NonMaxSuppression, non_max_suppression

HEIGHT, WIDTH, BATCH = 48, 40, 4


def _box_id(image, box):
    return 10 * image + box


@pytest.fixture(scope="module")
def scene():
    """4 images (48 × 40 × 3) with 2 boxes each (left and right half), xyxy pixels, ids as labels."""
    rng = np.random.default_rng(7)
    images = np.zeros((BATCH, HEIGHT, WIDTH, 3), "float32")
    boxes = np.zeros((BATCH, 2, 4), "float32")
    labels = np.zeros((BATCH, 2), "float32")
    for b in range(BATCH):
        images[b] = 10 + b
        for j, (low, high) in enumerate([(0, WIDTH // 2), (WIDTH // 2, WIDTH)]):
            w, h = rng.integers(9, 16), rng.integers(10, 24)
            x1 = rng.integers(low, high - w + 1)
            y1 = rng.integers(0, HEIGHT - h + 1)
            images[b, y1:y1 + h, x1:x1 + w] = 100 + _box_id(b, j)
            boxes[b, j] = (x1, y1, x1 + w, y1 + h)
            labels[b, j] = _box_id(b, j)
    return images, boxes, labels


def _as_dict(scene):
    images, boxes, labels = scene
    return {"images": images.copy(), "bounding_boxes": {"boxes": boxes.copy(), "labels": labels.copy()}}


def _numpy(data):
    return keras.tree.map_structure(lambda x: np.asarray(keras.ops.convert_to_numpy(x)), data)


def assert_boxes_cover_their_pixels(data, margin):
    """Every labelled box is filled with its value; box-valued pixels lie only inside boxes."""
    data = _numpy(data)
    images, boxes = data["images"], data["bounding_boxes"]["boxes"]
    labels = data["bounding_boxes"]["labels"]
    checked = 0
    for b in range(images.shape[0]):
        height, width = images.shape[1:3]
        cy, cx = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
        near_a_box = np.zeros((height, width), bool)
        for (x1, y1, x2, y2), label in zip(boxes[b], labels[b]):
            if label < 0:
                continue
            inner = (cx > x1 + margin) & (cx < x2 - margin) & (cy > y1 + margin) & (cy < y2 - margin)
            near_a_box |= (cx > x1 - margin) & (cx < x2 + margin) & (cy > y1 - margin) & (cy < y2 + margin)
            if inner.any():
                np.testing.assert_allclose(images[b][inner], 100 + label, atol=0.5,
                                           err_msg=f"box {label} of image {b} lost its pixels")
                checked += 1
        stray = images[b][~near_a_box]
        assert stray.size == 0 or stray.max() < 50, (
            f"image {b}: pixels of a box (value {stray.max():.0f}) lie outside every labelled box")
    assert checked >= images.shape[0], "too few boxes left to check"
    return checked


def test_the_check_itself_catches_a_wrong_box(scene):
    data = _as_dict(scene)
    data["bounding_boxes"]["boxes"][0, 0] += np.array([3, 0, 3, 0], "float32")
    with pytest.raises(AssertionError):
        assert_boxes_cover_their_pixels(data, margin=1.0)


def test_keras_resizing_and_flip_keep_boxes(scene):
    assert_boxes_cover_their_pixels(_as_dict(scene), margin=0.0)
    resized = keras.layers.Resizing(30, 64, bounding_box_format="xyxy")(_as_dict(scene))
    assert_boxes_cover_their_pixels(resized, margin=2.0)
    flipped = keras.layers.RandomFlip("horizontal_and_vertical", bounding_box_format="xyxy",
                                      seed=3)(_as_dict(scene))
    assert_boxes_cover_their_pixels(flipped, margin=0.0)


def test_mosaic_moves_boxes_with_their_pixels(scene):
    keras.utils.set_random_seed(0)
    layer = Mosaic(bounding_box_format="xyxy", seed=11)
    for _ in range(3):
        out = layer(_as_dict(scene))
        assert tuple(out["images"].shape) == (BATCH, HEIGHT, WIDTH, 3)
        assert tuple(out["bounding_boxes"]["boxes"].shape) == (BATCH, 8, 4)
        assert_boxes_cover_their_pixels(out, margin=0.0)  # pixels are copied: exact


def test_mosaic_labels_mix_by_the_area_each_image_covers(scene):
    images = scene[0]
    one_hot = np.eye(BATCH, dtype="float32")
    out = _numpy(Mosaic(seed=5)({"images": images, "labels": one_hot}))
    # Count each source image's pixels (background 10 + b, boxes 100 + 10·b + j) in the output.
    source = np.where(out["images"][..., 0] >= 100, (out["images"][..., 0] - 100) // 10,
                      out["images"][..., 0] - 10)
    counted = np.stack([(source == b).mean(axis=(1, 2)) for b in range(BATCH)], axis=1)
    np.testing.assert_allclose(out["labels"], counted, atol=1e-6)
    np.testing.assert_allclose(out["labels"].sum(axis=1), 1.0, atol=1e-6)


def test_mosaic_inference_is_identity_and_int_labels_are_refused(scene):
    images = scene[0]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(Mosaic()(images, training=False)), images)
    with pytest.raises(ValueError, match="one-hot"):
        Mosaic()({"images": images, "labels": np.arange(BATCH, dtype="float32")})


@pytest.mark.parametrize("target_size, scale_factor", [((32, 32), (0.5, 1.5)), ((56, 24), (0.9, 2.0))])
def test_jittered_resize_keeps_boxes(scene, target_size, scale_factor):
    layer = JitteredResize(target_size, scale_factor=scale_factor, bounding_box_format="xyxy", seed=2)
    for _ in range(3):
        out = layer(_as_dict(scene))
        assert tuple(out["images"].shape) == (BATCH,) + target_size + (3,)
        # Bilinear blur reaches one source pixel, i.e. `scale` output pixels, past an edge.
        largest_scale = min(target_size[0] * scale_factor[1] / HEIGHT,
                            target_size[1] * scale_factor[1] / WIDTH)
        assert_boxes_cover_their_pixels(out, margin=1.0 + max(1.0, largest_scale))


def test_jittered_resize_at_inference_is_a_letterbox_resize_like_tensorflow(scene):
    """training=False: fit inside the target keeping the aspect ratio (tf.image.resize), pad the rest."""
    images = scene[0]
    out = keras.ops.convert_to_numpy(JitteredResize((60, 60))(images, training=False))
    reference = tf.image.resize(images, (60, 50), method="bilinear", antialias=False).numpy()
    np.testing.assert_allclose(out[:, :, :50], reference, atol=1e-3)
    np.testing.assert_array_equal(out[:, :, 50:], 0.0)


def test_augmentations_run_inside_tf_data(scene):
    images, boxes, labels = scene
    ds = tf.data.Dataset.from_tensor_slices(
        {"images": images, "bounding_boxes": {"boxes": boxes, "labels": labels}}).batch(BATCH)
    ds = ds.map(Mosaic(bounding_box_format="xyxy", seed=1))
    ds = ds.map(JitteredResize((40, 40), scale_factor=(0.8, 1.2), bounding_box_format="xyxy", seed=1))
    out = next(iter(ds))
    assert isinstance(out["images"], tf.Tensor)
    assert out["images"].shape == (BATCH, 40, 40, 3)
    assert_boxes_cover_their_pixels(out, margin=2.5)


# ------------------------------------------------------------------ non-max suppression


def _random_boxes(rng, n, batch=None):
    shape = (n,) if batch is None else (batch, n)
    corner = rng.uniform(0, 100, shape + (2,))
    size = rng.uniform(4, 40, shape + (2,))
    xyxy = np.concatenate([corner, corner + size], axis=-1).astype("float32")
    return xyxy, rng.uniform(size=shape).astype("float32")


def _yxyx(xyxy):
    return xyxy[..., [1, 0, 3, 2]]


@pytest.mark.parametrize("iou_threshold, score_threshold, max_output_size",
                         [(0.5, float("-inf"), 30), (0.3, 0.4, 10), (0.1, 0.0, 80)])
def test_nms_equals_tensorflow(iou_threshold, score_threshold, max_output_size):
    rng = np.random.default_rng(int(iou_threshold * 100))
    for _ in range(3):
        boxes, scores = _random_boxes(rng, 60)
        reference = tf.image.non_max_suppression(
            _yxyx(boxes), scores, max_output_size, iou_threshold, score_threshold).numpy()
        indices, count = non_max_suppression(boxes, scores, max_output_size, iou_threshold,
                                             score_threshold, bounding_box_format="xyxy")
        indices = keras.ops.convert_to_numpy(indices)
        assert int(count) == len(reference)
        np.testing.assert_array_equal(indices[:len(reference)], reference)
        assert indices.shape == (max_output_size,) and (indices[len(reference):] == -1).all()


def test_batched_nms_equals_tensorflow_per_image():
    rng = np.random.default_rng(1)
    boxes, scores = _random_boxes(rng, 40, batch=3)
    indices, count = non_max_suppression(_yxyx(boxes), scores, 15, 0.4, bounding_box_format="yxyx")
    indices, count = keras.ops.convert_to_numpy(indices), keras.ops.convert_to_numpy(count)
    for b in range(3):
        reference = tf.image.non_max_suppression(_yxyx(boxes[b]), scores[b], 15, 0.4).numpy()
        assert count[b] == len(reference)
        np.testing.assert_array_equal(indices[b, :count[b]], reference)


def test_nms_layer_compiles_in_a_model_and_is_class_aware():
    rng = np.random.default_rng(2)
    boxes, _ = _random_boxes(rng, 50, batch=2)
    class_scores = rng.uniform(size=(2, 50, 3)).astype("float32")
    box_input, score_input = keras.Input((50, 4)), keras.Input((50, 3))
    layer = NonMaxSuppression(max_detections=50, iou_threshold=0.3, bounding_box_format="xyxy",
                              class_aware=True)
    model = keras.Model([box_input, score_input], layer(box_input, score_input))
    out = model.predict([boxes, class_scores], verbose=0)  # compiled (XLA on jax and tensorflow)
    best_class, confidence = class_scores.argmax(-1), class_scores.max(-1)
    for b in range(2):
        n = int(out["num_detections"][b])
        for c in range(3):
            members = np.flatnonzero(best_class[b] == c)
            kept = tf.image.non_max_suppression(
                _yxyx(boxes[b, members]), confidence[b, members], 50, 0.3).numpy()
            ours = out["boxes"][b, :n][out["labels"][b, :n] == c]
            np.testing.assert_allclose(ours, boxes[b, members[kept]], atol=1e-6)
        assert (out["labels"][b, n:] == -1).all() and (out["confidence"][b, n:] == 0).all()
        assert np.all(np.diff(out["confidence"][b, :n]) <= 0)  # best first


def test_nms_bad_shapes_say_what_is_expected():
    with pytest.raises(ValueError, match="takes boxes"):
        non_max_suppression(np.zeros((5, 3), "float32"), np.zeros((5,), "float32"), 3)
