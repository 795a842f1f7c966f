"""Gemma checkpoints: the Llama converter with Gemma's backbone (GeGLU, ``1 + w`` RMSNorm, scaled
and tied embeddings). Gemma configs name the activation ``hidden_activation`` (older) or
``hidden_act``."""

import numpy as np

from kcookbook.backbones.llama import GemmaBackbone
from kcookbook.formats.converters.common import (keras_hub_blocks, keras_hub_reader,
                                                 keras_hub_sentencepiece)
from kcookbook.formats.converters.llama import LlamaConverter, decoder_config
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
                       "num_experts": None, "tie_word_embeddings": True}

    def hf_config_from_backbone(self, backbone):
        config = super().hf_config_from_backbone(backbone)
        config["hidden_activation"] = config["hidden_act"]
        return config

    def backbone_from_hf(self, hf_config, **overrides):
        activation = hf_config.get("hidden_activation") or hf_config.get("hidden_act", "gelu_pytorch_tanh")
        config = decoder_config({**hf_config, "hidden_act": activation}, tie_default=True)
        return GemmaBackbone(**{**config, **overrides})

    def backbone_from_keras_hub(self, config, **overrides):
        gemma2 = [k for k in GEMMA2_OPTIONS if config.get(k)]
        if gemma2 or not config.get("query_head_dim_normalize", True):
            raise PresetError(
                f"This keras_hub GemmaBackbone preset uses {gemma2 or ['query_head_dim_normalize=False']} "
                "(Gemma 2 features); kcookbook's GemmaBackbone is Gemma 1 (gemma_*_en, gemma_1.1_*).")
        ours = {"vocabulary_size": config["vocabulary_size"], "num_layers": config["num_layers"],
                "num_heads": config["num_query_heads"], "hidden_dim": config["hidden_dim"],
                # keras_hub counts gate and up together: each has intermediate_dim / 2 units.
                "intermediate_dim": config["intermediate_dim"] // 2,
                "num_key_value_heads": config["num_key_value_heads"], "head_dim": config["head_dim"],
                "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6),
                "max_sequence_length": 8192, "dropout": config.get("dropout", 0.0)}
        return GemmaBackbone(**{**ours, **overrides})

    def weights_from_keras_hub(self, arrays, backbone):
        """keras_hub's ``model.weights.h5``: ``gemma_decoder_block[_i]`` with per-head query/key/value
        kernels ``(heads, hidden, head_dim)`` and output ``(heads, head_dim, hidden)``."""
        var = keras_hub_reader(arrays)

        def heads_last(kernel):  # (heads, hidden, head_dim) → (hidden, heads * head_dim)
            return np.transpose(kernel, (1, 0, 2)).reshape(backbone.hidden_dim, -1)

        out = {"token_embedding/embeddings": var("layers/reversible_embedding/vars/0"),
               "final_norm/scale": var("layers/rms_normalization/vars/0")}
        for hub, ours in keras_hub_blocks("gemma_decoder_block", backbone.num_layers):
            out[ours + "attention/qkv/kernel"] = np.concatenate(
                [heads_last(var(f"{hub}attention/{n}_dense/vars/0")) for n in ("query", "key", "value")],
                axis=1)
            out[ours + "attention/output/kernel"] = var(hub + "attention/output_dense/vars/0").reshape(
                -1, backbone.hidden_dim)
            out[ours + "attention_norm/scale"] = var(hub + "pre_attention_norm/vars/0")
            out[ours + "feed_forward_norm/scale"] = var(hub + "pre_ffw_norm/vars/0")
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
