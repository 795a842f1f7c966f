"""ObjectDetector: YOLOv8 detection (anchor-free, decoupled head) trained and run on raw images.

The model maps pixels in [0, 255] to, for every cell of the three feature maps (strides 8, 16, 32),
``box_bins`` logits per box side and one logit per class. Training (``fit``) takes images with a
dict of padded ground truth, ``{"boxes": (batch, max_boxes, 4), "labels": (batch, max_boxes)}``,
boxes in ``bounding_box_format`` (``keras.utils.bounding_boxes`` names: ``"xyxy"``, ``"xywh"``,
``"center_xywh"``, ``"rel_xyxy"``…) and rows with label -1 as padding. The loss is YOLOv8's:

    7.5 · CIoU loss + 0.5 · BCE classification + 1.5 · distribution focal loss,

each normalised by the sum of the task-aligned assigner's target scores (Ultralytics' weights;
the total is per batch, not multiplied by the batch size as Ultralytics does for SGD).

``predict(images)`` takes images of any sizes (a list of ``(h, w, 3)`` arrays, or one array),
letterboxes each into ``image_size`` (aspect kept, grey 114 padding, as YOLOv8 does), decodes the
boxes, runs class-aware non-max suppression in the compiled graph and maps the boxes back to each
input image's pixels. It returns a dict of arrays padded to ``max_detections``: ``boxes`` in
``bounding_box_format`` (-1 rows as padding), ``confidence``, ``classes`` (-1 padding) and
``num_detections``.
"""

import keras
import numpy as np
from keras import layers, ops
from keras.utils import bounding_boxes as keras_boxes

from kcookbook.backbones.yolov8 import FEATURE_STRIDES, YOLOv8Backbone, detection_head
from kcookbook.components.anchors import anchor_points, boxes_to_distances, distances_to_boxes
from kcookbook.components.boxes import NonMaxSuppression, complete_iou
from kcookbook.components.convolution import fold_batch_norms
from kcookbook.components.distribution_focal_loss import distribution_focal_loss, expected_distance
from kcookbook.components.preset_entry import load_preset
from kcookbook.components.task_aligned_assigner import TaskAlignedAssigner
from kcookbook.components.validation import check_finite, eager_array
from kcookbook.presets.errors import PresetError
from kcookbook.tasks.task import Task

LOSS_WEIGHTS = {"box": 7.5, "class": 0.5, "dfl": 1.5}
PAD_VALUE = 114  # letterbox grey


