"""Reading and writing preset files: JSON configs, weights, atomic directory writes.

Every failure names the file and what to do about it. A preset is untrusted input: no file outside
its folder (or the hub cache it came from) is read (:func:`safe_path`, :func:`check_links`), JSON is
read with a size cap, and saving never deletes a file a preset save did not write
(:func:`atomic_directory`).
"""

import contextlib
import datetime
import json
import os
import re
import secrets
import shutil

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
# What kcookbook's and keras_hub's preset savers write at the top of a preset folder (besides
# ASSETS_DIR): only a folder holding nothing else may be replaced by a save.
PRESET_FILES = frozenset({
    CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, PREPROCESSOR_FILE, IMAGE_CONVERTER_FILE, TASK_FILE,
    TASK_WEIGHTS_FILE, METADATA_FILE, "model.weights.json", "audio_converter.json", "video_converter.json",
})
# What an export to a Hugging Face transformers folder writes (kcookbook.formats.export).
HF_EXPORT_FILES = frozenset({
    CONFIG_FILE, "model.safetensors", TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json",
    "generation_config.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
})
SHARDED_WEIGHTS = re.compile(r"model_\d+\.weights\.h5")  # keras_hub's sharded model.weights.h5
MAX_JSON_BYTES = 64 * 2**20  # configs are kilobytes; a tokenizer.json with a 250k vocabulary ~20 MB


# ----------------------------------------------------------------------------- staying inside a preset

def trust_root(folder):
    """The folder whose files a preset at ``folder`` may read: the folder itself (symlinks in the
    path the user gave are resolved), or for a Hugging Face hub cache snapshot
    (``models--org--name/snapshots/<revision>``, whose files link to ``../../blobs/``) the repository's
    cache folder."""
    real = os.path.realpath(folder)
    if os.path.isfile(real):
        real = os.path.dirname(real)
    snapshots, _ = os.path.split(real)
    repository, name = os.path.split(snapshots)
    if name == "snapshots" and os.path.basename(repository).startswith(("models--", "datasets--")):
        return repository
    return real


def _inside(path, root):
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _refuse_escape(path, root):
    """PresetError when ``path`` (which may be or pass through symlinks) resolves outside ``root``."""
    real = os.path.realpath(path)
    if not _inside(real, root):
        raise PresetError(
            f"{path} is a symbolic link to {real}, outside the preset folder {root}. kcookbook reads "
            "no file outside a preset: copy the file into the preset instead of linking it."
        )


def safe_path(folder, *names):
    """``os.path.join(folder, *names)``, refused unless it stays inside ``folder``'s trust root.

    ``names`` come from kcookbook or from the preset's own files (a safetensors index, a config):
    absolute names, ``..`` components and symbolic links that lead outside the folder (or the hub
    cache it was resolved from, see :func:`trust_root`) are a PresetError naming the file.
    """
    for name in names:
        name = os.fspath(name)
        parts = re.split(r"[\\/]", name)
        if not name or os.path.isabs(name) or "\0" in name or ".." in parts:
            raise PresetError(
                f"A preset in {folder} names the file {name!r}; file names in a preset must be relative "
                "and stay inside it (no absolute paths, no '..')."
            )
    path = os.path.join(folder, *names)
    _refuse_escape(path, trust_root(folder))
    return path


def check_links(folder, subfolder=None, recursive=False):
    """Refuse symbolic links in ``subfolder`` (default: ``folder`` itself) that lead outside
    ``folder``'s trust root, before a reader opens files there by name (tokenizer assets, a Hugging
    Face folder's vocab.txt / tokenizer.json). With ``recursive``, links in sub-folders too."""
    root = trust_root(folder)
    subfolder = folder if subfolder is None else subfolder
    _refuse_escape(subfolder, root)
    for current, dirs, names in os.walk(subfolder):
        for name in names + dirs:
            _refuse_escape(os.path.join(current, name), root)
        if not recursive:
            break


# ----------------------------------------------------------------------------- JSON

