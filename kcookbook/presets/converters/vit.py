"""ViT checkpoints: Hugging Face ``ViTModel`` and ``ViTForImageClassification`` folders.

Hugging Face stores the patch projection as a torch ``Conv2d`` (out, in, kh, kw) and query, key and
value separately; kcookbook uses a channels-last ``Conv2D`` (kh, kw, in, out) and one fused ``qkv``
kernel whose columns are ``[query | key | value]``. Images are channels-last here
(``pixel_values.transpose(0, 2, 3, 1)``); the rescale and normalisation that Hugging Face's image
processor applies are in ``image_converter_from_hf``'s settings.

Tensor names are those ``save_pretrained`` writes (``encoder.layer.N.attention.attention.query``),
which is also the layout of the checkpoints on the Hub.
"""

import os

import numpy as np

from kcookbook.backbones.vit import ViTBackbone
from kcookbook.presets import files
from kcookbook.presets.converters.common import hf_encoder_layer, linear_kernel, strip_prefix, take
from kcookbook.presets.errors import PresetError

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate"}


def _image_size(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def backbone_from_hf(hf_config, **overrides):
    hidden_act = hf_config.get("hidden_act", "gelu")
    if hidden_act not in HF_ACTIVATIONS:
        raise PresetError(
            f"ViT checkpoint uses hidden_act={hidden_act!r}; kcookbook's ViT supports "
            f"{', '.join(sorted(HF_ACTIVATIONS))}.")
    height, width = _image_size(hf_config.get("image_size", 224))
    config = {
        "image_shape": (height, width, hf_config.get("num_channels", 3)),
        "patch_size": hf_config.get("patch_size", 16),
        "num_layers": hf_config["num_hidden_layers"],
        "num_heads": hf_config["num_attention_heads"],
        "hidden_dim": hf_config["hidden_size"],
        "intermediate_dim": hf_config["intermediate_size"],
        "dropout": hf_config.get("hidden_dropout_prob", 0.0),
        "layer_norm_epsilon": hf_config.get("layer_norm_eps", 1e-12),
        "activation": HF_ACTIVATIONS[hidden_act],
    }
    config.update(overrides)
    return ViTBackbone(**config)


def conv_kernel(weight):
    """A torch ``Conv2d`` weight (out, in, kh, kw) as a Keras ``Conv2D`` kernel (kh, kw, in, out)."""
    return np.ascontiguousarray(np.transpose(np.asarray(weight), (2, 3, 1, 0)))


def weights_from_hf(tensors, backbone):
    t = strip_prefix(tensors, ("vit.",))
    hidden = backbone.hidden_dim
    out = {
        "patch_embedding/projection/kernel": conv_kernel(
            take(t, "embeddings.patch_embeddings.projection.weight")),
        "patch_embedding/projection/bias": take(t, "embeddings.patch_embeddings.projection.bias"),
        "patch_embedding/class_token": take(t, "embeddings.cls_token").reshape(1, 1, hidden),
        "patch_embedding/position_embedding/embeddings":
            take(t, "embeddings.position_embeddings").reshape(-1, hidden),
        "final_layer_norm/gamma": take(t, "layernorm.weight"),
        "final_layer_norm/beta": take(t, "layernorm.bias"),
    }
    for i in range(backbone.num_layers):
        out.update(hf_encoder_layer(
            t, f"encoder.layer.{i}.", f"transformer_layer_{i}/", self_attention="attention.attention",
            norm_names={"attention_norm": "layernorm_before", "ffn_norm": "layernorm_after"},
            missing_qkv_bias=hidden))
    return out


def classifier_head_from_hf(tensors):
    """``ViTForImageClassification``'s head as ``(kernel (hidden, classes), bias)``, or None.

    The head is a Dense layer on the final-normed [CLS] token (the backbone output's first token).
    """
    if "classifier.weight" not in tensors:
        return None
    return linear_kernel(tensors["classifier.weight"]), np.asarray(tensors["classifier.bias"])


def class_names_from_hf(hf_config):
    """``id2label`` as a list indexed by class id, or None when the checkpoint has no labels."""
    id2label = hf_config.get("id2label")
    if not id2label:
        return None
    return [id2label.get(str(i), id2label.get(i)) for i in range(len(id2label))]


def image_converter_from_hf(folder):
    """Hugging Face's image processor settings: size, rescale factor, mean and std (or None)."""
    path = os.path.join(folder, "preprocessor_config.json")
    if not os.path.exists(path):
        return None
    config = files.read_json(path, "image processor config")
    size = config.get("size", {})
    if isinstance(size, dict):
        size = (size.get("height", size.get("shortest_edge")), size.get("width", size.get("shortest_edge")))
    else:
        size = _image_size(size)
    return {
        "image_size": tuple(size),
        "scale": config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0,
        "mean": config.get("image_mean") if config.get("do_normalize", True) else None,
        "std": config.get("image_std") if config.get("do_normalize", True) else None,
    }


def tokenizer_from_hf(folder, **kwargs):
    return None  # images have no tokenizer