@keras.saving.register_keras_serializable(package="kcookbook")
class ObjectDetector(Task):
    """YOLOv8 object detector on a ``YOLOv8Backbone``.

    Args:
        backbone: a ``YOLOv8Backbone``.
        num_classes: number of object classes.
        bounding_box_format: the format of the boxes ``fit`` reads and ``predict`` returns.
        class_names: optional names of the classes.
        box_bins: bins of each side's distance distribution (YOLOv8: 16, reaching 15 strides).
        image_size: the square side (a multiple of 32) ``predict`` letterboxes images into.
        confidence_threshold, iou_threshold, max_detections: non-max suppression at ``predict``.
        max_candidates: the most boxes (by confidence) NMS considers per image. NMS compares every pair
            of candidates, so its cost grows as their square: 512 keeps it small next to the network
            at 320 px (2,100 anchors; 8,400 at 640 px). Ultralytics drops boxes under the confidence
            threshold before its NMS and KerasCV hands its NMS every box; a fixed number keeps the
            compiled graph's shapes static. On held-out 320-px canvases of 18 digits each, mAP at
            confidence 0.001 was the same with 256, 512, 1,024 and all candidates (benchmarks/README.md,
            YOLOv8 section); raise it for scenes with many more objects.
    """

    def __init__(self, backbone, num_classes, bounding_box_format="xyxy", class_names=None, box_bins=16,
                 image_size=640, confidence_threshold=0.25, iou_threshold=0.7, max_detections=300,
                 max_candidates=512, preprocessor=None, name="object_detector", **kwargs):
        if not isinstance(backbone, YOLOv8Backbone):
            raise ValueError(f"ObjectDetector needs a YOLOv8Backbone, got {type(backbone).__name__}.")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive integer (the number of classes), got {num_classes!r}.")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}.")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32 (the coarsest stride), got {image_size!r}.")
        keras_boxes.convert_format(np.zeros((1, 4), "float32"), bounding_box_format, "xyxy", 1, 1)  # a known name
        images = keras.Input(backbone.input.shape[1:], name="images")
        features = backbone(layers.Rescaling(1 / 255, name="pixel_scale")(images))
        boxes, classes = detection_head([features["P3"], features["P4"], features["P5"]], num_classes, box_bins)
        super().__init__(inputs=images, outputs={"boxes": boxes, "classes": classes}, name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.num_classes = num_classes
        self.bounding_box_format = bounding_box_format
        self.class_names = list(class_names) if class_names is not None else None
        self.box_bins = box_bins
        self.image_size = image_size
        self.confidence_threshold = confidence_threshold
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self.max_candidates = max_candidates
        self.assigner = TaskAlignedAssigner(num_classes, top_k=10, alpha=0.5, beta=6.0,
                                            min_box_side=float(FEATURE_STRIDES[1]))
        self.nms = NonMaxSuppression(max_detections, iou_threshold, confidence_threshold, "xyxy",
                                     class_aware=True, name="nms")
        self.loss_terms = {key: keras.metrics.Mean(name=f"{key}_loss") for key in LOSS_WEIGHTS}
        self.compile()

    def compile(self, optimizer="auto", **kwargs):
        """Default: Adam(1e-3) with gradients clipped to a global norm of 10 (as YOLOv8 clips)."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3, global_clipnorm=10.0)
        super().compile(optimizer=optimizer, **kwargs)

    @property
    def metrics(self):
        return super().metrics + list(self.__dict__.get("loss_terms", {}).values())

    # ----- decoding -----
    def anchors(self, image_height, image_width):
        """Anchor centres and strides (pixels) of an input of this size."""
        sizes = [(image_height // s, image_width // s) for s in FEATURE_STRIDES]
        return anchor_points(sizes, FEATURE_STRIDES)

    def decode_boxes(self, box_logits, points, strides):
        """``(b, N, 4 × bins)`` logits → ``(b, N, 4)`` xyxy boxes in pixels of the model input."""
        logits = ops.reshape(box_logits, (-1, box_logits.shape[1], 4, self.box_bins))
        return distances_to_boxes(expected_distance(logits) * strides, points)

    def detect(self, outputs, image_height, image_width):
        """The model's outputs for inputs of this size → NMS'd detections in the input's pixels
        (``{"boxes" xyxy, "confidence", "classes", "num_detections"}``, padded)."""
        points, strides = self.anchors(image_height, image_width)
        boxes = self.decode_boxes(outputs["boxes"], points, strides)
        scores = ops.sigmoid(ops.cast(outputs["classes"], "float32"))
        if scores.shape[1] > self.max_candidates:  # NMS is quadratic in its boxes: keep the likeliest
            _, keep = ops.top_k(ops.max(scores, axis=-1), self.max_candidates)
            boxes = ops.take_along_axis(boxes, keep[..., None], axis=1)
            scores = ops.take_along_axis(scores, keep[..., None], axis=1)
        detections = self.nms(boxes, scores)
        return {"boxes": detections["boxes"], "confidence": detections["confidence"],
                "classes": detections["labels"], "num_detections": detections["num_detections"]}

    def detection_model(self):
        """A compiled-once model: images of ``image_size`` → padded detections (decode + NMS in the graph).

        On TensorFlow and torch the network inside is ``fold_batch_norms(self)``: each conv → batch-norm
        pair is one convolution, its kernel folded from the live variables at every call (so training
        after a ``predict`` is seen by the next one). On JAX, XLA fuses the batch norm into the
        convolution's output already, and the folded copy was no faster (benchmarks/README.md)."""
        model = self.__dict__.get("_detection_model")
        if model is None or model.input.shape[1] != self.image_size:
            images = keras.Input((self.image_size, self.image_size, 3), name="images")
            network = self if keras.backend.backend() == "jax" else fold_batch_norms(self)
            model = keras.Model(images, _Detect(self, name="detect")(network(images)))
            object.__setattr__(self, "_detection_model", model)
        return model

    # ----- raw images in, boxes in the images' pixels out -----
    def preprocess(self, x, y=None, sample_weight=None):
        """Pixel arrays go to the model as they are (``predict`` letterboxes them first)."""
        return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)

    def letterbox(self, images):
        """Each image resized into ``image_size`` keeping its aspect, centred on grey: ``(batch, scales,
        offsets)`` with ``input = image × scale + offset`` per image."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
            images = keras.ops.convert_to_numpy(images)
        size = self.image_size
        batch = np.full((len(images), size, size, 3), PAD_VALUE, "float32")
        scales, offsets = np.zeros(len(images), "float32"), np.zeros((len(images), 2), "float32")
        for i, image in enumerate(images):
            image = np.asarray(keras.ops.convert_to_numpy(image), "float32")
            if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
                raise ValueError(f"{self.name}.predict takes RGB images (height, width, 3); image {i} has "
                                 f"shape {image.shape}.")
            check_finite(f"image {i}", image)
            scale = min(size / image.shape[0], size / image.shape[1])
            height, width = max(round(image.shape[0] * scale), 1), max(round(image.shape[1] * scale), 1)
            top, left = (size - height) // 2, (size - width) // 2
            if (height, width) == image.shape[:2]:  # already fits (e.g. image_size square): no resampling
                resized = image
            else:
                resized = keras.ops.convert_to_numpy(keras.ops.image.resize(image, (height, width), antialias=True))
            batch[i, top:top + height, left:left + width] = resized
            scales[i], offsets[i] = scale, (left, top)
        return batch, scales, offsets, [np.asarray(im).shape[:2] for im in images]

    def predict(self, x, batch_size=None, **kwargs):
        """Detections per image of ``x`` (images of any sizes), boxes in each image's pixels."""
        batch, scales, offsets, shapes = self.letterbox(x)
        self.check_inputs(batch)
        with self._keeps_state_on_failure():
            out = self.detection_model().predict(batch, batch_size=batch_size, **kwargs)
        out = {k: np.asarray(v) for k, v in out.items()}
        valid = out["classes"] >= 0
        boxes = (out["boxes"] - np.tile(offsets, 2)[:, None, :]) / scales[:, None, None]
        for i, (height, width) in enumerate(shapes):
            boxes[i] = np.clip(boxes[i], 0, [width, height, width, height])
            if self.bounding_box_format != "xyxy":
                boxes[i] = keras.ops.convert_to_numpy(keras_boxes.convert_format(
                    boxes[i], "xyxy", self.bounding_box_format, height=height, width=width))
        out["boxes"] = np.where(valid[..., None], boxes, -1.0).astype("float32")
        return out

    # ----- training -----
    def check_labels(self, y):
        """``{"boxes": (batch, max_boxes, 4), "labels": (batch, max_boxes)}``, labels in
        ``[-1, num_classes)`` (-1: padding), finite boxes."""
        if not isinstance(y, dict) or set(y) != {"boxes", "labels"}:
            raise ValueError(f"{self.name} trains on y = {{'boxes': (batch, max_boxes, 4), 'labels': (batch, "
                             f"max_boxes)}} (padded with label -1); got {type(y).__name__}"
                             f"{' with keys ' + str(sorted(y)) if isinstance(y, dict) else ''}.")
        boxes, labels = eager_array(y["boxes"]), eager_array(y["labels"])
        if boxes is None or labels is None:
            return
        if boxes.ndim != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2]:
            raise ValueError(f"y['boxes'] must be (batch, max_boxes, 4) and y['labels'] (batch, max_boxes); got "
                             f"{boxes.shape} and {labels.shape}.")
        check_finite("y['boxes']", boxes)
        if labels.size and (labels.min() < -1 or labels.max() >= self.num_classes or
                            not np.all(np.asarray(labels) == np.round(labels))):
            raise ValueError(f"y['labels'] must be class ids in [0, {self.num_classes}) or -1 for padding; got "
                             f"values from {labels.min()} to {labels.max()}. Build the detector with a larger "
                             "num_classes if there are more classes.")

    def detection_loss(self, y, y_pred, image_height, image_width):
        """``{"box", "class", "dfl"}``: YOLOv8's three loss terms (unweighted) for ground truth ``y``."""
        box_logits = ops.cast(y_pred["boxes"], "float32")
        class_logits = ops.cast(y_pred["classes"], "float32")
        points, strides = self.anchors(image_height, image_width)
        distribution = ops.reshape(box_logits, (-1, box_logits.shape[1], 4, self.box_bins))
        grid_points = points / strides
        pred_boxes = distances_to_boxes(expected_distance(distribution), grid_points)  # in strides

        labels = ops.cast(y["labels"], "int32")
        gt_boxes = keras_boxes.convert_format(ops.cast(y["boxes"], "float32"), self.bounding_box_format, "xyxy",
                                              height=image_height, width=image_width)
        gt_mask = labels >= 0
        gt_boxes = ops.where(gt_mask[..., None], gt_boxes, 0.0)
        targets = self.assigner(ops.sigmoid(ops.stop_gradient(class_logits)),
                                ops.stop_gradient(pred_boxes) * strides, points, labels, gt_boxes, gt_mask)
        target_scores = targets["scores"]
        normaliser = ops.maximum(ops.sum(target_scores), 1.0)
        bce = ops.maximum(class_logits, 0.0) - class_logits * target_scores + ops.log1p(ops.exp(-ops.abs(class_logits)))
        weight = ops.sum(target_scores, axis=-1) * ops.cast(targets["foreground"], "float32")
        target_boxes = targets["boxes"] / strides
        box = ops.sum((1.0 - complete_iou(pred_boxes, target_boxes)) * weight) / normaliser
        target_distances = boxes_to_distances(target_boxes, grid_points)
        dfl = ops.sum(distribution_focal_loss(distribution, target_distances) * weight) / normaliser
        return {"box": box, "class": ops.sum(bce) / normaliser, "dfl": dfl}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.detection_loss(y, y_pred, x.shape[1], x.shape[2])
        for key, value in terms.items():
            self.loss_terms[key].update_state(value * LOSS_WEIGHTS[key])
        total = sum(terms[key] * LOSS_WEIGHTS[key] for key in LOSS_WEIGHTS)
        return total + (ops.sum(self.losses) if self.losses else 0.0)

    # ----- presets -----
    @classmethod
    def from_preset(cls, handle, num_classes=None, load_weights=True, **kwargs):
        """A detector on a preset: ``num_classes=None`` keeps the preset's head and class names; a
        number puts a new, randomly initialised head on the preset's backbone."""
        loader = load_preset(handle)
        backbone_kwargs = cls.pop_backbone_kwargs(kwargs)
        head_kwargs = dict(kwargs) if num_classes is None else {**kwargs, "num_classes": num_classes}
        task = loader.load_task(cls, load_weights=load_weights, backbone_kwargs=backbone_kwargs, **head_kwargs)
        if task is not None:
            return task
        if num_classes is None:
            raise PresetError(f"Preset {handle!r} has no detection head to keep. Pass num_classes=... to put a "
                              "new head on its backbone.")
        backbone = loader.load_backbone(load_weights=load_weights, **backbone_kwargs)
        return cls(backbone=backbone, num_classes=num_classes, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes, "bounding_box_format": self.bounding_box_format,
            "class_names": self.class_names, "box_bins": self.box_bins, "image_size": self.image_size,
            "confidence_threshold": self.confidence_threshold, "iou_threshold": self.iou_threshold,
            "max_detections": self.max_detections, "max_candidates": self.max_candidates,
        })
        return config


class _Detect(keras.layers.Layer):
    """The detector's decode + NMS as a layer, so that ``predict`` compiles it with the model."""

    def __init__(self, detector, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "detector", detector)  # not tracked: its weights are the model's

    def call(self, outputs):
        size = self.detector.image_size
        return self.detector.detect(outputs, size, size)

    def compute_output_spec(self, outputs):
        # Said here rather than traced: on torch, Keras traces a layer whose batch size is unknown by
        # running it on a batch of 83, which for NMS's (batch, boxes, boxes) overlaps at 320 px is ~10 GB.
        batch, slots = outputs["boxes"].shape[0], self.detector.max_detections
        return {"boxes": keras.KerasTensor((batch, slots, 4), "float32"),
                "confidence": keras.KerasTensor((batch, slots), "float32"),
                "classes": keras.KerasTensor((batch, slots), "int32"),
                "num_detections": keras.KerasTensor((batch,), "int32")}
