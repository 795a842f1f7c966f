"""Checks at the boundary: constructor arguments, labels and token ids, before any tensor is built.

Every failed check is a ``ValueError`` (``TypeError`` for a value of the wrong kind) whose message
names the argument, the value it got and what it accepts. Checks run in numpy on what the caller
passed, never inside a compiled graph, so a bad value is refused before it can allocate memory,
poison a model's state or come out as NaN.

    >>> check_int("num_layers", 2, 1, 512, owner="BertBackbone")
    2
    >>> check_int("num_layers", 2.5, 1, 512, owner="BertBackbone")
    Traceback (most recent call last):
    ...
    ValueError: BertBackbone: num_layers must be an integer in [1, 512], got 2.5 (float).
"""

import math
import numbers

import keras
import numpy as np


def _prefix(owner):
    return f"{owner}: " if owner else ""


def _describe(value):
    return f"{value!r:.60} ({type(value).__name__})"


def check_int(name, value, low, high, owner=None, allow_none=False):
    """``value`` is an int (not a bool) in ``[low, high]``; returns it as a Python int."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        none = " or None" if allow_none else ""
        raise ValueError(f"{_prefix(owner)}{name} must be an integer in [{low}, {high}]{none}, "
                         f"got {_describe(value)}.")
    if not low <= value <= high:
        raise ValueError(f"{_prefix(owner)}{name} must be an integer in [{low}, {high}], got {value}.")
    return int(value)


def check_float(name, value, low, high, owner=None, low_open=False, high_open=False, allow_none=False):
    """``value`` is a finite real number in the interval ``low..high`` (ends open as asked)."""
    if value is None and allow_none:
        return None
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{_prefix(owner)}{name} must be a number in {interval}, got {_describe(value)}.")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        raise ValueError(f"{_prefix(owner)}{name} must be a number in {interval}, got {value}.")
    return value


def check_int_list(name, values, low, high, owner=None):
    """A non-empty list (or tuple) of ints, each in ``[low, high]``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{_prefix(owner)}{name} must be a non-empty list of integers in "
                         f"[{low}, {high}], got {_describe(values)}.")
    return [check_int(f"{name}[{i}]", v, low, high, owner) for i, v in enumerate(values)]


def check_float_list(name, values, low, high, owner=None):
    """A non-empty list (or tuple) of finite numbers, each in ``[low, high]``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{_prefix(owner)}{name} must be a non-empty list of numbers in "
                         f"[{low}, {high}], got {_describe(values)}.")
    return [check_float(f"{name}[{i}]", v, low, high, owner) for i, v in enumerate(values)]


def check_divisible(name, value, divisor_name, divisor, owner=None):
    if value % divisor:
        raise ValueError(f"{_prefix(owner)}{name}={value} is not a multiple of {divisor_name}={divisor}.")


def check_finite(name, array):
    """A float array holds no NaN or infinity (integer arrays always pass)."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        bad = ~np.isfinite(array)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} holds {array[index]} at index {index}: every value must be finite "
                             "(no NaN or infinity).")


def check_ids_in_range(name, ids, size, size_name, fix=""):
    """Integer ids (token ids, class labels) lie in ``[0, size)``; names the first that does not."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return
    if ids.dtype == object or not (np.issubdtype(ids.dtype, np.integer) or np.issubdtype(ids.dtype, np.floating)
                                   or ids.dtype == bool):
        raise ValueError(f"{name} must hold integer ids in [0, {size}) ({size_name}={size}), got an array "
                         f"of dtype {ids.dtype}.{fix}")
    check_finite(name, ids)
    if np.issubdtype(ids.dtype, np.floating):
        fractional = ids != np.round(ids)
        if fractional.any():
            index = tuple(int(i) for i in np.argwhere(fractional)[0])
            raise ValueError(f"{name} holds {ids[index]} at index {index}, which is not an integer id: "
                             f"ids are whole numbers in [0, {size}) ({size_name}={size}).{fix}")
    outside = (ids < 0) | (ids >= size)
    if outside.any():
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        value = ids[index].item()
        raise ValueError(f"{name} holds {value} at index {index}, outside [0, {size}) "
                         f"({size_name}={size}).{fix}")


def eager_array(value):
    """``value`` as a numpy array, or None where it has no value yet (a symbolic tensor inside
    ``tf.data`` or a traced function): checks run on what can be read eagerly."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple, numbers.Number)):
        return np.asarray(value)
    if type(value).__module__.startswith("tensorflow") and not hasattr(value, "numpy"):
        return None
    try:
        return np.asarray(keras.ops.convert_to_numpy(value))
    except Exception:
        return None
