"""Activations that Keras has no string name for.

    >>> from keras import ops
    >>> round(float(gelu_approximate(ops.convert_to_tensor(1.0))), 4)
    0.8412
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kcookbook")
def gelu_approximate(x):
    """GELU with the tanh approximation, as in the original BERT/GPT-2 code (HF's ``gelu_new``).

    Plain ``"gelu"`` in Keras is the exact, erf-based GELU (HF's ``gelu``); checkpoints trained with
    one and run with the other drift apart by ~1e-3.
    """
    return keras.activations.gelu(x, approximate=True)


@keras.saving.register_keras_serializable(package="kcookbook")
def quick_gelu(x):
    """``x * sigmoid(1.702 x)``: the sigmoid approximation of GELU that OpenAI's CLIP was trained with
    (HF's ``quick_gelu``)."""
    return x * keras.ops.sigmoid(1.702 * x)


def soft_cap(x, cap):
    """``cap · tanh(x / cap)``: ``x`` squashed smoothly into ``(-cap, cap)`` (Gemma 2's attention
    and final logits)."""
    return ops.tanh(x / cap) * cap


ACTIVATIONS = {"gelu_approximate": gelu_approximate, "quick_gelu": quick_gelu}


def get_activation(identifier):
    """``keras.activations.get`` that also knows the names above."""
    if isinstance(identifier, str) and identifier in ACTIVATIONS:
        return ACTIVATIONS[identifier]
    return keras.activations.get(identifier)
