"""Handle → local path: built-in names, directories, ``kaggle://`` and ``hf://``."""

import difflib
import os

from kcookbook.presets.builtin import all_presets, get_preset
from kcookbook.presets.errors import PresetError

# Files fetched from a Hugging Face repository: configs, weights, tokenizers. Not the other formats
# (pytorch_model.bin, onnx, tf/flax weights) that many repositories also carry.
HF_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.gguf", "merges.txt", "*.tiktoken"]


def resolve(handle):
    """Return ``(local_path, info)`` for a handle; ``info`` is the PresetInfo of a built-in name."""
    if not isinstance(handle, (str, os.PathLike)):
        raise PresetError(f"A preset handle is a string or a path, got {type(handle).__name__}.")
    handle = os.fspath(handle)
    if handle.startswith("kaggle://"):
        return download_kaggle(handle), None
    if handle.startswith("hf://"):
        return download_hf(handle), None
    if os.path.exists(handle):
        return os.path.abspath(handle), None
    info = get_preset(handle)
    if info is not None:
        local = info.offline_path()
        if local is not None:
            return local, info
        if not info.handle:
            raise PresetError(
                f"Built-in preset {handle!r} is only available offline, from the "
                f"{info.offline_package!r} package, which is not installed. {info.source}")
        path, _ = resolve(info.handle)
        return path, info
    if "/" in handle or os.sep in handle or handle.startswith("."):
        raise PresetError(f"No preset directory at {handle!r}: the path does not exist.")
    close = difflib.get_close_matches(handle, list(all_presets()), n=5, cutoff=0.4)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise PresetError(
        f"Unknown preset {handle!r}.{hint} kcookbook.presets.list_presets() lists the built-in "
        "names; a directory path, kaggle://owner/model/framework/variation/version or hf://org/name "
        "also work."
    )


def download_kaggle(handle):
    spec = handle[len("kaggle://"):].strip("/")
    parts = spec.split("/")
    if len(parts) not in (4, 5):
        raise PresetError(
            f"{handle!r} is not a Kaggle model handle: expected kaggle://owner/model/framework/"
            "variation[/version], e.g. kaggle://keras/bert/keras/bert_tiny_en_uncased/3."
        )
    try:
        import kagglehub
    except ImportError as e:
        raise PresetError(f"Loading {handle} needs kagglehub: pip install kagglehub.") from e
    try:
        return kagglehub.model_download(spec)
    except Exception as e:  # kagglehub raises several types; all mean "not available here".
        cache = os.environ.get("KAGGLEHUB_CACHE", os.path.expanduser("~/.cache/kagglehub"))
        versioned = "" if len(parts) == 5 else (
            " An unversioned handle always asks the network: add the version to use a cached copy.")
        raise PresetError(
            f"Could not get {handle} from Kaggle ({type(e).__name__}: {str(e)[:200]}). It needs network "
            f"access, or a complete copy in the kagglehub cache under {cache}/models/{spec}.{versioned} "
            "Gated models (Gemma, Llama) also need you to accept their licence on kaggle.com and set "
            "KAGGLE_USERNAME/KAGGLE_KEY."
        ) from e


def download_hf(handle):
    repo_id = handle[len("hf://"):].strip("/")
    if repo_id.count("/") != 1:
        raise PresetError(f"{handle!r} is not a Hugging Face handle: expected hf://org/name.")
    try:
        import huggingface_hub
    except ImportError as e:
        raise PresetError(f"Loading {handle} needs huggingface_hub: pip install huggingface_hub.") from e
    try:
        return huggingface_hub.snapshot_download(repo_id, allow_patterns=HF_PATTERNS)
    except Exception as e:
        raise PresetError(
            f"Could not get {handle} from Hugging Face ({type(e).__name__}: {str(e)[:200]}). It needs "
            "network access or a copy in the Hugging Face cache (HF_HOME); gated models also need "
            "HF_TOKEN. A local folder written by save_pretrained works too: pass its path."
        ) from e
