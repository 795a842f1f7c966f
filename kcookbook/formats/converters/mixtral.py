"""Mixtral checkpoints: the Llama converter with a mixture of experts in every block
(``block_sparse_moe.gate`` router, ``experts.{e}.w1/w3/w2`` = gate/up/down)."""

from kcookbook.backbones.llama import MixtralBackbone
from kcookbook.formats.converters.llama import GEMMA2_FEATURES_OFF, LlamaConverter, decoder_config
from kcookbook.presets.errors import PresetError


class MixtralConverter(LlamaConverter):
    """Mixtral: the Llama converter with a mixture of experts in every block."""

    family = "mixtral"
    hf_model_types = ("mixtral",)
    exports_backbones = ("MixtralBackbone",)
    hf_architecture = "MixtralForCausalLM"
    export_requires = {"norm_unit_offset": False, "scale_embeddings": False, **GEMMA2_FEATURES_OFF}

    def hf_config_from_backbone(self, backbone):
        if not backbone.num_experts:
            raise PresetError("Export: a MixtralBackbone without experts (num_experts=None) is a Mistral; "
                              "build a MistralBackbone to export it.")
        return {**super().hf_config_from_backbone(backbone), "sliding_window": backbone.sliding_window,
                "num_local_experts": backbone.num_experts,
                "num_experts_per_tok": backbone.num_experts_per_token,
                "router_aux_loss_coef": backbone.router_aux_loss_coefficient}

    def backbone_from_hf(self, hf_config, **overrides):
        config = decoder_config(hf_config)
        config.update({
            "sliding_window": hf_config.get("sliding_window"),
            "num_experts": hf_config["num_local_experts"],
            "num_experts_per_token": hf_config.get("num_experts_per_tok", 2),
            "router_aux_loss_coefficient": hf_config.get("router_aux_loss_coef", 0.02),
        })
        return MixtralBackbone(**{**config, **overrides})
