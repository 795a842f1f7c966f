"""CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision").

Two towers map images and texts into one space, where a matching pair has a high cosine similarity:

    images (batch, height, width, 3), already rescaled/normalised by an image converter
      → CLIPVisionEncoder: patches + class token + positions (PatchEmbedding, no patch bias)
        → layer norm ("pre_layrnorm": CLIP's extra norm before the blocks)
        → num_layers × pre-norm TransformerEncoderBlock (quick GELU in OpenAI's checkpoints)
        → layer norm of the class token → pooled_output (batch, hidden)
      → vision_projection (Dense, no bias) → image features (batch, projection_dim)

    token_ids (batch, length), CLIP's tokenizer: <|startoftext|> text <|endoftext|> padding
      → CLIPTextEncoder: token + learned position embeddings
        → num_layers × pre-norm TransformerEncoderBlock under a causal mask
        → final layer norm → sequence_output (batch, length, hidden)
        → the end-of-text token's vector → pooled_output (batch, hidden)
      → text_projection (Dense, no bias) → text features (batch, projection_dim)

    logits_per_image = exp(logit_scale) · normalise(image features) @ normalise(text features)ᵀ

The towers are backbones of their own: :class:`CLIPTextEncoder` alone is the text encoder that
Stable Diffusion conditions on (its ``sequence_output``), and :class:`CLIPBackbone` holds one of each
plus the projections and the learned temperature ``logit_scale``. ``get_vision_embeddings`` and
``get_text_embeddings`` return the projected, unnormalised features (transformers'
``get_image_features`` / ``get_text_features``); ``ZeroShotImageClassifier`` and
``ImageTextEmbedder`` (kcookbook.tasks) normalise them.

The causal mask makes padding harmless: the end-of-text token comes before any padding, so its
vector never sees the padding, and the text encoder takes ``token_ids`` alone.

    >>> import numpy as np
    >>> vision = CLIPVisionEncoder(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2,
    ...                            hidden_dim=8, intermediate_dim=16)
    >>> text = CLIPTextEncoder(vocabulary_size=20, max_sequence_length=6, num_layers=1, num_heads=2,
    ...                        hidden_dim=8, intermediate_dim=16, end_token_id=19)
    >>> clip = CLIPBackbone(vision, text, projection_dim=4)
    >>> tuple(clip.get_text_embeddings(np.array([[18, 5, 19, 19, 19, 19]])).shape)
    (1, 4)
"""

import math

import keras
from keras import ops

from kcookbook.backbones.backbone import Backbone, check_backbone_config
from kcookbook.components import (
    PatchEmbedding,
    TokenAndPositionEmbedding,
    TransformerEncoderBlock,
    get_activation,
)


def _blocks(num_layers, num_heads, intermediate_dim, activation, layer_norm_epsilon, dtype):
    """CLIP's pre-norm transformer blocks (the same block as ViT's)."""
    return [TransformerEncoderBlock(num_heads, intermediate_dim, activation=get_activation(activation),
                                    layer_norm_epsilon=layer_norm_epsilon, normalize_first=True, dtype=dtype,
                                    name=f"transformer_layer_{i}")
            for i in range(num_layers)]


class _TowerConfig:
    """The config fields both towers share, recorded and returned by ``get_config``."""

    FIELDS = ("num_layers", "num_heads", "hidden_dim", "intermediate_dim", "activation",
              "layer_norm_epsilon")

    def _record(self, arguments):
        for name in self.FIELDS:
            setattr(self, name, arguments[name])

    def get_config(self):
        config = super().get_config()
        config.update({name: getattr(self, name) for name in self.FIELDS})
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class CLIPVisionEncoder(_TowerConfig, Backbone):
    """CLIP's image tower: a ViT with a layer norm before the blocks and one on the class token.

    Outputs ``{"sequence_output": (batch, 1 + patches, hidden), "pooled_output": (batch, hidden)}``
    (the sequence before the final norm, the normed class token: Hugging Face's ``last_hidden_state``
    and ``pooler_output``).

    Args:
        image_shape: ``(height, width, channels)``; height and width multiples of ``patch_size``.
        patch_size: side of the square patches (32 in ViT-B/32).
        num_layers, num_heads, hidden_dim, intermediate_dim: the transformer's sizes.
        activation: feed-forward activation (``"quick_gelu"`` in OpenAI's CLIP, ``"gelu"``).
        layer_norm_epsilon: epsilon of every layer norm.
        dtype: dtype policy.
    """

    FIELDS = _TowerConfig.FIELDS + ("patch_size",)

    def __init__(self, image_shape, patch_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 activation="quick_gelu", layer_norm_epsilon=1e-5, dtype=None, name="clip_vision_encoder",
                 **kwargs):
        check_backbone_config(self, locals())
        arguments = dict(locals())
        image_shape = tuple(image_shape)
        patch_embedding = PatchEmbedding(image_shape[:2], patch_size, hidden_dim, use_class_token=True,
                                         use_bias=False, dtype=dtype, name="patch_embedding")
        pre_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype, name="pre_layer_norm")
        blocks = _blocks(num_layers, num_heads, intermediate_dim, activation, layer_norm_epsilon, dtype)
        post_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype,
                                                    name="post_layer_norm")

        images = keras.Input(shape=image_shape, name="images")
        with keras.name_scope(name):  # variable paths start with the tower's name
            x = pre_norm(patch_embedding(images))
            for block in blocks:
                x = block(x)
            outputs = {"sequence_output": x, "pooled_output": post_norm(x[:, 0])}
        super().__init__(inputs=images, outputs=outputs, dtype=dtype, name=name, **kwargs)
        self._record(arguments)
        self.image_shape = image_shape

    @property
    def position_table_length(self):
        return None  # the patch position table limits no token sequence

    def get_config(self):
        return {**super().get_config(), "image_shape": list(self.image_shape)}


