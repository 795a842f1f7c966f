"""GGUF checkpoints (llama.cpp's single-file format): config, dequantised weights and tokenizer.

A ``.gguf`` file holds metadata (architecture hyper-parameters, the tokenizer's vocabulary and
merges, the chat template) and tensors, most of them block-quantised (Q4_1, Q8_0, ...). This module
reads a llama-architecture file (Llama, Mistral, SmolLM, ... all use ``general.architecture =
"llama"``) or a ``gemma2`` / ``gemma3`` one into what a Hugging Face ``save_pretrained`` folder would
give, so the same converter builds the model:

* :meth:`GGUFCheckpoint.hf_config`: a ``config.json``-style dict (``model_type: "llama"``, ...).
* :meth:`GGUFCheckpoint.hf_tensors`: float32 numpy arrays under Hugging Face names
  (``model.layers.0.self_attn.q_proj.weight``, ...), dequantised with the ``gguf`` package and with
  llama.cpp's reordering of the query/key rows undone (llama) or the ``+ 1`` llama.cpp adds to
  Gemma's ``(1 + w)`` norm weights taken off (gemma2, gemma3).
* :meth:`GGUFCheckpoint.tokenizer`: the tokenizer embedded in the file, with its special tokens
  and chat template: byte-level BPE (``tokenizer.ggml.model == "gpt2"``: SmolLM2, Llama-3) as a
  BytePairTokenizer, SentencePiece BPE (``"llama"``: Llama-2, Mistral, TinyLlama) as a
  SentencePieceTokenizer.

``kcookbook.presets.load`` recognises a ``.gguf`` file, or a folder holding one, through
:class:`GGUFLoader`, so ``CausalLM.from_preset("path/to/model.gguf")`` works.

    >>> checkpoint = GGUFCheckpoint("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
    >>> checkpoint.hf_config()["num_hidden_layers"]  # doctest: +SKIP
    30
"""

import functools
import os

import numpy as np

from kcookbook.formats import converters
from kcookbook.formats.loaders import HuggingFaceLoader, PresetLoader
from kcookbook.presets import files, headers
from kcookbook.presets.errors import PresetError

SUPPORTED_ARCHITECTURES = ("llama", "gemma2", "gemma3")
# GGUF architecture → Hugging Face model_type / class.
_HF_MODEL_TYPES = {"llama": ("llama", "LlamaForCausalLM"), "gemma2": ("gemma2", "Gemma2ForCausalLM"),
                   "gemma3": ("gemma3_text", "Gemma3ForCausalLM")}
_GEMMA_ARCHITECTURES = ("gemma2", "gemma3")

# llama.cpp's tensor names → Hugging Face's (LlamaForCausalLM). "{i}" is the block index.
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Gemma 2/3 blocks: four norms around attention and feed-forward (and Gemma 3's QK-norm).
_GEMMA_BLOCK_TENSORS = {
    **_BLOCK_TENSORS,
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}

# tokenizer.ggml.pre (how llama.cpp splits text before BPE) → BytePairTokenizer's pre_tokenizer.
_PRE_TOKENIZERS = {
    "default": "gpt2", "gpt2": "gpt2", "mpt": "gpt2", "olmo": "gpt2", "jais": "gpt2",
    "smollm": "gpt2_single_digits", "starcoder": "gpt2_single_digits", "refact": "gpt2_single_digits",
    "command-r": "gpt2_single_digits", "codeshell": "gpt2_single_digits",
    "exaone": "gpt2_single_digits", "minerva-7b": "gpt2_single_digits",
    "llama3": "llama3", "llama-bpe": "llama3", "llama-v3": "llama3", "smaug-bpe": "llama3",
    "dbrx": "llama3", "falcon3": "llama3",
}

_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4


def _import_gguf():
    try:
        import gguf
    except ImportError as e:
        raise PresetError("Reading .gguf files needs the `gguf` package: pip install gguf==0.19.0.") from e
    return gguf


@functools.cache
def _plain_array_reader_class():
    """``gguf.GGUFReader`` over a plain ``ndarray`` view of its memory map.

    The reader slices its ``np.memmap`` once per metadata value, and every ``memmap`` slice pays for
    bookkeeping in ``__array_finalize__`` / ``__getitem__``: with Gemma 3's 262k-token vocabulary
    that is most of a 40-second parse. A plain view of the same mapping reads the same bytes (still
    lazily, from the file) in about a third of the time.
    """
    gguf = _import_gguf()

    class PlainArrayGGUFReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, mapping):
            self._plain_data = mapping.view(np.ndarray)  # the view keeps the mapping alive

    return PlainArrayGGUFReader


