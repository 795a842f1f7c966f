"""COCO box mAP, as pycocotools' ``COCOeval`` (``iouType="bbox"``) defines it, in numpy.

For every class, image and area range, detections (highest confidence first, at most ``max_detections``
per image and class) are matched greedily to ground-truth boxes at each IoU threshold
0.50, 0.55 … 0.95: a detection takes the unmatched box it overlaps most (IoU at least the threshold),
boxes outside the area range only when no box inside it is left. Matched detections are true positives,
the others false positives; detections matched to a box outside the area range, and unmatched ones whose
own area lies outside it, are left out. Over all images of a class, precision is made monotone (each value
the best at any higher recall) and read at the 101 recalls 0, 0.01 … 1 (the first detection reaching each
recall; 0 past the last): AP is their mean. ``map`` averages AP over the 10 thresholds and the classes
that have ground truth; areas (pixels², box ``w × h``) are ``small`` < 32², ``medium`` up to 96²,
``large`` beyond. Recall (``mar_*``) is the recall after all kept detections, averaged the same way.

    >>> y_true = [{"boxes": [[0, 0, 10, 10]], "classes": [0]}]
    >>> y_pred = [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30]], "classes": [0, 0], "confidence": [0.9, 0.8]}]
    >>> round(coco_box_map(y_true, y_pred)["map"], 6)  # the hit comes first: precision 1 at every recall
    1.0

No crowd annotations: every ground-truth box counts.
"""

import keras
import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
               "large": (96.0 ** 2, 1e10)}
RECALL_DETECTIONS = (1, 10, 100)  # COCO's AR@1, AR@10 (AR@max_detections is reported as well)


def boxes_to_xywh(boxes, bounding_box_format):
    """``(n, 4)`` pixel boxes → float64 ``[x, y, width, height]`` (COCO's own format)."""
    boxes = np.asarray(boxes, "float64").reshape(-1, 4)
    a, b, c, d = boxes.T
    if bounding_box_format == "xyxy":
        return np.stack([a, b, c - a, d - b], axis=1)
    if bounding_box_format == "yxyx":
        return np.stack([b, a, d - b, c - a], axis=1)
    if bounding_box_format == "xywh":
        return boxes
    if bounding_box_format == "center_xywh":
        return np.stack([a - c / 2, b - d / 2, c, d], axis=1)
    raise ValueError(f"coco_box_map: bounding_box_format={bounding_box_format!r} is not one of 'xyxy', 'yxyx', "
                     "'xywh', 'center_xywh' (pixel boxes); convert relative boxes to pixels first.")


def box_iou(detections, truths):
    """``(d, 4)`` × ``(g, 4)`` xywh boxes → ``(d, g)`` IoU, computed as pycocotools computes it."""
    d, g = detections[:, None, :], truths[None, :, :]
    width = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    height = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    intersection = np.where((width > 0) & (height > 0), width * height, 0.0)
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - intersection
    return intersection / union


def per_image(y, name, bounding_box_format, with_confidence):
    """A list of per-image dicts, or one dict of padded batch arrays → ``[(xywh, classes, confidence)]``
    per image, padding rows (class < 0) dropped."""
    if isinstance(y, dict):
        count = len(np.asarray(y["boxes"]))
        y = [{key: np.asarray(value)[i] for key, value in y.items()} for i in range(count)]
    images = []
    for i, item in enumerate(y):
        if not isinstance(item, dict):
            raise ValueError(f"coco_box_map: {name}[{i}] must be a dict with 'boxes' and 'classes', got "
                             f"{type(item).__name__}.")
        key = "classes" if "classes" in item else "labels"
        needed = ["boxes", key] + (["confidence"] if with_confidence else [])
        missing = [k for k in needed if k not in item]
        if missing:
            raise ValueError(f"coco_box_map: {name}[{i}] has no {missing} (keys: {sorted(item)}).")
        classes = np.asarray(item[key]).reshape(-1)
        boxes = np.asarray(item["boxes"], "float64").reshape(-1, 4)
        confidence = np.asarray(item["confidence"], "float64").reshape(-1) if with_confidence else None
        if len(boxes) != len(classes) or (with_confidence and len(confidence) != len(classes)):
            raise ValueError(f"coco_box_map: {name}[{i}] has {len(boxes)} boxes for {len(classes)} classes"
                             f"{f' and {len(confidence)} confidences' if with_confidence else ''}.")
        keep = classes >= 0
        if not np.all(np.isfinite(boxes[keep])):
            raise ValueError(f"coco_box_map: {name}[{i}]['boxes'] holds NaN or infinite values.")
        images.append((boxes_to_xywh(boxes[keep], bounding_box_format), classes[keep].astype("int64"),
                       confidence[keep] if with_confidence else None))
    return images


