"""LoRA (Hu et al., 2021): fine-tune a model through small low-rank updates of chosen projections.

A projection ``y = x·W`` becomes ``y = x·W + (alpha / rank)·x·A·B`` with ``A (in, rank)`` and
``B (rank, out)``; ``B`` starts at zero, so the model is unchanged until training moves it. Keras's
``Dense`` and ``EinsumDense`` already carry this (``layer.enable_lora(rank, lora_alpha)``); this
module picks the layers, freezes everything else, saves and loads the LoRA weights alone, and folds
them back into the kernels. :class:`kcookbook.backbones.Backbone` exposes these as methods.

    >>> import numpy as np
    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="qkv")(inputs))
    >>> layers = enable_lora(model, rank=2)
    >>> [v.path for v in model.trainable_weights]
    ['qkv/lora_kernel_a', 'qkv/lora_kernel_b']
    >>> merge_lora(model)
    >>> len(model.trainable_weights), len(model.weights)
    (2, 2)
"""

import os

import keras
import numpy as np

from kcookbook.presets.files import open_h5

# Layer names of the projections LoRA adapts by default: the fused query/key/value projection of
# kcookbook's attention ("qkv"), and the separate query and value projections of other code.
DEFAULT_LORA_TARGETS = ("qkv", "query", "value", "query_key_value", "q_proj", "v_proj")

_LORA_VARIABLES = ("lora_kernel_a", "lora_kernel_b")


def _projections(model):
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense))]


def lora_layers(model):
    """The layers of ``model`` that currently carry LoRA weights."""
    return [layer for layer in _projections(model) if getattr(layer, "lora_enabled", False)]


def _forget_compiled_functions(model):
    """Drop the model's traced train/test/predict functions: they were built without (or with)
    the LoRA variables and would silently keep computing the old function (TensorFlow caches them)."""
    for name in ("train_function", "test_function", "predict_function"):
        if hasattr(model, name):
            setattr(model, name, None)


def _freeze_all_but(model, layers):
    """Make the LoRA matrices of ``layers`` the only trainable variables; remember the old flags."""
    keep = {id(getattr(layer, name)) for layer in layers for name in _LORA_VARIABLES}
    if not hasattr(model, "_trainable_before_lora"):
        model._trainable_before_lora = {v.path: v.trainable for v in model.variables if id(v) not in keep}
    model.trainable = True
    for variable in model.variables:
        variable.trainable = id(variable) in keep
    _forget_compiled_functions(model)


