"""Task-aligned assignment (TOOD, Feng et al., 2021): which anchors learn which ground-truth box.

For every ground-truth box ``g`` and anchor ``a`` whose centre lies inside ``g``, the alignment
``t = s^α · u^β`` combines the predicted score ``s`` of ``g``'s class at ``a`` and the CIoU ``u``
(clipped at 0) of ``a``'s predicted box with ``g``. Each box takes its ``top_k`` best-aligned anchors
inside it; an anchor taken by several boxes keeps the one it overlaps most. A positive anchor's
target is its box and the one-hot class scaled by ``t / max t · max u`` over that box's anchors (so
the best anchor of each box aims at that box's best IoU, not at 1).

YOLOv8 uses ``top_k=10, α=0.5, β=6``; boxes with a side under ``min_box_side`` pixels (YOLOv8: the
middle stride, 16) are widened to it about their centre when picking anchors, so that tiny objects
still contain an anchor. Everything is dense with static shapes (``keras.ops``), so it compiles on
JAX and TensorFlow and runs on torch; ground truth is padded to a fixed number of boxes per image.
"""

from keras import ops

from kcookbook.components.boxes import complete_iou


class TaskAlignedAssigner:
    """Call with predictions and padded ground truth; returns the training targets.

    Args:
        num_classes: classes of the score predictions.
        top_k: anchors each ground-truth box takes at most.
        alpha, beta: exponents of the score and the IoU in the alignment.
        min_box_side: ground-truth sides shorter than this (pixels) are widened to it when testing
            which anchor centres lie inside (0 turns it off).
        eps: the smallest margin by which a centre must lie inside a box; also guards divisions.
    """

    def __init__(self, num_classes, top_k=10, alpha=0.5, beta=6.0, min_box_side=16.0, eps=1e-9):
        self.num_classes = num_classes
        self.top_k = top_k
        self.alpha = alpha
        self.beta = beta
        self.min_box_side = min_box_side
        self.eps = eps

    def anchors_inside(self, points, gt_boxes):
        """``(batch, boxes, anchors)``: whether each anchor centre lies inside each (widened) box."""
        centre = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
        size = ops.maximum(gt_boxes[..., 2:] - gt_boxes[..., :2], self.min_box_side)
        top_left = (centre - size / 2)[:, :, None, :]
        bottom_right = (centre + size / 2)[:, :, None, :]
        margins = ops.concatenate([points[None, None] - top_left, bottom_right - points[None, None]], axis=-1)
        return ops.min(margins, axis=-1) > self.eps

    def __call__(self, scores, pred_boxes, points, gt_labels, gt_boxes, gt_mask):
        """Assign targets.

        Args:
            scores: ``(batch, anchors, classes)`` predicted probabilities.
            pred_boxes: ``(batch, anchors, 4)`` predicted ``xyxy`` boxes in pixels.
            points: ``(anchors, 2)`` anchor centres in pixels.
            gt_labels: ``(batch, boxes)`` class ids (anything where ``gt_mask`` is False).
            gt_boxes: ``(batch, boxes, 4)`` ``xyxy`` pixels.
            gt_mask: ``(batch, boxes)`` True for real boxes, False for padding.

        Returns:
            ``{"boxes": (batch, anchors, 4), "scores": (batch, anchors, classes), "foreground":
            (batch, anchors) bool, "gt_index": (batch, anchors) int32}``.
        """
        scores = ops.cast(scores, "float32")
        pred_boxes = ops.cast(pred_boxes, "float32")
        gt_boxes = ops.cast(gt_boxes, "float32")
        gt_mask = ops.cast(gt_mask, "bool")
        num_anchors = scores.shape[1]
        labels = ops.where(gt_mask, ops.cast(gt_labels, "int32"), 0)

        candidate = ops.logical_and(self.anchors_inside(points, gt_boxes), gt_mask[:, :, None])
        # Score of each box's class at each anchor, and CIoU of each box with each predicted box.
        class_scores = ops.take_along_axis(ops.transpose(scores, (0, 2, 1)), labels[:, :, None], axis=1)
        overlaps = ops.maximum(complete_iou(gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]), 0.0)
        overlaps = ops.where(candidate, overlaps, 0.0)
        class_scores = ops.where(candidate, class_scores, 0.0)
        alignment = ops.power(class_scores, self.alpha) * ops.power(overlaps, self.beta)

        # Each real box takes its top_k anchors by alignment (among those inside it).
        _, top_index = ops.top_k(alignment, self.top_k)
        top = ops.sum(ops.one_hot(top_index, num_anchors, dtype="float32"), axis=2) > 0
        positive = ops.logical_and(ops.logical_and(top, candidate), gt_mask[:, :, None])

        # An anchor several boxes take goes to the box it overlaps most.
        taken = ops.sum(ops.cast(positive, "int32"), axis=1)  # (batch, anchors)
        best = ops.one_hot(ops.argmax(overlaps, axis=1), gt_boxes.shape[1], axis=1, dtype="float32") > 0
        positive = ops.where((taken > 1)[:, None, :], best, positive)
        foreground = ops.any(positive, axis=1)
        gt_index = ops.cast(ops.argmax(ops.cast(positive, "int32"), axis=1), "int32")

        target_boxes = ops.take_along_axis(gt_boxes, gt_index[..., None], axis=1)
        target_labels = ops.take_along_axis(labels, gt_index, axis=1)
        target_scores = ops.one_hot(target_labels, self.num_classes, dtype="float32")
        target_scores = ops.where(foreground[..., None], target_scores, 0.0)

        # Scale each positive anchor's one-hot class by its box's normalised alignment.
        positive_f = ops.cast(positive, "float32")
        alignment = alignment * positive_f
        best_alignment = ops.max(alignment, axis=-1, keepdims=True)
        best_overlap = ops.max(overlaps * positive_f, axis=-1, keepdims=True)
        norm = ops.max(alignment * best_overlap / (best_alignment + self.eps), axis=1)  # (batch, anchors)
        return {"boxes": target_boxes, "scores": target_scores * norm[..., None], "foreground": foreground,
                "gt_index": gt_index}
