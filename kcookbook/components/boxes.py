"""Non-max suppression on every backend (a function and a layer for detection heads), and the
complete IoU of matched box pairs.

Keras 3.15 has box format conversion, IoU/CIoU and box deltas (``keras.utils.bounding_boxes``) but
no non-max suppression: ``tf.image.non_max_suppression`` is TensorFlow-only and returns a
variable number of boxes, ``torchvision.ops.nms`` is torch-only. This one is ``keras.ops`` only,
batched, with a fixed output size (padded), so it compiles with XLA on JAX and TensorFlow and runs
on torch. IoU is Keras' own ``keras.utils.bounding_boxes.compute_iou``.

Greedy NMS, as TensorFlow does it: visit boxes from the highest score down, keep a box unless its
IoU with an already kept box is above ``iou_threshold``; boxes with a score not above
``score_threshold`` are never kept; stop after ``max_output_size`` kept boxes. It is computed as the
fixed point of that rule (a few rounds of one ``(boxes × boxes)`` product each) rather than box by
box, so a compiled graph has a short loop and torch runs a few large ops instead of one small op per box.

    >>> boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], "float32")
    >>> scores = np.array([0.9, 0.8, 0.7], "float32")
    >>> indices, count = non_max_suppression(boxes, scores, max_output_size=3, iou_threshold=0.5)
    >>> keras.ops.convert_to_numpy(indices).tolist(), int(count)  # box 1 overlaps box 0 (IoU 0.81)
    ([0, 2, -1], 2)
"""

import math

import keras
from keras import ops
from keras.utils import bounding_boxes as keras_boxes


def complete_iou(boxes1, boxes2, eps=1e-7):
    """CIoU (Zheng et al., 2020) of matched ``xyxy`` boxes ``(…, 4)`` → ``(…)``.

    ``IoU - ρ²/c² - α·v``: ``ρ`` the distance between the centres, ``c`` the diagonal of the smallest
    box enclosing both, ``v = 4/π² (atan(w₂/h₂) - atan(w₁/h₁))²`` the aspect-ratio mismatch and
    ``α = v / (1 - IoU + v)`` (held constant for gradients, as the paper does). ``eps`` keeps
    degenerate boxes finite (added to the heights, the union and ``c²`` as YOLOv8 does). Keras'
    ``compute_ciou`` places its epsilon elsewhere; this one matches the detector losses built on it.

    >>> float(complete_iou(np.array([0, 0, 2, 2.]), np.array([0, 0, 2, 2.])))
    1.0
    """
    boxes1 = ops.cast(boxes1, "float32")
    boxes2 = ops.cast(boxes2, "float32")
    x1a, y1a, x2a, y2a = (boxes1[..., i] for i in range(4))
    x1b, y1b, x2b, y2b = (boxes2[..., i] for i in range(4))
    width_a, height_a = x2a - x1a, y2a - y1a + eps
    width_b, height_b = x2b - x1b, y2b - y1b + eps
    intersection = (ops.maximum(ops.minimum(x2a, x2b) - ops.maximum(x1a, x1b), 0.0)
                    * ops.maximum(ops.minimum(y2a, y2b) - ops.maximum(y1a, y1b), 0.0))
    union = width_a * height_a + width_b * height_b - intersection + eps
    iou = intersection / union
    enclosing_width = ops.maximum(x2a, x2b) - ops.minimum(x1a, x1b)
    enclosing_height = ops.maximum(y2a, y2b) - ops.minimum(y1a, y1b)
    diagonal = enclosing_width ** 2 + enclosing_height ** 2 + eps
    centre_distance = ((x1b + x2b - x1a - x2a) ** 2 + (y1b + y2b - y1a - y2a) ** 2) / 4
    v = (4 / math.pi ** 2) * (ops.arctan(width_b / height_b) - ops.arctan(width_a / height_a)) ** 2
    alpha = ops.stop_gradient(v / (1 - iou + v + eps))
    return iou - (centre_distance / diagonal + v * alpha)