def enable_lora(model, rank, target_names=DEFAULT_LORA_TARGETS, lora_alpha=None):
    """Add rank-``rank`` LoRA weights to the projections named ``target_names``; freeze the rest.

    Returns the adapted layers. Afterwards ``model.trainable_weights`` is exactly their LoRA
    matrices. Enable LoRA before compiling a model that wraps this one (a task): functions traced
    earlier do not see the new weights. ``lora_alpha`` (default ``rank``) scales the update by ``lora_alpha / rank``.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}.")
    if lora_layers(model):
        raise ValueError(f"{model.name} already has LoRA enabled; call merge_lora() first to start over.")
    targets = (target_names,) if isinstance(target_names, str) else tuple(target_names)
    chosen = [layer for layer in _projections(model) if layer.name in targets]
    if not chosen:
        names = sorted({layer.name for layer in _projections(model)})
        raise ValueError(
            f"No Dense/EinsumDense layer of {model.name} is named any of {list(targets)}. Its projection "
            f"layers are named: {names}. Pass target_names=[...] from that list."
        )
    before = {v.path: v.trainable for v in model.variables}
    for layer in chosen:
        layer.enable_lora(rank, lora_alpha=lora_alpha)
    model._trainable_before_lora = before
    _freeze_all_but(model, chosen)
    return chosen


def _lora_variables(model):
    out = {}
    for layer in lora_layers(model):
        for name in _LORA_VARIABLES:
            variable = getattr(layer, name)
            out[variable.path] = variable
    return out


def save_lora_weights(model, path):
    """Write only the LoRA matrices (and their rank/alpha) to an ``.h5`` file."""
    import h5py

    variables = _lora_variables(model)
    if not variables:
        raise ValueError(f"{model.name} has no LoRA weights to save: call enable_lora(rank) first.")
    layers = lora_layers(model)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    staging = path + ".partial"
    with h5py.File(staging, "w") as f:
        f.attrs["rank"] = layers[0].lora_rank
        f.attrs["lora_alpha"] = layers[0].lora_alpha
        f.attrs["model"] = model.name
        for variable_path, variable in variables.items():
            f.create_dataset(variable_path, data=keras.ops.convert_to_numpy(variable))
    os.replace(staging, path)


def load_lora_weights(model, path):
    """Load LoRA matrices written by :func:`save_lora_weights`, enabling LoRA on the same layers if
    it is not enabled yet. Names and shapes must match; a mismatch names the layer."""
    import h5py

    arrays = {}
    with open_h5(os.fspath(path)) as f:
        if "rank" not in f.attrs or "lora_alpha" not in f.attrs:
            raise ValueError(
                f"{path} is not a LoRA adapter file: it has no 'rank'/'lora_alpha' attributes (a full "
                "weights file, e.g. model.weights.h5, loads with load_weights or from_preset). Make an "
                "adapter with backbone.enable_lora(rank), fit, then backbone.save_lora_weights(path).")
        rank, alpha = int(f.attrs["rank"]), float(f.attrs["lora_alpha"])

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                arrays[name] = obj[()]
        f.visititems(visit)
    if not lora_layers(model):
        wanted = {p.rsplit("/", 1)[0] for p in arrays}
        by_path = {layer.path: layer for layer in _projections(model)}
        missing = sorted(wanted - set(by_path))
        if missing:
            raise ValueError(f"{path} has LoRA weights for layers this model does not have: {missing[:5]}. "
                             "Was it saved from a model of another architecture?")
        model._trainable_before_lora = {v.path: v.trainable for v in model.variables}
        for layer_path in sorted(wanted):
            by_path[layer_path].enable_lora(rank, lora_alpha=alpha)
        _freeze_all_but(model, [by_path[p] for p in wanted])
    variables = _lora_variables(model)
    if sorted(variables) != sorted(arrays):
        raise ValueError(
            f"{path} holds LoRA weights for {len(arrays)} variables but the model has {len(variables)}; "
            f"only in the file: {sorted(set(arrays) - set(variables))[:4]}, only in the model: "
            f"{sorted(set(variables) - set(arrays))[:4]}. Enable LoRA on the same layers as when saving."
        )
    for variable_path, variable in variables.items():
        value = arrays[variable_path]
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"LoRA weight {variable_path} in {path} has shape {value.shape}, the model's has "
                             f"{tuple(variable.shape)} (was it saved with another rank?).")
        variable.assign(value)


def _merged_kernel(layer):
    """``W + (alpha / rank)·A·B`` in float32, ``W`` dequantised (``int8 / kernel_scale``) when the
    layer is int8 (Keras's ``kernel`` property would add the update to the int8 values)."""
    if layer.quantization_mode is None:
        return keras.ops.convert_to_numpy(keras.ops.cast(layer.kernel, "float32"))  # the update included
    if layer.quantization_mode != "int8" or not isinstance(layer, keras.layers.Dense):
        raise ValueError(f"merge_lora: {layer.path} is a {type(layer).__name__} quantised as "
                         f"{layer.quantization_mode!r}; LoRA merges into float or int8 Dense kernels. Merge "
                         "before quantising, or keep the adapter separate (save_lora_weights).")
    kernel = keras.ops.convert_to_numpy(keras.ops.cast(layer._kernel, "float32"))
    kernel = kernel / keras.ops.convert_to_numpy(keras.ops.cast(layer.kernel_scale, "float32"))
    update = keras.ops.convert_to_numpy(keras.ops.matmul(keras.ops.cast(layer.lora_kernel_a, "float32"),
                                                         keras.ops.cast(layer.lora_kernel_b, "float32")))
    return kernel + (layer.lora_alpha / layer.lora_rank) * update


def merge_lora(model):
    """Fold ``(alpha / rank)·A·B`` into each adapted kernel and remove the LoRA weights.

    The merged model computes the same function with no extra matmuls; every weight is as trainable
    as before ``enable_lora`` (call ``enable_lora`` again to start a new adaptation).
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{model.name} has no LoRA weights to merge.")
    for layer in layers:
        merged = _merged_kernel(layer)
        for name in _LORA_VARIABLES:
            delattr(layer, name)  # untracks the variable
        layer.lora_enabled = False
        layer.lora_rank = None
        if layer.quantization_mode == "int8":  # QLoRA: requantise the merged kernel, per channel
            values, scale = keras.quantizers.abs_max_quantize(merged, axis=0, to_numpy=True)
            layer._kernel.assign(values)
            layer.kernel_scale.assign(np.reshape(scale, layer.kernel_scale.shape))
        else:
            layer._kernel.assign(merged.astype(np.dtype(layer._kernel.dtype)))
    before = getattr(model, "_trainable_before_lora", {})
    for variable in model.variables:
        variable.trainable = before.get(variable.path, True)
    if hasattr(model, "_trainable_before_lora"):
        del model._trainable_before_lora
    _forget_compiled_functions(model)
