"""Small array helpers shared by the converters."""

import numpy as np


def take(tensors, name, source="checkpoint"):
    """Pop ``name`` from a dict of arrays with a clear error when it is absent."""
    if name not in tensors:
        from kcookbook.presets.errors import PresetError

        close = [k for k in tensors if name.split(".")[-2] in k][:5] if "." in name else []
        raise PresetError(f"The {source} has no tensor {name!r}" + (f" (similar: {close})" if close else "")
                          + ".")
    return np.asarray(tensors.pop(name))


def linear_kernel(weight):
    """A torch ``nn.Linear`` weight (out, in) as a Keras Dense kernel (in, out)."""
    return np.ascontiguousarray(np.asarray(weight).T)


def strip_prefix(tensors, prefixes):
    """Drop a leading module prefix (``bert.``, ``model.``) so names match the bare backbone."""
    out = {}
    for name, value in tensors.items():
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        out[name] = value
    return out
