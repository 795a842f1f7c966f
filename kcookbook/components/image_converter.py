"""ImageConverter: raw images → the float tensor a vision backbone takes (resize, then rescale).

Pixels come in as uint8 (or float) values in ``[0, 255]``; out comes ``resize(x) * scale + offset``
at ``image_size``. ``scale``/``offset`` may be per channel, so ImageNet mean/std normalisation is
``ImageConverter.from_mean_std(...)``. The resizing is Keras's own ``keras.layers.Resizing``: it
runs on the current backend eagerly and in TensorFlow inside ``tf.data``, and moves bounding boxes
with the image (``crop_to_aspect_ratio`` crops boxes too).

    >>> import numpy as np
    >>> converter = ImageConverter(image_size=(4, 4), scale=1 / 127.5, offset=-1.0)
    >>> out = converter(np.full((2, 8, 6, 3), 255, dtype="uint8"))
    >>> out.shape, float(out.max())
    ((2, 4, 4, 3), 1.0)

``resampling="pillow"`` resizes as Hugging Face's image processors do instead (Pillow's filter, in
numpy: ``components/pillow_resize.py``), and ``shortest_edge=n`` first scales the short side to ``n``
(keeping the aspect ratio), then centre-crops ``image_size``: CLIP's preprocessing, pixel for pixel.

    >>> clip_like = ImageConverter((4, 4), shortest_edge=4, resampling="pillow", interpolation="bicubic")
    >>> clip_like(np.zeros((6, 9, 3), "uint8")).shape
    (1, 4, 4, 3)

Input rules (each broken rule is a ValueError that says what to do):

* a batch ``(batch, height, width, channels)``, one image ``(height, width, channels)``, a list of
  images (of different sizes: each is resized, then stacked), or a ``tf.Tensor`` inside ``tf.data``;
* a 3-D array is one image only when its last axis can be channels (1, 3, 4 or ``num_channels``):
  ``(1, 240, 320)`` is refused rather than read as one image with 320 channels. A batch of
  grayscale images ``(batch, height, width)`` needs its channel axis: ``images[..., None]``;
* a 2-D array ``(height, width)`` is one grayscale image (a list of them is a batch);
* ``channels`` equal to ``num_channels`` (3): grayscale images must be repeated to RGB first;
* height and width of at least one pixel;
* integer images hold values in ``[0, 255]``; float images are taken to hold values in
  ``[0, 255]`` like uint8 (Keras's convention); a float image whose values all lie in ``[0, 1]`` is
  refused (multiply it by 255 first), and so are NaN, infinity and values outside ``[0, 255]``. These
  checks run eagerly; inside ``tf.data`` the values are trusted;
* at least one image.
"""

import keras
import numpy as np

from kcookbook.components.inputs import is_tf_tensor
from kcookbook.components.pillow_resize import CROP_ROUNDINGS, FILTERS, center_crop, pillow_resize, shortest_edge_size
from kcookbook.components.validation import check_finite
from kcookbook.components.preset_entry import load_preset
from kcookbook.presets.errors import PresetError


