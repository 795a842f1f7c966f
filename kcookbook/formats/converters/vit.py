"""ViT checkpoints: Hugging Face ``ViTModel`` and ``ViTForImageClassification`` folders.

Hugging Face stores the patch projection as a torch ``Conv2d`` (out, in, kh, kw) and query, key and
value separately; kcookbook uses a channels-last ``Conv2D`` (kh, kw, in, out) and one fused ``qkv``
kernel whose columns are ``[query | key | value]``. Images are channels-last here
(``pixel_values.transpose(0, 2, 3, 1)``); the rescale and normalisation that Hugging Face's image
processor applies are in ``image_converter_from_hf``'s settings.

Tensor names are those ``save_pretrained`` writes (``encoder.layer.N.attention.attention.query``),
which is also the layout of the checkpoints on the Hub.

KerasHub's ``ViTBackbone`` (its Kaggle ``vit_*_imagenet`` presets) is the same network: a patch
convolution, a class token, learned positions, pre-norm blocks with exact GELU and a final layer
norm; its query/key/value ``(hidden, heads, head_dim)`` kernels are fused like Hugging Face's, and
its ``ViTImageClassifier`` head (class token → Dense) becomes an ``ImageClassifier``.
"""

import os

import numpy as np

from kcookbook.backbones.vit import ViTBackbone
from kcookbook.formats.converters.common import (
    ImageClassifierConverter,
    hf_encoder_layer,
    image_classifier_from_keras_hub,
    keras_hub_attention,
    keras_hub_layer_suffix,
    linear_kernel,
    strip_prefix,
    take,
)
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_approximate", "gelu_pytorch_tanh": "gelu_approximate"}