@keras.saving.register_keras_serializable(package="kcookbook")
class CLIPTextEncoder(_TowerConfig, Backbone):
    """CLIP's text tower: a causal transformer whose end-of-text vector is the text's feature.

    Outputs ``{"sequence_output": (batch, length, hidden), "pooled_output": (batch, hidden)}``, both
    after the final layer norm (Hugging Face's ``last_hidden_state`` and ``pooler_output``).

    Args:
        vocabulary_size: rows of the token embedding (49,408 in OpenAI's CLIP).
        max_sequence_length: rows of the position table (77).
        num_layers, num_heads, hidden_dim, intermediate_dim: the transformer's sizes.
        activation: feed-forward activation (``"quick_gelu"`` in OpenAI's CLIP, ``"gelu"``).
        layer_norm_epsilon: epsilon of every layer norm.
        end_token_id: the end-of-text id; the first position holding it is pooled. None pools the
            position of the largest id instead (OpenAI's rule, where ``<|endoftext|>`` is the last
            id of the vocabulary; Hugging Face configs with ``eos_token_id=2`` mean this).
        dtype: dtype policy.
    """

    FIELDS = _TowerConfig.FIELDS + ("vocabulary_size", "max_sequence_length", "end_token_id")

    def __init__(self, vocabulary_size, max_sequence_length, num_layers, num_heads, hidden_dim,
                 intermediate_dim, activation="quick_gelu", layer_norm_epsilon=1e-5, end_token_id=None,
                 dtype=None, name="clip_text_encoder", **kwargs):
        check_backbone_config(self, locals())
        arguments = dict(locals())
        embedding = TokenAndPositionEmbedding(vocabulary_size, max_sequence_length, hidden_dim, dtype=dtype,
                                              name="embeddings")
        blocks = _blocks(num_layers, num_heads, intermediate_dim, activation, layer_norm_epsilon, dtype)
        final_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype,
                                                     name="final_layer_norm")

        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        with keras.name_scope(name):  # variable paths start with the tower's name
            x = embedding(token_ids)
            for block in blocks:
                x = block(x, is_causal=True)
            x = final_norm(x)
        pooled = _take_positions(x, _end_positions(token_ids, end_token_id))
        super().__init__(inputs=token_ids, outputs={"sequence_output": x, "pooled_output": pooled},
                         dtype=dtype, name=name, **kwargs)
        self._record(arguments)


def _end_positions(token_ids, end_token_id):
    """The first position of ``end_token_id`` in each row (the largest id's when it is None)."""
    if end_token_id is None:
        return ops.argmax(token_ids, axis=-1)
    return ops.argmax(ops.cast(ops.equal(token_ids, end_token_id), "int32"), axis=-1)


def _take_positions(sequence, positions):
    """(batch, length, hidden), (batch,) → (batch, hidden)."""
    index = ops.cast(positions, "int32")[:, None, None]
    return ops.take_along_axis(sequence, index, axis=1)[:, 0]


@keras.saving.register_keras_serializable(package="kcookbook")
class CLIPLogits(keras.layers.Layer):
    """``exp(logit_scale)`` times the cosine similarities of image and text features.

    ``logit_scale`` is CLIP's learned temperature, kept as a log (initialised to log(1 / 0.07)).
    Returns ``logits_per_image`` (images, texts); its transpose is ``logits_per_text``.
    """

    def __init__(self, logit_scale_init=math.log(1 / 0.07), **kwargs):
        super().__init__(**kwargs)
        self.logit_scale_init = logit_scale_init

    def build(self, *shapes):
        self.logit_scale = self.add_weight(
            name="logit_scale", shape=(), initializer=keras.initializers.Constant(self.logit_scale_init))

    def call(self, image_features, text_features):
        image_features = image_features / ops.norm(image_features, axis=-1, keepdims=True)
        text_features = text_features / ops.norm(text_features, axis=-1, keepdims=True)
        scale = ops.exp(ops.cast(self.logit_scale, image_features.dtype))
        return scale * ops.matmul(image_features, ops.transpose(text_features))

    def compute_output_shape(self, image_features_shape, text_features_shape):
        return (image_features_shape[0], text_features_shape[0])

    def get_config(self):
        return {**super().get_config(), "logit_scale_init": self.logit_scale_init}


