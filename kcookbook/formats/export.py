"""Export kcookbook models and tokenizers as Hugging Face ``transformers`` folders.

``export_to_transformers(obj, directory)`` writes what ``transformers.AutoModel…from_pretrained``
and ``AutoTokenizer.from_pretrained`` read, with no kcookbook code needed to load it:

- ``config.json`` and ``model.safetensors`` from a backbone (its family's converter maps the config
  and the weight names the other way round: ``Converter.hf_config_from_backbone`` and
  ``hf_tensors_from_backbone``);
- ``tokenizer.json`` + ``tokenizer_config.json`` (or ``tokenizer.model`` for SentencePiece) from a
  tokenizer;
- all of these plus ``generation_config.json`` from a ``CausalLM`` (or any task with a backbone and a
  preprocessor).

Weights are written one tensor at a time (each is computed, written and dropped), so the export
never holds a second copy of the model in memory. LoRA updates are folded in and int8-quantised
kernels are dequantised as they are read: the folder holds plain float weights, and
``metadata`` in ``config.json`` (``kcookbook_export``) says so. The folder is written atomically.
"""

import json
import os
import shutil

import keras
import numpy as np
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import processors

from kcookbook.backbones.backbone import Backbone
from kcookbook.components.embeddings import ReversibleEmbedding
from kcookbook.components.hf_tokenizer import HuggingFaceTokenizer
from kcookbook.components.mixture_of_experts import EXPERT_WEIGHTS, MixtureOfExperts
from kcookbook.components.sentencepiece import SentencePieceTokenizer
from kcookbook.components.tokenizer import Tokenizer
from kcookbook.components.wordpiece import WordPieceTokenizer
from kcookbook.formats import converters
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError
from kcookbook.tasks.task import Task

SAFETENSORS_FILE = "model.safetensors"
# numpy dtype → safetensors dtype name.
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32"}


# ----------------------------------------------------------------------------- reading the weights

class WeightReader:
    """Float numpy arrays of a backbone's weights by variable path, as its layers compute with them.

    A projection's ``…/kernel`` comes back with its LoRA update folded in (``W + alpha/rank · A·B``)
    and int8 kernels dequantised (``int8 / kernel_scale``); every other variable as it is stored.
    ``notes`` collects what was changed on the way, for the export's metadata.
    """

    def __init__(self, backbone):
        self.variables = {v.path: v for v in backbone.weights}
        self.projections, self.tables, self.experts = {}, {}, {}
        for layer in backbone._flatten_layers(include_self=False):
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) and layer.built:
                self.projections[layer._kernel.path] = layer
            elif isinstance(layer, ReversibleEmbedding) and layer.built:
                prefix = layer._embeddings.path.rsplit("/", 1)[0]
                for name in ("embeddings", "reverse_embeddings"):
                    self.tables[f"{prefix}/{name}"] = (layer, name)
            elif isinstance(layer, MixtureOfExperts) and layer.built:
                for name in EXPERT_WEIGHTS:
                    self.experts[getattr(layer, name).path] = (layer, name)
        self.notes = set()

    def __call__(self, path):
        layer = self.projections.get(path)
        if layer is not None:
            return self._kernel(layer)
        if path in self.tables:
            layer, name = self.tables[path]
            if layer.quantization_mode == "int8":
                self.notes.add("int8 embeddings dequantised to float")
            return layer.float_tables()[name]
        if path in self.experts:
            layer, name = self.experts[path]
            if layer.quantization_mode == "int8":
                self.notes.add("int8 expert weights dequantised to float")
            return np.asarray(keras.ops.convert_to_numpy(layer.expert_kernel(name)))
        if path not in self.variables:
            raise PresetError(f"Export: the model has no weight {path!r}.")
        variable = self.variables[path]
        if "int" in str(variable.dtype):
            raise PresetError(
                f"Export: {path} is stored as {variable.dtype} (a quantised weight kcookbook cannot "
                "dequantise for export). Export the model before quantising it.")
        return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(variable, "float32")))

    def _kernel(self, layer):
        mode = layer.quantization_mode
        if mode is None:
            kernel = keras.ops.cast(layer._kernel, "float32")
        elif mode == "int8":
            kernel = keras.ops.divide(keras.ops.cast(layer._kernel, "float32"),
                                      keras.ops.cast(layer.kernel_scale, "float32"))
            self.notes.add("int8 kernels dequantised to float")
        else:
            raise PresetError(f"Export: layer {layer.path} is quantised as {mode!r}; kcookbook exports "
                              "float and int8 models. Export the float model instead.")
        if getattr(layer, "lora_enabled", False):
            update = keras.ops.matmul(keras.ops.cast(layer.lora_kernel_a, "float32"),
                                      keras.ops.cast(layer.lora_kernel_b, "float32"))
            kernel = kernel + (layer.lora_alpha / layer.lora_rank) * keras.ops.reshape(update, kernel.shape)
            self.notes.add("LoRA updates folded into the kernels")
        return np.asarray(keras.ops.convert_to_numpy(kernel))


