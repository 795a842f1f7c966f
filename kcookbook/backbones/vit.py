"""ViT (Dosovitskiy et al., 2020, "An Image is Worth 16x16 Words"): a transformer encoder on patches.

    images (batch, height, width, channels), already rescaled/normalised by an image converter
      → PatchEmbedding: patch_size × patch_size patches → tokens, [CLS] token first, + positions
      → dropout
      → num_layers × TransformerEncoderBlock (pre-norm, exact GELU: the same block as the text
        encoders, with ``normalize_first=True``)
      → layer norm → output (batch, 1 + num_patches, hidden)

One output, the token sequence, as keras_hub's ViTBackbone: a classifier reads its first token,
the [CLS] token (``ImageClassifier``'s ``pooling="first_token"``, its default for sequences, which is
what Hugging Face's ViTForImageClassification does).

Hugging Face ``ViTModel`` / ``ViTForImageClassification`` checkpoints convert into it
(``kcookbook/formats/converters/vit.py``). Hugging Face's optional ``pooler`` (a tanh dense layer
that its image classifier does not use) is not part of this backbone.

    >>> backbone = ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2,
    ...                        hidden_dim=8, intermediate_dim=16)
    >>> tuple(backbone(np.zeros((2, 8, 8, 3), "float32")).shape)  # [CLS] + 2 × 2 patches
    (2, 5, 8)
"""

import keras

from kcookbook.backbones.backbone import Backbone, check_backbone_config
from kcookbook.components import PatchEmbedding, TransformerEncoderBlock, get_activation


def vit_kernel_initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="kcookbook")
class ViTBackbone(Backbone):
    """Vision transformer encoder.

    Args:
        image_shape: ``(height, width, channels)`` of the input images; height and width must be
            multiples of ``patch_size`` (the position table is sized for them).
        patch_size: side of the square patches (16 in ViT-B/16).
        num_layers: transformer blocks.
        num_heads: attention heads per block.
        hidden_dim: width of the tokens.
        intermediate_dim: width of the feed-forward layer (4 × hidden_dim in the paper).
        dropout: dropout on the embeddings and block outputs (training only).
        layer_norm_epsilon: epsilon of every layer norm (1e-12 in Hugging Face's ViT, 1e-6 in
            Google's original code).
        activation: feed-forward activation (``"gelu"`` is the exact GELU).
        use_class_token: prepend a [CLS] token (without it, pool the tokens by their mean).
        dtype: dtype policy, e.g. ``"float32"`` or ``"mixed_bfloat16"``.
    """

    def __init__(self, image_shape, patch_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 dropout=0.0, layer_norm_epsilon=1e-12, activation="gelu", use_class_token=True,
                 dtype=None, name="vit_backbone", **kwargs):
        check_backbone_config(self, locals())
        image_shape = tuple(image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (height, width, channels), got {image_shape!r}.")
        init = vit_kernel_initializer
        patch_embedding = PatchEmbedding(
            image_shape[:2], patch_size, hidden_dim, use_class_token=use_class_token,
            kernel_initializer=init(), dtype=dtype, name="patch_embedding")
        embeddings_dropout = keras.layers.Dropout(dropout, dtype=dtype, name="embeddings_dropout")
        blocks = [
            TransformerEncoderBlock(
                num_heads, intermediate_dim, activation=get_activation(activation), dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon, normalize_first=True,
                kernel_initializer=init(), dtype=dtype, name=f"transformer_layer_{i}")
            for i in range(num_layers)
        ]
        final_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="final_layer_norm")

        images = keras.Input(shape=image_shape, name="images")
        x = embeddings_dropout(patch_embedding(images))
        for block in blocks:
            x = block(x)
        x = final_norm(x)

        super().__init__(inputs=images, outputs=x, dtype=dtype, name=name, **kwargs)

        self.image_shape = image_shape
        self.patch_size = patch_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = activation
        self.use_class_token = use_class_token

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_shape": list(self.image_shape), "patch_size": self.patch_size,
            "num_layers": self.num_layers, "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim, "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout, "layer_norm_epsilon": self.layer_norm_epsilon,
            "activation": self.activation, "use_class_token": self.use_class_token,
        })
        return config
