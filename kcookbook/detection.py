"""Object-detection data and pictures for recipes and tests: objects pasted onto blank canvases (a
detection set whose boxes and classes are known exactly) and boxes drawn over images.

    >>> squares = np.full((2, 6, 6), 255.0)  # two "objects" of class 0 and 1
    >>> images, targets = place_on_canvases(squares, [0, 1], num_images=3, canvas_size=32, seed=0)
    >>> images.shape, targets["boxes"].shape, targets["labels"].shape
    ((3, 32, 32, 3), (3, 3, 4), (3, 3))
"""

import numpy as np


def shape_objects(size=16):
    """Three filled shapes, one per class, as ``(3, size, size, 3)`` colour patches (0–255 on black) for
    ``place_on_canvases``: a red square (class 0), a green disc (1) and a blue triangle (2)."""
    rows, cols = np.mgrid[:size, :size] + 0.5
    centre, margin = size / 2, max(size // 8, 1)
    objects = np.zeros((3, size, size, 3), "float32")
    objects[0, margin:-margin, margin:-margin, 0] = 255
    objects[1, ..., 1] = 255 * ((rows - centre) ** 2 + (cols - centre) ** 2 < (centre - margin / 2) ** 2)
    objects[2, ..., 2] = 255 * ((rows > margin) & (rows < size - margin / 2) &
                                (np.abs(cols - centre) < (rows - margin) / 2))
    return objects


def object_box(patch, threshold):
    """The tight ``xyxy`` box (pixel edges) of a patch's pixels brighter than ``threshold × max``."""
    ink = patch.max(axis=-1) if patch.ndim == 3 else patch
    inked = ink > threshold * ink.max()
    rows, cols = np.flatnonzero(inked.any(axis=1)), np.flatnonzero(inked.any(axis=0))
    if not len(rows):
        return None
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], "float32")


def resize_patch(patch, scale):
    """A patch (``(h, w)`` or ``(h, w, c)``, 0–255) resized by ``scale`` with bilinear filtering."""
    if scale == 1:
        return patch
    from PIL import Image  # a recipes extra, not a core dependency of kcookbook

    height, width = max(round(patch.shape[0] * scale), 1), max(round(patch.shape[1] * scale), 1)
    channels = [patch] if patch.ndim == 2 else [patch[..., c] for c in range(patch.shape[-1])]
    resized = [np.asarray(Image.fromarray(np.asarray(c, "float32"), mode="F").resize((width, height), Image.BILINEAR))
               for c in channels]
    return resized[0] if patch.ndim == 2 else np.stack(resized, axis=-1)


def place_on_canvases(objects, classes, num_images, canvas_size=64, objects_per_image=(1, 3),
                      scale_range=(1.0, 1.0), threshold=0.2, max_tries=30, seed=0):
    """A detection set: each canvas holds a few objects drawn at random from ``objects``, not overlapping.

    Args:
        objects: ``(k, h, w)`` grey or ``(k, h, w, 3)`` colour patches, 0–255 on a 0 background
            (MNIST digits, drawn shapes…).
        classes: ``(k,)`` class id of each object.
        num_images: canvases to make.
        canvas_size: side of the square, black, RGB canvases.
        objects_per_image: ``(low, high)``, inclusive: how many objects a canvas holds.
        scale_range: ``(low, high)``: each object is resized by a factor drawn from it.
        threshold: an object's box is the tight box of its pixels above ``threshold × its maximum``.
        max_tries: placements tried per object before it is left out (the canvas is full).
        seed: the random seed.

    Returns:
        ``(images (n, size, size, 3) float32 in 0–255, {"boxes": (n, high, 4) xyxy pixels, "labels":
        (n, high) int32})``, padded with boxes of -1 and label -1: what ``ObjectDetector.fit`` reads.
    """
    objects, classes = np.asarray(objects, "float32"), np.asarray(classes)
    if objects.ndim not in (3, 4) or (objects.ndim == 4 and objects.shape[-1] != 3) or len(objects) != len(classes):
        raise ValueError(f"place_on_canvases: objects must be (k, h, w) or (k, h, w, 3) with one class each; got "
                         f"objects {objects.shape} and classes {classes.shape}.")
    low, high = objects_per_image
    if not 0 <= low <= high:
        raise ValueError(f"place_on_canvases: objects_per_image must be (low, high) with 0 <= low <= high, got "
                         f"{objects_per_image!r}.")
    if max(objects.shape[1:3]) * scale_range[1] > canvas_size:
        raise ValueError(f"place_on_canvases: objects of {objects.shape[1:3]} pixels scaled up to {scale_range[1]} do "
                         f"not fit on a canvas of {canvas_size}; lower scale_range or raise canvas_size.")
    rng = np.random.default_rng(seed)
    images = np.zeros((num_images, canvas_size, canvas_size, 3), "float32")
    boxes = np.full((num_images, high, 4), -1.0, "float32")
    labels = np.full((num_images, high), -1, "int32")
    for i in range(num_images):
        placed = []
        for _ in range(rng.integers(low, high + 1)):
            index = rng.integers(len(objects))
            patch = resize_patch(objects[index], rng.uniform(*scale_range))
            box = object_box(patch, threshold)
            if box is None:
                continue
            for _ in range(max_tries):
                top = rng.integers(0, canvas_size - patch.shape[0] + 1)
                left = rng.integers(0, canvas_size - patch.shape[1] + 1)
                moved = box + np.array([left, top, left, top], "float32")
                if all(moved[2] <= b[0] or b[2] <= moved[0] or moved[3] <= b[1] or b[3] <= moved[1] for b in placed):
                    break
            else:
                continue
            region = images[i, top:top + patch.shape[0], left:left + patch.shape[1]]
            region[:] = np.maximum(region, patch[..., None] if patch.ndim == 2 else patch)
            boxes[i, len(placed)], labels[i, len(placed)] = moved, classes[index]
            placed.append(moved)
    return np.clip(images, 0, 255), {"boxes": boxes, "labels": labels}


def draw_boxes(ax, boxes, classes=None, confidence=None, class_names=None, color="lime", linewidth=1.5,
               fontsize=8):
    """Draw ``xyxy`` pixel boxes on a matplotlib axis over an image, each with its class name and
    confidence when given; rows with class -1 (padding) are skipped. Returns the rectangles drawn."""
    from matplotlib.patches import Rectangle

    boxes = np.asarray(boxes, "float32").reshape(-1, 4)
    classes = np.zeros(len(boxes), int) if classes is None else np.asarray(classes).reshape(-1)
    drawn = []
    for n, (box, label) in enumerate(zip(boxes, classes)):
        if label < 0:
            continue
        x1, y1, x2, y2 = box
        drawn.append(ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                                            linewidth=linewidth)))
        text = class_names[int(label)] if class_names is not None else str(int(label))
        if confidence is not None:
            text += f" {float(np.asarray(confidence).reshape(-1)[n]):.2f}"
        ax.text(x1, y1, text, color="black", fontsize=fontsize, va="bottom",
                bbox={"facecolor": color, "edgecolor": "none", "pad": 1, "alpha": 0.8})
    return drawn