# ----------------------------------------------------------------------------- safetensors, streamed

def write_safetensors(path, tensors, dtype="float32", metadata=None):
    """Write ``{name: function returning an array}`` as one safetensors file, one tensor at a time.

    The tensors are written to a data file as they are computed, then the header (names, dtypes,
    shapes, offsets; its length is known only at the end) and the data are joined into ``path``.
    """
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"dtype={dtype!r}: export writes {', '.join(SAFETENSORS_DTYPES)}.")
    header, offset = {}, 0
    data_path = path + ".data"
    with open(data_path, "wb") as data:
        for name, compute in tensors.items():
            array = np.ascontiguousarray(_as_dtype(compute(), dtype))
            data.write(array.tobytes())
            header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(array.shape),
                            "data_offsets": [offset, offset + array.nbytes]}
            offset += array.nbytes
            del array
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as out, open(data_path, "rb") as data:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        shutil.copyfileobj(data, out, 16 * 2**20)
    os.remove(data_path)


def _as_dtype(array, dtype):
    if dtype == "bfloat16":
        import ml_dtypes

        return np.asarray(array, "float32").astype(ml_dtypes.bfloat16)
    return np.asarray(array).astype(dtype)


# ----------------------------------------------------------------------------- tokenizers

def tokenizer_files(tokenizer, directory):
    """Write ``tokenizer`` as Hugging Face tokenizer files into ``directory``.

    Tokenizers that run on the ``tokenizers`` library (WordPiece, byte-level BPE, a ``tokenizer.json``)
    are written as ``tokenizer.json`` with a post-processor that adds the special tokens the
    matching kcookbook preprocessor adds; SentencePiece tokenizers as ``tokenizer.model``.
    ``tokenizer_config.json`` names the special tokens and the chat template.
    """
    config = {"clean_up_tokenization_spaces": False}
    if isinstance(tokenizer, WordPieceTokenizer):
        engine = RustTokenizer.from_str(tokenizer._engine.to_str())
        cls, sep = "[CLS]", "[SEP]"
        engine.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(t, tokenizer.token_to_id(t)) for t in (cls, sep)])
        engine.save(os.path.join(directory, "tokenizer.json"))
        with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in tokenizer.get_vocabulary()))
        config.update({"tokenizer_class": "BertTokenizer", "do_lower_case": tokenizer.lowercase,
                       "strip_accents": tokenizer.strip_accents, "unk_token": tokenizer.oov_token,
                       "cls_token": cls, "sep_token": sep, "pad_token": "[PAD]", "mask_token": "[MASK]"})
    elif isinstance(tokenizer, HuggingFaceTokenizer):
        engine = RustTokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        start = tokenizer.start_token if tokenizer.add_start_token else None
        if start is not None:
            engine.post_processor = processors.TemplateProcessing(
                single=f"{start} $A", pair=f"{start} $A {start} $B:1",
                special_tokens=[(start, tokenizer.token_to_id(start))])
        engine.save(os.path.join(directory, "tokenizer.json"))
        config.update({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tokenizer.start_token,
                       "eos_token": tokenizer.end_token, "pad_token": tokenizer.pad_token,
                       "add_bos_token": tokenizer.add_start_token})
    elif isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.save_assets(directory)
        os.rename(os.path.join(directory, tokenizer.PROTO_FILE), os.path.join(directory, "tokenizer.model"))
        config.update({"tokenizer_class": "LlamaTokenizer", "bos_token": tokenizer.start_token,
                       "eos_token": tokenizer.end_token, "pad_token": tokenizer.pad_token,
                       "add_bos_token": tokenizer.add_start_token, "add_eos_token": False,
                       "legacy": False})
    else:
        raise PresetError(f"Export: kcookbook cannot write a {type(tokenizer).__name__} as Hugging Face "
                          "tokenizer files (it writes WordPiece, byte-level BPE, tokenizer.json and "
                          "SentencePiece tokenizers).")
    if getattr(tokenizer, "chat_template", None):
        config["chat_template"] = tokenizer.chat_template
    files.write_json(os.path.join(directory, "tokenizer_config.json"),
                     {k: v for k, v in config.items() if v is not None})


