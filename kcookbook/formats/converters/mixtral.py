"""Mixtral checkpoints: the Llama converter with a mixture of experts in every block
(``block_sparse_moe.gate`` router, ``experts.{e}.w1/w3/w2`` = gate/up/down)."""

from kcookbook.backbones.llama import MixtralBackbone
from kcookbook.formats.converters.llama import LlamaConverter, decoder_config


class MixtralConverter(LlamaConverter):
    """Mixtral: the Llama converter with a mixture of experts in every block."""

    family = "mixtral"
    hf_model_types = ("mixtral",)

    def backbone_from_hf(self, hf_config, **overrides):
        config = decoder_config(hf_config)
        config.update({
            "sliding_window": hf_config.get("sliding_window"),
            "num_experts": hf_config["num_local_experts"],
            "num_experts_per_token": hf_config.get("num_experts_per_tok", 2),
            "router_aux_loss_coefficient": hf_config.get("router_aux_loss_coef", 0.02),
        })
        return MixtralBackbone(**{**config, **overrides})