def non_max_suppression(boxes, scores, max_output_size, iou_threshold=0.5,
                        score_threshold=float("-inf"), bounding_box_format="xyxy"):
    """Greedy NMS; returns ``(indices, count)``.

    Args:
        boxes: ``(num_boxes, 4)`` or ``(batch, num_boxes, 4)`` in ``bounding_box_format``.
        scores: ``(num_boxes,)`` or ``(batch, num_boxes)``.
        max_output_size: the most boxes to keep (the length of ``indices``).
        iou_threshold: a box whose IoU with a kept, higher-scoring box is above this is dropped.
        score_threshold: boxes scoring at or below this are dropped.
        bounding_box_format: ``"xyxy"``, ``"yxyx"`` (TensorFlow's order), ``"xywh"``,
            ``"center_xywh"``… (``keras.utils.bounding_boxes`` names; relative formats need no
            image size here since IoU does not depend on the scale).

    Returns:
        ``indices``: int32 ``(…, max_output_size)``, positions in ``boxes`` of the kept boxes in
        decreasing score, padded with -1; ``count``: int32 ``(…)``, how many are real.
    """
    boxes = ops.convert_to_tensor(boxes, "float32")
    scores = ops.convert_to_tensor(scores, "float32")
    batched = len(boxes.shape) == 3
    if not batched:
        boxes, scores = boxes[None], scores[None]
    if len(boxes.shape) != 3 or boxes.shape[-1] != 4 or len(scores.shape) != 2:
        raise ValueError(
            "non_max_suppression takes boxes (num_boxes, 4) with scores (num_boxes,), or a batch of "
            f"them; got boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)}.")
    num_boxes = boxes.shape[1]
    if num_boxes is None:
        raise ValueError("non_max_suppression needs a static number of boxes (pad to a fixed count).")
    if bounding_box_format.startswith("rel_"):
        bounding_box_format = bounding_box_format[len("rel_"):]

    order = ops.argsort(-scores, axis=-1)  # highest score first
    sorted_boxes = ops.take_along_axis(boxes, order[:, :, None], axis=1)
    sorted_scores = ops.take_along_axis(scores, order, axis=1)
    iou = keras_boxes.compute_iou(sorted_boxes, sorted_boxes, bounding_box_format)
    position = ops.arange(num_boxes, dtype="int32")
    earlier = position[None, :] < position[:, None]  # [i, j]: box j scores higher than box i
    # [b, i, j] = 1 where box j, scoring higher, overlaps box i too much: if j is kept, i is not.
    suppressors = ops.cast(ops.logical_and(iou > iou_threshold, earlier[None]), "float32")
    candidate = sorted_scores > score_threshold

    def suppress(keep, changed):
        suppressed = ops.matmul(suppressors, ops.cast(keep, "float32")[..., None])[..., 0] > 0
        new_keep = ops.logical_and(candidate, ops.logical_not(suppressed))
        return new_keep, ops.any(ops.not_equal(new_keep, keep))

    # Greedy NMS is the one fixed point of "keep a candidate unless a kept, higher-scoring box overlaps
    # it": iterating from all candidates, box i is settled once every box above it is, so the loop ends
    # after (the longest chain of boxes suppressing each other) + 1 rounds, at most num_boxes + 1.
    keep, _ = ops.while_loop(lambda keep, changed: changed, suppress, (candidate, ops.convert_to_tensor(True)),
                             maximum_iterations=num_boxes + 1)

    # Kept boxes first, in score order: sort positions with the dropped ones pushed past the end.
    rank = ops.where(keep, position[None, :], position[None, :] + num_boxes)
    first = ops.argsort(rank, axis=-1)[:, :max_output_size]
    count = ops.minimum(ops.sum(ops.cast(keep, "int32"), axis=-1), max_output_size)
    indices = ops.take_along_axis(ops.cast(order, "int32"), ops.cast(first, "int32"), axis=1)
    if max_output_size > num_boxes:
        indices = ops.pad(indices, [[0, 0], [0, max_output_size - num_boxes]], constant_values=-1)
    slot = ops.arange(max_output_size, dtype="int32")[None, :]
    indices = ops.where(slot < count[:, None], indices, -1)
    return (indices, count) if batched else (indices[0], count[0])


