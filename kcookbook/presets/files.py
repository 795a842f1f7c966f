"""Reading and writing preset files: JSON configs, weights, atomic directory writes.

Every failure names the file and what to do about it.
"""

import contextlib
import datetime
import json
import os
import shutil
import tempfile

import numpy as np

from kcookbook.presets.errors import PresetError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
TOKENIZER_FILE = "tokenizer.json"
PREPROCESSOR_FILE = "preprocessor.json"
IMAGE_CONVERTER_FILE = "image_converter.json"
TASK_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
METADATA_FILE = "metadata.json"
ASSETS_DIR = "assets"


def read_json(path, what="config"):
    if not os.path.exists(path):
        raise PresetError(f"Missing {what} file {path}.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PresetError(f"{path} is not valid JSON ({e}); the preset is corrupt: re-download it.") from e


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4)
        f.write("\n")


def open_h5(path):
    """Open a weights file, turning a missing, empty or corrupt file into a clear PresetError."""
    import h5py

    if not os.path.exists(path):
        raise PresetError(
            f"Missing weights file {path}. The preset is incomplete: re-download it, or pass "
            "load_weights=False to build the architecture with random weights."
        )
    if os.path.getsize(path) == 0:
        raise PresetError(f"Weights file {path} is empty (0 bytes): re-download or re-save the preset.")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise PresetError(
            f"Weights file {path} is corrupt or truncated ({e}). Re-download or re-save the preset."
        ) from e


def read_h5_arrays(path):
    """Every dataset of an HDF5 weights file as {"group/…/name": numpy array}."""
    import h5py

    arrays = {}
    with open_h5(path) as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                arrays[name] = obj[()]
        try:
            f.visititems(visit)
        except (OSError, RuntimeError, KeyError) as e:
            raise PresetError(f"Weights file {path} is corrupt or truncated ({e}).") from e
    return arrays


def assign_weights(model, arrays, source, ignore_missing=()):
    """Assign ``{variable.path: array}`` to ``model``; shape or name mismatches name the layer."""
    variables = {v.path: v for v in model.weights}
    missing = [p for p in variables if p not in arrays and not any(p.startswith(i) for i in ignore_missing)]
    unexpected = [p for p in arrays if p not in variables]
    if missing or unexpected:
        raise PresetError(
            f"Weights from {source} do not fit {model.name}: missing {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' …' if len(unexpected) > 5 else ''}. The checkpoint and the config disagree."
        )
    for path, value in arrays.items():
        variable = variables[path]
        value = np.asarray(value)
        if tuple(value.shape) != tuple(variable.shape):
            layer = path.rsplit("/", 1)[0]
            raise PresetError(
                f"Shape mismatch in layer '{layer}' loading {source}: the checkpoint has "
                f"{tuple(value.shape)} for '{path}', the model expects {tuple(variable.shape)}. "
                "The config does not describe these weights."
            )
        variable.assign(value.astype(variable.dtype) if value.dtype != variable.dtype else value)


def load_keras_weights(model, path):
    """``model.load_weights`` with the errors turned into PresetErrors that name the file."""
    with open_h5(path):
        pass
    try:
        model.load_weights(path)
    except Exception as e:
        raise PresetError(
            f"Could not load {path} into {model.name} ({type(e).__name__}: {str(e)[:400]}). The "
            "weights file does not match config.json: re-save or re-download the preset."
        ) from e


def save_variables_h5(path, variables):
    """Write ``{path: variable}`` to an HDF5 file, one dataset per variable path."""
    import h5py

    with h5py.File(path, "w") as f:
        for name, variable in variables.items():
            f.create_dataset(name, data=np.asarray(variable))


@contextlib.contextmanager
def atomic_directory(directory, overwrite=True):
    """Yield a temporary directory that replaces ``directory`` only if the block succeeds.

    Nothing half-written is ever visible at ``directory``: on any error the temporary directory is
    removed and an existing preset stays as it was.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent, base = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise PresetError(f"Cannot save a preset to {directory}: it is a file.")
        entries = os.listdir(directory)
        looks_like_preset = CONFIG_FILE in entries or METADATA_FILE in entries
        if entries and not looks_like_preset:
            raise PresetError(
                f"Cannot save a preset to {directory}: the directory holds other files. "
                "Choose an empty or new directory."
            )
        if entries and not overwrite:
            raise PresetError(f"A preset already exists at {directory}; pass overwrite=True.")
    staging = tempfile.mkdtemp(prefix=f".{base}.partial-", dir=parent)
    try:
        yield staging
        if os.path.exists(directory):
            retired = staging + ".old"
            os.rename(directory, retired)
            os.rename(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def metadata_for(parameter_count, tasks=(), extra=None):
    import keras

    import kcookbook

    metadata = {
        "keras_version": keras.__version__,
        "kcookbook_version": kcookbook.__version__,
        "parameter_count": int(parameter_count),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        "tasks": list(tasks),
    }
    metadata.update(extra or {})
    return metadata