# ----------------------------------------------------------------------------- models

def _converter_for(backbone):
    converter = converters.for_backbone_class(type(backbone).__name__)
    if converter is None:
        raise PresetError(
            f"Export: kcookbook cannot write a {type(backbone).__name__} as a transformers model yet; "
            f"it exports {', '.join(converters.exportable_backbone_classes())}. Save it with "
            "save_to_preset instead.")
    return converter


def _write_model(backbone, directory, dtype, extra_config=None):
    converter = _converter_for(backbone)
    read = WeightReader(backbone)
    tensors = converter.hf_tensors_from_backbone(backbone, read)
    write_safetensors(os.path.join(directory, SAFETENSORS_FILE), tensors, dtype=dtype,
                      metadata={"format": "pt"})
    config = {**converter.hf_config_from_backbone(backbone), **(extra_config or {})}
    config["torch_dtype"] = dtype
    config["kcookbook_export"] = {"family": converter.family, "backbone": type(backbone).__name__,
                                  "notes": sorted(read.notes)}
    files.write_json(os.path.join(directory, files.CONFIG_FILE), config)
    return converter


def export_to_transformers(obj, directory, dtype="float32"):
    """Write ``obj`` (a backbone, a task or a tokenizer) to ``directory`` as a transformers folder.

    >>> causal_lm.export_to_transformers("smollm2-tuned")  # doctest: +SKIP
    >>> transformers.AutoModelForCausalLM.from_pretrained("smollm2-tuned")  # doctest: +SKIP
    """
    with files.atomic_directory(directory, known_files=files.HF_EXPORT_FILES) as staging:
        if isinstance(obj, Tokenizer):
            tokenizer_files(obj, staging)
        elif isinstance(obj, Backbone):
            _write_model(obj, staging, dtype)
        elif isinstance(obj, Task):
            tokenizer = getattr(getattr(obj, "preprocessor", None), "tokenizer", None)
            extra = {}
            if tokenizer is not None:
                extra = {k: v for k, v in {"bos_token_id": _token_id(tokenizer, "start"),
                                           "eos_token_id": _token_id(tokenizer, "end"),
                                           "pad_token_id": _token_id(tokenizer, "pad")}.items()
                         if v is not None}
            converter = _write_model(obj.backbone, staging, dtype, extra)
            if tokenizer is not None:
                tokenizer_files(tokenizer, staging)
                stop = list(tokenizer.stop_token_ids)  # the end token, then chat models' end of turn
                generation = {k: v for k, v in {
                    "bos_token_id": extra.get("bos_token_id"),
                    "eos_token_id": stop[0] if len(stop) == 1 else (stop or None),
                    "pad_token_id": extra.get("pad_token_id")}.items() if v is not None}
                if converter.hf_generates:
                    files.write_json(os.path.join(staging, "generation_config.json"), generation)
        else:
            raise TypeError(f"export_to_transformers takes a Backbone, a Task or a Tokenizer, not a "
                            f"{type(obj).__name__}.")


def _token_id(tokenizer, role):
    token = getattr(tokenizer, f"{role}_token", None)
    if token is None:
        return None
    try:
        return int(tokenizer.token_to_id(token))
    except KeyError:
        return None
