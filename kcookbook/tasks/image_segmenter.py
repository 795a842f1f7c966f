"""ImageSegmenter: promptable segmentation (Segment Anything) on raw images of any size.

    >>> segmenter = ImageSegmenter.from_preset("lite_medsam")  # doctest: +SKIP
    >>> out = segmenter.predict({"images": image, "boxes": [[40, 30, 200, 180]]})  # doctest: +SKIP
    >>> out["masks"].shape, out["iou_pred"].shape  # doctest: +SKIP
    ((1, 4, 240, 320), (1, 4))

Preprocessing is Hugging Face's ``SamProcessor``: the longest side is resized to the model's input
size (PIL bilinear on uint8 pixels, as the processor does), pixels are rescaled and normalised, and
the image is zero-padded at the bottom and right to the square input. Points (x, y) and boxes
(x0, y0, x1, y1) are given in the input image's pixels and moved to the model's the same way.
Without a box, a "not a point" padding point is appended (as the processor and SAM do).

Outputs: ``masks`` (batch, 1 + multimask outputs, height, width) booleans at each input image's size
(a list when the images differ in size), the single-mask output first and the three multimask
outputs last; ``iou_pred`` (batch, masks); ``low_res_masks`` the decoder's logits (batch, masks,
4e, 4e) in the padded model frame.

Interactive use: ``embedding = segmenter.embed_images(images)`` runs the image encoder once;
``segmenter.predict({**embedding, "points": ..., "labels": ...})`` then runs only the prompt
encoder and mask decoder.

``fit(x, y)`` trains the prompt encoder and mask decoder (the image encoder is frozen unless
``segmenter.backbone.image_encoder_model.trainable = True``) with the SAM paper's loss: 20 × focal +
1 × dice on the mask logits (the best of the outputs for each example, as the paper back-propagates
the lowest loss of the multimask outputs), plus the mean squared error between ``iou_pred`` and the
IoU each predicted mask actually has. ``y`` holds the ground-truth masks at the input images' sizes.

While the image encoder is frozen, ``fit`` runs it once per image (``embed_images``, two images
at a time) and trains the prompt decoder (``backbone.prompt_decoder``, the same weights) on those
embeddings: every epoch after the first costs only the decoder, and no step holds the encoder's
activations. ``x`` may also be ``embed_images``' output merged with the prompts.
``fit(..., cache_image_embeddings=False)`` runs the whole model on every step instead (the same
update; what a trainable encoder needs).
"""

import keras
import numpy as np
from keras import ops

from kcookbook.backbones.sam import SAMBackbone
from kcookbook.components.inputs import is_tf_dataset
from kcookbook.components.preset_entry import load_preset
from kcookbook.tasks.image_classifier import ImageClassifierPreprocessor
from kcookbook.tasks.task import Task

LABELS = (-10, -1, 0, 1)  # ignored, "not a point" padding, background, foreground


def _pil():
    from PIL import Image

    return Image


def _resized_shape(height, width, longest):
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _as_images(images):
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, np.ndarray) and images.ndim in (2, 3):
        images = [images]
    elif not isinstance(images, (list, tuple)):
        images = list(np.asarray(images)) if np.ndim(images) == 4 else [np.asarray(images)]
    if not images:
        raise ValueError("images is empty: pass at least one image (height, width, 3).")
    out = []
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, -1)
        if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"images[{i}] has shape {image.shape}; each image must be (height, width, 3) "
                             "(or (height, width) grayscale).")
        if image.dtype != np.uint8:
            if not np.all(np.isfinite(image)) or image.min() < 0 or image.max() > 255:
                raise ValueError(f"images[{i}] holds values outside [0, 255] (or NaN): pass uint8 pixels.")
            image = np.round(image).astype("uint8")
        out.append(image)
    return out


