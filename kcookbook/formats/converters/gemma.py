"""Gemma checkpoints: the Llama converter with Gemma's backbone (GeGLU, ``1 + w`` RMSNorm, scaled
and tied embeddings). Gemma configs name the activation ``hidden_activation`` (older) or
``hidden_act``. Gemma 2 (``gemma2``) and Gemma 3 (``gemma3_text``: ``Gemma3ForCausalLM``) add their
options from ``config.json``: ``layer_types``, ``sliding_window``, ``query_pre_attn_scalar``, the
soft caps, and Gemma 3's rotary base per layer kind."""

import numpy as np

from kcookbook.backbones.llama import (Gemma2Backbone, Gemma3Backbone, GemmaBackbone,
                                       interleaved_layer_types)
from kcookbook.formats.converters.common import (keras_hub_blocks, keras_hub_reader,
                                                 keras_hub_sentencepiece)
from kcookbook.formats.converters.llama import GEMMA2_FEATURES_OFF, LlamaConverter, decoder_config, rope_settings
from kcookbook.presets.errors import PresetError


# ---------------------------------------------------------------- keras_hub

# Gemma 2 options of keras_hub's GemmaBackbone that kcookbook's Gemma (1.x) does not have.
GEMMA2_OPTIONS = ("use_post_ffw_norm", "use_post_attention_norm", "final_logit_soft_cap",
                  "attention_logit_soft_cap", "use_sliding_window_attention")