@keras.saving.register_keras_serializable(package="kcookbook")
class NonMaxSuppression(keras.layers.Layer):
    """A detection head's last step: per-box class scores → at most ``max_detections`` boxes.

    Call with ``boxes`` ``(batch, num_boxes, 4)`` and ``class_scores`` ``(batch, num_boxes,
    num_classes)`` (probabilities, or logits with ``from_logits=True``). Each box takes its best
    class; NMS runs across classes, or within each class when ``class_aware=True`` (boxes of
    different classes never suppress each other).

    Returns ``{"boxes", "confidence", "labels", "num_detections"}``, padded to ``max_detections``
    with boxes of -1, confidence 0 and label -1: the dense box format of Keras' augmentation layers.

    >>> nms = NonMaxSuppression(max_detections=2, bounding_box_format="xyxy")
    >>> out = nms(np.array([[[0, 0, 4, 4], [0, 0, 4, 5]]], "float32"),
    ...           np.array([[[0.1, 0.9], [0.2, 0.8]]], "float32"))
    >>> keras.ops.convert_to_numpy(out["labels"]).tolist(), keras.ops.convert_to_numpy(out["num_detections"]).tolist()
    ([[1, -1]], [1])
    """

    def __init__(self, max_detections=100, iou_threshold=0.5, confidence_threshold=0.0,
                 bounding_box_format="xyxy", class_aware=False, from_logits=False, **kwargs):
        super().__init__(**kwargs)
        self.max_detections = max_detections
        self.iou_threshold = iou_threshold
        self.confidence_threshold = confidence_threshold
        self.bounding_box_format = bounding_box_format
        self.class_aware = class_aware
        self.from_logits = from_logits

    def call(self, boxes, class_scores):
        boxes = ops.cast(boxes, "float32")
        class_scores = ops.cast(class_scores, "float32")
        if self.from_logits:
            class_scores = ops.sigmoid(class_scores)
        confidence = ops.max(class_scores, axis=-1)
        labels = ops.cast(ops.argmax(class_scores, axis=-1), "int32")
        nms_boxes = boxes
        if self.class_aware:
            # Move each class's boxes to its own region of the plane: they can no longer overlap.
            corners = keras_boxes.convert_format(boxes, self.bounding_box_format, "xyxy", 1, 1)
            span = ops.max(ops.abs(corners)) * 2.0 + 1.0
            nms_boxes = corners + ops.cast(labels, "float32")[..., None] * span
        format_for_nms = "xyxy" if self.class_aware else self.bounding_box_format
        indices, count = non_max_suppression(
            nms_boxes, confidence, self.max_detections, self.iou_threshold,
            self.confidence_threshold, format_for_nms)
        valid = indices >= 0
        safe = ops.maximum(indices, 0)
        picked_boxes = ops.take_along_axis(boxes, safe[..., None], axis=1)
        return {
            "boxes": ops.where(valid[..., None], picked_boxes, -1.0),
            "confidence": ops.where(valid, ops.take_along_axis(confidence, safe, axis=1), 0.0),
            "labels": ops.where(valid, ops.take_along_axis(labels, safe, axis=1), -1),
            "num_detections": count,
        }

    def get_config(self):
        config = super().get_config()
        config.update({
            "max_detections": self.max_detections, "iou_threshold": self.iou_threshold,
            "confidence_threshold": self.confidence_threshold,
            "bounding_box_format": self.bounding_box_format, "class_aware": self.class_aware,
            "from_logits": self.from_logits,
        })
        return config
