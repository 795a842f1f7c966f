"""Direct layer calls: skip Keras' per-call bookkeeping inside tight inference loops.

``layer(x)`` runs Keras' ``__call__`` (input conversion, dtype autocasting, masks, name scopes,
training-flag resolution) and, on torch, ``nn.Module.__call__`` hooks. Compiled backends pay this
once while tracing; torch pays it on every call, and when decoding one token at a time it costs more
than the arithmetic. Inside ``direct_layer_calls()``, ``run_layer(layer, x)`` calls ``layer.call(x)``
directly; everywhere else it is ``layer(x)``. Use it only on built layers, in inference.

    >>> dense = keras.layers.Dense(2)
    >>> x = ops.ones((1, 3))
    >>> with direct_layer_calls():
    ...     same = run_layer(dense, x)
    >>> bool(ops.all(same == dense(x)))
    True
"""

import contextlib
import threading

import keras
from keras import ops


class _State(threading.local):
    """A per-thread flag. Not a ContextVar: torch.compile traces through reading an attribute,
    where ``ContextVar.get()`` would break the compiled graph at every layer."""

    direct = False


_STATE = _State()


@contextlib.contextmanager
def direct_layer_calls(enabled=True):
    """Within this block (in this thread) ``run_layer`` calls ``layer.call`` directly."""
    previous = _STATE.direct
    _STATE.direct = bool(enabled)
    try:
        yield
    finally:
        _STATE.direct = previous


def run_layer(layer, *args, **kwargs):
    """``layer(*args, **kwargs)``, or ``layer.call(...)`` inside ``direct_layer_calls()``."""
    if _STATE.direct and layer.built:
        return layer.call(*args, **kwargs)
    return layer(*args, **kwargs)


def cast_if_needed(x, dtype):
    """``ops.cast(x, dtype)``, skipped when ``x`` already has that dtype: the same tensor, without a
    Keras op's dispatch (~20 µs on torch) in loops that run per layer and per token."""
    if keras.backend.standardize_dtype(x.dtype) == keras.backend.standardize_dtype(dtype):
        return x
    return ops.cast(x, dtype)