def match_image(ious, truth_ignored):
    """Greedy COCO matching in one image and class, at every IoU threshold at once.

    ``ious``: ``(d, g)`` of detections (highest confidence first) and boxes; ``truth_ignored``: ``(g,)``
    bool, boxes outside the area range. Each detection takes the unmatched box it overlaps most (at
    least the threshold; the last of equals, as COCOeval's scan keeps it), a box outside the range only
    when none inside is left. Returns ``(matched (T, d) bool, matched_ignored (T, d) bool)``.
    """
    num_detections, num_truths = ious.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
    taken = np.zeros((len(thresholds), num_truths), bool)
    matched = np.zeros((len(thresholds), num_detections), bool)
    matched_ignored = np.zeros_like(matched)
    rows = np.arange(len(thresholds))
    for i in range(num_detections):
        open_ = ~taken & (ious[i] >= thresholds)
        for group in (~truth_ignored, truth_ignored):  # a box inside the range first, else one outside it
            candidates = open_ & group & ~matched[:, i:i + 1]
            if not candidates.any():
                continue
            scores = np.where(candidates, ious[i], -np.inf)
            best = num_truths - 1 - np.argmax(scores[:, ::-1], axis=1)  # the last of the highest
            hit = candidates.any(axis=1)
            taken[rows[hit], best[hit]] = True
            matched[hit, i], matched_ignored[hit, i] = True, truth_ignored[best[hit]]
    return matched, matched_ignored


def average_precision(matched, ignored, confidence, num_truths):
    """Precision at the 101 recalls and final recall, per threshold, of one class's pooled detections."""
    order = np.argsort(-confidence, kind="mergesort")
    matched, ignored = matched[:, order], ignored[:, order]
    true_positives = np.cumsum(matched & ~ignored, axis=1).astype("float64")
    false_positives = np.cumsum(~matched & ~ignored, axis=1).astype("float64")
    precision = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    recall = np.zeros(len(IOU_THRESHOLDS))
    for t in range(len(IOU_THRESHOLDS)):
        rc = true_positives[t] / num_truths
        pr = true_positives[t] / (true_positives[t] + false_positives[t] + np.spacing(1))
        if len(rc):
            recall[t] = rc[-1]
        pr = np.maximum.accumulate(pr[::-1])[::-1]  # the best precision at this recall or beyond
        index = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
        reached = index < len(pr)
        precision[t, reached] = pr[index[reached]]
    return precision, recall


