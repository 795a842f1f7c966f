"""T5 checkpoints: Hugging Face ``T5ForConditionalGeneration`` folders and keras_hub ``T5Backbone`` presets.

Hugging Face keeps the relative position table in the first block of each stack
(``block.0.layer.0.SelfAttention.relative_attention_bias``); kcookbook keeps it beside the stack
(``encoder_position_bias``), the same table. ``k`` and ``v`` are fused into one ``key_value``
kernel, ``wi_0`` (activated) and ``wi_1`` into ``gate_up``.

Whether the decoder output is scaled by ``d_model ** -0.5`` was read from ``tie_word_embeddings`` in
older configs (v1.1 and Flan-T5 set it false); transformers 5 writes it as ``scale_decoder_outputs``
and always ties ``lm_head`` to the embedding (its v1.1 configs say ``tie_word_embeddings: true,
scale_decoder_outputs: false``). An older config's ``tie_word_embeddings: false`` (v1.1 and Flan-T5
on the Hub) means a separate output table, ``lm_head.weight``.
"""

import os

import numpy as np

from kcookbook.backbones.t5 import T5Backbone
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.common import (keras_hub_layer_suffix, keras_hub_reader,
                                                 keras_hub_sentencepiece, linear_kernel, take)
from kcookbook.formats.converters.llama import HF_ACTIVATIONS
from kcookbook.presets.errors import PresetError

# Hugging Face's T5 maps "gated-gelu" to the tanh GELU for backward compatibility.
_HF_ACTIVATIONS = {**HF_ACTIVATIONS, "relu": "relu", "gated-gelu": "gelu_approximate"}


def hf_feed_forward(feed_forward_proj):
    """``feed_forward_proj`` ("relu", "gated-gelu", "gated-silu"…) → ``(activation, gated)``."""
    parts = str(feed_forward_proj).split("-")
    gated = parts[0] == "gated" and len(parts) == 2
    name = feed_forward_proj if feed_forward_proj == "gated-gelu" else parts[-1]
    if (len(parts) > 1 and not gated) or name not in _HF_ACTIVATIONS:
        raise PresetError(f"The T5 checkpoint has feed_forward_proj={feed_forward_proj!r}; kcookbook's "
                          f"T5 reads 'relu', 'gated-gelu' and '[gated-]{{{', '.join(sorted(HF_ACTIVATIONS))}}}'.")
    return _HF_ACTIVATIONS[name], gated


def _stack_key_value(key_kernel, value_kernel):
    return np.concatenate([key_kernel, value_kernel], axis=1)


def _feed_forward(gated, kernels):
    """``{our name: kernel}`` of the feed-forward from ``(intermediate or gate, up or None, output)``."""
    first, up, output = kernels
    if gated:
        return {"feed_forward/gate_up/kernel": np.concatenate([first, up], axis=1),
                "feed_forward/output/kernel": output}
    return {"feed_forward/intermediate/kernel": first, "feed_forward/output/kernel": output}


