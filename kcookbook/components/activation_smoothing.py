"""Activation smoothing before int8 quantisation (SmoothQuant, Xiao et al., arXiv 2211.10438).

Keras' default int8 Dense quantises each token's activations with one scale, its absolute maximum
(W8A8). A language model's normalised hidden states carry a few channels hundreds of times larger than
the rest, so that one scale leaves the other channels a handful of int8 levels. Smoothing divides
channel ``j`` of a normalisation's output by ``s_j`` and multiplies row ``j`` of every kernel that
reads it by ``s_j``: the float model computes the same function, and the difficulty moves from the
activations into the weights, which are quantised per output column. With ``a_j`` the largest
``|activation|`` of channel ``j`` on calibration text and ``w_j`` the largest ``|weight|`` of the
rows it feeds, ``s_j = a_j ** strength / w_j ** (1 - strength)``; at ``strength=0.5`` the two maxima
become equal.

The division is folded into whatever produces the channel: a normalisation's learned scale (and a
LayerNorm's bias), or for a gated feed-forward's output projection, whose input is
``activation(gate) * up``, the ``up`` columns of the fused ``gate_up`` kernel (the product is linear
in ``up``). Nothing is added to the model, and the smoothed model saves, loads and quantises as before.
"""

import keras
import numpy as np

from kcookbook.components.rms_normalization import RMSNormalization
from kcookbook.components.torch_speedups import LayerCalls


class MaximumRecordingCalls(LayerCalls):
    """Direct layer calls (``LayerCalls(direct=True)``) that also record, for each watched layer, the
    largest ``|input|`` of each input channel over every call (``maxima[id(layer)]``)."""

    def __init__(self, watched_layers):
        super().__init__(direct=True)
        self.watched = {id(layer) for layer in watched_layers}
        self.maxima = {}

    def __call__(self, layer, *args, **kwargs):
        if id(layer) in self.watched:
            x = np.abs(keras.ops.convert_to_numpy(keras.ops.cast(args[0], "float32")))
            largest = x.reshape(-1, x.shape[-1]).max(axis=0).astype("float64")
            previous = self.maxima.get(id(layer))
            self.maxima[id(layer)] = largest if previous is None else np.maximum(previous, largest)
        return super().__call__(layer, *args, **kwargs)


def smoothing_factors(activation_maxima, weight_maxima, strength=0.5):
    """``s = a ** strength / w ** (1 - strength)`` per channel; 1 where either maximum is 0."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (0.5 is SmoothQuant's default); got {strength}.")
    a, w = np.asarray(activation_maxima, "float64"), np.asarray(weight_maxima, "float64")
    usable = (a > 0) & (w > 0)
    factors = np.ones_like(a)
    factors[usable] = a[usable] ** strength / w[usable] ** (1.0 - strength)
    return factors


def _assign(variable, value):
    variable.assign(keras.ops.cast(value, variable.dtype))


class DenseColumns:
    """Output columns ``start:stop`` of a ``Dense`` layer, as the producer of a smoothed input (the
    ``up`` half of a fused ``gate_up``)."""

    def __init__(self, dense, start, stop):
        self.dense, self.start, self.stop = dense, start, stop

    def divide(self, factors):
        for weight in (self.dense.kernel, self.dense.bias):
            if weight is not None:
                values = keras.ops.convert_to_numpy(weight).astype("float64")
                values[..., self.start:self.stop] /= factors
                _assign(weight, values)


def divide_output(producer, factors):
    """Make output channel ``j`` of ``producer`` (a normalisation or ``DenseColumns``)
    ``factors[j]`` times smaller by changing its weights."""
    if isinstance(producer, DenseColumns):
        producer.divide(factors)
    elif isinstance(producer, RMSNormalization):
        scale = keras.ops.convert_to_numpy(producer.scale).astype("float64")
        if producer.unit_offset:  # the layer multiplies by 1 + scale
            _assign(producer.scale, (1.0 + scale) / factors - 1.0)
        else:
            _assign(producer.scale, scale / factors)
    elif isinstance(producer, keras.layers.LayerNormalization):
        for weight in (producer.gamma, producer.beta):
            if weight is not None:
                _assign(weight, keras.ops.convert_to_numpy(weight).astype("float64") / factors)
    else:
        raise TypeError(f"Cannot fold a smoothing scale into {type(producer).__name__}: "
                        "RMSNormalization, LayerNormalization and DenseColumns are supported.")


def multiply_kernel_rows(dense, factors):
    """Multiply row ``j`` (input channel ``j``) of a float ``Dense`` kernel by ``factors[j]``."""
    kernel = keras.ops.convert_to_numpy(dense.kernel).astype("float64")
    _assign(dense.kernel, kernel * factors[:, None])


def check_smoothable(pairs):
    """Every Dense layer in ``(producer, projections)`` pairs float and without LoRA: what smoothing
    can rewrite."""
    for producer, projections in pairs:
        for dense in projections + ([producer.dense] if isinstance(producer, DenseColumns) else []):
            _check_smoothable(dense)


def _check_smoothable(dense):
    if dense.quantization_mode is not None:
        raise ValueError(f"{dense.path} is already quantised ({dense.quantization_mode}): smooth the "
                         "float model, then quantize.")
    if dense.lora_enabled:
        raise ValueError(f"{dense.path} has LoRA enabled: smooth and quantize first, then enable "
                         "LoRA (QLoRA), or merge the adapters before smoothing.")


def smooth(pairs, activation_maxima, strength=0.5):
    """Smooth each ``(producer, [dense, ...])`` pair with the recorded input maxima of its Dense
    layers (``MaximumRecordingCalls.maxima``); returns each pair's factors."""
    check_smoothable(pairs)
    all_factors = []
    for producer, projections in pairs:
        activations = np.max([activation_maxima[id(dense)] for dense in projections], axis=0)
        weights = np.max([np.abs(keras.ops.convert_to_numpy(dense.kernel)).max(axis=1)
                          for dense in projections], axis=0)
        factors = smoothing_factors(activations, weights, strength)
        divide_output(producer, factors)
        for dense in projections:
            multiply_kernel_rows(dense, factors)
        all_factors.append(factors)
    return all_factors
