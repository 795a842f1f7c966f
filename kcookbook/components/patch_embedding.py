"""Patch embedding: an image as a sequence of tokens, the input layer of vision transformers.

    image (batch, height, width, channels)
      → non-overlapping patch_size × patch_size patches, each projected to ``hidden_dim``
        (one strided convolution, which is exactly a Dense layer on every flattened patch)
      → (batch, num_patches, hidden_dim), patches in row-major order (left to right, top to bottom)
      → a learned class token prepended (optional)
      → plus a learned position embedding (one row per token)

    >>> embed = PatchEmbedding(image_size=(8, 8), patch_size=4, hidden_dim=6)
    >>> tuple(embed(ops.zeros((2, 8, 8, 3))).shape)  # 4 patches + the class token
    (2, 5, 6)

The position table is sized for ``image_size``; other image sizes are refused (interpolating
positions, as some ViT fine-tuning recipes do, is not done here).
"""

import keras
from keras import ops

from kcookbook.components.embeddings import PositionEmbedding


def _pair(value, what):
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or a (height, width) pair, got {value!r}.")
    return pair


@keras.saving.register_keras_serializable(package="kcookbook")
class PatchEmbedding(keras.layers.Layer):
    """Patches → tokens, with an optional class token and learned positions.

    Args:
        image_size: ``(height, width)`` (or one int) of the images; must be a multiple of the patch.
        patch_size: side of a square patch (or a ``(height, width)`` pair).
        hidden_dim: width of each token.
        use_class_token: prepend a learned ``[CLS]`` token (ViT classifies from it).
        use_bias: a bias on the patch projection.
        kernel_initializer: initializer of the projection kernel and of the class token.
        position_initializer: initializer of the position table.
    """

    def __init__(self, image_size, patch_size, hidden_dim, use_class_token=True, use_bias=True,
                 kernel_initializer="glorot_uniform", position_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.image_size = _pair(image_size, "image_size")
        self.patch_size = _pair(patch_size, "patch_size")
        if any(i % p for i, p in zip(self.image_size, self.patch_size)):
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}: "
                "resize (or crop) the images so that patches tile them exactly.")
        self.hidden_dim = hidden_dim
        self.use_class_token = use_class_token
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.position_initializer = keras.initializers.get(
            position_initializer or keras.initializers.RandomNormal(stddev=0.02))
        self.grid = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.num_patches = self.grid[0] * self.grid[1]
        self.sequence_length = self.num_patches + int(use_class_token)
        self.projection = keras.layers.Conv2D(
            hidden_dim, kernel_size=self.patch_size, strides=self.patch_size, padding="valid",
            use_bias=use_bias, kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy,
            name="projection")
        self.position_embedding = PositionEmbedding(
            self.sequence_length, initializer=self.position_initializer, dtype=self.dtype_policy,
            name="position_embedding")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"{self.name} expects (batch, height, width, channels) images, got shape "
                             f"{tuple(input_shape)}.")
        height, width = input_shape[1], input_shape[2]
        if (height, width) != self.image_size and None not in (height, width):
            raise ValueError(
                f"{self.name} was built for {self.image_size[0]}×{self.image_size[1]} images (its "
                f"position table has {self.sequence_length} rows), got {height}×{width}. Resize the "
                "images first.")
        self.projection.build(input_shape)
        if self.use_class_token:
            self.class_token = self.add_weight(
                name="class_token", shape=(1, 1, self.hidden_dim), initializer=self.kernel_initializer)
        self.position_embedding.build((None, self.sequence_length, self.hidden_dim))

    def call(self, images):
        patches = self.projection(images)  # (batch, grid_h, grid_w, hidden)
        tokens = ops.reshape(patches, (ops.shape(patches)[0], self.num_patches, self.hidden_dim))
        if self.use_class_token:
            class_token = ops.cast(self.class_token, tokens.dtype)
            class_token = ops.broadcast_to(class_token, (ops.shape(tokens)[0], 1, self.hidden_dim))
            tokens = ops.concatenate([class_token, tokens], axis=1)
        return tokens + self.position_embedding(tokens)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.sequence_length, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_size": list(self.image_size), "patch_size": list(self.patch_size),
            "hidden_dim": self.hidden_dim, "use_class_token": self.use_class_token,
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "position_initializer": keras.initializers.serialize(self.position_initializer),
        })
        return config
