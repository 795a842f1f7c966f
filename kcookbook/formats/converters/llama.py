"""Llama-family checkpoints (Hugging Face ``LlamaForCausalLM``), and the code the Mistral, Gemma and
Mixtral converters share: they differ only in which backbone class and defaults they use.

Hugging Face stores ``q_proj``, ``k_proj``, ``v_proj`` and ``gate_proj``, ``up_proj`` separately
as torch ``(out, in)`` matrices; kcookbook fuses them into one ``qkv`` and one ``gate_up`` Keras
kernel ``(in, out)``. Rotary embeddings use the same "rotate half" layout on both sides, so no
permutation is needed.
"""

import os

import numpy as np

from kcookbook.backbones.llama import LlamaBackbone
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.common import column_block, linear_kernel, same, strip_prefix, take, torch_linear
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

# Hugging Face activation names → ours.
HF_ACTIVATIONS = {
    "silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
}


def rope_settings(hf_config):
    """``(rope_theta, linear scaling factor)`` from old (``rope_theta``/``rope_scaling``) or new
    (``rope_parameters``) Hugging Face configs; other RoPE scaling types are refused by name."""
    parameters = hf_config.get("rope_parameters") or {}
    theta = parameters.get("rope_theta", hf_config.get("rope_theta", 10000.0))
    scaling = hf_config.get("rope_scaling") or parameters
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if rope_type == "default":
        return theta, 1.0
    if rope_type == "linear":
        return theta, float(scaling["factor"])
    raise PresetError(
        f"The checkpoint uses RoPE scaling of type {rope_type!r} (config rope_scaling / "
        "rope_parameters); kcookbook supports 'default' and 'linear'.")


def hf_activation(hf_config, key="hidden_act"):
    name = hf_config.get(key, "silu")
    if name not in HF_ACTIVATIONS:
        raise PresetError(f"The checkpoint uses {key}={name!r}; kcookbook supports "
                          f"{', '.join(sorted(HF_ACTIVATIONS))}.")
    return HF_ACTIVATIONS[name]


def decoder_config(hf_config, tie_default=False):
    """The constructor arguments shared by the Llama-family backbones."""
    if hf_config.get("mlp_bias"):
        raise PresetError("The checkpoint has mlp_bias=true (biases in the feed-forward layers); "
                          "kcookbook's Llama-family backbones have none.")
    theta, factor = rope_settings(hf_config)
    hidden, heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    return {
        "vocabulary_size": hf_config["vocab_size"],
        "num_layers": hf_config["num_hidden_layers"],
        "num_heads": heads,
        "num_key_value_heads": hf_config.get("num_key_value_heads") or heads,
        "hidden_dim": hidden,
        "head_dim": hf_config.get("head_dim") or hidden // heads,
        "intermediate_dim": hf_config["intermediate_size"],
        "activation": hf_activation(hf_config),
        "layer_norm_epsilon": hf_config.get("rms_norm_eps", 1e-6),
        "rope_max_wavelength": theta,
        "rope_scaling_factor": factor,
        "max_sequence_length": hf_config.get("max_position_embeddings", 4096),
        "tie_word_embeddings": hf_config.get("tie_word_embeddings", tie_default),
        "attention_bias": bool(hf_config.get("attention_bias", False)),
    }


def hf_decoder_config(backbone, activation_key="hidden_act"):
    """The inverse of :func:`decoder_config`: a Llama-family backbone's transformers config keys."""
    activation = {"silu": "silu", "gelu": "gelu", "gelu_approximate": "gelu_pytorch_tanh"}
    if backbone.activation not in activation:
        raise PresetError(f"Export: activation {backbone.activation!r} has no transformers name.")
    config = {
        "vocab_size": backbone.vocabulary_size, "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_heads, "num_key_value_heads": backbone.num_key_value_heads,
        "hidden_size": backbone.hidden_dim, "head_dim": backbone.head_dim or backbone.hidden_dim // backbone.num_heads,
        "intermediate_size": backbone.intermediate_dim, activation_key: activation[backbone.activation],
        "rms_norm_eps": backbone.layer_norm_epsilon, "rope_theta": backbone.rope_max_wavelength,
        "max_position_embeddings": backbone.max_sequence_length,
        "tie_word_embeddings": backbone.tie_word_embeddings, "attention_bias": backbone.attention_bias,
        "mlp_bias": False, "attention_dropout": 0.0,
    }
    if backbone.rope_scaling_factor != 1.0:
        config["rope_scaling"] = {"rope_type": "linear", "factor": backbone.rope_scaling_factor}
    return config


