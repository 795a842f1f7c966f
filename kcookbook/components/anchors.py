"""Anchor points of a dense detector: one per feature-map cell, at the cell's centre, with its stride.

An anchor-free head (FCOS, YOLOv6/v8) predicts, at every cell of every feature level, the distances
from the cell's centre to the four sides of a box. These helpers lay out the centres, level after
level and row after row (the order a head's outputs are flattened in), and convert between boxes
and those distances.

    >>> points, strides = anchor_points([(2, 2), (1, 1)], [8, 16])
    >>> keras.ops.convert_to_numpy(points).tolist()
    [[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0], [8.0, 8.0]]
    >>> keras.ops.convert_to_numpy(strides)[:, 0].tolist()
    [8.0, 8.0, 8.0, 8.0, 16.0]
"""

import keras  # noqa: F401  (the doctest's namespace)
from keras import ops


def anchor_points(feature_sizes, strides, offset=0.5):
    """``(points (N, 2), strides (N, 1))``: each cell's centre ``((col, row) + offset) × stride`` in
    pixels, for feature maps of ``feature_sizes`` ``[(height, width), …]`` at ``strides``."""
    points, point_strides = [], []
    for (height, width), stride in zip(feature_sizes, strides):
        cols = ops.arange(width, dtype="float32") + offset
        rows = ops.arange(height, dtype="float32") + offset
        grid_x = ops.tile(cols[None, :], (height, 1))
        grid_y = ops.tile(rows[:, None], (1, width))
        points.append(ops.reshape(ops.stack([grid_x, grid_y], axis=-1), (height * width, 2)) * stride)
        point_strides.append(ops.full((height * width, 1), float(stride)))
    return ops.concatenate(points, axis=0), ops.concatenate(point_strides, axis=0)


def distances_to_boxes(distances, points):
    """``(left, top, right, bottom)`` distances from ``points`` → ``xyxy`` boxes (same units)."""
    distances, points = ops.convert_to_tensor(distances, "float32"), ops.convert_to_tensor(points, "float32")
    left_top, right_bottom = distances[..., :2], distances[..., 2:]
    return ops.concatenate([points - left_top, points + right_bottom], axis=-1)


def boxes_to_distances(boxes, points):
    """``xyxy`` boxes → ``(left, top, right, bottom)`` distances from ``points``."""
    boxes, points = ops.convert_to_tensor(boxes, "float32"), ops.convert_to_tensor(points, "float32")
    return ops.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)
