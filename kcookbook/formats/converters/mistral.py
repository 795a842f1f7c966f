"""Mistral checkpoints: the Llama converter plus the sliding window; and keras_hub
``MistralBackbone`` presets."""

import numpy as np

from kcookbook.backbones.llama import MistralBackbone
from kcookbook.formats.converters.common import (keras_hub_blocks, keras_hub_reader,
                                                 keras_hub_sentencepiece)
from kcookbook.formats.converters.llama import GEMMA2_FEATURES_OFF, LlamaConverter, decoder_config


class MistralConverter(LlamaConverter):
    """Mistral: the Llama converter plus the sliding window; keras_hub Mistral presets."""

    family = "mistral"
    hf_model_types = ("mistral",)
    keras_hub_classes = ("MistralBackbone", "MistralTokenizer")
    exports_backbones = ("MistralBackbone",)
    hf_architecture = "MistralForCausalLM"
    export_requires = {"norm_unit_offset": False, "scale_embeddings": False, "num_experts": None, **GEMMA2_FEATURES_OFF}

    def hf_config_from_backbone(self, backbone):
        return {**super().hf_config_from_backbone(backbone), "sliding_window": backbone.sliding_window}

    def backbone_from_hf(self, hf_config, **overrides):
        config = decoder_config(hf_config)
        config["sliding_window"] = hf_config.get("sliding_window")
        return MistralBackbone(**{**config, **overrides})

    # ---------------------------------------------------------------- keras_hub
    def backbone_from_keras_hub(self, config, **overrides):
        ours = {"vocabulary_size": config["vocabulary_size"], "num_layers": config["num_layers"],
                "num_heads": config["num_query_heads"], "hidden_dim": config["hidden_dim"],
                "intermediate_dim": config["intermediate_dim"],
                "num_key_value_heads": config["num_key_value_heads"],
                "head_dim": config.get("head_dim"),
                "rope_max_wavelength": config.get("rope_max_wavelength", 10000),
                "rope_scaling_factor": config.get("rope_scaling_factor", 1.0),
                "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6),
                "sliding_window": config.get("sliding_window", 512),
                "dropout": config.get("dropout", 0.0)}
        return MistralBackbone(**{**ours, **overrides})

    def weights_from_keras_hub(self, arrays, backbone):
        """keras_hub's ``model.weights.h5``: ``mistral_transformer_decoder[_i]`` blocks with per-head
        ``EinsumDense`` query/key/value kernels ``(hidden, heads, head_dim)``, separate gate and up."""
        var = keras_hub_reader(arrays)

        out = {"token_embedding/embeddings": var("layers/reversible_embedding/vars/0"),
               "final_norm/scale": var("layers/mistral_layer_normalization/vars/0")}
        if not backbone.tie_word_embeddings:
            out["token_embedding/reverse_embeddings"] = var("layers/reversible_embedding/vars/1")
        for hub, ours in keras_hub_blocks("mistral_transformer_decoder", backbone.num_layers):
            attention = hub + "_self_attention_layer/"
            out[ours + "attention/qkv/kernel"] = np.concatenate(
                [var(f"{attention}_{n}_dense/vars/0").reshape(backbone.hidden_dim, -1)
                 for n in ("query", "key", "value")], axis=1)
            out[ours + "attention/output/kernel"] = var(attention + "_output_dense/vars/0").reshape(
                -1, backbone.hidden_dim)
            out[ours + "attention_norm/scale"] = var(hub + "_self_attention_layernorm/vars/0")
            out[ours + "feed_forward_norm/scale"] = var(hub + "_feedforward_layernorm/vars/0")
            out[ours + "feed_forward/gate_up/kernel"] = np.concatenate(
                [var(hub + "_feedforward_gate_dense/vars/0"),
                 var(hub + "_feedforward_intermediate_dense/vars/0")], axis=1)
            out[ours + "feed_forward/output/kernel"] = var(hub + "_feedforward_output_dense/vars/0")
        return out

    def tokenizer_from_keras_hub(self, config, assets_dir, **kwargs):
        """keras_hub's ``MistralTokenizer``: SentencePiece with ``<s>`` (1) and ``</s>`` (2), padding
        with id 0 (``<unk>``); keras_hub's MistralCausalLMPreprocessor adds ``<s>`` before the text."""
        return keras_hub_sentencepiece(config, assets_dir, "Mistral", "<s>", "</s>", pad_token_id=0,
                                       **kwargs)
