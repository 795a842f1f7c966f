"""Mistral checkpoints: the Llama converter plus the sliding window."""

from kcookbook.backbones.llama import MistralBackbone
from kcookbook.presets.converters.llama import decoder_config, tokenizer_from_hf, weights_from_hf

__all__ = ["backbone_from_hf", "tokenizer_from_hf", "weights_from_hf"]


def backbone_from_hf(hf_config, **overrides):
    config = decoder_config(hf_config)
    config["sliding_window"] = hf_config.get("sliding_window")
    return MistralBackbone(**{**config, **overrides})