# Gemma's conversation format (ai.google.dev/gemma/docs/formatting): turns of
# "<start_of_turn>{user|model}\n{text}<end_of_turn>\n", and "<start_of_turn>model\n" to ask for a
# reply. Gemma has no system role; as Google suggests, a system message goes at the top of the first
# user turn. No <bos> here: the preprocessor adds it.
GEMMA_CHAT_TEMPLATE = (
    "{% set system = '' %}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] | trim + '\n\n' %}{% set messages = messages[1:] %}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ('user', 'assistant', 'model') %}"
    "{{ raise_exception('Gemma turns are user or assistant (model), not ' + message['role']) }}"
    "{% endif %}"
    "{{ '<start_of_turn>' + ('user' if message['role'] == 'user' else 'model') + '\n' }}"
    "{{ (system if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
END_OF_TURN = "<end_of_turn>"


class GemmaConverter(LlamaConverter):
    """Gemma: the Llama converter's weights and tokenizer, Gemma's backbone; keras_hub Gemma presets."""

    family = "gemma"
    hf_model_types = ("gemma",)
    keras_hub_classes = ("GemmaBackbone", "GemmaTokenizer")
    exports_backbones = ("GemmaBackbone",)
    hf_architecture = "GemmaForCausalLM"
    export_requires = {"norm_unit_offset": True, "scale_embeddings": True, "sliding_window": None,
                       "num_experts": None, "tie_word_embeddings": True, **GEMMA2_FEATURES_OFF}

    def hf_config_from_backbone(self, backbone):
        config = super().hf_config_from_backbone(backbone)
        config["hidden_activation"] = config["hidden_act"]
        return config

    backbone_cls = GemmaBackbone

    def backbone_from_hf(self, hf_config, **overrides):
        return self.backbone_cls(**{**gemma_config(hf_config), **overrides})

    def backbone_from_keras_hub(self, config, **overrides):
        """keras_hub's ``GemmaBackbone``: Gemma 1, or Gemma 2 when its config sets any of
        ``GEMMA2_OPTIONS`` (keras_hub writes Gemma 2 presets with the same class)."""
        if any(config.get(k) for k in GEMMA2_OPTIONS):
            ours = keras_hub_gemma_config(config, layer_pattern=2, gate_dim_reduction=2)
            return Gemma2Backbone(**{**ours, "max_sequence_length": 8192, **overrides})
        ours = {"vocabulary_size": config["vocabulary_size"], "num_layers": config["num_layers"],
                "num_heads": config["num_query_heads"], "hidden_dim": config["hidden_dim"],
                # keras_hub counts gate and up together: each has intermediate_dim / 2 units.
                "intermediate_dim": config["intermediate_dim"] // 2,
                "num_key_value_heads": config["num_key_value_heads"], "head_dim": config["head_dim"],
                "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6),
                "max_sequence_length": 8192, "dropout": config.get("dropout", 0.0)}
        if not config.get("query_head_dim_normalize", True):
            ours["query_pre_attn_scalar"] = keras_hub_query_scalar(config)
        return GemmaBackbone(**{**ours, **overrides})

    keras_hub_block = "gemma_decoder_block"  # keras_hub's decoder block class, as its weights file names it

    def weights_from_keras_hub(self, arrays, backbone):
        """keras_hub's ``model.weights.h5``: ``gemma_decoder_block[_i]`` (``gemma3_decoder_block[_i]``)
        with per-head query/key/value kernels ``(heads, hidden, head_dim)`` and output
        ``(heads, head_dim, hidden)``; Gemma 2/3's post-norms and Gemma 3's query/key norms when the
        backbone has them."""
        var = keras_hub_reader(arrays)

        def heads_last(kernel):  # (heads, hidden, head_dim) → (hidden, heads * head_dim)
            return np.transpose(kernel, (1, 0, 2)).reshape(backbone.hidden_dim, -1)

        norms = {"attention_norm": "pre_attention_norm", "feed_forward_norm": "pre_ffw_norm"}
        if backbone.post_norms:
            norms.update(post_attention_norm="post_attention_norm", post_feed_forward_norm="post_ffw_norm")
        if backbone.query_key_norm:
            norms.update({"attention/query_norm": "attention/query_norm",
                          "attention/key_norm": "attention/key_norm"})
        out = {"token_embedding/embeddings": var("layers/reversible_embedding/vars/0"),
               "final_norm/scale": var("layers/rms_normalization/vars/0")}
        for hub, ours in keras_hub_blocks(self.keras_hub_block, backbone.num_layers):
            out[ours + "attention/qkv/kernel"] = np.concatenate(
                [heads_last(var(f"{hub}attention/{n}_dense/vars/0")) for n in ("query", "key", "value")],
                axis=1)
            out[ours + "attention/output/kernel"] = var(hub + "attention/output_dense/vars/0").reshape(
                -1, backbone.hidden_dim)
            for our_norm, hub_norm in norms.items():
                out[f"{ours}{our_norm}/scale"] = var(f"{hub}{hub_norm}/vars/0")
            out[ours + "feed_forward/gate_up/kernel"] = np.concatenate(
                [var(hub + "gating_ffw/vars/0"), var(hub + "gating_ffw_2/vars/0")], axis=1)
            out[ours + "feed_forward/output/kernel"] = var(hub + "ffw_linear/vars/0")
        return out

    def tokenizer_from_keras_hub(self, config, assets_dir, **kwargs):
        """keras_hub's ``GemmaTokenizer``: SentencePiece with ``<bos>`` (2), ``<eos>`` (1), ``<pad>`` (0)
        in Gemma's vocabulary; keras_hub's GemmaCausalLMPreprocessor adds ``<bos>`` before the text.

        keras_hub's preset carries no chat template; when the vocabulary has Gemma's turn pieces (every
        Gemma vocabulary does) the tokenizer gets Gemma's format and stops generation at
        ``<end_of_turn>`` too, so ``apply_chat_template`` and ``generate`` work on instruction-tuned
        presets as they do on Hugging Face's."""
        tokenizer = keras_hub_sentencepiece(config, assets_dir, "Gemma", "<bos>", "<eos>",
                                            pad_token="<pad>", **kwargs)
        try:
            tokenizer.token_to_id(END_OF_TURN)
        except KeyError:
            return tokenizer
        if tokenizer.chat_template is None:
            tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
        tokenizer.stop_tokens = tuple(dict.fromkeys(tokenizer.stop_tokens + (END_OF_TURN,)))
        return tokenizer


def keras_hub_query_scalar(config):
    """keras_hub's ``query_head_dim_normalize``: queries scaled by ``head_dim ** -0.5`` (True) or by
    ``(hidden_dim // num_query_heads) ** -0.5`` (False), as our ``query_pre_attn_scalar``.

    keras_hub 0.32's Gemma and Gemma 3 decoder blocks pass ``True`` to their attention whatever the
    config says, so keras_hub runs a ``False`` preset (Gemma 2/3 27B) with ``head_dim`` scaling;
    kcookbook follows the config, which is the model Google trained (transformers'
    ``query_pre_attn_scalar`` 144 and 168 for those two)."""
    if config.get("query_head_dim_normalize", True):
        return config["head_dim"]
    return config["hidden_dim"] // config["num_query_heads"]


def keras_hub_gemma_config(config, layer_pattern, gate_dim_reduction):
    """Our Gemma 2/3 constructor arguments from keras_hub's ``GemmaBackbone`` (Gemma 2 options) or
    ``Gemma3Backbone`` config. keras_hub makes every ``layer_pattern``-th layer global when
    ``use_sliding_window_attention`` is set (all global otherwise); its Gemma 1/2 block counts gate
    and up together (``gate_dim_reduction`` 2), Gemma 3's does not (1)."""
    post = {k: bool(config.get(k)) for k in ("use_post_attention_norm", "use_post_ffw_norm")}
    if len(set(post.values())) > 1:
        raise PresetError(f"This keras_hub Gemma preset sets {post}; kcookbook's Gemma 2/3 backbones "
                          "have both post-norms or neither (post_norms).")
    num_layers = config["num_layers"]
    sliding = bool(config.get("use_sliding_window_attention"))
    return {"vocabulary_size": config["vocabulary_size"], "num_layers": num_layers,
            "num_heads": config["num_query_heads"], "hidden_dim": config["hidden_dim"],
            "intermediate_dim": config["intermediate_dim"] // gate_dim_reduction,
            "num_key_value_heads": config["num_key_value_heads"], "head_dim": config["head_dim"],
            "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6),
            "dropout": config.get("dropout", 0.0),
            "query_pre_attn_scalar": keras_hub_query_scalar(config),
            "attention_logit_soft_cap": config.get("attention_logit_soft_cap"),
            "final_logit_soft_cap": config.get("final_logit_soft_cap"),
            "post_norms": post["use_post_attention_norm"],
            "layer_types": (interleaved_layer_types(num_layers, layer_pattern) if sliding
                            else ["full_attention"] * num_layers),
            "sliding_window": config.get("sliding_window_size", 4096) if sliding else None}


# keras_hub Gemma3Backbone options kcookbook's text-only Gemma3Backbone cannot represent, with the
# value that it can: (option, value kcookbook needs, what the option means).
GEMMA3_UNSUPPORTED = (
    ("vision_encoder", None, "a multimodal Gemma 3 (image encoder); kcookbook's Gemma3Backbone is "
                             "the text-only model"),
    ("use_bidirectional_attention", False, "an embedding model's bidirectional attention"),
    ("is_embedding_model", False, "an embedding model (EmbeddingGemma) with a pooling head"),
    ("local_rope_scaling_factor", 1.0, "scaled rotary positions in the local layers (kcookbook "
                                       "scales the global layers' only)"),
)


def gemma_config(hf_config):
    """The constructor arguments of a Gemma-family backbone from a Hugging Face ``config.json``."""
    activation = hf_config.get("hidden_activation") or hf_config.get("hidden_act", "gelu_pytorch_tanh")
    return decoder_config({**hf_config, "hidden_act": activation}, tie_default=True)


def gemma2_config(hf_config, default_pattern):
    """Gemma 2/3's options: local/global layers, window, query scaling and soft caps."""
    if hf_config.get("use_bidirectional_attention"):
        raise PresetError("The checkpoint sets use_bidirectional_attention=true (an embedding model, "
                          "not a causal LM); kcookbook's Gemma backbones are causal decoders.")
    num_layers = hf_config["num_hidden_layers"]
    pattern = hf_config.get("sliding_window_pattern") or hf_config.get("_sliding_window_pattern")
    return {"layer_types": hf_config.get("layer_types")
            or interleaved_layer_types(num_layers, pattern or default_pattern),
            "sliding_window": hf_config.get("sliding_window") or 4096,
            "query_pre_attn_scalar": hf_config.get("query_pre_attn_scalar") or 256,
            "attention_logit_soft_cap": hf_config.get("attn_logit_softcapping"),
            "final_logit_soft_cap": hf_config.get("final_logit_softcapping")}


class Gemma2Converter(GemmaConverter):
    """Gemma 2 (``Gemma2ForCausalLM``): alternating local/global layers, post-norms, soft caps."""

    family = "gemma2"
    exports_backbones = ()  # export to transformers: not written for Gemma 2/3 yet
    hf_model_types = ("gemma2",)
    keras_hub_classes = ()

    def backbone_from_hf(self, hf_config, **overrides):
        config = {**gemma_config(hf_config), **gemma2_config(hf_config, 2)}
        return Gemma2Backbone(**{**config, **overrides})


class Gemma3Converter(GemmaConverter):
    """Gemma 3 text models (``Gemma3ForCausalLM``, ``model_type`` ``gemma3_text``): five local
    layers to one global, QK-norm, a rotary base per layer kind (``rope_parameters`` keyed by layer
    kind, or the older ``rope_theta`` + ``rope_local_base_freq``)."""

    family = "gemma3"
    exports_backbones = ()  # export to transformers: not written for Gemma 2/3 yet
    hf_model_types = ("gemma3_text",)
    keras_hub_classes = ("Gemma3Backbone", "Gemma3Tokenizer")
    keras_hub_block = "gemma3_decoder_block"

    def backbone_from_hf(self, hf_config, **overrides):
        config = {**gemma_config(hf_config), **gemma2_config(hf_config, 6)}
        parameters = hf_config.get("rope_parameters") or {}
        if "full_attention" in parameters:
            theta, factor = rope_settings({"rope_parameters": parameters["full_attention"]})
            local_theta, local_factor = rope_settings(
                {"rope_parameters": parameters.get("sliding_attention", {"rope_theta": 10000.0})})
        else:
            theta, factor = rope_settings(hf_config)
            local_theta, local_factor = float(hf_config.get("rope_local_base_freq", 10000.0)), 1.0
        if local_factor != 1.0:
            raise PresetError("The checkpoint scales the rotary positions of its local "
                              "(sliding_attention) layers; kcookbook's Gemma 3 scales the global "
                              "layers' only.")
        # Gemma 3 configs carry attn_logit_softcapping but transformers' Gemma 3 never applies it
        # (Gemma 3 dropped the attention soft cap for QK-norm); the final soft cap does apply.
        config.update(rope_max_wavelength=theta, rope_scaling_factor=factor,
                      local_rope_max_wavelength=local_theta, attention_logit_soft_cap=None)
        return Gemma3Backbone(**{**config, **overrides})

    def backbone_from_keras_hub(self, config, **overrides):
        """keras_hub's text-only ``Gemma3Backbone``: local layers rotate with base 10,000, global
        layers with 1,000,000 scaled by ``global_rope_scaling_factor``."""
        for option, supported, meaning in GEMMA3_UNSUPPORTED:
            if config.get(option, supported) != supported:
                raise PresetError(f"This keras_hub Gemma3Backbone preset sets {option}="
                                  f"{config[option]!r}: {meaning}. kcookbook reads it with {option}="
                                  f"{supported!r} only.")
        ours = keras_hub_gemma_config(config, layer_pattern=6, gate_dim_reduction=1)
        ours.update(rope_max_wavelength=1_000_000.0, local_rope_max_wavelength=10_000.0,
                    rope_scaling_factor=float(config.get("global_rope_scaling_factor", 1.0)),
                    query_key_norm=bool(config.get("use_query_key_norm", True)),
                    max_sequence_length=131072)
        return Gemma3Backbone(**{**ours, **overrides})