@keras.saving.register_keras_serializable(package="kcookbook")
class ImageSegmenterPreprocessor(ImageClassifierPreprocessor):
    """Raw images and prompts → SAM's model inputs (``SamProcessor``'s steps); its config and
    ``from_preset`` are the image classifier preprocessor's (one ``ImageConverter``).

    ``image_converter`` gives the square input size (``image_size``) and ``scale``/``offset`` (the
    rescale and mean/std normalisation); its own resizing is not used (SAM keeps the aspect ratio).
    """

    def __init__(self, image_converter):
        super().__init__(image_converter)
        if image_converter.image_size[0] != image_converter.image_size[1]:
            raise ValueError(f"SAM's input is square; image_converter.image_size is {image_converter.image_size}.")
        self.size = image_converter.image_size[0]

    def images(self, images):
        """``(pixels (batch, size, size, 3), original_sizes, resized_sizes)``."""
        images = _as_images(images)
        scale = np.asarray(self.image_converter.scale, "float32")
        offset = np.asarray(self.image_converter.offset, "float32")
        out = np.zeros((len(images), self.size, self.size, 3), "float32")
        original, resized = [], []
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            new_h, new_w = _resized_shape(height, width, self.size)
            pixels = np.asarray(_pil().fromarray(image).resize((new_w, new_h), _pil().BILINEAR), "float32")
            out[i, :new_h, :new_w] = pixels * scale + offset
            original.append((height, width))
            resized.append((new_h, new_w))
        return out, np.asarray(original), np.asarray(resized)

    def prompts(self, x, original_sizes, resized_sizes):
        """``points``/``labels``/``boxes`` of ``x`` in the model's pixels, with SAM's padding point."""
        batch = len(original_sizes)
        points, labels, boxes = x.get("points"), x.get("labels"), x.get("boxes")
        if points is None and boxes is None:
            raise ValueError("No prompt: pass points (with labels) and/or boxes in the input dict.")
        factor = (resized_sizes / original_sizes)[:, ::-1].astype("float32")  # (batch, 2): x, y
        if points is not None:
            points = np.asarray(points, "float32")
            if points.ndim == 2 and batch == 1:
                points = points[None]
            if points.ndim != 3 or points.shape[0] != batch or points.shape[-1] != 2:
                raise ValueError(f"points has shape {points.shape}; it must be (batch={batch}, num_points, 2): "
                                 "(x, y) pixels of the input image, one row of points per image.")
            if labels is None:
                raise ValueError("points were given without labels: pass labels (batch, num_points) with 1 for "
                                 "foreground and 0 for background points.")
            labels = np.asarray(labels)
            if labels.ndim == 1 and batch == 1:
                labels = labels[None]
            if labels.shape != points.shape[:2]:
                raise ValueError(f"labels has shape {labels.shape} but points has {points.shape}: give one label "
                                 f"per point, shaped {points.shape[:2]}.")
            if not np.isin(labels, LABELS).all():
                raise ValueError(f"labels holds {sorted(set(np.unique(labels)) - set(LABELS))[:5]}; labels are 1 "
                                 "(foreground), 0 (background), -1 (padding point) or -10 (ignored).")
            check_finite = np.isfinite(points).all()
            if not check_finite:
                raise ValueError("points holds NaN or infinity.")
            points = points * factor[:, None]
            labels = labels.astype("float32")
        if boxes is not None:
            boxes = np.asarray(boxes, "float32")
            if boxes.ndim == 1 and batch == 1:
                boxes = boxes[None]
            if boxes.ndim == 2:
                boxes = boxes[:, None]
            if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[-1] != 4:
                raise ValueError(f"boxes has shape {boxes.shape}; it must be (batch={batch}, 4) or (batch, "
                                 "num_boxes, 4): x0, y0, x1, y1 pixels of the input image.")
            if not np.isfinite(boxes).all() or (boxes[..., 2:] < boxes[..., :2]).any():
                raise ValueError("boxes must be finite x0, y0, x1, y1 with x1 >= x0 and y1 >= y0.")
            boxes = boxes * np.tile(factor, 2)[:, None]
        else:
            boxes = np.zeros((batch, 0, 4), "float32")
            points = np.concatenate([points, np.zeros((batch, 1, 2), "float32")], 1)
            labels = np.concatenate([labels, -np.ones((batch, 1), "float32")], 1)
        if points is None:
            points, labels = np.zeros((batch, 0, 2), "float32"), np.zeros((batch, 0), "float32")
        return {"points": points, "labels": labels, "boxes": boxes}

    def targets(self, masks, original_sizes, low_res_size):
        """Ground-truth masks at the input images' sizes → (batch, masks_size, masks_size) in the
        padded model frame at the decoder's resolution."""
        masks = list(masks) if isinstance(masks, (list, tuple)) or np.ndim(masks) == 3 else [masks]
        if len(masks) != len(original_sizes):
            raise ValueError(f"y has {len(masks)} masks for {len(original_sizes)} images: give one mask per image.")
        out = np.zeros((len(masks), low_res_size, low_res_size), "float32")
        for i, (mask, size) in enumerate(zip(masks, original_sizes)):
            mask = np.asarray(mask, "float32")
            if mask.shape != tuple(size):
                raise ValueError(f"y[{i}] has shape {mask.shape}, but its image is {tuple(size)}: masks are "
                                 "(height, width) at the input image's size.")
            new_h, new_w = _resized_shape(*size, low_res_size)
            small = np.asarray(_pil().fromarray(mask).resize((new_w, new_h), _pil().BILINEAR))
            out[i, :new_h, :new_w] = small > 0.5
        return out

    def __call__(self, x, y=None, sample_weight=None):
        raise TypeError("ImageSegmenterPreprocessor works through ImageSegmenter (images(), prompts(), "
                        "targets()); it is not called on its own.")


