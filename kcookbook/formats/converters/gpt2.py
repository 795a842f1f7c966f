"""GPT-2 checkpoints: Hugging Face ``GPT2LMHeadModel`` folders and keras_hub ``GPT2Backbone`` presets.

Hugging Face's GPT-2 uses ``Conv1D`` layers whose weights are already ``(in, out)``, and its fused
``c_attn`` has kcookbook's ``[query | key | value]`` column layout, so most tensors copy as they are.
"""

import os


from kcookbook.backbones.gpt2 import GPT2Backbone
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.common import (keras_hub_blocks, keras_hub_reader,
                                                 keras_hub_transformer_layer, same, strip_prefix, take)
from kcookbook.formats.converters.llama import HF_ACTIVATIONS
from kcookbook.presets.errors import PresetError


class GPT2Converter(Converter):
    """GPT-2: Hugging Face ``gpt2`` folders and keras_hub ``GPT2Backbone`` presets."""

    family = "gpt2"
    hf_model_types = ("gpt2",)
    keras_hub_classes = ("GPT2Backbone", "GPT2Tokenizer")
    exports_backbones = ("GPT2Backbone",)
    hf_generates = True

    # Our sublayer names → Hugging Face's (Conv1D weights are (in, out), like Keras kernels).
    HF_PROJECTIONS = {"attention/qkv": "attn.c_attn", "attention/output": "attn.c_proj",
                      "feed_forward/intermediate": "mlp.c_fc", "feed_forward/output": "mlp.c_proj"}
    HF_NORMS = {"attention_norm": "ln_1", "feed_forward_norm": "ln_2"}

    # ---------------------------------------------------------------- Hugging Face
    def backbone_from_hf(self, hf_config, **overrides):
        activation = hf_config.get("activation_function", "gelu_new")
        if HF_ACTIVATIONS.get(activation) != "gelu_approximate":
            raise PresetError(f"GPT-2 checkpoint uses activation_function={activation!r}; kcookbook's "
                              "GPT-2 runs the tanh-approximate GELU (gelu_new).")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf_config.get(flag):
                raise PresetError(f"GPT-2 checkpoint sets {flag}=true, which kcookbook's GPT-2 does not "
                                  "implement.")
        hidden = hf_config.get("n_embd", 768)
        config = {
            "vocabulary_size": hf_config["vocab_size"],
            "num_layers": hf_config.get("n_layer", 12),
            "num_heads": hf_config.get("n_head", 12),
            "hidden_dim": hidden,
            "intermediate_dim": hf_config.get("n_inner") or 4 * hidden,
            "dropout": hf_config.get("resid_pdrop", 0.1),
            "max_sequence_length": hf_config.get("n_positions", 1024),
            "layer_norm_epsilon": hf_config.get("layer_norm_epsilon", 1e-5),
        }
        config.update(overrides)
        return GPT2Backbone(**config)

    def weights_from_hf(self, tensors, backbone):
        t = strip_prefix(tensors, ("transformer.",))
        t.pop("lm_head.weight", None)  # tied to wte
        out = {
            "token_embedding/embeddings": take(t, "wte.weight"),
            "position_embedding/embeddings": take(t, "wpe.weight"),
            "final_norm/gamma": take(t, "ln_f.weight"),
            "final_norm/beta": take(t, "ln_f.bias"),
        }
        for i in range(backbone.num_layers):
            hf, ours = f"h.{i}.", f"transformer_layer_{i}/"
            for our_name, hf_name in self.HF_PROJECTIONS.items():
                out[f"{ours}{our_name}/kernel"] = take(t, f"{hf}{hf_name}.weight")  # Conv1D: (in, out)
                out[f"{ours}{our_name}/bias"] = take(t, f"{hf}{hf_name}.bias")
            for our_name, hf_name in self.HF_NORMS.items():
                out[f"{ours}{our_name}/gamma"] = take(t, f"{hf}{hf_name}.weight")
                out[f"{ours}{our_name}/beta"] = take(t, f"{hf}{hf_name}.bias")
            for buffer in ("attn.bias", "attn.masked_bias"):  # causal-mask buffers of old checkpoints
                t.pop(hf + buffer, None)
        return out

    # ---------------------------------------------------------------- export (the inverse)
    def hf_config_from_backbone(self, backbone):
        return {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": backbone.vocabulary_size, "n_layer": backbone.num_layers,
            "n_head": backbone.num_heads, "n_embd": backbone.hidden_dim, "n_inner": backbone.intermediate_dim,
            "n_positions": backbone.max_sequence_length, "layer_norm_epsilon": backbone.layer_norm_epsilon,
            "activation_function": "gelu_new", "resid_pdrop": backbone.dropout,
            "embd_pdrop": backbone.dropout, "attn_pdrop": backbone.dropout, "tie_word_embeddings": True,
        }

    def hf_tensors_from_backbone(self, backbone, read):
        out = {"transformer.wte.weight": same(read, "token_embedding/embeddings"),
               "transformer.wpe.weight": same(read, "position_embedding/embeddings"),
               "transformer.ln_f.weight": same(read, "final_norm/gamma"),
               "transformer.ln_f.bias": same(read, "final_norm/beta")}
        for i in range(backbone.num_layers):
            hf, ours = f"transformer.h.{i}.", f"transformer_layer_{i}/"
            for our_name, hf_name in self.HF_PROJECTIONS.items():
                out[f"{hf}{hf_name}.weight"] = same(read, f"{ours}{our_name}/kernel")
                out[f"{hf}{hf_name}.bias"] = same(read, f"{ours}{our_name}/bias")
            for our_name, hf_name in self.HF_NORMS.items():
                out[f"{hf}{hf_name}.weight"] = same(read, f"{ours}{our_name}/gamma")
                out[f"{hf}{hf_name}.bias"] = same(read, f"{ours}{our_name}/beta")
        return out

    def tokenizer_from_hf(self, folder, **kwargs):
        """GPT-2's byte-level BPE (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``), or None."""
        vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        if os.path.exists(os.path.join(folder, "tokenizer.json")):
            from kcookbook.components.hf_tokenizer import HuggingFaceTokenizer

            return HuggingFaceTokenizer.from_hf_folder(folder, **kwargs)
        if os.path.exists(vocab) and os.path.exists(merges):
            from kcookbook.components.byte_pair import BytePairTokenizer

            options = {"start_token": "<|endoftext|>", "end_token": "<|endoftext|>", **kwargs}
            return BytePairTokenizer(vocab, merges, **options)
        return None

    # ---------------------------------------------------------------- keras_hub
    def backbone_from_keras_hub(self, config, **overrides):
        keys = ("vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim",
                "dropout", "max_sequence_length")
        ours = {k: config[k] for k in keys if k in config}
        ours.update(overrides)
        return GPT2Backbone(**ours)

    def weights_from_keras_hub(self, arrays, backbone):
        """keras_hub's ``model.weights.h5`` names layers by class and order (``transformer_decoder_3``)."""
        var = keras_hub_reader(arrays)

        out = {
            "token_embedding/embeddings": var("layers/reversible_embedding/vars/0"),
            "position_embedding/embeddings": var("layers/position_embedding/vars/0"),
            "final_norm/gamma": var("layers/layer_normalization/vars/0"),
            "final_norm/beta": var("layers/layer_normalization/vars/1"),
        }
        for hub, ours in keras_hub_blocks("transformer_decoder", backbone.num_layers):
            out.update(keras_hub_transformer_layer(
                var, hub, ours,
                norm_names=("attention_norm", "feed_forward_norm"),
                feed_forward_names=("feed_forward/intermediate", "feed_forward/output")))
        return out

    def tokenizer_from_keras_hub(self, config, assets_dir, **kwargs):
        vocab = os.path.join(assets_dir, "vocabulary.json")
        merges = os.path.join(assets_dir, "merges.txt")
        if not (os.path.exists(vocab) and os.path.exists(merges)):
            raise PresetError(f"keras_hub GPT-2 tokenizer without its files: {vocab} and {merges} are needed.")
        from kcookbook.components.byte_pair import BytePairTokenizer

        options = {"start_token": "<|endoftext|>", "end_token": "<|endoftext|>", **kwargs}
        return BytePairTokenizer(vocab, merges, **options)
