"""Whisper checkpoints: Hugging Face ``WhisperForConditionalGeneration`` folders and CTranslate2
``model.bin`` files (faster-whisper), the latter by way of the Hugging Face names.

Hugging Face keeps ``q_proj``, ``k_proj`` (no bias), ``v_proj`` and ``out_proj`` per attention;
kcookbook fuses keys and values into one ``key_value`` kernel (the key half of its bias is zero).
CTranslate2 fuses more: a self-attention's ``linear_0`` is ``[q; k; v]`` (its bias ``[q; 0; v]``),
``linear_1`` the output; a cross-attention's ``linear_0`` is ``q``, ``linear_1`` is ``[k; v]`` and
``linear_2`` the output; ``ffn/linear_0`` and ``linear_1`` are ``fc1`` and ``fc2``; layer norms are
``gamma``/``beta``. :meth:`WhisperConverter.hf_from_ctranslate2` undoes that fusion, so a
``model.bin`` becomes the state dict (and config) transformers loads with no missing keys.
"""

import os
import re

import numpy as np

from kcookbook.backbones.whisper import WhisperBackbone, WhisperTokenizer
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.common import linear_kernel, take
from kcookbook.presets.errors import PresetError

# Whisper's special token ids (multilingual vocabulary), for configs that do not name them; an
# English-only vocabulary (51,864 tokens) has each one lower.
_START_OF_TRANSCRIPT = 50258
_END_OF_TEXT = 50257
_MULTILINGUAL_VOCABULARY = 51865

# Hugging Face attention name → CTranslate2 block sublayer, per stack.
_CT2_NORMS = {"self_attn_layer_norm": "self_attention/layer_norm", "encoder_attn_layer_norm":
              "attention/layer_norm", "final_layer_norm": "ffn/layer_norm"}


def _conv_kernel(weight):
    """PyTorch ``Conv1d`` weight (out, in, width) → Keras ``Conv1D`` kernel (width, in, out)."""
    return np.transpose(weight, (2, 1, 0))