def upscale_masks(low_res, padded_size, resized_size, original_size):
    """Decoder logits (masks, h, w) → (masks, height, width) logits at the input image's size:
    bilinear to the padded square, crop the padding, bilinear to the original size (SamProcessor's
    ``post_process_masks``)."""
    x = ops.transpose(ops.convert_to_tensor(low_res), (1, 2, 0))[None]
    x = ops.image.resize(x, (padded_size, padded_size), interpolation="bilinear", antialias=False)
    x = x[:, :resized_size[0], :resized_size[1]]
    x = ops.image.resize(x, tuple(int(s) for s in original_size), interpolation="bilinear", antialias=False)
    return ops.convert_to_numpy(ops.transpose(x[0], (2, 0, 1)))


def mask_iou(predicted, target):
    """Intersection over union of boolean masks over their last two axes: (..., h, w) → (...) floats.

    Two empty masks agree perfectly (IoU 1.0). ``predicted`` may hold more leading axes than
    ``target`` (e.g. every output of ``predict``'s ``masks`` against one ground truth): they broadcast.
    """
    predicted, target = np.asarray(predicted, bool), np.asarray(target, bool)
    if predicted.ndim < 2 or target.ndim < 2 or predicted.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"mask_iou compares masks of the same (height, width); predicted has shape "
                         f"{predicted.shape} and target {target.shape}.")
    intersection = (predicted & target).sum(axis=(-2, -1))
    union = (predicted | target).sum(axis=(-2, -1))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def mask_box(mask, margin=0):
    """The box prompt (x0, y0, x1, y1) around a mask's True pixels, in the mask's pixels, widened by
    ``margin`` pixels on each side and clipped to the image (the box a user would draw)."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"mask_box needs a (height, width) mask with at least one True pixel; got shape "
                         f"{mask.shape} with {int(mask.sum())} True pixels.")
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    return np.array([max(xs.min() - margin, 0), max(ys.min() - margin, 0),
                     min(xs.max() + margin, width - 1), min(ys.max() + margin, height - 1)], "float32")


def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss (Lin et al.), mean over pixels: (batch, masks, h, w) → (batch, masks)."""
    p = ops.sigmoid(logits)
    ce = ops.maximum(logits, 0) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))
    return ops.mean(loss, axis=(2, 3))