def find_gguf_file(path):
    """The ``.gguf`` file at ``path``: the path itself, or the single one inside a folder; else None."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return path if path.lower().endswith(".gguf") else None
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "config.json")):
        return None
    found = sorted(f for f in os.listdir(path) if f.lower().endswith(".gguf"))
    if not found:
        return None
    if len(found) > 1:
        raise PresetError(f"{path} holds several GGUF files ({', '.join(found)}): pass the path of one.")
    return files.safe_path(path, found[0])


def unpermute_query_key(weight, num_heads):
    """Undo llama.cpp's reordering of the rows of a query or key projection.

    llama.cpp's converter interleaves the two halves of each head's rotary dimensions (it rotates
    adjacent pairs, Hugging Face rotates the halves): within each head it reorders rows
    ``(2, head_dim // 2) → (head_dim // 2, 2)``. This is the inverse. ``num_heads`` is the number of
    query heads for the query and of key/value heads for the key.
    """
    rows = weight.shape[0]
    half = rows // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class GGUFCheckpoint:
    """A parsed ``.gguf`` file. Tensors are memory-mapped: nothing large is read until asked for.

    ``GGUFCheckpoint.open(path)`` reuses the parsed metadata of an unchanged file (parsing a
    49k-token vocabulary takes seconds).
    """

    @classmethod
    def open(cls, path):
        path = os.path.abspath(os.fspath(path))
        if not os.path.exists(path):
            raise PresetError(f"No GGUF file at {path}.")
        stat = os.stat(path)
        return _open_cached(path, stat.st_mtime_ns, stat.st_size)

    def __init__(self, path):
        reader_class = _plain_array_reader_class()
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise PresetError(f"No GGUF file at {self.path}.")
        headers.check_gguf_header(self.path)
        try:
            self._reader = reader_class(self.path)
        except Exception as e:
            raise PresetError(
                f"GGUF file {self.path} is corrupt or truncated, or not a GGUF file "
                f"({type(e).__name__}: {str(e)[:200]}). Re-download it."
            ) from e
        self.metadata = {}
        for key, field in self._reader.fields.items():
            try:
                self.metadata[key] = field.contents()
            except Exception as e:
                raise PresetError(f"GGUF file {self.path} has an unreadable metadata field {key!r} ({e}).") from e
        self.architecture = self.metadata.get("general.architecture")
        self._tensors = {t.name: t for t in self._reader.tensors}

    def __repr__(self):
        return (f"<GGUFCheckpoint {os.path.basename(self.path)} architecture={self.architecture!r} "
                f"tensors={len(self._tensors)}>")

    # ----- config -----
    def _arch_value(self, key, default=None, required=True):
        full = f"{self.architecture}.{key}"
        if full in self.metadata:
            return self.metadata[full]
        if required and default is None:
            raise PresetError(f"GGUF file {self.path} lacks the metadata field {full!r}.")
        return default

    def _check_architecture(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise PresetError(
                f"GGUF file {self.path} holds a {self.architecture!r} model; kcookbook reads these GGUF "
                f"architectures: {', '.join(SUPPORTED_ARCHITECTURES)} (Llama, Mistral, SmolLM, Gemma 2, "
                "Gemma 3... files)."
            )
        if "rope_freqs.weight" in self._tensors or f"{self.architecture}.rope.scaling.type" in self.metadata:
            kind = self.metadata.get(f"{self.architecture}.rope.scaling.type", "frequency factors")
            if kind != "none":
                raise PresetError(
                    f"GGUF file {self.path} uses rotary position scaling ({kind}, e.g. Llama-3.1), "
                    "which kcookbook's GGUF reader does not support yet."
                )

    def hf_config(self):
        """The model's hyper-parameters as a Hugging Face ``config.json`` dict."""
        self._check_architecture()
        heads = int(self._arch_value("attention.head_count"))
        hidden = int(self._arch_value("embedding_length"))
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        vocab_size = self._arch_value("vocab_size", len(tokens) if tokens else None)
        model_type, model_class = _HF_MODEL_TYPES[self.architecture]
        config = {
            "model_type": model_type,
            "architectures": [model_class],
            "hidden_size": hidden,
            "intermediate_size": int(self._arch_value("feed_forward_length")),
            "num_hidden_layers": int(self._arch_value("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self._arch_value("attention.head_count_kv", heads)),
            "rms_norm_eps": float(self._arch_value("attention.layer_norm_rms_epsilon")),
            "rope_theta": float(self._arch_value("rope.freq_base", 10000.0)),
            "vocab_size": int(vocab_size),
            "max_position_embeddings": int(self._arch_value("context_length")),
            "tie_word_embeddings": "output.weight" not in self._tensors,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
        }
        if self.architecture in _GEMMA_ARCHITECTURES:
            config.update(self._gemma_config(config))
        head_dim = self._arch_value("attention.key_length", required=False)
        rope_dim = self._arch_value("rope.dimension_count", required=False)
        if head_dim is not None and int(head_dim) != hidden // heads:
            config["head_dim"] = int(head_dim)
        if rope_dim is not None and int(rope_dim) != config.get("head_dim", hidden // heads):
            raise PresetError(f"GGUF file {self.path} rotates {rope_dim} of each head's dimensions "
                              "(partial rotary embedding), which kcookbook does not support.")
        for name in ("bos", "eos", "padding"):
            value = self.metadata.get(f"tokenizer.ggml.{name}_token_id")
            if value is not None:
                config[f"{'pad' if name == 'padding' else name}_token_id"] = int(value)
        return config

    def _gemma_config(self, config):
        """Gemma 2/3's options as llama.cpp reads them: the window and the head width from the
        file; the soft caps from the file (Gemma 2); Gemma 2 alternates local and global layers,
        Gemma 3 has five local to one global with a local rotary base of 10,000 (llama.cpp's
        constants for these architectures). Queries are scaled by ``1/sqrt(head_dim)``, as llama.cpp
        does for every Gemma 3 but the 27B model."""
        head_dim = int(self._arch_value("attention.key_length"))
        gemma = {"hidden_act": "gelu_pytorch_tanh", "head_dim": head_dim,
                 "query_pre_attn_scalar": head_dim,
                 "sliding_window": int(self._arch_value("attention.sliding_window")),
                 "attn_logit_softcapping": self._arch_value("attn_logit_softcapping", required=False),
                 "final_logit_softcapping": self._arch_value("final_logit_softcapping", required=False)}
        if self.architecture == "gemma3":
            gemma.update(sliding_window_pattern=6, rope_local_base_freq=10000.0)
        else:
            gemma.update(sliding_window_pattern=2)
        return gemma

    # ----- tensors -----
    def hf_name(self, gguf_name):
        if gguf_name in _GLOBAL_TENSORS:
            return _GLOBAL_TENSORS[gguf_name]
        blocks = _GEMMA_BLOCK_TENSORS if self.architecture in _GEMMA_ARCHITECTURES else _BLOCK_TENSORS
        parts = gguf_name.split(".", 2)
        if len(parts) == 3 and parts[0] == "blk" and parts[2] in blocks:
            return f"model.layers.{int(parts[1])}.{blocks[parts[2]]}"
        return None

    def dequantize(self, gguf_name):
        """One tensor as float32 numpy, in PyTorch's (out, in) layout, exactly as stored."""
        gguf = _import_gguf()
        tensor = self._tensors[gguf_name]
        qtype = tensor.tensor_type
        supported = qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) or (
            qtype in gguf.quants._type_traits)
        if not supported:
            raise PresetError(
                f"GGUF file {self.path}: tensor {gguf_name!r} is stored as {qtype.name}, which the gguf "
                f"package cannot dequantise. Supported: {', '.join(supported_quantizations())}."
            )
        shape = tuple(int(s) for s in reversed(tensor.shape))
        try:
            weight = gguf.quants.dequantize(tensor.data, qtype)
            return np.asarray(weight, dtype=np.float32).reshape(shape)
        except Exception as e:
            raise PresetError(
                f"GGUF file {self.path}: tensor {gguf_name!r} ({qtype.name}, shape {shape}) could not be "
                f"dequantised ({type(e).__name__}: {e}); the file may be corrupt or truncated."
            ) from e

    def hf_tensor(self, gguf_name, config=None):
        """One weight as float32 numpy under its Hugging Face name: ``(hf_name, array)``."""
        config = config or self.hf_config()
        hf_name = self.hf_name(gguf_name)
        if hf_name is None:
            raise PresetError(f"GGUF file {self.path} has a tensor {gguf_name!r} that kcookbook cannot place "
                              f"in a {self.architecture} model.")
        weight = self.dequantize(gguf_name)
        if self.architecture in _GEMMA_ARCHITECTURES:
            # llama.cpp stores Gemma's (1 + w) norm weights as 1 + w and does not reorder q/k rows.
            return hf_name, weight - 1.0 if gguf_name.endswith("norm.weight") else weight
        if gguf_name.endswith("attn_q.weight"):
            weight = unpermute_query_key(weight, config["num_attention_heads"])
        elif gguf_name.endswith("attn_k.weight"):
            weight = unpermute_query_key(weight, config["num_key_value_heads"])
        return hf_name, weight

    @property
    def reader(self):
        """The ``gguf.GGUFReader`` of the file (raw fields and quantised tensor data)."""
        return self._reader

    @property
    def tensor_names(self):
        """The GGUF names of the tensors, in file order."""
        return list(self._tensors)

    def hf_tensors(self):
        """Every weight as float32 numpy under its Hugging Face name, q/k rows in HF's order."""
        config = self.hf_config()
        return dict(self.hf_tensor(name, config) for name in self._tensors)

    def quantization_types(self):
        """``{type name: number of tensors}``, e.g. ``{"Q4_1": 210, "F32": 61, "Q8_0": 1}``."""
        counts = {}
        for tensor in self._tensors.values():
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
        return counts

    # ----- tokenizer -----
    def tokenizer(self, **kwargs):
        """The tokenizer the file embeds (``tokenizer.ggml.*``), or None when it has none."""
        from kcookbook.components.byte_pair import BytePairTokenizer
        from tokenizers.pre_tokenizers import ByteLevel

        meta = self.metadata
        model = meta.get("tokenizer.ggml.model")
        if model is None:
            return None
        tokens = meta.get("tokenizer.ggml.tokens")
        if not tokens:
            raise PresetError(f"GGUF file {self.path} names a {model!r} tokenizer but has no tokens.")
        if model == "llama":
            return self._sentencepiece_tokenizer(tokens, **kwargs)
        if model != "gpt2":
            raise PresetError(
                f"GGUF file {self.path} embeds a {model!r} tokenizer; kcookbook builds byte-level BPE "
                "('gpt2') and SentencePiece ('llama') tokenizers from GGUF files. Load the model's "
                "Hugging Face folder for its tokenizer, or pass preprocessor=None and feed token ids."
            )
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre not in _PRE_TOKENIZERS:
            raise PresetError(
                f"GGUF file {self.path} splits text with llama.cpp's {pre!r} pre-tokenizer, which "
                f"kcookbook does not know; it knows: {', '.join(sorted(_PRE_TOKENIZERS))}."
            )
        # Every byte-level token is spelled in GPT-2's byte alphabet; a token that is not (a
        # mislabelled control token) is respelled as transformers does, and is not matched whole.
        alphabet = set(ByteLevel.alphabet())
        spelling = _byte_spelling()
        vocabulary, spelled = {}, []
        for index, token in enumerate(tokens):
            ok = set(token) <= alphabet
            spelled.append(ok)
            vocabulary[token if ok else "".join(spelling[b] for b in token.encode("utf-8"))] = index
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        special = [t for t, kind, ok in zip(tokens, types, spelled) if kind == _TOKEN_TYPE_CONTROL and ok]
        user = [t for t, kind, ok in zip(tokens, types, spelled) if kind == _TOKEN_TYPE_USER_DEFINED and ok]
        merges = meta.get("tokenizer.ggml.merges")
        if not merges:
            raise PresetError(f"GGUF file {self.path} has a byte-level BPE tokenizer without merges.")

        def token(key):
            index = meta.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

        options = {
            "special_tokens": special,
            "user_tokens": user,
            "pre_tokenizer": _PRE_TOKENIZERS[pre],
            "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
            "start_token": token("bos"),
            "end_token": token("eos"),
            "pad_token": token("padding"),
            "add_start_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            "chat_template": meta.get("tokenizer.chat_template"),
            "stop_tokens": _end_of_turn(token("eot"), token("eos")),
        }
        options.update(kwargs)
        return BytePairTokenizer(vocabulary, list(merges), **options)


    def _sentencepiece_tokenizer(self, tokens, **kwargs):
        """``tokenizer.ggml.model == "llama"``: llama.cpp's copy of a SentencePiece BPE model (Llama-2,
        Mistral, TinyLlama...): pieces, their scores (merge priorities) and types. The file keeps
        everything SentencePiece encodes with, so the model proto is rebuilt and SentencePiece runs
        it: BPE with byte fallback on the ``<0xXX>`` pieces, no normalisation, a ``▁`` prefix when
        ``add_space_prefix`` (llama.cpp's default for these models)."""
        from sentencepiece import sentencepiece_model_pb2

        from kcookbook.components.sentencepiece import SentencePieceTokenizer

        meta = self.metadata
        scores = meta.get("tokenizer.ggml.scores")
        types = meta.get("tokenizer.ggml.token_type")
        if scores is None or types is None or len(scores) != len(tokens) or len(types) != len(tokens):
            raise PresetError(f"GGUF file {self.path} has a SentencePiece ('llama') tokenizer without one "
                              "score and one type per token (tokenizer.ggml.scores / token_type).")
        proto = sentencepiece_model_pb2.ModelProto()
        for token, score, kind in zip(tokens, scores, types):
            # llama.cpp's token types are SentencePiece's piece types (1 normal ... 6 byte).
            proto.pieces.add(piece=token, score=float(score), type=int(kind))
        byte_pieces = sum(int(kind) == sentencepiece_model_pb2.ModelProto.SentencePiece.BYTE for kind in types)
        spec = proto.trainer_spec
        spec.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
        spec.vocab_size = len(tokens)
        spec.byte_fallback = byte_pieces == 256

        def piece(key):
            index = meta.get(f"tokenizer.ggml.{key}_token_id")
            return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

        unknown = [t for t, kind in zip(tokens, types) if int(kind) == 2]
        spec.unk_piece = piece("unknown") or (unknown[0] if unknown else "<unk>")
        for field, key in (("bos_piece", "bos"), ("eos_piece", "eos"), ("pad_piece", "padding")):
            setattr(spec, field, piece(key) or "")
        normalizer = proto.normalizer_spec
        normalizer.name = "identity"
        normalizer.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
        normalizer.remove_extra_whitespaces = False
        normalizer.escape_whitespaces = True
        options = {"start_token": piece("bos"), "end_token": piece("eos"), "pad_token": piece("padding"),
                   "add_start_token": bool(meta.get("tokenizer.ggml.add_bos_token", True)),
                   "chat_template": meta.get("tokenizer.chat_template"),
                   "stop_tokens": _end_of_turn(piece("eot"), piece("eos"))}
        options.update(kwargs)
        try:
            return SentencePieceTokenizer(proto.SerializeToString(), **options)
        except ValueError as e:
            raise PresetError(f"GGUF file {self.path}: its SentencePiece tokenizer does not load ({e}).") from e


def _end_of_turn(end_of_turn, end):
    """``stop_tokens`` from a GGUF file: llama.cpp's end-of-turn token (``tokenizer.ggml.eot_token_id``,
    Llama 3's ``<|eot_id|>``) when the file names one other than its end token."""
    return (end_of_turn,) if end_of_turn is not None and end_of_turn != end else ()


@functools.lru_cache(maxsize=4)
def _open_cached(path, mtime_ns, size):
    return GGUFCheckpoint(path)


def _byte_spelling():
    """GPT-2's byte → printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def supported_quantizations():
    gguf = _import_gguf()
    names = ["F32", "F16"] + sorted(q.name for q in gguf.quants._type_traits)
    return names


class GGUFLoader(HuggingFaceLoader):
    """A ``.gguf`` file (or a folder with one): read as a Hugging Face checkpoint of its model type."""

    format = "gguf"

    @staticmethod
    def detect(path):
        try:
            return find_gguf_file(path) is not None
        except PresetError:
            return True  # several files: __init__ reports it

    def __init__(self, path, handle, info=None):
        PresetLoader.__init__(self, path, handle, info)
        gguf_file = find_gguf_file(path)
        self.checkpoint = GGUFCheckpoint.open(gguf_file)
        self.path = gguf_file
        self.config = self.checkpoint.hf_config()
        self.converter = converters.for_hf_model_type(self.config["model_type"])
        if self.converter is None:
            raise PresetError(
                f"{gguf_file} is a {self.config['model_type']!r} model, but no converter for that Hugging "
                f"Face model type is installed (known: {', '.join(converters.known_hf_model_types())})."
            )

    def file(self, name):
        return files.safe_path(os.path.dirname(self.path), name)

    def read_tensors(self):
        return self.checkpoint.hf_tensors()

    def load_tokenizer(self, **kwargs):
        return self.checkpoint.tokenizer(**kwargs)

    def task_defaults(self):
        return {}

    @property
    def metadata(self):
        meta = self.checkpoint.metadata
        return {"source": f"GGUF file {os.path.basename(self.path)}",
                "name": meta.get("general.name"), "license": meta.get("general.license"),
                "quantization": self.checkpoint.quantization_types()}
