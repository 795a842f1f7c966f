"""Image augmentations that Keras 3.15 lacks: mosaic and jittered resize, both keeping boxes right.

Keras already ships the rest, with bounding-box support, and kcookbook uses those as they are:
``keras.layers.RandAugment``, ``MixUp``, ``CutMix``, ``AugMix``, ``RandomErasing``, ``RandomFlip``,
``RandomZoom``, ``RandomTranslation``, ``Resizing``… and ``keras.utils.bounding_boxes``.

What is missing there, and so is written here:

* ``Mosaic`` (YOLOv4): four images tiled into one, with all their boxes moved and clipped. Keras has
  ``CutMix`` (one rectangle from one other image) and ``MixUp`` (blending), not a 2 × 2 tiling.
* ``JitteredResize`` (the scale jitter of RetinaNet/EfficientDet/YOLO training): resize to fit the
  target times a random factor, keeping the aspect ratio, then random-crop or pad to a fixed size.
  Keras' ``RandomZoom`` stretches and keeps the input size; ``Resizing`` is deterministic; neither
  changes the scale while keeping the aspect ratio and a fixed output size.

Both are subclasses of Keras' own image-augmentation base class, so they take what Keras' layers
take (an image batch, or ``{"images", "bounding_boxes": {"boxes", "labels"}, "labels"}``), name
their box format with ``bounding_box_format``, and run on every backend eagerly and — in
TensorFlow — inside a ``tf.data`` pipeline whatever the Keras backend.

    >>> images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    >>> out = Mosaic(seed=1)(images)
    >>> tuple(out.shape)
    (4, 32, 32, 3)
    >>> tuple(JitteredResize(target_size=(24, 24), seed=1)(images).shape)
    (4, 24, 24, 3)
"""

import keras

# Keras 3.15 keeps the base class of its augmentation layers (the code that routes the images/boxes/
# labels dict, densifies ragged boxes and switches to TensorFlow inside tf.data) out of its public
# API. Subclassing it makes these two layers behave exactly like keras.layers.RandomFlip & co.
from keras.src.layers.preprocessing.image_preprocessing.base_image_preprocessing_layer import (
    BaseImagePreprocessingLayer,
)
from keras.utils import bounding_boxes as keras_boxes


def _pair(value, what):
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2:
        raise ValueError(f"{what} must be one number or a pair, got {value!r}.")
    return pair


def _check_channels_last(layer):
    if layer.data_format != "channels_last":
        raise ValueError(f"{type(layer).__name__} supports channels_last images only.")