def dice_loss(logits, targets, eps=1.0):
    p = ops.sigmoid(logits)
    intersection = ops.sum(p * targets, axis=(2, 3))
    return 1 - (2 * intersection + eps) / (ops.sum(p, axis=(2, 3)) + ops.sum(targets, axis=(2, 3)) + eps)


def segmentation_loss(y, y_pred, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0, sample_weight=None):
    """SAM's training loss, averaged over the batch: ``focal_weight`` × focal + ``dice_weight`` × dice
    of the best mask output of each example, plus ``iou_weight`` × the squared error of ``iou_pred``
    against each output's actual IoU. ``y`` (batch, h, w) target masks; ``y_pred`` the decoder's
    ``{"masks": logits (batch, masks, h, w), "iou_pred": (batch, masks)}``."""
    logits = y_pred["masks"]
    targets = ops.cast(y, logits.dtype)[:, None]
    mask_loss = focal_weight * focal_loss(logits, targets) + dice_weight * dice_loss(logits, targets)
    predicted = ops.cast(logits > 0, logits.dtype)
    intersection = ops.sum(predicted * targets, axis=(2, 3))
    union = ops.sum(ops.maximum(predicted, targets), axis=(2, 3))
    iou = ops.stop_gradient(intersection / ops.maximum(union, 1.0))
    iou_loss = ops.mean((y_pred["iou_pred"] - iou) ** 2, axis=-1)
    per_example = ops.min(mask_loss, axis=-1) + iou_weight * iou_loss
    if sample_weight is not None:
        per_example = per_example * ops.cast(sample_weight, per_example.dtype)
    return ops.mean(per_example)