def check_exportable(backbone, family, **expected):
    """PresetError when ``backbone`` has a setting the transformers class of ``family`` cannot hold
    (e.g. a Llama with Gemma's scaled embeddings): ``expected`` maps attributes to required values."""
    wrong = {k: getattr(backbone, k) for k, v in expected.items() if getattr(backbone, k) != v}
    if wrong:
        raise PresetError(f"Export: this {type(backbone).__name__} sets {wrong}, which transformers' "
                          f"{family} models do not have; the export would compute something else.")


def expert_weights(t, hf, ours, num_experts):
    """Mixtral's ``gate`` router and ``experts.{e}.w1/w3/w2`` → stacked expert kernels."""
    gate_up, output = [], []
    for e in range(num_experts):
        w1, w3, w2 = (take(t, f"{hf}experts.{e}.{w}.weight") for w in ("w1", "w3", "w2"))
        gate_up.append(np.concatenate([linear_kernel(w1), linear_kernel(w3)], axis=1))
        output.append(linear_kernel(w2))
    return {ours + "router/kernel": linear_kernel(take(t, hf + "gate.weight")),
            ours + "expert_gate_up": np.stack(gate_up), ours + "expert_output": np.stack(output)}


def expert_tensors(read, hf, ours, num_experts, inner):
    """The inverse of :func:`expert_weights`, for exports."""
    def expert(path, e, start, stop):
        return lambda: np.ascontiguousarray(read(path)[e][:, start:stop].T)

    out = {hf + "gate.weight": torch_linear(read, ours + "router/kernel")}
    for e in range(num_experts):
        out[f"{hf}experts.{e}.w1.weight"] = expert(ours + "expert_gate_up", e, 0, inner)
        out[f"{hf}experts.{e}.w3.weight"] = expert(ours + "expert_gate_up", e, inner, 2 * inner)
        out[f"{hf}experts.{e}.w2.weight"] = expert(ours + "expert_output", e, 0, None)
    return out


def generation_eos_ids(folder):
    """The ``eos_token_id`` (an int or a list) of the folder's ``generation_config.json``, as a list."""
    path = os.path.join(folder, "generation_config.json")
    if not os.path.exists(path):
        return []
    eos = files.read_json(path, "generation config").get("eos_token_id")
    return [] if eos is None else [int(i) for i in (eos if isinstance(eos, list) else [eos])]


def block_norms(backbone):
    """``{Hugging Face name in a layer: our variable path in a block}`` of a block's norms. With
    ``post_norms`` (Gemma 2/3) Hugging Face's ``post_attention_layernorm`` is the attention's
    post-norm; without, it is the feed-forward's pre-norm."""
    norms = {"input_layernorm.weight": "attention_norm/scale"}
    if backbone.post_norms:
        norms.update({"post_attention_layernorm.weight": "post_attention_norm/scale",
                      "pre_feedforward_layernorm.weight": "feed_forward_norm/scale",
                      "post_feedforward_layernorm.weight": "post_feed_forward_norm/scale"})
    else:
        norms["post_attention_layernorm.weight"] = "feed_forward_norm/scale"
    if backbone.query_key_norm:
        norms.update({"self_attn.q_norm.weight": "attention/query_norm/scale",
                      "self_attn.k_norm.weight": "attention/key_norm/scale"})
    return norms