@keras.saving.register_keras_serializable(package="kcookbook")
class ImageConverter:
    """Resize images to ``image_size`` and map their pixel values with ``x * scale + offset``.

    Args:
        image_size: ``(height, width)`` of the output.
        scale: a float, or one float per channel, applied to ``[0, 255]`` pixel values after resizing.
        offset: a float, or one float per channel, added after scaling.
        interpolation: ``"bilinear"``, ``"nearest"``, ``"bicubic"``… (``keras.layers.Resizing``).
        crop_to_aspect_ratio: center-crop to the target aspect ratio before resizing, so images are
            not distorted (boxes outside the crop are clipped).
        antialias: low-pass filter when downsampling. Off by default: the backends implement the
            filter slightly differently, plain bilinear agrees across backends to float rounding.
        num_channels: channels every image must have.
        bounding_box_format: format of boxes passed to ``__call__`` (``"xyxy"``, ``"rel_xyxy"``,
            ``"xywh"``, ``"center_xywh"``…, as in ``keras.utils.bounding_boxes``).
        resampling: ``"keras"`` (``keras.layers.Resizing``) or ``"pillow"`` (Pillow's uint8 resampling,
            what Hugging Face's image processors use; ``"bicubic"`` or ``"bilinear"``, no boxes).
        shortest_edge: with ``resampling="pillow"``, scale the short side to this many pixels, then
            centre-crop ``image_size`` (None: resize straight to ``image_size``).
        crop_rounding: where that centre crop puts the extra pixel of an odd margin: ``"floor"``
            (Hugging Face's image processors) or ``"round"`` (torchvision's ``CenterCrop``: OpenCLIP).
    """

    def __init__(self, image_size=(224, 224), scale=1.0 / 255.0, offset=0.0, interpolation="bilinear",
                 crop_to_aspect_ratio=True, antialias=False, num_channels=3, bounding_box_format="xyxy",
                 resampling="keras", shortest_edge=None, crop_rounding="floor"):
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        if len(image_size) != 2 or not all(isinstance(s, int) and s > 0 for s in image_size):
            raise ValueError(f"image_size must be (height, width) of positive ints, got {image_size!r}.")
        self.image_size = tuple(image_size)
        self.scale = _per_channel(scale, "scale")
        self.offset = _per_channel(offset, "offset")
        self.interpolation = interpolation
        self.crop_to_aspect_ratio = crop_to_aspect_ratio
        self.antialias = antialias
        self.num_channels = num_channels
        self.bounding_box_format = bounding_box_format
        _check_resampling(resampling, interpolation, shortest_edge, self.image_size)
        self.resampling = resampling
        self.shortest_edge = shortest_edge
        if crop_rounding not in CROP_ROUNDINGS:
            raise ValueError(f"crop_rounding must be one of {CROP_ROUNDINGS}, got {crop_rounding!r}.")
        self.crop_rounding = crop_rounding
        self._resizing = keras.layers.Resizing(
            *self.image_size, interpolation=interpolation, crop_to_aspect_ratio=crop_to_aspect_ratio,
            antialias=antialias, bounding_box_format=bounding_box_format, dtype="float32")
        self._rescaling = keras.layers.Rescaling(
            np.asarray(self.scale, "float32"), np.asarray(self.offset, "float32"), dtype="float32")

    @classmethod
    def from_mean_std(cls, image_size, mean, std, **kwargs):
        """The converter for ``(x / 255 - mean) / std``, the usual ImageNet normalisation.

        >>> c = ImageConverter.from_mean_std((224, 224), mean=0.5, std=0.5)  # to [-1, 1]
        >>> round(c.scale * 255 + c.offset, 6)  # white maps to 1
        1.0
        """
        mean, std = np.asarray(mean, "float64"), np.asarray(std, "float64")
        scale, offset = 1.0 / (255.0 * std), -mean / std
        return cls(image_size, scale=scale.tolist(), offset=offset.tolist(), **kwargs)

    @classmethod
    def from_processor_settings(cls, image_size, scale=1.0 / 255.0, mean=None, std=None, **kwargs):
        """A Hugging Face image processor's steps: ``(resize(x) * scale - mean) / std``.

        >>> c = ImageConverter.from_processor_settings((8, 8), scale=1 / 255, mean=[0.5] * 3, std=[0.5] * 3)
        >>> c.offset
        [-1.0, -1.0, -1.0]
        """
        mean = np.zeros(1) if mean is None else np.asarray(mean, "float64")
        std = np.ones(1) if std is None else np.asarray(std, "float64")
        total_scale, offset = np.broadcast_arrays(scale / std, -mean / std)
        squeeze = total_scale.size == 1
        return cls(image_size, scale=float(total_scale[0]) if squeeze else total_scale.tolist(),
                   offset=float(offset[0]) if squeeze else offset.tolist(), **kwargs)

    # ----- calling -----
    def __call__(self, images, bounding_boxes=None):
        """Convert images (and boxes); returns a float32 array, or a dict when boxes are given.

        Boxes are a dict ``{"boxes": (batch, num_boxes, 4), "labels": (batch, num_boxes)}`` in
        ``bounding_box_format``; they come back moved to the output image's pixels.
        """
        if is_tf_tensor(images) and not _is_eager_tf(images):
            return self._convert(images, bounding_boxes)  # inside tf.data: no eager checks
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                raise ValueError("No images to convert: got an empty list.")
            images = [_with_channel_axis(np.asarray(i)) for i in images]
            if bounding_boxes is None and len({np.shape(i) for i in images}) > 1:
                return np.stack([self(image)[0] for image in images])
            images = np.stack(images)
        images = self._check(images)
        out = self._convert(images, bounding_boxes)
        return keras.tree.map_structure(keras.ops.convert_to_numpy, out)

    def _convert(self, images, bounding_boxes):
        # Resize in float32: Resizing keeps an integer dtype (rounding) on some paths.
        if is_tf_tensor(images):
            import tensorflow as tf

            images = tf.cast(images, "float32")
        else:
            images = np.asarray(images, dtype="float32")
        if self.resampling == "pillow":
            if bounding_boxes is not None:
                raise ValueError("resampling='pillow' does not move bounding boxes; use resampling='keras'.")
            return self._rescaling(self._pillow_resized(images))
        if bounding_boxes is None:
            return self._rescaling(self._resizing(images))
        out = self._resizing({"images": images, "bounding_boxes": bounding_boxes})
        out["images"] = self._rescaling(out["images"])
        return out

    def _pillow_resized(self, images):
        """Pillow's resize (and centre crop) of each image, as float32; inside tf.data through
        ``tf.numpy_function``."""
        def resize_all(array):
            array = np.clip(np.round(np.asarray(array, "float32")), 0, 255).astype(np.uint8)
            batch = array if array.ndim == 4 else array[None]
            out = np.stack([self._pillow_resize_one(image) for image in batch]).astype("float32")
            return out if array.ndim == 4 else out[0]

        if not is_tf_tensor(images):
            return resize_all(images)
        import tensorflow as tf

        out = tf.numpy_function(resize_all, [images], tf.float32, stateful=False)
        out.set_shape(images.shape[:-3].concatenate(self.image_size + (images.shape[-1],)))
        return out

    def _pillow_resize_one(self, image):
        if self.shortest_edge is None:
            return pillow_resize(image, self.image_size, self.interpolation)
        size = shortest_edge_size(image.shape[0], image.shape[1], self.shortest_edge)
        return center_crop(pillow_resize(image, size, self.interpolation), self.image_size, self.crop_rounding)

    def _check(self, images):
        images = images.numpy() if is_tf_tensor(images) else np.asarray(images)
        if images.dtype == object:
            raise ValueError("Images of different sizes must come as a list of arrays, not an object array.")
        one_grayscale = images.ndim == 2
        images = _with_channel_axis(images)
        if images.ndim == 3:
            if images.shape[-1] not in (1, 3, 4, self.num_channels):
                raise ValueError(
                    f"Images shaped {images.shape} are ambiguous: one image with {images.shape[-1]} channels, "
                    f"or {images.shape[0]} grayscale images? A batch of grayscale images needs a channel "
                    f"axis: images[..., None] (then np.repeat(images[..., None], {self.num_channels}, "
                    f"axis=-1) for {self.num_channels} channels); one image is (height, width, channels).")
            images = images[None]
        if images.ndim != 4:
            raise ValueError(
                f"Expected images shaped (batch, height, width, {self.num_channels}) or (height, width, "
                f"{self.num_channels}); got shape {images.shape}.")
        if images.shape[0] == 0:
            raise ValueError(f"No images to convert: the batch is empty (shape {images.shape}).")
        if images.shape[1] == 0 or images.shape[2] == 0:
            raise ValueError(f"Images must be at least 1×1 pixels; got height {images.shape[1]} and width "
                             f"{images.shape[2]} (shape {images.shape}).")
        if images.shape[-1] != self.num_channels:
            hint = (f" A grayscale image (height, width) needs a channel axis of {self.num_channels}: "
                    f"np.repeat(image[..., None], {self.num_channels}, axis=-1)." if one_grayscale else
                    f" Repeat grayscale to RGB: np.repeat(images, {self.num_channels}, axis=-1)."
                    if images.shape[-1] == 1 else
                    " Drop the alpha channel: images[..., :3]." if images.shape[-1] == 4 else
                    " Channels go last (channels_last).")
            raise ValueError(f"Images have {images.shape[-1]} channels; this converter takes "
                             f"{self.num_channels}. Got shape {images.shape}.{hint}")
        if np.issubdtype(images.dtype, np.floating):
            check_finite("images", images)
            low, high = float(np.min(images)), float(np.max(images))
            if low < 0.0 or high > 255.0:
                raise ValueError(f"Float images must hold pixel values in [0, 255]; these range over "
                                 f"[{low:.3g}, {high:.3g}]. Pass the raw uint8 image instead.")
            if high <= 1.0 and high > 0.0:
                raise ValueError("Float images are read as pixel values in [0, 255] (like uint8), but "
                                 f"these all lie in [0, 1] (max {high:.3g}). Multiply them by 255 first.")
        elif np.issubdtype(images.dtype, np.integer):
            if images.dtype != np.uint8 and (images.min() < 0 or images.max() > 255):
                raise ValueError(f"Integer images must hold pixel values in [0, 255]; these ({images.dtype}) "
                                 f"range over [{images.min()}, {images.max()}]. Scale them to uint8 first.")
        else:
            raise ValueError(f"Images must be uint8 or float, got dtype {images.dtype}.")
        return images

    # ----- serialisation -----
    def get_config(self):
        return {"image_size": list(self.image_size), "scale": self.scale, "offset": self.offset,
                "interpolation": self.interpolation, "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
                "antialias": self.antialias, "num_channels": self.num_channels,
                "bounding_box_format": self.bounding_box_format, "resampling": self.resampling,
                "shortest_edge": self.shortest_edge, "crop_rounding": self.crop_rounding}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @classmethod
    def from_preset(cls, handle):
        """The image converter a preset names (its size and normalisation)."""
        converter = load_preset(handle).load_image_converter()
        if converter is None:
            raise PresetError(f"Preset {handle!r} has no image converter (it is not a vision preset).")
        return converter

    def __repr__(self):
        return (f"ImageConverter(image_size={self.image_size}, scale={self.scale}, offset={self.offset}, "
                f"interpolation={self.interpolation!r}, crop_to_aspect_ratio={self.crop_to_aspect_ratio})")