class PromptDecoderTrainer(keras.Model):
    """The prompt encoder and mask decoder of a segmenter (``backbone.prompt_decoder``, sharing its
    weights) trained on image embeddings with the segmenter's loss and optimizer; what
    ``ImageSegmenter.fit`` runs while the image encoder is frozen."""

    def __init__(self, segmenter):
        decoder = segmenter.backbone.prompt_decoder
        super().__init__(name=f"{segmenter.name}_prompt_decoder_trainer")
        self.decoder = decoder
        self.built = True
        self.loss_weights_of = lambda: (segmenter.focal_weight, segmenter.dice_weight, segmenter.iou_weight)

    def call(self, inputs, training=False):
        return self.decoder({k: inputs[k] for k in self.decoder.input}, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return segmentation_loss(y, y_pred, *self.loss_weights_of(), sample_weight=sample_weight)


@keras.saving.register_keras_serializable(package="kcookbook")
class ImageSegmenter(Task):
    """Segment Anything as a task: prompts in, masks at the input size out (see the module).

    Args:
        backbone: a ``SAMBackbone``.
        preprocessor: an ``ImageSegmenterPreprocessor`` (None: feed model inputs yourself).
        focal_weight, dice_weight, iou_weight: weights of the training loss terms (20, 1, 1).
    """

    preprocessor_cls = ImageSegmenterPreprocessor

    def __init__(self, backbone, preprocessor=None, focal_weight=20.0, dice_weight=1.0, iou_weight=1.0,
                 name="image_segmenter", **kwargs):
        if not isinstance(backbone, SAMBackbone):
            raise TypeError(f"ImageSegmenter needs a SAMBackbone, got {type(backbone).__name__}.")
        inputs = backbone.input
        outputs = backbone(inputs)
        super().__init__(inputs=inputs, outputs={"masks": outputs["masks"], "iou_pred": outputs["iou_pred"]},
                         name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.iou_weight = iou_weight
        backbone.image_encoder_model.trainable = False
        self.compile()

    def compile(self, optimizer="auto", **kwargs):
        """Default: AdamW(1e-4) (the loss is the task's own, see the module)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.01)
        super().compile(optimizer=optimizer, **kwargs)

    # ----- preprocessing -----
    def _require_preprocessor(self):
        if self.preprocessor is None:
            raise ValueError(f"{self.name} has no preprocessor: build it with "
                             "ImageSegmenterPreprocessor(ImageConverter(...)) or load it with from_preset.")
        return self.preprocessor

    def embed_images(self, images, batch_size=2):
        """Run the image encoder once: ``{"image_embeddings", "original_sizes", "resized_sizes"}``,
        to merge into later ``predict`` (or ``fit``) inputs with the prompts. The encoder sees
        ``batch_size`` images at a time, which bounds its memory (LiteMedSAM's TinyViT holds ~1.3 GB
        of activations per 256-px image on a CPU: its first stage runs at full resolution)."""
        pixels, original, resized = self._require_preprocessor().images(images)
        return {"image_embeddings": self._encode(pixels, batch_size), "original_sizes": original,
                "resized_sizes": resized}

    def _encode(self, pixels, batch_size=2):
        return np.concatenate([ops.convert_to_numpy(self.backbone.embed_images(pixels[i:i + batch_size]))
                               for i in range(0, len(pixels), batch_size)])

    def _model_inputs_from(self, x):
        if not isinstance(x, dict):
            raise ValueError(f"{self.name} takes a dict with images (or embed_images' output) and prompts "
                             f"(points + labels and/or boxes), got {type(x).__name__}.")
        if "image_embeddings" in x:
            embedded = x
        elif "images" in x:
            embedded = None
        else:
            raise ValueError("The input dict has neither images nor image_embeddings (from embed_images).")
        if embedded is None:
            pixels, original, resized = self._require_preprocessor().images(x["images"])
        else:
            pixels, original, resized = None, np.asarray(x["original_sizes"]), np.asarray(x["resized_sizes"])
        prompts = self._require_preprocessor().prompts(x, original, resized)
        return pixels, embedded, prompts, original, resized

    def predict(self, x, batch_size=None, **kwargs):
        pixels, embedded, prompts, original, resized = self._model_inputs_from(x)
        embeddings = self._encode(pixels) if embedded is None else embedded["image_embeddings"]
        out = self.backbone.decode(embeddings, **prompts)
        low_res = ops.convert_to_numpy(out["masks"])
        masks = [upscale_masks(low_res[i], self.backbone.image_size, resized[i], original[i]) > 0
                 for i in range(len(original))]
        same = len({m.shape for m in masks}) == 1
        return {"masks": np.stack(masks) if same else masks, "iou_pred": ops.convert_to_numpy(out["iou_pred"]),
                "low_res_masks": low_res}

    # ----- training -----
    def preprocess(self, x, y=None, sample_weight=None):
        """Images (or ``embed_images``' output) and prompts → model inputs: ``images`` or
        ``image_embeddings``, the prompts in model pixels, an empty mask prompt; ``y`` → targets."""
        if isinstance(x, dict) and "has_mask" in x:  # already model inputs
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        pixels, embedded, prompts, original, resized = self._model_inputs_from(x)
        image_inputs = ({"images": pixels} if embedded is None
                        else {"image_embeddings": np.asarray(embedded["image_embeddings"], "float32")})
        batch, e4 = len(original), 4 * self.backbone.embedding_size
        inputs = {**image_inputs, **prompts, "masks": np.zeros((batch, e4, e4, 1), "float32"),
                  "has_mask": np.zeros((batch,), "float32")}
        if y is not None:
            y = self._require_preprocessor().targets(y, original, e4)
        return keras.utils.pack_x_y_sample_weight(inputs, y, sample_weight)

    def check_labels(self, y):
        return

    def check_inputs(self, x):
        """Model inputs with images go to the backbone's checks; image embeddings must have the
        shape ``embed_images`` gives (the prompts were checked when they were preprocessed)."""
        if not (isinstance(x, dict) and "image_embeddings" in x):
            return super().check_inputs(x)
        e, dim = self.backbone.embedding_size, self.backbone.embedding_dim
        shape = tuple(np.shape(x["image_embeddings"]))
        if shape[1:] != (e, e, dim) or shape[0] == 0:
            raise ValueError(f"image_embeddings has shape {shape}; {self.name} takes (batch, {e}, {e}, {dim}): "
                             "compute them with embed_images on this segmenter.")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return segmentation_loss(y, y_pred, self.focal_weight, self.dice_weight, self.iou_weight, sample_weight)

    def _embedded(self, x):
        """``x`` with its images replaced by their embeddings (``embed_images``)."""
        if not isinstance(x, dict) or "images" not in x or "image_embeddings" in x:
            return x
        return {**{k: v for k, v in x.items() if k != "images"}, **self.embed_images(x["images"])}

    def prompt_decoder_trainer(self):
        """The ``PromptDecoderTrainer`` of this segmenter, compiled with its current optimizer."""
        return self._shared_trainer(PromptDecoderTrainer)

    def fit(self, x=None, y=None, batch_size=None, validation_data=None, sample_weight=None,
            cache_image_embeddings=True, **kwargs):
        """Train the prompt encoder and mask decoder (see the module). With the image encoder frozen
        and ``cache_image_embeddings`` (the default), the images are embedded once and the decoder
        trains on the embeddings; otherwise every step runs the whole model."""
        frozen = not self.backbone.image_encoder_model.trainable
        embeddings_given = isinstance(x, dict) and "image_embeddings" in x
        if not (frozen and cache_image_embeddings) or is_tf_dataset(x) or is_tf_dataset(validation_data):
            if embeddings_given:
                raise ValueError("fit got image_embeddings, but they train only a frozen image encoder's "
                                 "decoder with cache_image_embeddings=True: pass images instead (a trainable "
                                 "image encoder, or cache_image_embeddings=False, needs them).")
            return super().fit(x, y, batch_size=batch_size, validation_data=validation_data,
                               sample_weight=sample_weight, **kwargs)
        x, y, sample_weight = self._prepare(self._embedded(x), y, sample_weight, labelled=True)
        if validation_data is not None:
            val_x, val_y, *val_weight = validation_data
            validation_data = keras.utils.pack_x_y_sample_weight(
                *self._prepare(self._embedded(val_x), val_y, *val_weight, labelled=True))
        with self._keeps_state_on_failure():
            return self.prompt_decoder_trainer().fit(x, y, batch_size=batch_size, validation_data=validation_data,
                                                     sample_weight=sample_weight, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """The loss on images, or on ``embed_images``' output merged with the prompts."""
        if not (isinstance(x, dict) and "image_embeddings" in x):
            return super().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)
        x, y, sample_weight = self._prepare(x, y, sample_weight, labelled=True)
        with self._keeps_state_on_failure():
            return self.prompt_decoder_trainer().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight,
                                                          **kwargs)

    # ----- presets -----
    @classmethod
    def from_preset(cls, handle, load_weights=True, **kwargs):
        """A segmenter on a SAM preset: a built-in name (``lite_medsam``), a Hugging Face ``SamModel``
        folder or ``hf://`` handle, or a kcookbook preset directory."""
        loader = load_preset(handle)
        backbone_kwargs = cls.pop_backbone_kwargs(kwargs)
        task = loader.load_task(cls, load_weights=load_weights, backbone_kwargs=backbone_kwargs, **kwargs)
        if task is None:
            task = cls(backbone=loader.load_backbone(load_weights=load_weights, **backbone_kwargs), **kwargs)
        if task.preprocessor is None:
            converter = loader.load_image_converter()
            if converter is not None:
                task.preprocessor = ImageSegmenterPreprocessor(converter)
        return task

    def get_config(self):
        config = super().get_config()
        config.update({"focal_weight": self.focal_weight, "dice_weight": self.dice_weight,
                       "iou_weight": self.iou_weight})
        return config
