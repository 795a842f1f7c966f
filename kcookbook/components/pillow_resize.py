"""Pillow's resampling, in numpy: the same uint8 pixels as ``PIL.Image.resize`` (bicubic, bilinear).

Hugging Face's image processors (``CLIPImageProcessor``…) resize with Pillow, and models trained
behind them see Pillow's pixels. Pillow's filter differs from Keras's and TensorFlow's resizing in
four ways that together move pixels by several levels (0.05-0.1 after CLIP's normalisation):
when shrinking, its kernel is stretched by the scale (an antialiasing filter); its cubic uses
``a = -0.5``; and it works in 8-bit fixed point, rounding to uint8 after the horizontal pass and
again after the second pass; and it picks the order of the passes by how many
pixels each axis loses. This module follows Pillow's ``Resample.c`` step by step (coefficients
in float64, normalised per output pixel, then 22-bit fixed point; one pass per axis),
so its output equals Pillow's byte for byte on 8-bit images, without needing Pillow.

    >>> image = np.arange(48, dtype="uint8").reshape(4, 4, 3)
    >>> pillow_resize(image, (2, 2)).shape
    (2, 2, 3)
"""

import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def _bicubic(x):
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _triangle(x):
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0)}


def _coefficients(in_size, out_size, interpolation):
    """(first input index (out,), fixed-point weights (out, taps)) of one axis, as Pillow computes them."""
    kernel, support = FILTERS[interpolation]
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)
    support = support * filter_scale
    taps = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(centers - support + 0.5).astype(np.int64), 0)
    last = np.minimum(np.trunc(centers + support + 0.5).astype(np.int64), in_size)
    positions = first[:, None] + np.arange(taps)[None, :]
    weights = kernel((positions - centers[:, None] + 0.5) * (1.0 / filter_scale))
    weights = np.where(positions < last[:, None], weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=weights, where=total != 0)
    fixed = np.where(weights < 0, np.trunc(-0.5 + weights * (1 << PRECISION_BITS)),
                     np.trunc(0.5 + weights * (1 << PRECISION_BITS))).astype(np.int64)
    return first, np.minimum(positions, in_size - 1), fixed


def _resample_axis(image, out_size, axis, interpolation):
    """One pass along ``axis`` (0 rows, 1 columns) of a (height, width, channels) uint8 image."""
    _, indices, weights = _coefficients(image.shape[axis], out_size, interpolation)
    taps = np.take(image.astype(np.int64), indices, axis=axis)  # axis becomes (out, taps)
    shape = [1] * taps.ndim
    shape[axis], shape[axis + 1] = weights.shape
    total = (taps * weights.reshape(shape)).sum(axis=axis + 1) + (1 << (PRECISION_BITS - 1))
    return np.clip(total >> PRECISION_BITS, 0, 255).astype(np.uint8)


def pillow_resize(image, size, interpolation="bicubic"):
    """``PIL.Image.fromarray(image).resize((width, height), resample)`` for a uint8 (height, width,
    channels) array; ``size`` is ``(height, width)``."""
    if interpolation not in FILTERS:
        raise ValueError(f"Pillow resampling here supports {sorted(FILTERS)}, got {interpolation!r}.")
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"pillow_resize takes uint8 images (Pillow's 8-bit path), got {image.dtype}.")
    height, width = size
    # Pillow (13) resizes rows first when the height shrinks by more than twice as many pixels as
    # the width, columns first otherwise; the order matters (uint8 rounding and clipping between).
    rows_first = image.shape[0] - height > 0 and image.shape[0] - height > 2 * (image.shape[1] - width)
    for axis in ((0, 1) if rows_first else (1, 0)):
        if size[axis] != image.shape[axis]:
            image = _resample_axis(image, size[axis], axis, interpolation)
    return image


def shortest_edge_size(height, width, shortest_edge):
    """Hugging Face's ``shortest_edge`` rule: the short side becomes ``shortest_edge``, the long side
    ``int(shortest_edge * long / short)`` (truncated)."""
    if width <= height:
        return int(shortest_edge * height / width), shortest_edge
    return shortest_edge, int(shortest_edge * width / height)


CROP_ROUNDINGS = ("floor", "round")


def center_crop(image, size, rounding="floor"):
    """The centre ``(height, width)`` window. An odd margin puts the extra pixel after the window with
    ``rounding="floor"`` (Hugging Face's ``center_crop``: offsets rounded down) and, with ``"round"``,
    where Python's ``round`` of half the margin (ties to even) puts it (torchvision's ``CenterCrop``,
    which OpenCLIP's transform uses)."""
    height, width = size
    if image.shape[0] < height or image.shape[1] < width:
        raise ValueError(f"Cannot centre-crop {height}×{width} from a {image.shape[0]}×{image.shape[1]} "
                         "image: resize it to at least the crop first.")
    if rounding not in CROP_ROUNDINGS:
        raise ValueError(f"center_crop rounding must be one of {CROP_ROUNDINGS}, got {rounding!r}.")
    offset = (lambda margin: margin // 2) if rounding == "floor" else (lambda margin: int(round(margin / 2)))
    top, left = offset(image.shape[0] - height), offset(image.shape[1] - width)
    return image[top:top + height, left:left + width]
