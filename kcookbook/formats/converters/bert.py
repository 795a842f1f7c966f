"""BERT checkpoints: Hugging Face ``BertModel`` folders and keras_hub ``BertBackbone`` presets.

Both store query, key and value separately; kcookbook fuses them into one ``qkv`` kernel whose
columns are ``[query | key | value]``.
"""

import os

import numpy as np

from kcookbook.backbones.bert import BertBackbone
from kcookbook.components.tokenizer import read_vocabulary_file
from kcookbook.components.wordpiece import WordPieceTokenizer
from kcookbook.formats.converters.base import Converter
from kcookbook.formats.converters.common import (hf_encoder_layer, hf_encoder_layer_tensors, keras_hub_blocks,
                                                 keras_hub_reader, keras_hub_transformer_layer, linear_kernel,
                                                 same, strip_prefix, take, torch_linear)
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

# ---------------------------------------------------------------- Hugging Face

# Hugging Face's activation names → ours ("gelu" is exact in both; the others are the tanh form).
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate"}


class BertConverter(Converter):
    """BERT encoders: Hugging Face ``bert`` folders and keras_hub ``BertBackbone`` presets."""

    family = "bert"
    hf_model_types = ("bert",)
    keras_hub_classes = ("BertBackbone", "BertTokenizer")
    exports_backbones = ("BertBackbone",)

    def backbone_from_hf(self, hf_config, **overrides):
        hidden_act = hf_config.get("hidden_act", "gelu")
        if hidden_act not in HF_ACTIVATIONS:
            raise PresetError(
                f"BERT checkpoint uses hidden_act={hidden_act!r}; kcookbook's BERT supports "
                f"{', '.join(sorted(HF_ACTIVATIONS))}.")
        config = {
            "vocabulary_size": hf_config["vocab_size"],
            "num_layers": hf_config["num_hidden_layers"],
            "num_heads": hf_config["num_attention_heads"],
            "hidden_dim": hf_config["hidden_size"],
            "intermediate_dim": hf_config["intermediate_size"],
            "dropout": hf_config.get("hidden_dropout_prob", 0.1),
            "max_sequence_length": hf_config.get("max_position_embeddings", 512),
            "num_segments": hf_config.get("type_vocab_size", 2),
            "layer_norm_epsilon": hf_config.get("layer_norm_eps", 1e-12),
            "activation": HF_ACTIVATIONS[hidden_act],
        }
        config.update(overrides)
        return BertBackbone(**config)

    def weights_from_hf(self, tensors, backbone):
        t = strip_prefix(tensors, ("bert.", "model."))
        t.pop("embeddings.position_ids", None)
        out = {
            "token_embedding/embeddings": take(t, "embeddings.word_embeddings.weight"),
            "position_embedding/embeddings": take(t, "embeddings.position_embeddings.weight"),
            "segment_embedding/embeddings": take(t, "embeddings.token_type_embeddings.weight"),
            "embeddings_layer_norm/gamma": take(t, "embeddings.LayerNorm.weight"),
            "embeddings_layer_norm/beta": take(t, "embeddings.LayerNorm.bias"),
        }
        for i in range(backbone.num_layers):
            out.update(hf_encoder_layer(
                t, f"encoder.layer.{i}.", f"transformer_layer_{i}/", self_attention="attention.self",
                norm_names={"attention_norm": "attention.output.LayerNorm", "ffn_norm": "output.LayerNorm"}))
        if "pooler.dense.weight" in t:
            out["pooled_dense/kernel"] = linear_kernel(take(t, "pooler.dense.weight"))
            out["pooled_dense/bias"] = take(t, "pooler.dense.bias")
        else:
            # Some checkpoints (e.g. BertForMaskedLM) have no pooler: keep its random initial values.
            for v in backbone.weights:
                if v.path.startswith("pooled_dense/"):
                    out[v.path] = np.asarray(v)
        return out

    # ---------------------------------------------------------------- export (the inverse)
    def hf_config_from_backbone(self, backbone):
        activation = {ours: hf for hf, ours in HF_ACTIVATIONS.items() if hf != "gelu_pytorch_tanh"}
        return {
            "model_type": "bert", "architectures": ["BertModel"],
            "vocab_size": backbone.vocabulary_size, "num_hidden_layers": backbone.num_layers,
            "num_attention_heads": backbone.num_heads, "hidden_size": backbone.hidden_dim,
            "intermediate_size": backbone.intermediate_dim, "hidden_act": activation[backbone.activation],
            "hidden_dropout_prob": backbone.dropout, "attention_probs_dropout_prob": backbone.dropout,
            "max_position_embeddings": backbone.max_sequence_length,
            "type_vocab_size": backbone.num_segments, "layer_norm_eps": backbone.layer_norm_epsilon,
            "pad_token_id": 0,
        }

    def hf_tensors_from_backbone(self, backbone, read):
        out = {
            "embeddings.word_embeddings.weight": same(read, "token_embedding/embeddings"),
            "embeddings.position_embeddings.weight": same(read, "position_embedding/embeddings"),
            "embeddings.token_type_embeddings.weight": same(read, "segment_embedding/embeddings"),
            "embeddings.LayerNorm.weight": same(read, "embeddings_layer_norm/gamma"),
            "embeddings.LayerNorm.bias": same(read, "embeddings_layer_norm/beta"),
        }
        for i in range(backbone.num_layers):
            out.update(hf_encoder_layer_tensors(
                read, f"encoder.layer.{i}.", f"transformer_layer_{i}/", "attention.self",
                {"attention_norm": "attention.output.LayerNorm", "ffn_norm": "output.LayerNorm"},
                backbone.hidden_dim))
        out["pooler.dense.weight"] = torch_linear(read, "pooled_dense/kernel")
        out["pooler.dense.bias"] = same(read, "pooled_dense/bias")
        return out

    def tokenizer_from_hf(self, folder, **kwargs):
        vocab_file = os.path.join(folder, "vocab.txt")
        fast_file = os.path.join(folder, "tokenizer.json")
        config_file = os.path.join(folder, "tokenizer_config.json")
        config = {}
        if os.path.exists(config_file):
            config = files.read_json(config_file, "tokenizer config")
        if os.path.exists(vocab_file):
            vocabulary = read_vocabulary_file(vocab_file)
        elif os.path.exists(fast_file):
            model = files.read_json(fast_file, "tokenizer").get("model", {})
            if model.get("type") != "WordPiece":
                raise PresetError(f"{fast_file} is not a WordPiece tokenizer; BERT needs one.")
            vocabulary = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
        else:
            return None
        options = {
            "lowercase": config.get("do_lower_case", True),
            "strip_accents": config.get("strip_accents"),
            "oov_token": config.get("unk_token", "[UNK]"),
        }
        options.update(kwargs)
        return WordPieceTokenizer(vocabulary, **options)

    # ---------------------------------------------------------------- keras_hub
    def backbone_from_keras_hub(self, config, **overrides):
        keys = ("vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim",
                "dropout", "max_sequence_length", "num_segments")
        ours = {k: config[k] for k in keys if k in config}
        # keras_hub's BERT runs the tanh-approximate GELU of Google's original code.
        ours["activation"] = "gelu_approximate"
        ours.update(overrides)
        return BertBackbone(**ours)

    def weights_from_keras_hub(self, arrays, backbone):
        """keras_hub's ``model.weights.h5`` names layers by class and order (``transformer_encoder_3``)."""
        var = keras_hub_reader(arrays)

        out = {
            "token_embedding/embeddings": var("layers/reversible_embedding/vars/0"),
            "position_embedding/embeddings": var("layers/position_embedding/vars/0"),
            "segment_embedding/embeddings": var("layers/embedding/vars/0"),
            "embeddings_layer_norm/gamma": var("layers/layer_normalization/vars/0"),
            "embeddings_layer_norm/beta": var("layers/layer_normalization/vars/1"),
            "pooled_dense/kernel": var("layers/dense/vars/0"),
            "pooled_dense/bias": var("layers/dense/vars/1"),
        }
        for hub, ours in keras_hub_blocks("transformer_encoder", backbone.num_layers):
            out.update(keras_hub_transformer_layer(
                var, hub, ours,
                norm_names=("attention_norm", "ffn_norm"),
                feed_forward_names=("ffn_intermediate", "ffn_output")))
        return out

    def tokenizer_from_keras_hub(self, config, assets_dir, **kwargs):
        vocab_file = os.path.join(assets_dir, "vocabulary.txt")
        if not os.path.exists(vocab_file):
            raise PresetError(f"keras_hub BERT tokenizer without its vocabulary: {vocab_file} is missing.")
        options = {"lowercase": config.get("lowercase", False),
                   "strip_accents": config.get("strip_accents") or None,
                   "oov_token": config.get("oov_token", "[UNK]")}
        options.update(kwargs)
        return WordPieceTokenizer(vocab_file, **options)