class WhisperConverter(Converter):
    """Whisper (every size; multilingual and English-only) from Hugging Face folders and CTranslate2."""

    family = "whisper"
    hf_model_types = ("whisper",)

    # ---------------------------------------------------------------- Hugging Face
    def backbone_from_hf(self, hf_config, **overrides):
        get = hf_config.get
        for ours, (encoder, decoder) in {"heads": ("encoder_attention_heads", "decoder_attention_heads"),
                                         "feed-forward widths": ("encoder_ffn_dim", "decoder_ffn_dim")}.items():
            if get(encoder) != get(decoder):
                raise PresetError(f"This Whisper config has different encoder and decoder {ours} "
                                  f"({encoder}={get(encoder)}, {decoder}={get(decoder)}); kcookbook's "
                                  "WhisperBackbone uses one value for both, as every released Whisper.")
        if get("activation_function", "gelu") != "gelu" or get("scale_embedding"):
            raise PresetError(f"This Whisper config sets activation_function={get('activation_function')!r}"
                              f", scale_embedding={get('scale_embedding')!r}; kcookbook's Whisper reads "
                              "'gelu' without embedding scale (every released Whisper).")
        config = {
            "vocabulary_size": hf_config["vocab_size"],
            "num_layers": hf_config["encoder_layers"],
            "num_decoder_layers": hf_config["decoder_layers"],
            "num_heads": hf_config["encoder_attention_heads"],
            "hidden_dim": hf_config["d_model"],
            "intermediate_dim": hf_config["encoder_ffn_dim"],
            "num_mel_bins": get("num_mel_bins", 80),
            "max_source_positions": get("max_source_positions", 1500),
            "max_sequence_length": get("max_target_positions", 448),
            "decoder_start_token_id": get("decoder_start_token_id", _START_OF_TRANSCRIPT),
            "dropout": get("dropout", 0.0),
        }
        config.update(overrides)
        return WhisperBackbone(**config)

    def weights_from_hf(self, tensors, backbone):
        t = dict(tensors)
        prefix = "model." if any(name.startswith("model.") for name in t) else ""

        def get(name):
            return take(t, prefix + name)

        out = {"conv1/kernel": _conv_kernel(get("encoder.conv1.weight")), "conv1/bias": get("encoder.conv1.bias"),
               "conv2/kernel": _conv_kernel(get("encoder.conv2.weight")), "conv2/bias": get("encoder.conv2.bias"),
               "encoder_position_embedding/embeddings": get("encoder.embed_positions.weight"),
               "token_embedding/embeddings": get("decoder.embed_tokens.weight"),
               "decoder_position_embedding/embeddings": get("decoder.embed_positions.weight")}
        t.pop("proj_out.weight", None)  # tied to the token embedding
        for stack, blocks in (("encoder", backbone.num_layers), ("decoder", backbone.num_decoder_layers)):
            out[f"{stack}_final_norm/gamma"] = get(f"{stack}.layer_norm.weight")
            out[f"{stack}_final_norm/beta"] = get(f"{stack}.layer_norm.bias")
            for i in range(blocks):
                hf, ours = f"{stack}.layers.{i}.", f"{stack}_layer_{i}/"
                attentions = [("self_attention", "self_attn")]
                if stack == "decoder":
                    attentions.append(("cross_attention", "encoder_attn"))
                for our_name, hf_name in attentions:
                    value_bias = get(f"{hf}{hf_name}.v_proj.bias")
                    out.update({
                        f"{ours}{our_name}/query/kernel": linear_kernel(get(f"{hf}{hf_name}.q_proj.weight")),
                        f"{ours}{our_name}/query/bias": get(f"{hf}{hf_name}.q_proj.bias"),
                        f"{ours}{our_name}/key_value/kernel": np.concatenate(
                            [linear_kernel(get(f"{hf}{hf_name}.k_proj.weight")),
                             linear_kernel(get(f"{hf}{hf_name}.v_proj.weight"))], axis=1),
                        f"{ours}{our_name}/key_value/bias": np.concatenate([np.zeros_like(value_bias),
                                                                            value_bias]),
                        f"{ours}{our_name}/output/kernel": linear_kernel(get(f"{hf}{hf_name}.out_proj.weight")),
                        f"{ours}{our_name}/output/bias": get(f"{hf}{hf_name}.out_proj.bias"),
                        f"{ours}{our_name}_norm/gamma": get(f"{hf}{hf_name}_layer_norm.weight"),
                        f"{ours}{our_name}_norm/beta": get(f"{hf}{hf_name}_layer_norm.bias"),
                    })
                for our_name, hf_name in (("intermediate", "fc1"), ("output", "fc2")):
                    out[f"{ours}feed_forward/{our_name}/kernel"] = linear_kernel(get(f"{hf}{hf_name}.weight"))
                    out[f"{ours}feed_forward/{our_name}/bias"] = get(f"{hf}{hf_name}.bias")
                out[f"{ours}feed_forward_norm/gamma"] = get(f"{hf}final_layer_norm.weight")
                out[f"{ours}feed_forward_norm/beta"] = get(f"{hf}final_layer_norm.bias")
        if t:
            raise PresetError(f"The Whisper checkpoint has tensors the WhisperBackbone does not use: "
                              f"{sorted(t)[:5]}. Is config.json describing this checkpoint (encoder_layers, "
                              "decoder_layers)?")
        return out

    def tokenizer_from_hf(self, folder, **kwargs):
        """``tokenizer.json`` with the suppressed tokens of ``generation_config.json`` (or of
        CTranslate2's ``config.json``); None when the folder has no ``tokenizer.json``."""
        if not os.path.exists(os.path.join(folder, "tokenizer.json")):
            return None
        return WhisperTokenizer.from_hf_folder(folder, **kwargs)

    # ---------------------------------------------------------------- CTranslate2
    def hf_from_ctranslate2(self, variables, ct2_config):
        """``(hf_config, {hf name: float32 array})`` of a CTranslate2 ``WhisperSpec`` model.bin."""
        v = dict(variables)

        def get(name):
            if name not in v:
                raise PresetError(f"The CTranslate2 Whisper model has no variable {name!r}: it is not a "
                                  "complete WhisperSpec model.bin.")
            return np.asarray(v.pop(name), "float32")

        def count(stack):
            return len({name.split("/")[1] for name in v
                        if re.fullmatch(r"layer_\d+", name.split("/")[1]) and name.startswith(stack + "/")})

        def split(array, parts):
            return np.split(array, parts, axis=0)

        tensors = {}

        def linear(hf_name, ct2_name):
            tensors[f"{hf_name}.weight"], tensors[f"{hf_name}.bias"] = get(f"{ct2_name}/weight"), get(f"{ct2_name}/bias")

        def layer_norm(hf_name, ct2_name):
            tensors[f"{hf_name}.weight"], tensors[f"{hf_name}.bias"] = get(f"{ct2_name}/gamma"), get(f"{ct2_name}/beta")

        def attention(hf, weight, bias, names):
            for name, w, b in zip(names, split(weight, len(names)), split(bias, len(names))):
                tensors[f"{hf}.{name}.weight"] = w
                if name != "k_proj":
                    tensors[f"{hf}.{name}.bias"] = b

        layers = {"encoder": count("encoder"), "decoder": count("decoder")}
        for i in (1, 2):
            linear(f"model.encoder.conv{i}", f"encoder/conv{i}")
        tensors["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")
        tensors["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")
        tensors["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
        v.pop("decoder/projection/weight", None)  # an alias of the embeddings (tied)
        for stack, blocks in layers.items():
            layer_norm(f"model.{stack}.layer_norm", f"{stack}/layer_norm")
            for i in range(blocks):
                hf, ct2 = f"model.{stack}.layers.{i}.", f"{stack}/layer_{i}/"
                attention(hf + "self_attn", get(ct2 + "self_attention/linear_0/weight"),
                          get(ct2 + "self_attention/linear_0/bias"), ("q_proj", "k_proj", "v_proj"))
                linear(hf + "self_attn.out_proj", ct2 + "self_attention/linear_1")
                if stack == "decoder":
                    linear(hf + "encoder_attn.q_proj", ct2 + "attention/linear_0")
                    attention(hf + "encoder_attn", get(ct2 + "attention/linear_1/weight"),
                              get(ct2 + "attention/linear_1/bias"), ("k_proj", "v_proj"))
                    linear(hf + "encoder_attn.out_proj", ct2 + "attention/linear_2")
                linear(hf + "fc1", ct2 + "ffn/linear_0")
                linear(hf + "fc2", ct2 + "ffn/linear_1")
                for hf_norm, ct2_norm in _CT2_NORMS.items():
                    if stack == "decoder" or hf_norm != "encoder_attn_layer_norm":
                        layer_norm(hf + hf_norm, ct2 + ct2_norm)
        settings = {name: v.pop(name) for name in list(v) if not name.endswith(("weight", "bias"))}
        if v:
            raise PresetError(f"The CTranslate2 Whisper model has variables kcookbook does not map: "
                              f"{sorted(v)[:5]}.")
        heads = int(settings.get("encoder/num_heads", 8))
        embeddings = tensors["model.decoder.embed_tokens.weight"]
        shift = 0 if embeddings.shape[0] >= _MULTILINGUAL_VOCABULARY else 1
        hf_config = {
            "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
            "vocab_size": embeddings.shape[0], "d_model": embeddings.shape[1],
            "num_mel_bins": tensors["model.encoder.conv1.weight"].shape[1],
            "encoder_layers": layers["encoder"], "decoder_layers": layers["decoder"],
            "encoder_attention_heads": heads,
            "decoder_attention_heads": int(settings.get("decoder/num_heads", heads)),
            "encoder_ffn_dim": tensors["model.encoder.layers.0.fc1.weight"].shape[0],
            "decoder_ffn_dim": tensors["model.decoder.layers.0.fc1.weight"].shape[0],
            "max_source_positions": tensors["model.encoder.embed_positions.weight"].shape[0],
            "max_target_positions": tensors["model.decoder.embed_positions.weight"].shape[0],
            "decoder_start_token_id": _START_OF_TRANSCRIPT - shift, "bos_token_id": _END_OF_TEXT - shift,
            "eos_token_id": _END_OF_TEXT - shift, "pad_token_id": _END_OF_TEXT - shift,
            "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
            "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
            "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True,
        }
        return hf_config, tensors