class TextEncoderFields:
    """For a backbone holding a ``text_encoder``: its vocabulary and sequence limits are the model's."""

    @property
    def vocabulary_size(self):
        return self.text_encoder.vocabulary_size

    @property
    def max_sequence_length(self):
        return self.text_encoder.max_sequence_length

    @property
    def position_table_length(self):
        return self.text_encoder.position_table_length


@keras.saving.register_keras_serializable(package="kcookbook")
class CLIPBackbone(TextEncoderFields, Backbone):
    """Both CLIP towers, their projections into one space and the logit scale.

    Inputs ``{"images": (batch, height, width, 3), "token_ids": (batch, length)}``; outputs
    ``{"vision_embeddings": (images, projection_dim), "text_embeddings": (texts, projection_dim),
    "logits_per_image": (images, texts)}``. The two batches may differ in size when the model is
    called directly (``backbone({"images": ..., "token_ids": ...})``).

    Args:
        vision_encoder: a :class:`CLIPVisionEncoder` (or its config).
        text_encoder: a :class:`CLIPTextEncoder` (or its config).
        projection_dim: width of the shared space.
        logit_scale_init: initial log temperature.
        dtype: dtype policy.
    """

    def __init__(self, vision_encoder, text_encoder, projection_dim, logit_scale_init=math.log(1 / 0.07),
                 dtype=None, name="clip_backbone", **kwargs):
        check_backbone_config(self, {"projection_dim": projection_dim})
        vision_encoder = backbone_part(vision_encoder, CLIPVisionEncoder, "CLIPBackbone", "vision_encoder", dtype)
        text_encoder = backbone_part(text_encoder, CLIPTextEncoder, "CLIPBackbone", "text_encoder", dtype)
        vision_projection = keras.layers.Dense(projection_dim, use_bias=False, dtype=dtype,
                                               name="vision_projection")
        text_projection = keras.layers.Dense(projection_dim, use_bias=False, dtype=dtype, name="text_projection")
        logits = CLIPLogits(logit_scale_init, dtype=dtype, name="logits")

        images = keras.Input(shape=vision_encoder.image_shape, name="images")
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        vision_features = vision_projection(vision_encoder(images)["pooled_output"])
        text_features = text_projection(text_encoder(token_ids)["pooled_output"])
        outputs = {"vision_embeddings": vision_features, "text_embeddings": text_features,
                   "logits_per_image": logits(vision_features, text_features)}
        super().__init__(inputs={"images": images, "token_ids": token_ids}, outputs=outputs, dtype=dtype,
                         name=name, **kwargs)
        self.vision_encoder = vision_encoder
        self.text_encoder = text_encoder
        self.vision_projection = vision_projection
        self.text_projection = text_projection
        self.logits = logits
        self.projection_dim = projection_dim
        self.logit_scale_init = logit_scale_init

    @property
    def image_shape(self):
        return self.vision_encoder.image_shape

    def get_vision_embeddings(self, images):
        """Projected, unnormalised image features (transformers' ``get_image_features``)."""
        self.vision_encoder.check_inputs(images)
        return self.vision_projection(self.vision_encoder(images)["pooled_output"])

    def get_text_embeddings(self, token_ids):
        """Projected, unnormalised features of the end-of-text tokens (``get_text_features``)."""
        self.text_encoder.check_inputs(token_ids)
        return self.text_projection(self.text_encoder(token_ids)["pooled_output"])

    def get_config(self):
        config = super().get_config()
        config.update({
            "vision_encoder": keras.saving.serialize_keras_object(self.vision_encoder),
            "text_encoder": keras.saving.serialize_keras_object(self.text_encoder),
            "projection_dim": self.projection_dim, "logit_scale_init": self.logit_scale_init,
        })
        return config


def backbone_part(part, cls, owner, argument, dtype=None):
    """``part`` (a backbone, its serialized form or its constructor arguments) as a ``cls`` instance,
    built from a config in the owner's ``dtype`` when one is given (``from_preset(..., dtype="bfloat16")``
    reaches every part); a ``ValueError`` naming ``owner`` and ``argument`` otherwise."""
    if isinstance(part, dict):
        in_dtype = {} if dtype is None else {"dtype": dtype}
        part = (keras.saving.deserialize_keras_object({**part, "config": {**part["config"], **in_dtype}})
                if "class_name" in part else cls(**part, **in_dtype))
    if not isinstance(part, cls):
        raise ValueError(f"{owner}: {argument} must be a {cls.__name__} (or its config), got "
                         f"{type(part).__name__}.")
    return part
