"""Segment Anything (Kirillov et al., 2023): promptable segmentation from points, boxes and masks.

    images (batch, image_size, image_size, 3), resized (longest side) + padded + normalised
      → image encoder, one of two configurations:
          "vit_det": patch embedding + absolute positions → blocks with windowed attention (relative
                     position terms; global attention at a few layers) → neck to ``embedding_dim``
          "tiny_vit": TinyViT (MobileSAM / LiteMedSAM): conv stem, MBConv stage, windowed attention
                     stages with learned attention biases → the same neck
        → image embeddings (batch, e, e, embedding_dim), e = image_size / 16 (vit_det) or 64 (TinyViT)
    points (batch, P, 2) (x, y) in the model's pixels, labels (batch, P) (1 foreground, 0 background,
    -1 "not a point" padding, -10 ignored), boxes (batch, B, 4) x0 y0 x1 y1, masks (batch, 4e, 4e, 1)
    with has_mask (batch,)
      → prompt encoder: random-Fourier positional encoding of the coordinates + learned type
        embeddings (sparse tokens), mask convolutions or a learned "no mask" vector (dense)
      → mask decoder: [IoU token, mask tokens, prompt tokens] and the image embedding in a two-way
        transformer; the mask tokens through hypernetwork MLPs weight the 4× upscaled embedding
      → masks (batch, 1 + num_multimask_outputs, 4e, 4e) low-resolution logits, the single-mask
        output first and the multimask outputs last; iou_pred (batch, 1 + num_multimask_outputs)

``SAMBackbone`` is a functional model of all three; ``embed_images(images)`` runs the image encoder
alone and ``decode(image_embeddings, points, labels, boxes)`` the prompt encoder and mask decoder
alone (each a compiled graph), so one image embedding serves many prompts (interactive use).

Hugging Face ``SamModel`` folders, Meta's segment_anything state dicts (``sam_vit_b_01ec64.pth`` …)
and segment_anything-style ones (LiteMedSAM) convert into it
(``kcookbook/formats/converters/sam.py``).

    >>> backbone = SAMBackbone(image_encoder=dict(type="vit_det", patch_size=8, hidden_dim=8,
    ...     num_layers=1, num_heads=2, intermediate_dim=16, window_size=2), image_size=32,
    ...     embedding_dim=16, decoder_num_heads=2, decoder_intermediate_dim=16, iou_head_hidden_dim=8,
    ...     mask_input_channels=4)
    >>> out = backbone.decode(backbone.embed_images(np.zeros((1, 32, 32, 3), "float32")),
    ...                       points=np.zeros((1, 1, 2)), labels=np.ones((1, 1)))
    >>> tuple(out["masks"].shape), tuple(out["iou_pred"].shape)
    ((1, 4, 16, 16), (1, 4))
"""

import itertools
import math

import keras
import numpy as np
from keras import ops

from kcookbook.backbones.backbone import Backbone, check_backbone_config
from kcookbook.components import MultiHeadAttention, PatchEmbedding
from kcookbook.components.attention import (
    attend_in_chunks,
    dot_product_attention,
    heads_first,
    heads_first_attention,
    queries_per_chunk,
)
from kcookbook.components.depthwise_conv import DepthwiseConv2D

IMAGE_ENCODERS = ("vit_det", "tiny_vit")
_VIT_DET_KEYS = {"patch_size", "hidden_dim", "num_layers", "num_heads", "intermediate_dim", "window_size",
                 "global_attention_layers", "use_rel_pos", "qkv_bias"}
_TINY_VIT_KEYS = {"stackwise_embed_dims", "stackwise_depths", "stackwise_num_heads", "stackwise_window_sizes",
                  "stem_stride", "mlp_ratio", "expand_ratio"}


def gelu(x):
    return keras.activations.gelu(x, approximate=False)