class T5Converter(Converter):
    """T5 v1.0, v1.1 and Flan-T5 from Hugging Face folders and keras_hub presets."""

    family = "t5"
    hf_model_types = ("t5",)
    keras_hub_classes = ("T5Backbone", "T5Tokenizer")

    # ---------------------------------------------------------------- Hugging Face
    def backbone_from_hf(self, hf_config, **overrides):
        if hf_config.get("is_encoder_decoder") is False:
            raise PresetError("This T5 config sets is_encoder_decoder=false (an encoder-only T5); "
                              "kcookbook's T5Backbone is the encoder-decoder.")
        activation, gated = hf_feed_forward(hf_config.get("feed_forward_proj", "relu"))
        tied = hf_config.get("tie_word_embeddings", True) is not False
        scale = hf_config.get("scale_decoder_outputs", tied)
        config = {
            "vocabulary_size": hf_config["vocab_size"],
            "num_layers": hf_config.get("num_layers", 6),
            "num_decoder_layers": hf_config.get("num_decoder_layers"),
            "num_heads": hf_config.get("num_heads", 8),
            "hidden_dim": hf_config.get("d_model", 512),
            "head_dim": hf_config.get("d_kv", 64),
            "intermediate_dim": hf_config.get("d_ff", 2048),
            "activation": activation,
            "use_gated_activation": gated,
            "layer_norm_epsilon": hf_config.get("layer_norm_epsilon", 1e-6),
            "relative_attention_num_buckets": hf_config.get("relative_attention_num_buckets", 32),
            "relative_attention_max_distance": hf_config.get("relative_attention_max_distance", 128),
            "tie_word_embeddings": tied,
            "scale_decoder_outputs": bool(scale),
            "decoder_start_token_id": hf_config.get("decoder_start_token_id", 0) or 0,
            "dropout": hf_config.get("dropout_rate", 0.1),
        }
        config.update(overrides)
        return T5Backbone(**config)

    def weights_from_hf(self, tensors, backbone):
        t = dict(tensors)
        shared = take(t, "shared.weight")
        for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            t.pop(name, None)
        out = {"token_embedding/embeddings": shared}
        if not backbone.tie_word_embeddings:
            out["token_embedding/reverse_embeddings"] = linear_kernel(take(t, "lm_head.weight"))
        t.pop("lm_head.weight", None)
        for stack, blocks in (("encoder", backbone.num_layers), ("decoder", backbone.num_decoder_layers)):
            out[f"{stack}_position_bias/embeddings"] = take(
                t, f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
            out[f"{stack}_final_norm/scale"] = take(t, f"{stack}.final_layer_norm.weight")
            for i in range(blocks):
                hf, ours = f"{stack}.block.{i}.layer.", f"{stack}_layer_{i}/"
                sublayers = [("self_attention", "0.SelfAttention")]
                if stack == "decoder":
                    sublayers.append(("cross_attention", "1.EncDecAttention"))
                for our_name, hf_name in sublayers:
                    def kernel(n):
                        return linear_kernel(take(t, f"{hf}{hf_name}.{n}.weight"))
                    out[f"{ours}{our_name}/query/kernel"] = kernel("q")
                    out[f"{ours}{our_name}/key_value/kernel"] = _stack_key_value(kernel("k"), kernel("v"))
                    out[f"{ours}{our_name}/output/kernel"] = kernel("o")
                    out[f"{ours}{our_name}_norm/scale"] = take(t, f"{hf}{hf_name[0]}.layer_norm.weight")
                ff = f"{hf}{len(sublayers)}."
                dense = ff + "DenseReluDense."
                names = ("wi_0", "wi_1", "wo") if backbone.use_gated_activation else ("wi", None, "wo")
                kernels = [None if n is None else linear_kernel(take(t, f"{dense}{n}.weight")) for n in names]
                out.update({ours + k: v for k, v in _feed_forward(backbone.use_gated_activation,
                                                                  kernels).items()})
                out[f"{ours}feed_forward_norm/scale"] = take(t, ff + "layer_norm.weight")
        if t:
            raise PresetError(f"The T5 checkpoint has tensors the T5Backbone does not use: {sorted(t)[:5]}. "
                              "Is config.json describing this checkpoint (num_layers, feed_forward_proj)?")
        return out

    def tokenizer_from_hf(self, folder, **kwargs):
        """``tokenizer.json`` (with the ``<extra_id_N>`` sentinels, ids as ``T5TokenizerFast``), else
        the SentencePiece ``spiece.model`` (no sentinels); None when the folder has neither."""
        options = {"end_token": "</s>", "pad_token": "<pad>", "add_start_token": False, **kwargs}
        if os.path.exists(os.path.join(folder, "tokenizer.json")):
            from kcookbook.components.hf_tokenizer import HuggingFaceTokenizer

            return HuggingFaceTokenizer.from_hf_folder(folder, **options)
        if os.path.exists(os.path.join(folder, "spiece.model")):
            from kcookbook.components.sentencepiece import SentencePieceTokenizer

            return SentencePieceTokenizer(os.path.join(folder, "spiece.model"), start_token=None,
                                          **options)
        return None

    # ---------------------------------------------------------------- keras_hub
    def backbone_from_keras_hub(self, config, **overrides):
        activation = config.get("activation", "relu")
        if not isinstance(activation, str):
            raise PresetError(f"keras_hub T5Backbone activation {activation!r} is not a name kcookbook "
                              "can map; expected e.g. 'relu' or 'gelu'.")
        ours = {"vocabulary_size": config["vocabulary_size"], "num_layers": config["num_layers"],
                "num_heads": config["num_heads"], "hidden_dim": config["hidden_dim"],
                "intermediate_dim": config["intermediate_dim"], "head_dim": config.get("key_value_dim"),
                "activation": activation,
                "use_gated_activation": bool(config.get("use_gated_activation", True)),
                "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6),
                "tie_word_embeddings": bool(config.get("tie_embedding_weights", True)),
                "scale_decoder_outputs": bool(config.get("tie_embedding_weights", True)),
                "dropout": config.get("dropout", 0.1)}
        return T5Backbone(**{**ours, **overrides})

    def weights_from_keras_hub(self, arrays, backbone):
        """keras_hub names its layers by class and order: the encoder's ``t5_transformer_layer``s
        first, then the decoder's; ``t5_layer_norm`` is the encoder's final norm, ``_1`` the
        decoder's. Its position tables sit in the first layer of each stack."""
        var = keras_hub_reader(arrays)
        out = {"token_embedding/embeddings": var("layers/reversible_embedding/vars/0"),
               "encoder_final_norm/scale": var("layers/t5_layer_norm/vars/0"),
               "decoder_final_norm/scale": var("layers/t5_layer_norm_1/vars/0")}
        if not backbone.tie_word_embeddings:
            out["token_embedding/reverse_embeddings"] = var("layers/reversible_embedding/vars/1")
        stacks = [("encoder", i) for i in range(backbone.num_layers)] + \
            [("decoder", i) for i in range(backbone.num_decoder_layers)]
        for n, (stack, i) in enumerate(stacks):
            hub, ours = f"layers/t5_transformer_layer{keras_hub_layer_suffix(n)}/", f"{stack}_layer_{i}/"
            if i == 0:
                out[f"{stack}_position_bias/embeddings"] = var(hub + "self_attention/vars/0")
            for name in ("self_attention",) + (("cross_attention",) if stack == "decoder" else ()):
                def kernel(projector):
                    return var(f"{hub}{name}/{projector}_projector/vars/0")
                out[f"{ours}{name}/query/kernel"] = kernel("query")
                out[f"{ours}{name}/key_value/kernel"] = _stack_key_value(kernel("key"), kernel("value"))
                out[f"{ours}{name}/output/kernel"] = kernel("output")
                out[f"{ours}{name}_norm/scale"] = var(f"{hub}{name}_layer_norm/vars/0")
            gated = backbone.use_gated_activation
            kernels = (var(hub + "input_projector/vars/0"),
                       var(hub + "gate_projector/vars/0") if gated else None,
                       var(hub + "output_projector/vars/0"))
            out.update({ours + k: v for k, v in _feed_forward(gated, kernels).items()})
            out[f"{ours}feed_forward_norm/scale"] = var(hub + "layer_norm/vars/0")
        return out

    def tokenizer_from_keras_hub(self, config, assets_dir, **kwargs):
        """keras_hub's ``T5Tokenizer``: SentencePiece with ``</s>`` and ``<pad>``; no start token."""
        return keras_hub_sentencepiece(config, assets_dir, "T5", None, "</s>", pad_token="<pad>",
                                       add_start_token=False, **kwargs)

