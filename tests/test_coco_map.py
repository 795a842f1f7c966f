"""kcookbook.metrics.coco_box_map against pycocotools' COCOeval (the reference COCO implementation) on
randomised ground truth and detections."""

import contextlib
import io

import numpy as np
import pytest

from kcookbook.metrics import coco_box_map

pytestmark = pytest.mark.backend_independent  # numpy only
COCO_STATS = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def random_dataset(seed, num_images=40, num_classes=6):
    """Ground truth of every size (small to large) and detections: jittered copies of true boxes (some
    with the wrong class), random boxes, images with nothing, one crowded image past 100 detections."""
    rng = np.random.default_rng(seed)
    y_true, y_pred = [], []
    for i in range(num_images):
        n = rng.integers(0, 8) if i != 7 else 120  # image 7: more than COCO's 100 per image and class
        size = rng.choice([8.0, 40.0, 150.0], n) * rng.uniform(0.5, 1.5, (n, 2)).T
        corner = rng.uniform(0, 300, (n, 2))
        truth = np.concatenate([corner, corner + size.T], -1)
        classes = rng.integers(0, num_classes, n) if i != 7 else np.zeros(n, int)
        jitter = truth + rng.normal(0, 0.08, truth.shape) * np.tile(truth[:, 2:] - truth[:, :2], 2)
        copies = rng.random(n) < 0.8
        m = rng.integers(0, 6)
        corner = rng.uniform(0, 300, (m, 2))
        noise = np.concatenate([corner, corner + rng.uniform(4, 200, (m, 2))], -1)
        boxes = np.concatenate([jitter[copies], noise])
        pred_classes = np.concatenate([np.where(rng.random(copies.sum()) < 0.85, classes[copies],
                                                rng.integers(0, num_classes, copies.sum())),
                                       rng.integers(0, num_classes, m)])
        y_true.append({"boxes": truth, "classes": classes})
        y_pred.append({"boxes": boxes, "classes": pred_classes, "confidence": rng.random(len(boxes))})
    return y_true, y_pred


def cocoeval(y_true, y_pred, num_classes):
    """Stats and per-class AP@[.5:.95] / AP@.5 from pycocotools' COCOeval (xyxy → COCO's xywh)."""
    coco = pytest.importorskip("pycocotools.coco")
    cocoeval_module = pytest.importorskip("pycocotools.cocoeval")
    xywh = lambda b: [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]  # noqa: E731
    rows = [(i + 1, b, c) for i, t in enumerate(y_true) for b, c in zip(t["boxes"], t["classes"])]
    annotations = [{"id": n + 1, "image_id": image, "category_id": int(c) + 1, "bbox": xywh(b),
                    "area": xywh(b)[2] * xywh(b)[3], "iscrowd": 0} for n, (image, b, c) in enumerate(rows)]
    truth = coco.COCO()
    truth.dataset = {"images": [{"id": i + 1} for i in range(len(y_true))], "annotations": annotations,
                     "categories": [{"id": k + 1} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
        detections = truth.loadRes([{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
                                    for i, p in enumerate(y_pred)
                                    for b, c, s in zip(p["boxes"], p["classes"], p["confidence"])])
        evaluation = cocoeval_module.COCOeval(truth, detections, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"][:, :, :, 0, -1]  # (T, R, K), area all, maxDets 100
    per_class = np.array([precision[:, :, k][precision[:, :, k] > -1].mean() if (precision[:, :, k] > -1).any()
                          else np.nan for k in range(num_classes)])
    per_class50 = np.array([precision[0, :, k].mean() if (precision[0, :, k] > -1).any() else np.nan
                            for k in range(num_classes)])
    return dict(zip(COCO_STATS, evaluation.stats)), per_class, per_class50


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_pycocotools_cocoeval(seed):
    y_true, y_pred = random_dataset(seed)
    stats, per_class, per_class50 = cocoeval(y_true, y_pred, 6)
    ours = coco_box_map(y_true, y_pred, num_classes=6)
    for key in COCO_STATS:
        np.testing.assert_allclose(ours[key], stats[key], atol=1e-6, err_msg=key)
    np.testing.assert_allclose(ours["per_class"], per_class, atol=1e-6)
    np.testing.assert_allclose(ours["per_class50"], per_class50, atol=1e-6)
    assert 0.05 < ours["map"] < 0.95 and stats["map_small"] > -1 and stats["map_large"] > -1  # not degenerate


def test_formats_padding_and_batched_arrays():
    y_true, y_pred = random_dataset(3, num_images=6)
    reference = coco_box_map(y_true, y_pred)
    # xywh input, and padded batch arrays with class -1 rows (what ObjectDetector.predict returns)
    as_xywh = [{**p, "boxes": np.concatenate([p["boxes"][:, :2], p["boxes"][:, 2:] - p["boxes"][:, :2]], -1)}
               for p in y_pred]
    truth_xywh = [{**t, "boxes": np.concatenate([t["boxes"][:, :2], t["boxes"][:, 2:] - t["boxes"][:, :2]], -1)}
                  for t in y_true]
    np.testing.assert_allclose(coco_box_map(truth_xywh, as_xywh, "xywh")["map"], reference["map"], atol=1e-9)
    width = max(len(p["boxes"]) for p in y_pred) + 2
    padded = {"boxes": np.full((6, width, 4), -1.0), "classes": np.full((6, width), -1),
              "confidence": np.zeros((6, width))}
    for i, p in enumerate(y_pred):
        n = len(p["boxes"])
        padded["boxes"][i, :n], padded["classes"][i, :n], padded["confidence"][i, :n] = (
            p["boxes"], p["classes"], p["confidence"])
    np.testing.assert_allclose(coco_box_map(y_true, padded)["map"], reference["map"], atol=1e-12)


def test_perfect_and_empty_detections():
    y_true = [{"boxes": [[0, 0, 50, 50], [60, 60, 200, 200]], "labels": [0, 1]}]
    perfect = [{"boxes": [[0, 0, 50, 50], [60, 60, 200, 200]], "classes": [0, 1], "confidence": [0.5, 0.6]}]
    assert coco_box_map(y_true, perfect)["map"] == pytest.approx(1.0)
    none = [{"boxes": np.zeros((0, 4)), "classes": np.zeros(0), "confidence": np.zeros(0)}]
    result = coco_box_map(y_true, none)
    assert result["map"] == 0.0 and result["mar_100"] == 0.0


def test_bad_input_named():
    y_true = [{"boxes": [[0, 0, 5, 5]], "classes": [0]}]
    with pytest.raises(ValueError, match=r"y_pred\[0\] has no \['confidence'\]"):
        coco_box_map(y_true, [{"boxes": [[0, 0, 5, 5]], "classes": [0]}])
    with pytest.raises(ValueError, match="y_true has 1 images and y_pred 2"):
        coco_box_map(y_true, [{"boxes": [], "classes": [], "confidence": []}] * 2)
    with pytest.raises(ValueError, match="bounding_box_format='rel_xyxy'.*pixels"):
        coco_box_map(y_true, y_true, "rel_xyxy")
    with pytest.raises(ValueError, match=r"y_true\[0\] has 2 boxes for 1 classes"):
        coco_box_map([{"boxes": [[0, 0, 5, 5]] * 2, "classes": [0]}], y_true)