def coco_box_map(y_true, y_pred, bounding_box_format="xyxy", max_detections=100, num_classes=None):
    """COCO box mAP of detections ``y_pred`` against ground truth ``y_true`` (as ``COCOeval``, bbox).

    Args:
        y_true: one dict per image, ``{"boxes": (n, 4), "classes": (n,)}`` (``"labels"`` is read too),
            or one dict of padded batch arrays; rows with class -1 are padding.
        y_pred: the same with ``"confidence": (n,)`` — e.g. ``ObjectDetector.predict``'s output.
        bounding_box_format: ``"xyxy"``, ``"yxyx"``, ``"xywh"`` or ``"center_xywh"``, in pixels.
        max_detections: detections kept per image and class, highest confidence first (COCO: 100).
        num_classes: the length of ``per_class``; default: one past the largest class seen.

    Returns:
        a dict of floats: ``map`` (AP@[.5:.95]), ``map50``, ``map75``, ``map_small``, ``map_medium``,
        ``map_large``, ``mar_1``, ``mar_10``, ``mar_100`` (``mar_<max_detections>`` for another limit), ``mar_small``,
        ``mar_medium``, ``mar_large``; and ``per_class``, a ``(num_classes,)`` array of AP@[.5:.95]
        (NaN where a class has no ground truth), ``per_class50`` likewise at IoU 0.5. A value with
        nothing to average (no ground truth in that area range) is -1, as COCOeval prints it.
    """
    truths = per_image(y_true, "y_true", bounding_box_format, with_confidence=False)
    predictions = per_image(y_pred, "y_pred", bounding_box_format, with_confidence=True)
    if len(truths) != len(predictions):
        raise ValueError(f"coco_box_map: y_true has {len(truths)} images and y_pred {len(predictions)}; pass one "
                         "entry per image to each, in the same order.")
    seen = [c for image in truths + predictions for c in image[1]]
    num_classes = num_classes if num_classes is not None else (max(seen) + 1 if seen else 0)
    recall_detections = sorted({*RECALL_DETECTIONS, max_detections} - {d for d in RECALL_DETECTIONS
                                                                         if d > max_detections})
    shape = (len(AREA_RANGES), len(recall_detections), num_classes)
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)) + shape)
    recall = -np.ones((len(IOU_THRESHOLDS),) + shape)
    for k in range(num_classes):
        pooled = {area: [] for area in AREA_RANGES}  # per image: matched, ignored, confidence, truths
        for (truth_boxes, truth_classes, _), (boxes, classes, confidence) in zip(truths, predictions):
            truth_boxes, boxes = truth_boxes[truth_classes == k], boxes[classes == k]
            confidence = confidence[classes == k]
            if not len(truth_boxes) and not len(boxes):
                continue
            order = np.argsort(-confidence, kind="mergesort")[:max_detections]
            boxes, confidence = boxes[order], confidence[order]
            ious = box_iou(boxes, truth_boxes)
            truth_area, area = truth_boxes[:, 2] * truth_boxes[:, 3], boxes[:, 2] * boxes[:, 3]
            matches = {}  # by the boxes an area range leaves out: most ranges leave out the same ones
            for name, (low, high) in AREA_RANGES.items():
                truth_ignored = (truth_area < low) | (truth_area > high)
                key = truth_ignored.tobytes()
                if key not in matches:
                    matches[key] = match_image(ious, truth_ignored)
                matched, ignored = matches[key]
                ignored = ignored | (~matched & ((area < low) | (area > high))[None, :])
                pooled[name].append((matched, ignored, confidence, int((~truth_ignored).sum())))
        for a, name in enumerate(AREA_RANGES):
            if not pooled[name] or not sum(p[3] for p in pooled[name]):
                continue
            for m, limit in enumerate(recall_detections):
                p, r = average_precision(*(np.concatenate([item[j][..., :limit] for item in pooled[name]], axis=-1)
                                           for j in range(3)), sum(item[3] for item in pooled[name]))
                precision[:, :, a, m, k], recall[:, a, m, k] = p, r

    def mean(values):
        values = values[values > -1]
        return float(np.mean(values)) if values.size else -1.0

    last = len(recall_detections) - 1
    areas = list(AREA_RANGES)
    result = {"map": mean(precision[:, :, 0, last]), "map50": mean(precision[0, :, 0, last]),
              "map75": mean(precision[5, :, 0, last])}
    for name in ("small", "medium", "large"):
        result[f"map_{name}"] = mean(precision[:, :, areas.index(name), last])
    for m, limit in enumerate(recall_detections):
        result[f"mar_{limit}"] = mean(recall[:, 0, m])
    for name in ("small", "medium", "large"):
        result[f"mar_{name}"] = mean(recall[:, areas.index(name), last])
    with np.errstate(invalid="ignore"):
        has_truth = precision[0, 0, 0, last] > -1
        result["per_class"] = np.where(has_truth, precision[:, :, 0, last].mean(axis=(0, 1)), np.nan)
        result["per_class50"] = np.where(has_truth, precision[0, :, 0, last].mean(axis=0), np.nan)
    return result



class BoxMAPCallback(keras.callbacks.Callback):
    """COCO box mAP on held-out images at the end of every ``every``-th epoch of ``fit``, added to the
    logs (``val_map``, ``val_map50``, ``val_map75``), so ``History``, early stopping and checkpoints see it.

    Args:
        images: the held-out images, as the detector's ``predict`` takes them.
        y_true: their ground truth (see ``coco_box_map``), in the detector's ``bounding_box_format``.
        every: epochs between evaluations (the last epoch of ``fit`` is always evaluated).
        prefix: the log keys' prefix.
    """

    def __init__(self, images, y_true, every=1, prefix="val_"):
        super().__init__()
        self.images, self.y_true, self.every, self.prefix = images, y_true, every, prefix
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not last:
            return
        detections = self.model.predict(self.images, verbose=0)
        result = coco_box_map(self.y_true, detections, self.model.bounding_box_format)
        self.history.append((epoch, result))
        if logs is not None:
            logs.update({f"{self.prefix}{key}": result[key] for key in ("map", "map50", "map75")})