# Gemma 2/3 settings (exported by no converter yet): a backbone using any of them is refused by export.
GEMMA2_FEATURES_OFF = {"query_pre_attn_scalar": None, "attention_logit_soft_cap": None,
                       "final_logit_soft_cap": None, "post_norms": False, "query_key_norm": False,
                       "local_rope_max_wavelength": None}


class LlamaConverter(Converter):
    """Llama-style decoders from Hugging Face ``llama`` folders (and GGUF files read as one)."""

    family = "llama"
    hf_model_types = ("llama",)
    exports_backbones = ("LlamaBackbone",)
    hf_generates = True
    hf_architecture = "LlamaForCausalLM"
    # What transformers' Llama cannot express; subclasses name their own family's settings.
    export_requires = {"norm_unit_offset": False, "scale_embeddings": False, "sliding_window": None,
                       "num_experts": None, **GEMMA2_FEATURES_OFF}

    def backbone_from_hf(self, hf_config, **overrides):
        return LlamaBackbone(**{**decoder_config(hf_config), **overrides})

    def weights_from_hf(self, tensors, backbone):
        """Hugging Face tensor names → ``{variable.path: array}`` for any Llama-family backbone."""
        t = strip_prefix(tensors, ("model.",))
        out = {"token_embedding/embeddings": take(t, "embed_tokens.weight"),
               "final_norm/scale": take(t, "norm.weight")}
        if backbone.tie_word_embeddings:
            t.pop("lm_head.weight", None)
        else:
            out["token_embedding/reverse_embeddings"] = linear_kernel(take(t, "lm_head.weight"))
        for i in range(backbone.num_layers):
            hf, ours = f"layers.{i}.", f"transformer_layer_{i}/"
            projections = [f"{hf}self_attn.{n}_proj" for n in ("q", "k", "v")]
            out[ours + "attention/qkv/kernel"] = np.concatenate(
                [linear_kernel(take(t, p + ".weight")) for p in projections], axis=1)
            out[ours + "attention/output/kernel"] = linear_kernel(take(t, hf + "self_attn.o_proj.weight"))
            if backbone.attention_bias:
                out[ours + "attention/qkv/bias"] = np.concatenate([take(t, p + ".bias") for p in projections])
                out[ours + "attention/output/bias"] = take(t, hf + "self_attn.o_proj.bias")
            for hf_norm, our_norm in block_norms(backbone).items():
                out[ours + our_norm] = take(t, hf + hf_norm)
            if backbone.num_experts:
                out.update(expert_weights(t, hf + "block_sparse_moe.", ours + "feed_forward/",
                                          backbone.num_experts))
            else:
                out[ours + "feed_forward/gate_up/kernel"] = np.concatenate(
                    [linear_kernel(take(t, f"{hf}mlp.{n}_proj.weight")) for n in ("gate", "up")], axis=1)
                out[ours + "feed_forward/output/kernel"] = linear_kernel(take(t, hf + "mlp.down_proj.weight"))
        t = {k: v for k, v in t.items() if not k.endswith("rotary_emb.inv_freq")}
        if t:
            raise PresetError(f"The checkpoint has tensors the {type(backbone).__name__} does not use: "
                              f"{sorted(t)[:5]}. Is config.json describing this checkpoint?")
        return out

    # ---------------------------------------------------------------- export (the inverse)
    def hf_config_from_backbone(self, backbone):
        check_exportable(backbone, self.family, **self.export_requires)
        if len(set(backbone.layer_types or ())) > 1:
            raise PresetError(f"Export: this {type(backbone).__name__} mixes layer kinds "
                              f"{sorted(set(backbone.layer_types))} (Gemma 2/3 style), which transformers' "
                              f"{self.family} models do not have.")
        return {"model_type": self.hf_model_types[0], "architectures": [self.hf_architecture],
                **hf_decoder_config(backbone)}

    def hf_tensors_from_backbone(self, backbone, read):
        """The inverse of :meth:`weights_from_hf`: split ``qkv`` and ``gate_up`` back into q/k/v and
        gate/up, and the stacked experts into ``experts.{e}.w1/w3/w2``."""
        out = {"model.embed_tokens.weight": same(read, "token_embedding/embeddings"),
               "model.norm.weight": same(read, "final_norm/scale")}
        if not backbone.tie_word_embeddings:
            out["lm_head.weight"] = torch_linear(read, "token_embedding/reverse_embeddings")
        head_dim = backbone.head_dim or backbone.hidden_dim // backbone.num_heads
        q, kv = backbone.num_heads * head_dim, backbone.num_key_value_heads * head_dim
        spans = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
        inner = backbone.intermediate_dim
        for i in range(backbone.num_layers):
            hf, ours = f"model.layers.{i}.", f"transformer_layer_{i}/"
            for name, span in spans.items():
                out[f"{hf}self_attn.{name}_proj.weight"] = column_block(read, ours + "attention/qkv/kernel", *span)
                if backbone.attention_bias:
                    out[f"{hf}self_attn.{name}_proj.bias"] = column_block(read, ours + "attention/qkv/bias", *span)
            out[hf + "self_attn.o_proj.weight"] = torch_linear(read, ours + "attention/output/kernel")
            if backbone.attention_bias:
                out[hf + "self_attn.o_proj.bias"] = same(read, ours + "attention/output/bias")
            for hf_norm, our_norm in block_norms(backbone).items():
                out[hf + hf_norm] = same(read, ours + our_norm)
            if backbone.num_experts:
                out.update(expert_tensors(read, hf + "block_sparse_moe.", ours + "feed_forward/",
                                          backbone.num_experts, inner))
            else:
                gate_up = ours + "feed_forward/gate_up/kernel"
                out[hf + "mlp.gate_proj.weight"] = column_block(read, gate_up, 0, inner)
                out[hf + "mlp.up_proj.weight"] = column_block(read, gate_up, inner, 2 * inner)
                out[hf + "mlp.down_proj.weight"] = torch_linear(read, ours + "feed_forward/output/kernel")
        return out

    def tokenizer_from_hf(self, folder, **kwargs):
        """The folder's tokenizer (``tokenizer.json``, GPT-2 ``vocab.json`` + ``merges.txt``, or a
        SentencePiece ``tokenizer.model``), or None when it has none: the model then runs on ids.

        Generation stops where transformers' ``generate`` would: at the tokenizer's end token and at
        every other ``eos_token_id`` of ``generation_config.json`` (chat models list their end-of-turn
        token there: Gemma's ``<end_of_turn>``, Llama 3's ``<|eot_id|>``)."""
        tokenizer = None
        if os.path.exists(os.path.join(folder, "tokenizer.json")):
            from kcookbook.components.hf_tokenizer import HuggingFaceTokenizer

            tokenizer = HuggingFaceTokenizer.from_hf_folder(folder, **kwargs)
        elif all(os.path.exists(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt")):
            from kcookbook.components.byte_pair import BytePairTokenizer

            tokenizer = BytePairTokenizer(os.path.join(folder, "vocab.json"),
                                          os.path.join(folder, "merges.txt"), **kwargs)
        elif os.path.exists(os.path.join(folder, "tokenizer.model")):
            from kcookbook.components import sentencepiece

            tokenizer = sentencepiece.SentencePieceTokenizer(os.path.join(folder, "tokenizer.model"),
                                                             **kwargs)
        if tokenizer is not None and "stop_tokens" not in kwargs:
            extra = [i for i in generation_eos_ids(folder) if i != tokenizer.end_token_id]
            try:
                tokenizer.stop_tokens = tuple(tokenizer.id_to_token(i) for i in extra)
            except (KeyError, IndexError) as e:
                raise PresetError(f"{os.path.join(folder, 'generation_config.json')}: eos_token_id "
                                  f"{extra} has an id outside the tokenizer's vocabulary "
                                  f"({tokenizer.vocabulary_size} tokens).") from e
        return tokenizer
