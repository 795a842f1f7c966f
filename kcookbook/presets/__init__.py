"""Presets: find, read and write model directories in the KerasHub layout (preset storage).

This package sits under every model layer and imports no model code: it resolves handles, reads and
writes preset files atomically and raises ``PresetError``. Reading a preset into models
(``load``, ``PresetLoader``, ``register_format``) is ``kcookbook.formats``; those names are also
reachable from here.

A handle is one of

* a built-in name (``list_presets()``), e.g. ``"all_minilm_l6_v2"``;
* a local directory: a KerasHub preset (``config.json`` + ``model.weights.h5`` + ``tokenizer.json``
  + ``assets/``, by kcookbook or keras_hub) or a Hugging Face ``save_pretrained`` folder;
* ``kaggle://owner/model/framework/variation/version`` (through kagglehub and its cache);
* ``hf://org/name`` (through huggingface_hub, converted on load).

    >>> from kcookbook import presets
    >>> print(presets.list_presets())  # doctest: +SKIP
"""

import importlib
import os

import keras

from kcookbook.presets import files
from kcookbook.presets.builtin import PresetInfo, all_presets, get_preset, register_preset
from kcookbook.presets.errors import PresetError
from kcookbook.presets.resolve import resolve

# Names of the format layer (kcookbook.formats, above every model layer) that this package has always
# exported; looked up when first used, so preset storage itself imports no model code.
FORMAT_NAMES = {"PresetLoader": "kcookbook.formats", "load": "kcookbook.formats",
                "register_format": "kcookbook.formats"}


def __getattr__(name):
    if name in FORMAT_NAMES:
        return getattr(importlib.import_module(FORMAT_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PresetTable(list):
    """``list_presets()``'s answer: a list of dicts that prints as a table."""

    def __str__(self):
        return "\n".join(
            f"{p['name']:<26} {p['description']}\n{'':<26} weights: {p['source']}\n"
            f"{'':<26} handle: {p['handle']}{'  (offline copy installed)' if p['offline'] else ''}"
            for p in self)

    _repr_pretty_ = lambda self, printer, cycle: printer.text(str(self))  # noqa: E731


def list_presets(family=None):
    """The built-in preset names with what they are and where their weights come from."""
    rows = PresetTable()
    for name, info in sorted(all_presets().items()):
        if family and info.family != family:
            continue
        rows.append({"name": name, "family": info.family, "description": info.description,
                     "source": info.source, "handle": info.handle,
                     "offline": info.has_offline_copy()})
    return rows


def save_preset(directory, backbone, tokenizer=None, preprocessor=None, task=None, metadata=None,
                overwrite=True):
    """Write a preset directory in the KerasHub layout, atomically.

    ``config.json`` + ``model.weights.h5`` (backbone), ``tokenizer.json`` + ``assets/tokenizer/``,
    ``preprocessor.json``, ``task.json`` + ``task.weights.h5`` (head only), ``metadata.json``. Either
    all of it appears at ``directory`` or nothing changes there.

    ``metadata`` is merged into ``metadata.json``: say what the weights are and what they were
    trained on (e.g. ``{"description": "...", "trained_on": "..."}``).
    """
    if tokenizer is None and preprocessor is not None:
        tokenizer = getattr(preprocessor, "tokenizer", None)
    tasks = [type(task).__name__] if task is not None else []
    with files.atomic_directory(directory, overwrite=overwrite) as staging:
        files.write_json(os.path.join(staging, files.CONFIG_FILE),
                         keras.saving.serialize_keras_object(backbone))
        backbone.save_weights(os.path.join(staging, files.WEIGHTS_FILE))
        if tokenizer is not None:
            config = keras.saving.serialize_keras_object(tokenizer)
            assets = os.path.join(staging, files.ASSETS_DIR, "tokenizer")
            os.makedirs(assets)
            tokenizer.save_assets(assets)
            config["config"] = {k: v for k, v in config["config"].items()
                                if k not in tokenizer.ASSET_CONFIG_KEYS}
            files.write_json(os.path.join(staging, files.TOKENIZER_FILE), config)
        image_converter = getattr(preprocessor, "image_converter", None)
        if image_converter is not None:
            files.write_json(os.path.join(staging, files.IMAGE_CONVERTER_FILE),
                             keras.saving.serialize_keras_object(image_converter))
        if preprocessor is not None:
            config = keras.saving.serialize_keras_object(preprocessor)
            config["config"].pop("tokenizer", None)
            files.write_json(os.path.join(staging, files.PREPROCESSOR_FILE), config)
        if task is not None:
            config = keras.saving.serialize_keras_object(task)
            for key in ("backbone", "preprocessor"):
                config["config"].pop(key, None)
            files.write_json(os.path.join(staging, files.TASK_FILE), config)
            task.save_head_weights(os.path.join(staging, files.TASK_WEIGHTS_FILE))
        files.write_json(os.path.join(staging, files.METADATA_FILE),
                         files.metadata_for(backbone.count_params(), tasks, metadata))


__all__ = [
    "PresetError", "PresetInfo", "PresetLoader", "get_preset", "list_presets", "load",
    "register_format", "register_preset", "resolve", "save_preset",
]