def read_json(path, what="config"):
    """A JSON object from ``path``; anything else (a list, ``null``, invalid or too-deeply nested
    JSON, a file over MAX_JSON_BYTES) is a PresetError naming the file."""
    if not os.path.exists(path):
        raise PresetError(f"Missing {what} file {path}.")
    size = os.path.getsize(path)
    if size > MAX_JSON_BYTES:
        raise PresetError(
            f"{what.capitalize()} file {path} is {size / 2**20:.0f} MB; kcookbook reads JSON files up to "
            f"{MAX_JSON_BYTES // 2**20} MB. It is not a preset config: re-download the preset."
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PresetError(f"{path} is not valid JSON ({e}); the preset is corrupt: re-download it.") from e
    except RecursionError as e:
        raise PresetError(f"{path} nests JSON too deeply to be a {what} file; the preset is corrupt: "
                          "re-download it.") from e
    if not isinstance(data, dict):
        raise PresetError(f"{what.capitalize()} file {path} holds a JSON {_json_kind(data)}, not an object "
                          "({...}); the preset is corrupt: re-download or re-save it.")
    return data


def _json_kind(value):
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def read_serialized(path, what="config"):
    """A serialized Keras object (``{"class_name": ..., "config": {...}}``) from a preset JSON file."""
    data = read_json(path, what)
    for key, kind in (("class_name", str), ("config", dict)):
        if not isinstance(data.get(key), kind):
            raise PresetError(
                f"{what.capitalize()} file {path} has no {key!r} {'string' if kind is str else 'object'}: "
                "it is not a serialized Keras object (class_name + config). Re-save the preset."
            )
    return data


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


def keras_snake_case(class_name):
    """Keras's rule for default layer names: ``BatchNormalization`` → ``batch_normalization``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def keras_layer_groups(model):
    """The groups Keras's weights file gives ``model``'s layers (``layers/<group>``): each layer's
    class in snake case, numbered by position among layers of that class (``dense``, ``dense_1``)."""
    seen, groups = {}, []
    for layer in model.layers:
        base = keras_snake_case(type(layer).__name__)
        n = seen.get(base, 0)
        seen[base] = n + 1
        groups.append(base if n == 0 else f"{base}_{n}")
    return groups


def check_layer_groups(model, path):
    """PresetError naming the layer groups of weights file ``path`` that ``model`` lacks (weights of
    a bigger model, which Keras would drop silently) or that the file lacks (a smaller model)."""
    with open_h5(path) as f:
        stored = f.get("layers")
        if stored is None or not hasattr(stored, "keys"):
            return
        stored = set(stored.keys())
    expected = keras_layer_groups(model)
    extra = sorted(stored - set(expected))
    missing = [g for g in expected if g not in stored]
    if extra or missing:
        def some(names):
            return ", ".join(names[:8]) + (f" … ({len(names)} in all)" if len(names) > 8 else "")
        raise PresetError(
            f"Weights file {path} does not match the {model.name} that config.json describes: "
            + (f"the file has layer groups the model does not ({some(extra)}); " if extra else "")
            + (f"the model has layer groups the file does not ({some(missing)}); " if missing else "")
            + "the weights come from a " + ("bigger" if extra and not missing else
                                            "smaller" if missing and not extra else "different")
            + " model. Use the config.json saved with these weights, or re-save the preset."
        )


def load_keras_weights(model, path):
    """``model.load_weights`` with the errors turned into PresetErrors that name the file; layer
    groups the file and the model do not share are named (:func:`check_layer_groups`)."""
    check_layer_groups(model, path)
    try:
        model.load_weights(path)
    except Exception as e:
        raise PresetError(
            f"Could not load {path} into {model.name} ({type(e).__name__}: {str(e)[:400]}). The "
            "weights file does not match config.json: re-save or re-download the preset."
        ) from e


def read_safetensors(path):
    """The tensors of one ``.safetensors`` file as numpy arrays; a missing, empty, truncated or
    malformed file (bad header length, invalid header JSON, offsets past the end) is a PresetError
    naming it. The safetensors library checks the header against the file size before reading."""
    from safetensors.numpy import load_file

    if not os.path.exists(path) or os.path.getsize(path) == 0:
        raise PresetError(f"Weights file {path} is missing or empty: re-download the checkpoint.")
    try:
        return load_file(path)
    except Exception as e:
        raise PresetError(f"Weights file {path} is corrupt or truncated ({type(e).__name__}: "
                          f"{str(e)[:300]}).") from e


def save_variables_h5(path, variables):
    """Write ``{path: variable}`` to an HDF5 file, one dataset per variable path."""
    import h5py

    with h5py.File(path, "w") as f:
        for name, variable in variables.items():
            f.create_dataset(name, data=np.asarray(variable))


# ----------------------------------------------------------------------------- atomic saves

def foreign_entries(directory, known_files=PRESET_FILES):
    """The entries of ``directory`` that no preset save writes (so replacing the folder would delete
    them): anything but ``known_files`` (PRESET_FILES, or HF_EXPORT_FILES for an export), sharded
    weights and ``assets/<name>/<files>``; symbolic links count as foreign."""
    foreign = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name == ASSETS_DIR and entry.is_dir(follow_symlinks=False):
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                inner = os.path.join(ASSETS_DIR, sub.name)
                if not sub.is_dir(follow_symlinks=False):
                    foreign.append(inner)
                    continue
                foreign += [os.path.join(inner, f.name) for f in os.scandir(sub.path)
                            if not f.is_file(follow_symlinks=False)]
        elif not (entry.is_file(follow_symlinks=False) and
                  (entry.name in known_files or SHARDED_WEIGHTS.fullmatch(entry.name))):
            foreign.append(entry.name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    return foreign


def _check_save_target(given, directory):
    """PresetError for a target that saving must never replace: an empty path, the filesystem root,
    the home folder, the current directory or one holding it, a symbolic link."""
    if not os.fspath(given).strip():
        raise PresetError("Cannot save a preset to an empty path (''): name a new folder, e.g. "
                          "save_to_preset('my_preset').")
    real = os.path.realpath(directory)
    cwd = os.path.realpath(os.getcwd())
    if real in (os.path.realpath(os.sep), os.path.realpath(os.path.expanduser("~"))) or _inside(cwd, real):
        raise PresetError(
            f"Cannot save a preset to {directory}: it is the filesystem root, the home folder or the "
            "current directory (or holds it), which a save would replace. Name a new folder inside "
            f"it, e.g. {os.path.join(directory, 'my_preset')}."
        )
    if os.path.islink(directory):
        raise PresetError(
            f"Cannot save a preset to {directory}: it is a symbolic link (to {real}). A save replaces "
            "the folder by renaming a finished copy onto it, which would replace the link, not write "
            f"to {real}. Save to {real} itself, or remove the link."
        )


def _staging_name(base):
    return f".{base}.partial-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_stale_staging(parent, base, known_files):
    """Remove what a killed save to ``parent/base`` left behind: ``.{base}.partial-{pid}-{hex}``
    staging folders (and their ``.old`` retired twins) of processes that no longer run, holding only
    what a preset save writes."""
    pattern = re.compile(re.escape(f".{base}.partial-") + r"(\d+)-[0-9a-f]{8}(\.old)?")
    for name in os.listdir(parent):
        match = pattern.fullmatch(name)
        path = os.path.join(parent, name)
        if not match or os.path.islink(path) or not os.path.isdir(path) or _process_alive(int(match[1])):
            continue
        if not foreign_entries(path, known_files):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive but another user's
        return True
    return True


@contextlib.contextmanager
def atomic_directory(directory, overwrite=True, known_files=PRESET_FILES):
    """Yield a temporary directory that replaces ``directory`` only if the block succeeds.

    Nothing half-written is ever visible at ``directory``: on any error the temporary directory is
    removed and an existing preset stays as it was. An existing ``directory`` is replaced only when
    all it holds is what a preset save writes (:func:`foreign_entries`); an empty path, the current,
    home or root folder and a symbolic link are refused. The result has the permissions of a folder
    made with ``mkdir`` (0o755 under the usual umask). Staging folders left by a killed save to the
    same target are removed first. ``known_files``: the top-level files a save writes
    (HF_EXPORT_FILES for an export to transformers).
    """
    given = directory
    directory = os.path.abspath(os.fspath(directory))
    _check_save_target(given, directory)
    parent, base = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise PresetError(f"Cannot save a preset to {directory}: it is a file.")
        foreign = foreign_entries(directory, known_files)
        if foreign:
            raise PresetError(
                f"Cannot save a preset to {directory}: the directory holds other files, which saving "
                f"would delete: {', '.join(foreign[:10])}{' …' if len(foreign) > 10 else ''}. Choose an "
                "empty or new directory."
            )
        if os.listdir(directory) and not overwrite:
            raise PresetError(f"A preset already exists at {directory}; pass overwrite=True.")
    _remove_stale_staging(parent, base, known_files)
    while True:
        staging = os.path.join(parent, _staging_name(base))
        try:
            os.mkdir(staging)  # mode 0o777 minus the umask, unlike mkdtemp's 0o700
            break
        except FileExistsError:
            continue
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