@keras.saving.register_keras_serializable(package="kcookbook")
class JitteredResize(BaseImagePreprocessingLayer):
    """Resize to a random scale of ``target_size`` keeping the aspect ratio, then crop/pad to it.

    For each image, a factor ``r`` is drawn from ``scale_factor``; the image is resized by
    ``s = min(target_h · r / height, target_w · r / width)`` (so it fits ``r × target_size``), a
    random ``target_size`` window of the result is kept (when it is larger) and the rest is padded
    with ``fill_value`` at the bottom/right (when it is smaller). Boxes are scaled, shifted and
    clipped with the pixels; boxes left with no area get label -1 (Keras' "no box" label).

    With ``training=False`` the image is resized to fit ``target_size`` (r = 1) and padded: the
    deterministic letterbox resize to use at inference time.

    Sampling is bilinear on the source pixels (no low-pass filter when shrinking, as in
    ``keras.layers.Resizing(antialias=False)``).

    Args:
        target_size: ``(height, width)`` of the output.
        scale_factor: ``(low, high)`` range of ``r``; ``(0.8, 1.25)`` is a mild jitter, YOLO and
            EfficientDet recipes use up to ``(0.1, 2.0)``.
        bounding_box_format: format of the boxes, e.g. ``"xyxy"`` (see ``keras.utils.bounding_boxes``).
        interpolation: ``"bilinear"`` or ``"nearest"``.
        fill_value: value of the padded pixels.
        seed: integer seed.

    >>> layer = JitteredResize(target_size=(8, 8), scale_factor=(1.0, 1.0), bounding_box_format="xyxy")
    >>> out = layer({"images": np.ones((1, 4, 2, 3), "float32"),
    ...              "bounding_boxes": {"boxes": np.array([[[0, 0, 2, 2]]], "float32"),
    ...                                 "labels": np.array([[1]], "float32")}})
    >>> keras.ops.convert_to_numpy(out["bounding_boxes"]["boxes"]).tolist()  # scaled by 8/4 = 2
    [[[0.0, 0.0, 4.0, 4.0]]]
    """

    _USE_BASE_FACTOR = False

    def __init__(self, target_size, scale_factor=(0.8, 1.25), bounding_box_format=None,
                 interpolation="bilinear", fill_value=0.0, seed=None, data_format=None, **kwargs):
        super().__init__(bounding_box_format=bounding_box_format, data_format=data_format, **kwargs)
        _check_channels_last(self)
        self.target_size = tuple(int(v) for v in _pair(target_size, "target_size"))
        self.scale_factor = tuple(float(v) for v in _pair(scale_factor, "scale_factor"))
        if not 0 < self.scale_factor[0] <= self.scale_factor[1]:
            raise ValueError(f"scale_factor must be (low, high) with 0 < low <= high, got {scale_factor!r}.")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}.")
        self.interpolation = interpolation
        self.fill_value = float(fill_value)
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def get_random_transformation(self, data, training=True, seed=None):
        images = data["images"] if isinstance(data, dict) else data
        shape = self.backend.shape(images)
        batch = 1 if len(shape) == 3 else shape[0]
        height, width = shape[-3], shape[-2]
        np_ = self.backend.numpy
        target_h, target_w = self.target_size
        if training:
            if seed is None:
                seed = self._get_seed_generator(self.backend._backend)
            r = self.backend.random.uniform((batch,), *self.scale_factor, seed=seed)
            jitter = self.backend.random.uniform((2, batch), 0.0, 1.0, seed=seed)
        else:
            r = np_.ones((batch,))
            jitter = np_.zeros((2, batch))
        height_f = self.backend.cast(height, "float32")
        width_f = self.backend.cast(width, "float32")
        scale = np_.minimum(target_h * r / height_f, target_w * r / width_f)
        # Where the kept window starts inside the resized image (0 when it is smaller: pad instead).
        offset_y = jitter[0] * np_.maximum(height_f * scale - target_h, 0.0)
        offset_x = jitter[1] * np_.maximum(width_f * scale - target_w, 0.0)
        return {"scale": scale, "offset_y": offset_y, "offset_x": offset_x,
                "input_height": height, "input_width": width}

    def _sample_axis(self, images, coordinates, size, axis):
        """Interpolate ``images`` along ``axis`` at per-image ``coordinates`` (batch, n)."""
        np_ = self.backend.numpy
        shape = list(self.backend.shape(images))
        shape[axis] = self.backend.shape(coordinates)[1]
        # (batch, n) → (batch, n, 1, 1) for rows, (batch, 1, n, 1) for columns.
        expand = (slice(None), slice(None), None, None) if axis == 1 else (
            slice(None), None, slice(None), None)
        if self.interpolation == "nearest":
            index = np_.clip(np_.round(coordinates), 0, size - 1)
            index = np_.broadcast_to(self.backend.cast(index, "int32")[expand], shape)
            return np_.take_along_axis(images, index, axis=axis)
        low = np_.floor(coordinates)
        weight = (coordinates - low)[expand]
        low_index = self.backend.cast(np_.clip(low, 0, size - 1), "int32")
        high_index = self.backend.cast(np_.clip(low + 1, 0, size - 1), "int32")
        low_values = np_.take_along_axis(images, np_.broadcast_to(low_index[expand], shape), axis=axis)
        high_values = np_.take_along_axis(images, np_.broadcast_to(high_index[expand], shape), axis=axis)
        return low_values * (1.0 - weight) + high_values * weight

    def transform_images(self, images, transformation, training=True):
        np_ = self.backend.numpy
        images = self.backend.cast(images, self.compute_dtype)
        height, width = transformation["input_height"], transformation["input_width"]
        target_h, target_w = self.target_size
        scale = transformation["scale"][:, None]
        # Output pixel centre y + 0.5 sits at (y + 0.5 + offset) / scale in the source image's
        # continuous coordinates, i.e. at that minus 0.5 in pixel-index units (half-pixel centres).
        ys = (np_.arange(target_h, dtype="float32")[None, :] + 0.5
              + transformation["offset_y"][:, None]) / scale - 0.5
        xs = (np_.arange(target_w, dtype="float32")[None, :] + 0.5
              + transformation["offset_x"][:, None]) / scale - 0.5
        height_f = self.backend.cast(height, "float32")
        width_f = self.backend.cast(width, "float32")
        out = self._sample_axis(images, ys, height_f, axis=1)
        out = self._sample_axis(out, xs, width_f, axis=2)
        # Past the resized image's edge is padding.
        inside_y = np_.logical_and(ys >= -0.5, ys <= height_f - 0.5)
        inside_x = np_.logical_and(xs >= -0.5, xs <= width_f - 0.5)
        inside = np_.logical_and(inside_y[:, :, None, None], inside_x[:, None, :, None])
        return np_.where(inside, out, self.backend.cast(self.fill_value, out.dtype))

    def transform_labels(self, labels, transformation, training=True):
        return labels

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        np_ = self.backend.numpy
        height, width = transformation["input_height"], transformation["input_width"]
        boxes = keras_boxes.convert_format(
            bounding_boxes["boxes"], source=self.bounding_box_format, target="xyxy",
            height=height, width=width)
        scale = transformation["scale"][:, None, None]
        shift = np_.stack([transformation["offset_x"], transformation["offset_y"]] * 2, axis=-1)
        boxes = boxes * scale - shift[:, None, :]
        clipped = keras_boxes.clip_to_image_size(
            {"boxes": boxes, "labels": bounding_boxes["labels"]},
            height=self.target_size[0], width=self.target_size[1], bounding_box_format="xyxy")
        clipped["boxes"] = keras_boxes.convert_format(
            clipped["boxes"], source="xyxy", target=self.bounding_box_format,
            height=self.target_size[0], width=self.target_size[1])
        return {**bounding_boxes, **clipped}

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        interpolation, self.interpolation = self.interpolation, "nearest"
        try:
            return self.transform_images(segmentation_masks, transformation, training)
        finally:
            self.interpolation = interpolation

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-3]) + self.target_size + (input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update({
            "target_size": list(self.target_size), "scale_factor": list(self.scale_factor),
            "bounding_box_format": self.bounding_box_format, "interpolation": self.interpolation,
            "fill_value": self.fill_value, "seed": self.seed,
        })
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class Mosaic(BaseImagePreprocessingLayer):
    """Tile each image with three others from its batch into a 2 × 2 mosaic and crop it back.

    For output image ``i``: images ``i``, ``a``, ``b``, ``c`` (``a, b, c`` drawn from the batch) fill
    the top-left, top-right, bottom-left and bottom-right quarters of a ``2H × 2W`` canvas; an
    ``H × W`` window is cut from it so that the point where the four meet lands at a random
    fraction ``center_range`` of the window's height and width. Pixels are copied, not resampled.

    Boxes of all four images are moved with them and clipped to the window: the output has
    ``4 × num_boxes`` boxes per image, those outside the window with label -1 (Keras' "no box").
    One-hot ``labels`` are mixed in proportion to each image's area in the window (integer class
    ids cannot be mixed: one-hot them first).

    With ``training=False`` images pass through unchanged.

    Args:
        center_range: ``(low, high)`` fractions of the window where the four images meet.
        bounding_box_format: format of the boxes, e.g. ``"xyxy"``.
        seed: integer seed.

    >>> images = np.stack([np.full((4, 4, 1), v, "float32") for v in (0, 1, 2, 3)])
    >>> out = keras.ops.convert_to_numpy(Mosaic(center_range=(0.5, 0.5), seed=0)(images))
    >>> sorted(set(out[0, :2, :2, 0].ravel().tolist())), out.shape  # top-left quarter: image 0
    ([0.0], (4, 4, 4, 1))
    """

    _USE_BASE_FACTOR = False

    def __init__(self, center_range=(0.25, 0.75), bounding_box_format=None, seed=None,
                 data_format=None, **kwargs):
        super().__init__(bounding_box_format=bounding_box_format, data_format=data_format, **kwargs)
        _check_channels_last(self)
        self.center_range = tuple(float(v) for v in _pair(center_range, "center_range"))
        if not 0 <= self.center_range[0] <= self.center_range[1] <= 1:
            raise ValueError(f"center_range must be (low, high) within [0, 1], got {center_range!r}.")
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def get_random_transformation(self, data, training=True, seed=None):
        if not training:
            return None
        images = data["images"] if isinstance(data, dict) else data
        shape = self.backend.shape(images)
        batch = 1 if len(shape) == 3 else shape[0]
        height, width = shape[-3], shape[-2]
        np_ = self.backend.numpy
        if seed is None:
            seed = self._get_seed_generator(self.backend._backend)
        partners = self.backend.random.randint((batch, 3), 0, batch, seed=seed, dtype="int32")
        sources = np_.concatenate([np_.arange(batch, dtype="int32")[:, None], partners], axis=1)
        center = self.backend.random.uniform((2, batch), *self.center_range, seed=seed)
        # Window top-left in the 2H × 2W canvas: the meeting point (H, W) is at `center` of it.
        offset_y = np_.round((1.0 - center[0]) * self.backend.cast(height, "float32"))
        offset_x = np_.round((1.0 - center[1]) * self.backend.cast(width, "float32"))
        return {"sources": sources, "offset_y": self.backend.cast(offset_y, "int32"),
                "offset_x": self.backend.cast(offset_x, "int32"),
                "input_height": height, "input_width": width}

    def transform_images(self, images, transformation, training=True):
        images = self.backend.cast(images, self.compute_dtype)
        if not training or transformation is None:
            return images
        np_ = self.backend.numpy
        shape = self.backend.shape(images)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        canvas_y = np_.arange(height, dtype="int32")[None, :] + transformation["offset_y"][:, None]
        canvas_x = np_.arange(width, dtype="int32")[None, :] + transformation["offset_x"][:, None]
        lower = self.backend.cast(canvas_y >= height, "int32")  # (batch, H): bottom row of tiles
        right = self.backend.cast(canvas_x >= width, "int32")  # (batch, W): right column
        quarter = 2 * lower[:, :, None] + right[:, None, :]  # (batch, H, W) in 0..3
        source = np_.take_along_axis(
            transformation["sources"], np_.reshape(quarter, (batch, -1)), axis=1)
        source = np_.reshape(source, (batch, height, width))
        row = (canvas_y - height * lower)[:, :, None]
        column = (canvas_x - width * right)[:, None, :]
        flat_index = (source * height + row) * width + column
        pixels = np_.reshape(images, (-1, channels))
        return np_.reshape(np_.take(pixels, np_.reshape(flat_index, (-1,)), axis=0),
                           (batch, height, width, channels))

    def _quarter_areas(self, transformation):
        """Fraction of the window each quarter's image covers: (batch, 4)."""
        height = self.backend.cast(transformation["input_height"], "float32")
        width = self.backend.cast(transformation["input_width"], "float32")
        top = 1.0 - self.backend.cast(transformation["offset_y"], "float32") / height
        left = 1.0 - self.backend.cast(transformation["offset_x"], "float32") / width
        return self.backend.numpy.stack(
            [top * left, top * (1 - left), (1 - top) * left, (1 - top) * (1 - left)], axis=1)

    def transform_labels(self, labels, transformation, training=True):
        if not training or transformation is None:
            return labels
        np_ = self.backend.numpy
        if len(self.backend.shape(labels)) != 2:
            raise ValueError(
                "Mosaic mixes labels by area, so they must be one-hot (batch, num_classes); got shape "
                f"{tuple(self.backend.shape(labels))}. Use keras.ops.one_hot(labels, num_classes).")
        labels = self.backend.cast(labels, self.compute_dtype)
        weights = self.backend.cast(self._quarter_areas(transformation), labels.dtype)
        gathered = np_.take(labels, np_.reshape(transformation["sources"], (-1,)), axis=0)
        gathered = np_.reshape(gathered, (-1, 4, self.backend.shape(labels)[-1]))
        return np_.sum(gathered * weights[:, :, None], axis=1)

    def transform_bounding_boxes(self, bounding_boxes, transformation, training=True):
        if not training or transformation is None:
            return bounding_boxes
        np_ = self.backend.numpy
        height, width = transformation["input_height"], transformation["input_width"]
        boxes = keras_boxes.convert_format(
            bounding_boxes["boxes"], source=self.bounding_box_format, target="xyxy",
            height=height, width=width)
        labels = bounding_boxes["labels"]
        height_f = self.backend.cast(height, boxes.dtype)
        width_f = self.backend.cast(width, boxes.dtype)
        offset_x = self.backend.cast(transformation["offset_x"], boxes.dtype)[:, None, None]
        offset_y = self.backend.cast(transformation["offset_y"], boxes.dtype)[:, None, None]
        moved_boxes, moved_labels = [], []
        for quarter in range(4):
            source = transformation["sources"][:, quarter]
            tile_x = width_f * (quarter % 2) - offset_x
            tile_y = height_f * (quarter // 2) - offset_y
            shift = np_.concatenate([tile_x, tile_y, tile_x, tile_y], axis=-1)
            moved_boxes.append(np_.take(boxes, source, axis=0) + shift)
            moved_labels.append(np_.take(labels, source, axis=0))
        clipped = keras_boxes.clip_to_image_size(
            {"boxes": np_.concatenate(moved_boxes, axis=1),
             "labels": np_.concatenate(moved_labels, axis=1)},
            height=height, width=width, bounding_box_format="xyxy")
        clipped["boxes"] = keras_boxes.convert_format(
            clipped["boxes"], source="xyxy", target=self.bounding_box_format,
            height=height, width=width)
        return {**bounding_boxes, **clipped}

    def transform_segmentation_masks(self, segmentation_masks, transformation, training=True):
        return self.transform_images(segmentation_masks, transformation, training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"center_range": list(self.center_range),
                       "bounding_box_format": self.bounding_box_format, "seed": self.seed})
        return config
