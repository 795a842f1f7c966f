"""Box sides as distributions over integer bins: their expectation and the distribution focal loss.

Generalized Focal Loss (Li et al., 2020) predicts each side's distance as a softmax over ``bins``
integers ``0 … bins-1`` and reads the distance as the expectation. The distribution focal loss
(DFL) trains the two bins around a target distance ``t`` (``⌊t⌋`` and ``⌊t⌋ + 1``) with
cross-entropy weighted by how close ``t`` is to each: ``-(⌊t⌋+1-t)·log p⌊t⌋ - (t-⌊t⌋)·log p⌊t⌋+1``.

    >>> logits = np.zeros((1, 4, 16), "float32")  # a uniform distribution: expectation 7.5
    >>> keras.ops.convert_to_numpy(expected_distance(logits)).tolist()
    [[7.5, 7.5, 7.5, 7.5]]
"""

import keras  # noqa: F401  (the doctest's namespace)
from keras import ops


def expected_distance(logits):
    """``(…, sides, bins)`` logits → ``(…, sides)`` expected distances ``Σ softmax(logits)·i``."""
    bins = logits.shape[-1]
    probabilities = ops.softmax(ops.cast(logits, "float32"), axis=-1)
    return ops.sum(probabilities * ops.arange(bins, dtype="float32"), axis=-1)


def distribution_focal_loss(logits, targets):
    """DFL of ``(…, sides, bins)`` logits against ``(…, sides)`` distances, averaged over sides → ``(…)``.

    Targets are clipped to ``[0, bins - 1.01]`` so that both neighbouring bins exist (as YOLOv8 does).
    """
    bins = logits.shape[-1]
    targets = ops.clip(ops.cast(targets, "float32"), 0.0, bins - 1 - 0.01)
    left = ops.floor(targets)
    weight_left = left + 1.0 - targets
    log_probabilities = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    left_index = ops.cast(left, "int32")[..., None]
    log_left = ops.take_along_axis(log_probabilities, left_index, axis=-1)[..., 0]
    log_right = ops.take_along_axis(log_probabilities, left_index + 1, axis=-1)[..., 0]
    return -ops.mean(log_left * weight_left + log_right * (1.0 - weight_left), axis=-1)