# ---------------------------------------------------------------------------------------------------
# Windows: (batch, H, W, C) ↔ (batch · windows, window², C), zero-padded to whole windows.
# ---------------------------------------------------------------------------------------------------
def window_partition(x, window):
    _, height, width, channels = x.shape
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        x = ops.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    x = ops.reshape(x, (-1, rows, window, cols, window, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (-1, window * window, channels))


def window_unpartition(windows, window, height, width):
    channels = windows.shape[-1]
    rows, cols = -(-height // window), -(-width // window)
    x = ops.reshape(windows, (-1, rows, cols, window, window, channels))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    x = ops.reshape(x, (-1, rows * window, cols * window, channels))
    return x[:, :height, :width, :]


# ---------------------------------------------------------------------------------------------------
# ViTDet image encoder (SAM's ViT-B/L/H)
# ---------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="kcookbook")
class RelativePositionAttention(MultiHeadAttention):
    """Self-attention over a ``size × size`` grid of tokens plus decomposed relative position terms
    (MViTv2): ``q·Rh[row(q) - row(k)] + q·Rw[col(q) - col(k)]`` added to the scores. ``size`` is the
    window side (windowed layers) or the whole grid (global layers)."""

    def __init__(self, num_heads, head_dim, size, use_rel_pos=True, **kwargs):
        super().__init__(num_heads, head_dim, **kwargs)
        self.size = size
        self.use_rel_pos = use_rel_pos

    def build(self, input_shape):
        super().build(input_shape)
        if self.use_rel_pos:
            shape = (2 * self.size - 1, self.head_dim)
            self.rel_pos_h = self.add_weight(name="rel_pos_h", shape=shape, initializer="zeros")
            self.rel_pos_w = self.add_weight(name="rel_pos_w", shape=shape, initializer="zeros")

    def relative_tables(self):
        """(size, size, head_dim) each: ``Rh[row(q) - row(k)]`` by (query row, key row), same for columns."""
        offsets = np.arange(self.size)[:, None] - np.arange(self.size)[None, :] + self.size - 1  # (q, k)
        return ops.take(self.rel_pos_h, offsets, axis=0), ops.take(self.rel_pos_w, offsets, axis=0)

    def relative_bias(self, query, table_h, table_w):
        """(batch, rows·size, heads, head_dim) queries of ``rows`` grid rows, with those rows of
        ``table_h`` → (batch, heads, rows·size, size²) score terms."""
        size, rows = self.size, table_h.shape[0]
        q = ops.reshape(query, (-1, rows, size, self.num_heads, self.head_dim))
        rel_h = ops.einsum("bhwnc,hkc->bnhwk", q, table_h)  # (batch, heads, h, w, k_h)
        rel_w = ops.einsum("bhwnc,wkc->bnhwk", q, table_w)  # (batch, heads, h, w, k_w)
        bias = rel_h[..., :, None] + rel_w[..., None, :]  # (batch, heads, h, w, k_h, k_w)
        return ops.reshape(bias, (-1, self.num_heads, rows * size, size * size))

    def rows_per_chunk(self):
        """On jax, queries go through attention a few grid rows at a time (``attend_in_chunks``), so
        that one chunk's scores (heads × rows·size × size² floats, per image) stay under
        ``CHUNK_SCORE_BYTES`` and in the CPU's cache: XLA otherwise writes and rereads the whole score
        tensor (a ViT-B global layer's 12 × 4,096 × 4,096) once per pass of bias, softmax and product.
        Elsewhere: all rows."""
        size = self.size
        return queries_per_chunk(size * size, 4 * self.num_heads * size * size, multiple=size) // size

    def call(self, inputs):
        query, key, value = self.split_heads(self.qkv(inputs))
        if not self.use_rel_pos:
            return self.attend(query, key, value)
        table_h, table_w = self.relative_tables()
        rows = self.rows_per_chunk()
        if rows == self.size:
            return self.attend(query, key, value, bias=self.relative_bias(query, table_h, table_w))
        key, value = heads_first(key, value)  # once, not in every chunk

        def attend_chunk(q, t):  # (batch, rows·size, heads, head_dim) queries of ``rows`` grid rows, their table
            return heads_first_attention(q, key, value, bias=self.relative_bias(q, t, table_w))

        tables = ops.reshape(table_h, (self.size // rows, rows, self.size, self.head_dim))
        return self.project_heads(attend_in_chunks(attend_chunk, query, rows * self.size, tables))

    def get_config(self):
        return {**super().get_config(), "size": self.size, "use_rel_pos": self.use_rel_pos}


@keras.saving.register_keras_serializable(package="kcookbook")
class WindowedAttentionBlock(keras.layers.Layer):
    """Pre-norm ViT block whose attention runs inside ``window × window`` windows (0: global)."""

    def __init__(self, num_heads, intermediate_dim, grid_size, window_size=0, use_rel_pos=True,
                 qkv_bias=True, layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.grid_size = grid_size
        self.window_size = window_size
        self.use_rel_pos = use_rel_pos
        self.qkv_bias = qkv_bias
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape):
        hidden = input_shape[-1]
        common = {"dtype": self.dtype_policy}
        self.norm1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm1", **common)
        self.norm1.build(input_shape)
        self.attention = RelativePositionAttention(
            self.num_heads, hidden // self.num_heads, self.window_size or self.grid_size,
            use_rel_pos=self.use_rel_pos, use_bias=self.qkv_bias, name="attention", **common)
        self.attention.build((None, None, hidden))
        if not self.qkv_bias:  # the output projection keeps its bias
            self.attention.output_dense = keras.layers.Dense(hidden, name="output", **common)
            self.attention.output_dense.build((None, None, hidden))
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="norm2", **common)
        self.norm2.build(input_shape)
        self.mlp_in = keras.layers.Dense(self.intermediate_dim, activation=gelu, name="mlp_in", **common)
        self.mlp_in.build(input_shape)
        self.mlp_out = keras.layers.Dense(hidden, name="mlp_out", **common)
        self.mlp_out.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def call(self, x):
        height, width, hidden = x.shape[1], x.shape[2], x.shape[3]
        h = self.norm1(x)
        if self.window_size:
            h = window_partition(h, self.window_size)
            h = window_unpartition(self.attention(h), self.window_size, height, width)
        else:
            h = ops.reshape(self.attention(ops.reshape(h, (-1, height * width, hidden))),
                            (-1, height, width, hidden))
        x = x + h
        return x + self.mlp_out(self.mlp_in(self.norm2(x)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "intermediate_dim": self.intermediate_dim,
                "grid_size": self.grid_size, "window_size": self.window_size, "use_rel_pos": self.use_rel_pos,
                "qkv_bias": self.qkv_bias, "layer_norm_epsilon": self.layer_norm_epsilon}


def neck(x, embedding_dim, dtype, prefix="neck"):
    """1×1 conv → layer norm → 3×3 conv → layer norm (no biases), to ``embedding_dim`` channels."""
    x = keras.layers.Conv2D(embedding_dim, 1, use_bias=False, dtype=dtype, name=f"{prefix}_conv1")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, dtype=dtype, name=f"{prefix}_norm1")(x)
    x = keras.layers.Conv2D(embedding_dim, 3, padding="same", use_bias=False, dtype=dtype,
                            name=f"{prefix}_conv2")(x)
    return keras.layers.LayerNormalization(epsilon=1e-6, dtype=dtype, name=f"{prefix}_norm2")(x)


def vit_det_encoder(images, image_size, embedding_dim, patch_size, hidden_dim, num_layers, num_heads,
                    intermediate_dim, window_size, global_attention_layers=(), use_rel_pos=True,
                    qkv_bias=True, dtype=None):
    grid = image_size // patch_size
    tokens = PatchEmbedding(image_size, patch_size, hidden_dim, use_class_token=False, dtype=dtype,
                            name="patch_embedding")(images)
    x = keras.layers.Reshape((grid, grid, hidden_dim), dtype=dtype, name="token_grid")(tokens)
    for i in range(num_layers):
        x = WindowedAttentionBlock(
            num_heads, intermediate_dim, grid, 0 if i in global_attention_layers else window_size,
            use_rel_pos=use_rel_pos, qkv_bias=qkv_bias, dtype=dtype, name=f"vision_layer_{i}")(x)
    return neck(x, embedding_dim, dtype)


# ---------------------------------------------------------------------------------------------------
# TinyViT image encoder (MobileSAM, LiteMedSAM)
# ---------------------------------------------------------------------------------------------------
def conv_bn(x, filters, kernel, stride, name, dtype, depthwise=False, activation=None):
    """Convolution without bias + batch norm (torch's eps 1e-5), torch-style symmetric padding."""
    if kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, dtype=dtype, name=f"{name}_pad")(x)
    if depthwise:
        x = DepthwiseConv2D(kernel, strides=stride, use_bias=False, dtype=dtype, name=f"{name}_conv")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, strides=stride, use_bias=False, dtype=dtype,
                                name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=dtype, name=f"{name}_bn")(x)
    return keras.layers.Activation(gelu, dtype=dtype, name=f"{name}_gelu")(x) if activation else x


@keras.saving.register_keras_serializable(package="kcookbook")
class AttentionBiasAttention(MultiHeadAttention):
    """LeViT/TinyViT attention in ``window × window`` windows: a layer norm first, then scores plus a
    learned bias per head and per |Δrow|, |Δcol| offset."""

    def __init__(self, num_heads, head_dim, window_size, **kwargs):
        super().__init__(num_heads, head_dim, **kwargs)
        self.window_size = window_size
        points = list(itertools.product(range(window_size), range(window_size)))
        offsets, index = {}, []
        for p in points:
            for q in points:
                index.append(offsets.setdefault((abs(p[0] - q[0]), abs(p[1] - q[1])), len(offsets)))
        self.num_offsets = len(offsets)
        self.bias_index = np.asarray(index, "int32").reshape(len(points), len(points))

    def build(self, input_shape):
        self.norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=self.dtype_policy, name="norm")
        self.norm.build(input_shape)
        super().build(input_shape)
        self.attention_biases = self.add_weight(name="attention_biases", shape=(self.num_heads, self.num_offsets),
                                                initializer="zeros")

    def call(self, inputs):
        query, key, value = self.split_heads(self.qkv(self.norm(inputs)))
        bias = ops.take(self.attention_biases, self.bias_index, axis=1)[None]
        return self.attend(query, key, value, bias=bias)

    def get_config(self):
        return {**super().get_config(), "window_size": self.window_size}