def _image_size(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def conv_kernel(weight):
    """A torch ``Conv2d`` weight (out, in, kh, kw) as a Keras ``Conv2D`` kernel (kh, kw, in, out)."""
    return np.ascontiguousarray(np.transpose(np.asarray(weight), (2, 3, 1, 0)))


class ViTConverter(ImageClassifierConverter):
    """ViT: Hugging Face ``vit`` folders and keras_hub ViT presets (backbone, converter, classifier)."""

    family = "vit"
    hf_model_types = ("vit",)
    keras_hub_classes = ("ViTBackbone", "ViTImageConverter", "ViTImageClassifier")

    def backbone_from_hf(self, hf_config, **overrides):
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

    def weights_from_hf(self, tensors, backbone):
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

    def classifier_head_from_hf(self, tensors):
        """``ViTForImageClassification``'s head as ``(kernel (hidden, classes), bias)``, or None.

        The head is a Dense layer on the final-normed [CLS] token (the backbone output's first token).
        """
        if "classifier.weight" not in tensors:
            return None
        return linear_kernel(tensors["classifier.weight"]), np.asarray(tensors["classifier.bias"])

    def image_converter_from_hf(self, folder):
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

    # ----- KerasHub -----
    def backbone_from_keras_hub(self, config, **overrides):
        patch = config["patch_size"]
        patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
        if patch[0] != patch[1]:
            raise PresetError(f"This keras_hub ViT has {patch[0]}x{patch[1]} patches; kcookbook's ViT uses square ones.")
        if config.get("data_format", "channels_last") == "channels_first":
            raise PresetError("This keras_hub ViT is channels_first; kcookbook's ViT takes channels_last images.")
        kwargs = {
            "image_shape": tuple(config["image_shape"]), "patch_size": patch[0],
            "num_layers": config["num_layers"], "num_heads": config["num_heads"],
            "hidden_dim": config["hidden_dim"], "intermediate_dim": config["mlp_dim"],
            "dropout": config.get("dropout_rate", 0.0),
            "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-6), "activation": "gelu",
            "use_class_token": config.get("use_class_token", True),
        }
        return ViTBackbone(**{**kwargs, **overrides})

    def weights_from_keras_hub(self, arrays, backbone):
        """keras_hub's layout: ``vi_t_patching_and_embedding/…``, then ``vi_t_encoder/encoder_layers/
        vi_t_encoder_block{_i}/{layer_norm_1, mha, layer_norm_2, mlp/dense_1, mlp/dense_2}`` and the
        encoder's final ``layer_norm``. Layers built without biases (``use_*_bias=False``) get zeros:
        the same function."""
        present = dict(arrays)

        def var(path, zeros_like=None):
            if zeros_like is not None and path not in present:
                return np.zeros(zeros_like, "float32")
            return take(present, path, "keras_hub weights file")

        embed = "layers/vi_t_patching_and_embedding/"
        hidden = backbone.hidden_dim
        out = {
            "patch_embedding/projection/kernel": var(embed + "patch_embedding/vars/0"),
            "patch_embedding/projection/bias": var(embed + "patch_embedding/vars/1", hidden),
            "patch_embedding/position_embedding/embeddings": var(embed + "position_embedding/vars/0"),
            "final_layer_norm/gamma": var("layers/vi_t_encoder/layer_norm/vars/0"),
            "final_layer_norm/beta": var("layers/vi_t_encoder/layer_norm/vars/1"),
        }
        if backbone.use_class_token:
            out["patch_embedding/class_token"] = var(embed + "vars/0").reshape(1, 1, hidden)
        heads, head_dim = backbone.num_heads, hidden // backbone.num_heads
        for i in range(backbone.num_layers):
            theirs = f"layers/vi_t_encoder/encoder_layers/vi_t_encoder_block{keras_hub_layer_suffix(i)}/"
            ours = f"transformer_layer_{i}/"
            for name in ("query", "key", "value"):  # keras_hub's use_mha_bias=False: zero biases
                present.setdefault(f"{theirs}mha/{name}_dense/vars/1", np.zeros((heads, head_dim), "float32"))
            present.setdefault(f"{theirs}mha/output_dense/vars/1", np.zeros(hidden, "float32"))
            out.update(keras_hub_attention(var, theirs + "mha/", ours + "attention/"))
            for our_name, their_name in {"attention_norm": "layer_norm_1", "ffn_norm": "layer_norm_2"}.items():
                out[f"{ours}{our_name}/gamma"] = var(f"{theirs}{their_name}/vars/0")
                out[f"{ours}{our_name}/beta"] = var(f"{theirs}{their_name}/vars/1")
            for our_name, their_name, width in (("ffn_intermediate", "dense_1", backbone.intermediate_dim),
                                                ("ffn_output", "dense_2", hidden)):
                out[f"{ours}{our_name}/kernel"] = var(f"{theirs}mlp/{their_name}/vars/0")
                out[f"{ours}{our_name}/bias"] = var(f"{theirs}mlp/{their_name}/vars/1", width)
        if present:
            raise PresetError(f"The keras_hub weights file has entries this ViT does not use: {sorted(present)[:5]}.")
        return out

    def task_from_keras_hub(self, task_cls, config, backbone, **kwargs):
        """keras_hub's ``ViTImageClassifier``: class token (``pooling="token"``) or mean of the tokens
        (``"gap"``) → dropout → Dense. Its optional tanh ``pre_logits`` layer has no place in our head."""
        if config.get("intermediate_dim") is not None and "num_classes" not in kwargs:
            raise PresetError(
                "This keras_hub ViT classifier has a pre-logits layer (intermediate_dim="
                f"{config['intermediate_dim']}), which kcookbook's ImageClassifier head does not have. Pass "
                "num_classes=... to put a new head on its backbone.")
        pooling = {"token": "first_token", "gap": "avg"}.get(config.get("pooling", "token"))
        if pooling is None:
            raise PresetError(f"keras_hub ViT classifier pooling {config.get('pooling')!r} is not one kcookbook knows.")
        return image_classifier_from_keras_hub(task_cls, config, backbone, pooling, **kwargs)