def _check_resampling(resampling, interpolation, shortest_edge, image_size):
    if resampling not in ("keras", "pillow"):
        raise ValueError(f"resampling must be 'keras' or 'pillow', got {resampling!r}.")
    if resampling == "pillow" and interpolation not in FILTERS:
        raise ValueError(f"resampling='pillow' supports interpolation {sorted(FILTERS)}, got {interpolation!r}.")
    if shortest_edge is None:
        return
    if resampling != "pillow":
        raise ValueError("shortest_edge (resize the short side, then centre-crop) needs resampling='pillow'.")
    if not isinstance(shortest_edge, int) or isinstance(shortest_edge, bool) or shortest_edge < max(image_size):
        raise ValueError(f"shortest_edge must be an int of at least the crop size {max(image_size)} (image_size "
                         f"{image_size}), got {shortest_edge!r}.")


def _with_channel_axis(image):
    """A 2-D array (height, width) is one grayscale image: give it its channel axis."""
    return image[..., None] if image.ndim == 2 else image


def _is_eager_tf(x):
    import tensorflow as tf

    return tf.executing_eagerly() and hasattr(x, "numpy")


def _per_channel(value, name):
    """A float stays a float; a sequence becomes a list of floats (JSON-friendly)."""
    array = np.asarray(value, dtype="float64")
    if array.ndim == 0:
        return float(array)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a float or one float per channel, got shape {array.shape}.")
    return [float(v) for v in array]
