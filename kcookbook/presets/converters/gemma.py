"""Gemma checkpoints: the Llama converter with Gemma's backbone (GeGLU, ``1 + w`` RMSNorm, scaled
and tied embeddings). Gemma configs name the activation ``hidden_activation`` (older) or
``hidden_act``."""

from kcookbook.backbones.llama import GemmaBackbone
from kcookbook.presets.converters.llama import decoder_config, tokenizer_from_hf, weights_from_hf

__all__ = ["backbone_from_hf", "tokenizer_from_hf", "weights_from_hf"]


def backbone_from_hf(hf_config, **overrides):
    activation = hf_config.get("hidden_activation") or hf_config.get("hidden_act", "gelu_pytorch_tanh")
    config = decoder_config({**hf_config, "hidden_act": activation}, tie_default=True)
    return GemmaBackbone(**{**config, **overrides})