@keras.saving.register_keras_serializable(package="kcookbook")
class TinyViTBlock(keras.layers.Layer):
    """Windowed attention (with its own norm) + residual → 3×3 depthwise conv-BN → MLP (norm first) + residual."""

    def __init__(self, num_heads, window_size, mlp_ratio=4.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio

    def build(self, input_shape):
        hidden = input_shape[-1]
        common = {"dtype": self.dtype_policy}
        self.attention = AttentionBiasAttention(self.num_heads, hidden // self.num_heads, self.window_size,
                                                name="attention", **common)
        self.attention.build((None, None, hidden))
        self.local_pad = keras.layers.ZeroPadding2D(1, **common)
        self.local_conv = DepthwiseConv2D(3, use_bias=False, name="local_conv", **common)
        self.local_conv.build((None, input_shape[1] + 2, input_shape[2] + 2, hidden))
        self.local_bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="local_bn", **common)
        self.local_bn.build(input_shape)
        self.mlp_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="mlp_norm", **common)
        self.mlp_norm.build(input_shape)
        width = int(hidden * self.mlp_ratio)
        self.mlp_in = keras.layers.Dense(width, activation=gelu, name="mlp_in", **common)
        self.mlp_in.build(input_shape)
        self.mlp_out = keras.layers.Dense(hidden, name="mlp_out", **common)
        self.mlp_out.build(tuple(input_shape[:-1]) + (width,))

    def call(self, x, training=None):
        height, width = x.shape[1], x.shape[2]
        h = window_partition(x, self.window_size)
        x = x + window_unpartition(self.attention(h), self.window_size, height, width)
        x = self.local_bn(self.local_conv(self.local_pad(x)), training=training)
        return x + self.mlp_out(self.mlp_in(self.mlp_norm(x)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "window_size": self.window_size,
                "mlp_ratio": self.mlp_ratio}


def tiny_vit_encoder(images, embedding_dim, stackwise_embed_dims, stackwise_depths, stackwise_num_heads,
                     stackwise_window_sizes, stem_stride=4, mlp_ratio=4.0, expand_ratio=4.0, dtype=None):
    """Stem (two conv-BN, GELU between; stride ``stem_stride`` overall: 4 in MobileSAM, 1 in
    LiteMedSAM's 1×1 stem) → stage 0 of MBConv blocks → stages of TinyViT blocks; each stage but the
    last ends in a patch merging (1×1, 3×3 depthwise stride 2 — 1 for the last merge —, 1×1)."""
    dims = stackwise_embed_dims
    kernel, stride = (3, 2) if stem_stride == 4 else (1, 1)
    x = conv_bn(images, dims[0] // 2, kernel, stride, "stem_0", dtype, activation=True)
    x = conv_bn(x, dims[0], kernel, stride, "stem_1", dtype)
    for stage, depth in enumerate(stackwise_depths):
        for block in range(depth):
            name = f"stage_{stage}_block_{block}"
            if stage == 0:  # MBConv: expand 1×1, depthwise 3×3, project 1×1, residual, GELU
                h = conv_bn(x, int(dims[0] * expand_ratio), 1, 1, f"{name}_expand", dtype, activation=True)
                h = conv_bn(h, None, 3, 1, f"{name}_depthwise", dtype, depthwise=True, activation=True)
                h = conv_bn(h, dims[0], 1, 1, f"{name}_project", dtype)
                x = keras.layers.Activation(gelu, dtype=dtype, name=f"{name}_gelu")(
                    keras.layers.Add(dtype=dtype, name=f"{name}_add")([x, h]))
            else:
                x = TinyViTBlock(stackwise_num_heads[stage], stackwise_window_sizes[stage], mlp_ratio,
                                 dtype=dtype, name=name)(x)
        if stage < len(stackwise_depths) - 1:
            out, name = dims[stage + 1], f"stage_{stage}_merge"
            merge_stride = 1 if stage == len(stackwise_depths) - 2 else 2
            x = conv_bn(x, out, 1, 1, f"{name}_1", dtype, activation=True)
            x = conv_bn(x, None, 3, merge_stride, f"{name}_2", dtype, depthwise=True, activation=True)
            x = conv_bn(x, out, 1, 1, f"{name}_3", dtype)
    return neck(x, embedding_dim, dtype)


# ---------------------------------------------------------------------------------------------------
# Prompt encoder
# ---------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="kcookbook")
class SAMPromptEncoder(keras.layers.Layer):
    """Points, boxes and masks → sparse tokens (batch, P + 2B, dim) and a dense map (batch, e, e, dim).

    Coordinates (pixels of the ``input_image_size`` model input) are shifted to pixel centres,
    scaled to [-1, 1] and encoded as ``[sin(2π·xG), cos(2π·xG)]`` with a fixed random Gaussian
    matrix G (2, dim/2); a learned vector per prompt type is added (background / foreground point,
    box corner 1 / 2).
    """

    def __init__(self, embedding_dim, input_image_size, embedding_size, mask_input_channels=16,
                 layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.embedding_dim = embedding_dim
        self.input_image_size = input_image_size
        self.embedding_size = embedding_size
        self.mask_input_channels = mask_input_channels
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape=None):
        dim, common = self.embedding_dim, {"dtype": self.dtype_policy}
        self.gaussian_matrix = self.add_weight(  # float32 in every policy: see encode
            name="gaussian_matrix", shape=(2, dim // 2), initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=False, dtype="float32")
        self.point_embeddings = self.add_weight(name="point_embeddings", shape=(4, dim), initializer="zeros")
        self.not_a_point_embedding = self.add_weight(name="not_a_point_embedding", shape=(dim,), initializer="zeros")
        self.no_mask_embedding = self.add_weight(name="no_mask_embedding", shape=(dim,), initializer="zeros")
        channels = self.mask_input_channels
        self.mask_conv1 = keras.layers.Conv2D(channels // 4, 2, strides=2, name="mask_conv1", **common)
        self.mask_conv1.build((None, None, None, 1))
        self.mask_norm1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="mask_norm1", **common)
        self.mask_norm1.build((None, None, None, channels // 4))
        self.mask_conv2 = keras.layers.Conv2D(channels, 2, strides=2, name="mask_conv2", **common)
        self.mask_conv2.build((None, None, None, channels // 4))
        self.mask_norm2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="mask_norm2", **common)
        self.mask_norm2.build((None, None, None, channels))
        self.mask_conv3 = keras.layers.Conv2D(dim, 1, name="mask_conv3", **common)
        self.mask_conv3.build((None, None, None, channels))

    def encode(self, coordinates):
        """Coordinates in [0, 1] (..., 2) → (..., dim) random Fourier features, computed in float32
        (angles reach tens of radians: bfloat16's 8 bits would move them by a tenth) and returned in
        the compute dtype."""
        coordinates = ops.cast(coordinates, "float32")
        x = ops.matmul(2.0 * coordinates - 1.0, ops.cast(self.gaussian_matrix, "float32")) * (2 * math.pi)
        return ops.cast(ops.concatenate([ops.sin(x), ops.cos(x)], axis=-1), self.compute_dtype)

    def image_positional_encoding(self):
        """The encoding of every cell centre of the e × e embedding grid: (e · e, dim)."""
        e = self.embedding_size
        centres = (np.arange(e, dtype="float32") + 0.5) / e
        xs, ys = np.meshgrid(centres, centres)  # row-major: y is the row
        return self.encode(ops.convert_to_tensor(np.stack([xs, ys], -1).reshape(e * e, 2)))

    def embed_points(self, points, labels):
        points = ops.cast(points, "float32")  # pixel coordinates: bfloat16 rounds 1000 to a multiple of 4
        labels = ops.cast(labels, "int32")[..., None]
        embedding = self.encode((points + 0.5) / self.input_image_size)
        embedding = ops.where(labels == -1, ops.cast(self.not_a_point_embedding, embedding.dtype), embedding)
        embedding = ops.where(labels == -10, ops.zeros_like(embedding), embedding)
        table = ops.cast(self.point_embeddings, embedding.dtype)
        return (embedding + ops.cast(labels == 0, embedding.dtype) * table[0]
                + ops.cast(labels == 1, embedding.dtype) * table[1])

    def embed_boxes(self, boxes):
        boxes = ops.cast(boxes, "float32")
        corners = ops.reshape(boxes + 0.5, (ops.shape(boxes)[0], -1, 2, 2)) / self.input_image_size
        embedding = self.encode(corners)  # in the compute dtype; corners stay float32
        embedding = embedding + ops.cast(self.point_embeddings[2:], embedding.dtype)
        return ops.reshape(embedding, (ops.shape(boxes)[0], -1, self.embedding_dim))

    def embed_masks(self, masks):
        x = gelu(self.mask_norm1(self.mask_conv1(masks)))
        x = gelu(self.mask_norm2(self.mask_conv2(x)))
        return self.mask_conv3(x)

    def call(self, points, labels, boxes, masks=None, has_mask=None):
        """→ sparse tokens, dense map, and the image grid's positional encoding (e · e, dim)."""
        sparse = ops.concatenate([self.embed_points(points, labels), self.embed_boxes(boxes)], axis=1)
        e = self.embedding_size
        no_mask = ops.broadcast_to(ops.cast(self.no_mask_embedding, sparse.dtype),
                                   (ops.shape(sparse)[0], e, e, self.embedding_dim))
        image_pe = self.image_positional_encoding()
        if masks is None:
            return sparse, no_mask, image_pe
        has_mask = ops.reshape(ops.cast(has_mask, sparse.dtype), (-1, 1, 1, 1))
        dense = has_mask * self.embed_masks(ops.cast(masks, sparse.dtype)) + (1 - has_mask) * no_mask
        return sparse, dense, image_pe

    def compute_output_spec(self, points, labels, boxes, masks=None, has_mask=None):
        # Keras's torch backend would otherwise trace call with real tensors of made-up sizes.
        e, dtype = self.embedding_size, self.compute_dtype
        return (keras.KerasTensor((points.shape[0], None, self.embedding_dim), dtype=dtype),
                keras.KerasTensor((points.shape[0], e, e, self.embedding_dim), dtype=dtype),
                keras.KerasTensor((e * e, self.embedding_dim), dtype=dtype))

    def get_config(self):
        return {**super().get_config(), "embedding_dim": self.embedding_dim,
                "input_image_size": self.input_image_size, "embedding_size": self.embedding_size,
                "mask_input_channels": self.mask_input_channels, "layer_norm_epsilon": self.layer_norm_epsilon}


# ---------------------------------------------------------------------------------------------------
# Mask decoder
# ---------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="kcookbook")
class DownscaledAttention(keras.layers.Layer):
    """Attention with separate query/key/value inputs projected to ``hidden / downsample_rate`` wide."""

    def __init__(self, num_heads, downsample_rate=1, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.downsample_rate = downsample_rate

    def build(self, input_shape):
        hidden = input_shape[-1]
        self.internal_dim = hidden // self.downsample_rate
        if self.internal_dim % self.num_heads:
            raise ValueError(f"{self.name}: width {self.internal_dim} is not divisible by num_heads={self.num_heads}.")
        common = {"dtype": self.dtype_policy}
        for name, width, source in (("query", self.internal_dim, hidden), ("key", self.internal_dim, hidden),
                                    ("value", self.internal_dim, hidden), ("output", hidden, self.internal_dim)):
            layer = keras.layers.Dense(width, name=name, **common)
            layer.build((None, None, source))
            setattr(self, f"{name}_dense", layer)

    def call(self, query, key, value):
        head_dim = self.internal_dim // self.num_heads

        def heads(x):
            return ops.reshape(x, ops.shape(x)[:-1] + (self.num_heads, head_dim))

        out = dot_product_attention(heads(self.query_dense(query)), heads(self.key_dense(key)),
                                    heads(self.value_dense(value)))
        return self.output_dense(ops.reshape(out, ops.shape(out)[:-2] + (self.internal_dim,)))

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "downsample_rate": self.downsample_rate}


@keras.saving.register_keras_serializable(package="kcookbook")
class TwoWayAttentionBlock(keras.layers.Layer):
    """Tokens self-attend, attend to the image, pass an MLP; then the image attends to the tokens."""

    def __init__(self, num_heads, intermediate_dim, downsample_rate=2, skip_first_layer_pe=False,
                 layer_norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.downsample_rate = downsample_rate
        self.skip_first_layer_pe = skip_first_layer_pe
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape):
        hidden = input_shape[-1]
        common = {"dtype": self.dtype_policy}
        self.self_attention = DownscaledAttention(self.num_heads, 1, name="self_attention", **common)
        self.token_to_image = DownscaledAttention(self.num_heads, self.downsample_rate, name="token_to_image", **common)
        self.image_to_token = DownscaledAttention(self.num_heads, self.downsample_rate, name="image_to_token", **common)
        for layer in (self.self_attention, self.token_to_image, self.image_to_token):
            layer.build((None, None, hidden))
        for i in range(1, 5):
            norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name=f"norm{i}", **common)
            norm.build((None, None, hidden))
            setattr(self, f"norm{i}", norm)
        self.mlp_in = keras.layers.Dense(self.intermediate_dim, activation="relu", name="mlp_in", **common)
        self.mlp_in.build((None, None, hidden))
        self.mlp_out = keras.layers.Dense(hidden, name="mlp_out", **common)
        self.mlp_out.build((None, None, self.intermediate_dim))

    def call(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attention(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attention(q, q, queries)
        queries = self.norm1(queries)
        queries = self.norm2(queries + self.token_to_image(queries + query_pe, keys + key_pe, keys))
        queries = self.norm3(queries + self.mlp_out(self.mlp_in(queries)))
        keys = self.norm4(keys + self.image_to_token(keys + key_pe, queries + query_pe, queries))
        return queries, keys

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "intermediate_dim": self.intermediate_dim,
                "downsample_rate": self.downsample_rate, "skip_first_layer_pe": self.skip_first_layer_pe,
                "layer_norm_epsilon": self.layer_norm_epsilon}


@keras.saving.register_keras_serializable(package="kcookbook")
class ReluMLP(keras.layers.Layer):
    """``num_layers`` Dense layers with ReLU between them (none after the last)."""

    def __init__(self, hidden_dim, output_dim, num_layers, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.num_layers = num_layers

    def build(self, input_shape):
        width = input_shape[-1]
        self.dense_layers = []
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            layer = keras.layers.Dense(self.output_dim if last else self.hidden_dim,
                                       activation=None if last else "relu", dtype=self.dtype_policy,
                                       name=f"dense_{i}")
            layer.build(tuple(input_shape[:-1]) + (width,))
            width = layer.units
            self.dense_layers.append(layer)

    def call(self, x):
        for layer in self.dense_layers:
            x = layer(x)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self):
        return {**super().get_config(), "hidden_dim": self.hidden_dim, "output_dim": self.output_dim,
                "num_layers": self.num_layers}


@keras.saving.register_keras_serializable(package="kcookbook")
class SAMMaskDecoder(keras.layers.Layer):
    """Two-way transformer over [IoU token, mask tokens, prompt tokens] and the image embedding; each
    mask token through its hypernetwork MLP gives the weights of a mask over the 4× upscaled embedding;
    the IoU token through an MLP predicts each mask's IoU."""

    def __init__(self, num_layers=2, num_heads=8, intermediate_dim=2048, downsample_rate=2,
                 num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256, layer_norm_epsilon=1e-6,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.downsample_rate = downsample_rate
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_head_depth = iou_head_depth
        self.iou_head_hidden_dim = iou_head_hidden_dim
        self.layer_norm_epsilon = layer_norm_epsilon

    def build(self, input_shape):
        dim = input_shape[-1]
        common = {"dtype": self.dtype_policy}
        self.iou_token = self.add_weight(name="iou_token", shape=(1, dim), initializer="zeros")
        self.mask_tokens = self.add_weight(name="mask_tokens", shape=(self.num_mask_tokens, dim), initializer="zeros")
        self.transformer_layers = []
        for i in range(self.num_layers):
            layer = TwoWayAttentionBlock(self.num_heads, self.intermediate_dim, self.downsample_rate,
                                         skip_first_layer_pe=i == 0, layer_norm_epsilon=self.layer_norm_epsilon,
                                         name=f"two_way_layer_{i}", **common)
            layer.build((None, None, dim))
            self.transformer_layers.append(layer)
        self.final_attention = DownscaledAttention(self.num_heads, self.downsample_rate, name="final_attention",
                                                   **common)
        self.final_attention.build((None, None, dim))
        self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm", **common)
        self.final_norm.build((None, None, dim))
        self.upscale_conv1 = keras.layers.Conv2DTranspose(dim // 4, 2, strides=2, name="upscale_conv1", **common)
        self.upscale_conv1.build((None, None, None, dim))
        self.upscale_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="upscale_norm", **common)
        self.upscale_norm.build((None, None, None, dim // 4))
        self.upscale_conv2 = keras.layers.Conv2DTranspose(dim // 8, 2, strides=2, name="upscale_conv2", **common)
        self.upscale_conv2.build((None, None, None, dim // 4))
        self.hypernetworks = []
        for i in range(self.num_mask_tokens):
            mlp = ReluMLP(dim, dim // 8, 3, name=f"hypernetwork_{i}", **common)
            mlp.build((None, dim))
            self.hypernetworks.append(mlp)
        self.iou_head = ReluMLP(self.iou_head_hidden_dim, self.num_mask_tokens, self.iou_head_depth,
                                name="iou_head", **common)
        self.iou_head.build((None, dim))

    def call(self, image_embeddings, image_pe, sparse, dense):
        """image_embeddings, dense (batch, e, e, dim); image_pe (e·e, dim); sparse (batch, n, dim)."""
        batch = ops.shape(sparse)[0]
        e, dim = image_embeddings.shape[1], image_embeddings.shape[-1]
        output_tokens = ops.concatenate([self.iou_token, self.mask_tokens], axis=0)
        output_tokens = ops.broadcast_to(ops.cast(output_tokens, sparse.dtype)[None],
                                         (batch, self.num_mask_tokens + 1, dim))
        tokens = ops.concatenate([output_tokens, sparse], axis=1)
        keys = ops.reshape(image_embeddings + dense, (-1, e * e, dim))
        key_pe = ops.cast(image_pe, keys.dtype)[None]
        queries = tokens
        for layer in self.transformer_layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = self.final_norm(queries + self.final_attention(queries + tokens, keys + key_pe, keys))
        iou_token_out = queries[:, 0]
        mask_tokens_out = queries[:, 1:1 + self.num_mask_tokens]

        x = ops.reshape(keys, (-1, e, e, dim))
        x = gelu(self.upscale_norm(self.upscale_conv1(x)))
        x = gelu(self.upscale_conv2(x))  # (batch, 4e, 4e, dim / 8)
        hyper = ops.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.hypernetworks)], axis=1)
        masks = ops.einsum("bmc,bhwc->bmhw", hyper, x)
        return masks, self.iou_head(iou_token_out)

    def compute_output_spec(self, image_embeddings, image_pe, sparse, dense):
        batch, e, dtype = sparse.shape[0], image_embeddings.shape[1], self.compute_dtype
        return (keras.KerasTensor((batch, self.num_mask_tokens, 4 * e, 4 * e), dtype=dtype),
                keras.KerasTensor((batch, self.num_mask_tokens), dtype=dtype))

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, "num_heads": self.num_heads,
                "intermediate_dim": self.intermediate_dim, "downsample_rate": self.downsample_rate,
                "num_multimask_outputs": self.num_multimask_outputs, "iou_head_depth": self.iou_head_depth,
                "iou_head_hidden_dim": self.iou_head_hidden_dim, "layer_norm_epsilon": self.layer_norm_epsilon}


# ---------------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------------
def _check_image_encoder(image_encoder, image_size):
    if not isinstance(image_encoder, dict) or image_encoder.get("type") not in IMAGE_ENCODERS:
        raise ValueError(f"SAMBackbone: image_encoder must be a dict with type one of {IMAGE_ENCODERS}, "
                         f"got {image_encoder!r:.120}.")
    settings = {k: v for k, v in image_encoder.items() if k != "type"}
    known = _VIT_DET_KEYS if image_encoder["type"] == "vit_det" else _TINY_VIT_KEYS
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"SAMBackbone: image_encoder of type {image_encoder['type']!r} has unknown settings "
                         f"{unknown}; it takes {sorted(known)}.")
    check_backbone_config("SAMBackbone image_encoder", settings)
    if image_encoder["type"] == "vit_det" and image_size % settings["patch_size"]:
        raise ValueError(f"SAMBackbone: image_size={image_size} is not a multiple of the image encoder's "
                         f"patch_size={settings['patch_size']}.")
    return settings


def image_embedding_size(image_encoder, image_size):
    """Side of the image embedding grid: image_size / patch_size (ViTDet) or image_size / stem stride
    / 4 (TinyViT: two stride-2 merges)."""
    if image_encoder["type"] == "vit_det":
        return image_size // image_encoder["patch_size"]
    return image_size // image_encoder.get("stem_stride", 4) // 4


@keras.saving.register_keras_serializable(package="kcookbook")
class SAMBackbone(Backbone):
    """Segment Anything: image encoder + prompt encoder + mask decoder.

    Args:
        image_encoder: ``{"type": "vit_det", "patch_size", "hidden_dim", "num_layers", "num_heads",
            "intermediate_dim", "window_size", "global_attention_layers", "use_rel_pos", "qkv_bias"}``
            or ``{"type": "tiny_vit", "stackwise_embed_dims", "stackwise_depths",
            "stackwise_num_heads", "stackwise_window_sizes", "stem_stride", "mlp_ratio",
            "expand_ratio"}``.
        image_size: side of the square model input (1024 for SAM, 256 for LiteMedSAM).
        embedding_dim: width of the image embedding and of every prompt token (256).
        decoder_num_layers, decoder_num_heads, decoder_intermediate_dim: the two-way transformer.
        attention_downsample_rate: cross-attention width is ``embedding_dim / rate``.
        num_multimask_outputs: masks besides the single-mask output (3).
        iou_head_depth, iou_head_hidden_dim: the IoU prediction MLP.
        mask_input_channels: channels of the mask prompt's convolutions.
        decoder_layer_norm_epsilon: epsilon of the two-way blocks' norms (1e-6 in Hugging Face's
            SamModel, 1e-5 in segment_anything).
    Inputs: ``images``, ``points``, ``labels``, ``boxes``, ``masks``, ``has_mask`` (see the module).
    Outputs: ``{"image_embeddings", "masks", "iou_pred"}``.
    """

    def __init__(self, image_encoder, image_size, embedding_dim=256, decoder_num_layers=2, decoder_num_heads=8,
                 decoder_intermediate_dim=2048, attention_downsample_rate=2, num_multimask_outputs=3,
                 iou_head_depth=3, iou_head_hidden_dim=256, mask_input_channels=16,
                 decoder_layer_norm_epsilon=1e-6, dtype=None, name="sam_backbone", **kwargs):
        check_backbone_config(self, {"hidden_dim": embedding_dim, "num_layers": decoder_num_layers,
                                     "num_heads": decoder_num_heads, "intermediate_dim": decoder_intermediate_dim,
                                     "layer_norm_epsilon": decoder_layer_norm_epsilon})
        image_encoder = dict(image_encoder)
        settings = _check_image_encoder(image_encoder, image_size)
        e = image_embedding_size(image_encoder, image_size)
        images = keras.Input((image_size, image_size, 3), name="images")
        points = keras.Input((None, 2), name="points")
        labels = keras.Input((None,), name="labels")
        boxes = keras.Input((None, 4), name="boxes")
        masks = keras.Input((4 * e, 4 * e, 1), name="masks")
        has_mask = keras.Input((), name="has_mask")
        if image_encoder["type"] == "vit_det":
            embeddings = vit_det_encoder(images, image_size, embedding_dim, dtype=dtype, **settings)
        else:
            embeddings = tiny_vit_encoder(images, embedding_dim, dtype=dtype, **settings)
        image_model = keras.Model(images, embeddings, name="image_encoder")
        prompt_encoder = SAMPromptEncoder(embedding_dim, image_size, e, mask_input_channels, dtype=dtype,
                                          name="prompt_encoder")
        mask_decoder = SAMMaskDecoder(decoder_num_layers, decoder_num_heads, decoder_intermediate_dim,
                                      attention_downsample_rate, num_multimask_outputs, iou_head_depth,
                                      iou_head_hidden_dim, decoder_layer_norm_epsilon, dtype=dtype,
                                      name="mask_decoder")
        prompt_encoder.build()
        mask_decoder.build((None, e, e, embedding_dim))
        image_embeddings = image_model(images)
        sparse, dense, image_pe = prompt_encoder(points, labels, boxes, masks, has_mask)
        low_res, iou_pred = mask_decoder(image_embeddings, image_pe, sparse, dense)
        super().__init__(
            inputs={"images": images, "points": points, "labels": labels, "boxes": boxes, "masks": masks,
                    "has_mask": has_mask},
            outputs={"image_embeddings": image_embeddings, "masks": low_res, "iou_pred": iou_pred},
            dtype=dtype, name=name, **kwargs)
        self.image_encoder_model = image_model
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.image_encoder = image_encoder
        self.image_size = image_size
        self.embedding_dim = embedding_dim
        self.embedding_size = e
        self.decoder_num_layers = decoder_num_layers
        self.decoder_num_heads = decoder_num_heads
        self.decoder_intermediate_dim = decoder_intermediate_dim
        self.attention_downsample_rate = attention_downsample_rate
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_head_depth = iou_head_depth
        self.iou_head_hidden_dim = iou_head_hidden_dim
        self.mask_input_channels = mask_input_channels
        self.decoder_layer_norm_epsilon = decoder_layer_norm_epsilon

    def embed_images(self, images):
        """Normalised images (batch, image_size, image_size, 3) → embeddings (batch, e, e, dim), a numpy
        array (compiled on jax and tensorflow: ``predict_on_batch`` of the image encoder)."""
        return self.image_encoder_model.predict_on_batch(images)

    def decode(self, image_embeddings, points=None, labels=None, boxes=None, masks=None, has_mask=None):
        """Prompt encoder + mask decoder on precomputed embeddings → ``{"masks", "iou_pred"}`` (numpy).

        ``points`` (batch, P, 2) with ``labels`` (batch, P); ``boxes`` (batch, B, 4); omitted prompts
        are empty. ``masks`` (batch, 4e, 4e, 1) low-resolution logits with ``has_mask`` (batch,).
        One compiled graph (``prompt_decoder``) serves every call of the same shapes.
        """
        batch, e4 = np.shape(image_embeddings)[0], 4 * self.embedding_size
        if points is None:
            points, labels = np.zeros((batch, 0, 2)), np.zeros((batch, 0))
        if boxes is None:
            boxes = np.zeros((batch, 0, 4))
        if masks is None:
            masks, has_mask = np.zeros((batch, e4, e4, 1)), np.zeros((batch,))
        elif has_mask is None:
            has_mask = np.ones((batch,))
        inputs = {"image_embeddings": image_embeddings, "points": points, "labels": labels, "boxes": boxes,
                  "masks": masks, "has_mask": has_mask}
        return self.prompt_decoder.predict_on_batch({k: np.asarray(v, "float32") for k, v in inputs.items()})

    @property
    def prompt_decoder(self):
        """A functional model of the prompt encoder and mask decoder alone (sharing their weights):
        ``{"image_embeddings", "points", "labels", "boxes", "masks", "has_mask"}`` → ``{"masks", "iou_pred"}``."""
        if self.__dict__.get("_prompt_decoder") is None:
            e, dim = self.embedding_size, self.embedding_dim
            inputs = {"image_embeddings": keras.Input((e, e, dim), name="image_embeddings"),
                      "points": keras.Input((None, 2), name="points"), "labels": keras.Input((None,), name="labels"),
                      "boxes": keras.Input((None, 4), name="boxes"), "masks": keras.Input((4 * e, 4 * e, 1), name="masks"),
                      "has_mask": keras.Input((), name="has_mask")}
            sparse, dense, image_pe = self.prompt_encoder(inputs["points"], inputs["labels"], inputs["boxes"],
                                                          inputs["masks"], inputs["has_mask"])
            low_res, iou_pred = self.mask_decoder(inputs["image_embeddings"], image_pe, sparse, dense)
            model = keras.Model(inputs, {"masks": low_res, "iou_pred": iou_pred}, name="prompt_decoder")
            object.__setattr__(self, "_prompt_decoder", model)
        return self.__dict__["_prompt_decoder"]

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_encoder": dict(self.image_encoder), "image_size": self.image_size,
            "embedding_dim": self.embedding_dim, "decoder_num_layers": self.decoder_num_layers,
            "decoder_num_heads": self.decoder_num_heads, "decoder_intermediate_dim": self.decoder_intermediate_dim,
            "attention_downsample_rate": self.attention_downsample_rate,
            "num_multimask_outputs": self.num_multimask_outputs, "iou_head_depth": self.iou_head_depth,
            "iou_head_hidden_dim": self.iou_head_hidden_dim, "mask_input_channels": self.mask_input_channels,
            "decoder_layer_norm_epsilon": self.decoder_layer_norm_epsilon,
        })
        return config
