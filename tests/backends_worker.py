"""Functions that tests/test_backends_helper.py runs in a child process on another backend."""

import keras
import numpy as np


def double_and_describe(x, scale, words):
    return {"scaled": keras.ops.multiply(keras.ops.convert_to_tensor(x), scale), "words": words[::-1],
            "backend": keras.backend.backend()}


def ones(n):
    return keras.ops.ones((n,))


def which():
    return keras.backend.backend()


def fail(message):
    raise RuntimeError(message)


def object_result():
    return {"mixed": np.array([1, "a", None], dtype=object)}
