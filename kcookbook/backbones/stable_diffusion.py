"""Stable Diffusion 1.x / 2.x (Rombach et al., 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"): a UNet that denoises autoencoder latents, conditioned on CLIP text states.

    prompt → CLIP tokenizer → CLIPTextEncoder (kcookbook.backbones.clip) → text states (batch, 77, width)

    noisy latents (batch, h, w, latent_channels), timestep (batch,), text states
      → StableDiffusionUNet:
          timestep → sin/cos features → dense → SiLU → dense = the time embedding
          conv_in
          down: per level, layers_per_block × (ResidualConvBlock(+ time) [→ SpatialTransformer(text)]),
                then a stride-2 conv (all levels but the last); every output is kept as a skip
          middle: ResidualConvBlock → SpatialTransformer → ResidualConvBlock
          up: per level (widest first), layers_per_block + 1 × (concatenate a skip →
                ResidualConvBlock [→ SpatialTransformer]), then nearest ×2 + conv (all but the last)
          GroupNorm → SiLU → conv_out
      → the predicted noise (or v), same shape as the latents

    image (batch, H, W, 3) in [-1, 1] → VAEEncoder → mean and log-variance of the latents (H/f, W/f)
    latents → VAEDecoder → image in [-1, 1]; f = 2^(levels-1) (8 in Stable Diffusion)

The autoencoder (diffusers' ``AutoencoderKL``) works on ``latents / scaling_factor``: the diffusion
model sees latents times ``scaling_factor`` (0.18215 in SD 1.x and 2.x), so their variance is near 1.

    TAESD (diffusers' ``AutoencoderTiny``), for fast previews: plain 3×3 convs and ReLUs, no norms,
    no attention; 64 channels throughout (about 1.2M parameters per part against the VAE decoder's 49M)
    TinyVAEEncoder: image → [0, 1] → conv → per level: (stride-2 conv) + TinyResidualBlocks → conv
    TinyVAEDecoder: latents → tanh(x/3)·3 → conv → ReLU → per level: TinyResidualBlocks →
                    nearest ×2 + conv (the last level: conv to RGB) → [-1, 1]
    It reads the UNet's latents as they are (its ``scaling_factor`` is 1.0).

:class:`StableDiffusionBackbone` holds the four parts. Its functional graph is the noise prediction
(``{"latents", "timesteps", "token_ids"}`` → ``noise_prediction``: text encoder and UNet); the
autoencoder is called through ``encode_images`` / ``decode_latents``; a TAESD decoder attached with
``set_tiny_decoder`` is ``decode_latents(latents, "tiny")``. ``TextToImage``
(kcookbook.tasks) runs the sampling loop and trains the UNet.

    >>> text = CLIPTextEncoder(vocabulary_size=20, max_sequence_length=6, num_layers=1, num_heads=2,
    ...                        hidden_dim=8, intermediate_dim=16)
    >>> unet = StableDiffusionUNet(block_channels=[8, 16], layers_per_block=1, attention_heads=2,
    ...                            context_dim=8, groups=4)
    >>> vae = AutoencoderKL(block_channels=[8, 16], layers_per_block=1, groups=4)
    >>> model = StableDiffusionBackbone(text, unet, vae)
    >>> tuple(model.decode_latents(np.zeros((1, 4, 4, 4), "float32")).shape)
    (1, 8, 8, 3)
"""

import os

import keras
from keras import ops

from kcookbook.backbones.backbone import Backbone, check_backbone_config
from kcookbook.backbones.clip import CLIPTextEncoder, TextEncoderFields, backbone_part
from kcookbook.components.diffusion_blocks import (
    Downsample,
    ResidualConvBlock,
    SpatialSelfAttention,
    SpatialTransformer,
    TimestepEmbedding,
    TinyResidualBlock,
    Upsample,
    conv,
    group_norm,
)

UNET_BLOCK_KINDS = ("cross_attention", "plain")


def _per_level(value, levels, name, owner):
    """An int for every level, or a list with one entry per level."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * levels
    if len(values) != levels or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{owner}: {name} must be a positive int or one per level ({levels}), got {value!r}.")
    return values


def _check_channels(owner, block_channels, groups):
    if not isinstance(block_channels, (list, tuple)) or not block_channels:
        raise ValueError(f"{owner}: block_channels must be a non-empty list of widths, got {block_channels!r}.")
    for width in block_channels:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 65_536 or width % groups:
            raise ValueError(f"{owner}: every block_channels entry must be a positive int divisible by "
                             f"groups={groups}, got {list(block_channels)}.")


@keras.saving.register_keras_serializable(package="kcookbook")
class StableDiffusionUNet(Backbone):
    """The denoising UNet (diffusers' ``UNet2DConditionModel`` as Stable Diffusion 1.x/2.x use it).

    Inputs ``{"latents": (batch, h, w, in_channels), "timesteps": (batch,), "context": (batch,
    length, context_dim)}``; output the prediction, (batch, h, w, out_channels). ``h`` and ``w`` must
    be multiples of 2^(levels-1).

    Args:
        block_channels: width of each level ([320, 640, 1280, 1280] in SD).
        layers_per_block: residual blocks per down level (up levels have one more).
        attention_heads: heads of the spatial transformers, an int or one per level (8 in SD 1.x;
            SD 2.x: [5, 10, 20, 20]).
        context_dim: width of the text states (768 in SD 1.x, 1024 in SD 2.x).
        down_block_kinds: per level, ``"cross_attention"`` (residual blocks with spatial
            transformers) or ``"plain"``; up levels mirror it. SD: three cross-attention, one plain.
        in_channels, out_channels: latent channels (4).
        groups: GroupNorm groups (32); norm_epsilon: the residual blocks' GroupNorm epsilon.
        transformer_layers: transformer blocks per spatial transformer.
        linear_projection: the spatial transformers project in and out with dense layers (SD 2.x)
            instead of 1×1 convs.
        frequency_shift, flip_sin_to_cos: the sinusoidal timestep features' layout.
    """

    def __init__(self, block_channels, layers_per_block=2, attention_heads=8, context_dim=768,
                 down_block_kinds=None, in_channels=4, out_channels=4, groups=32, norm_epsilon=1e-5,
                 transformer_layers=1, linear_projection=False, frequency_shift=0.0, flip_sin_to_cos=True,
                 dtype=None, name="unet", **kwargs):
        owner = type(self).__name__
        check_backbone_config(owner, {"layers_per_block": layers_per_block})
        _check_channels(owner, block_channels, groups)
        levels = len(block_channels)
        heads = _per_level(attention_heads, levels, "attention_heads", owner)
        down_block_kinds = list(down_block_kinds or ["cross_attention"] * (levels - 1) + ["plain"])
        if len(down_block_kinds) != levels or set(down_block_kinds) - set(UNET_BLOCK_KINDS):
            raise ValueError(f"{owner}: down_block_kinds needs one of {UNET_BLOCK_KINDS} per level ({levels}), "
                             f"got {down_block_kinds!r}.")
        self._config = {
            "block_channels": list(block_channels), "layers_per_block": layers_per_block,
            "attention_heads": attention_heads, "context_dim": context_dim, "down_block_kinds": down_block_kinds,
            "in_channels": in_channels, "out_channels": out_channels, "groups": groups,
            "norm_epsilon": norm_epsilon, "transformer_layers": transformer_layers,
            "linear_projection": linear_projection, "frequency_shift": frequency_shift,
            "flip_sin_to_cos": flip_sin_to_cos}

        def resnet(filters, label):
            return ResidualConvBlock(filters, groups, norm_epsilon, name=label)

        def transformer(level, label):
            return SpatialTransformer(heads[level], transformer_layers, groups, 1e-6, linear_projection, name=label)

        latents = keras.Input(shape=(None, None, in_channels), name="latents")
        timesteps = keras.Input(shape=(), name="timesteps")
        context = keras.Input(shape=(None, context_dim), name="context")
        with keras.name_scope(name):  # variable paths start with the part's name
            time = TimestepEmbedding(block_channels[0], 4 * block_channels[0], flip_sin_to_cos, frequency_shift,
                                     name="time_embedding")(timesteps)
            x = conv(block_channels[0], 3, "conv_in")(latents)
            skips = [x]
            for level, (width, kind) in enumerate(zip(block_channels, down_block_kinds)):
                for i in range(layers_per_block):
                    x = resnet(width, f"down_{level}_resnet_{i}")(x, time)
                    if kind == "cross_attention":
                        x = transformer(level, f"down_{level}_transformer_{i}")(x, context)
                    skips.append(x)
                if level < levels - 1:
                    x = Downsample(width, name=f"down_{level}_downsample")(x)
                    skips.append(x)
            x = resnet(block_channels[-1], "mid_resnet_0")(x, time)
            x = transformer(levels - 1, "mid_transformer")(x, context)
            x = resnet(block_channels[-1], "mid_resnet_1")(x, time)
            for up, (width, kind) in enumerate(zip(block_channels[::-1], down_block_kinds[::-1])):
                level = levels - 1 - up
                for i in range(layers_per_block + 1):
                    x = ops.concatenate([x, skips.pop()], axis=-1)
                    x = resnet(width, f"up_{up}_resnet_{i}")(x, time)
                    if kind == "cross_attention":
                        x = transformer(level, f"up_{up}_transformer_{i}")(x, context)
                if up < levels - 1:
                    x = Upsample(width, name=f"up_{up}_upsample")(x)
            x = ops.silu(group_norm(groups, norm_epsilon, "norm_out")(x))
            x = conv(out_channels, 3, "conv_out")(x)
        super().__init__(inputs={"latents": latents, "timesteps": timesteps, "context": context}, outputs=x,
                         dtype=dtype, name=name, **kwargs)
        self.downsampling_factor = 2 ** (levels - 1)

    def get_config(self):
        return {**super().get_config(), **self._config}


class _AutoencoderPart(Backbone):
    """Encoder or decoder of the KL autoencoder: its config and the middle block both share."""

    def _init_config(self, block_channels, layers_per_block, groups, latent_channels, image_channels):
        owner = type(self).__name__
        check_backbone_config(owner, {"layers_per_block": layers_per_block})
        _check_channels(owner, block_channels, groups)
        return {"block_channels": list(block_channels), "layers_per_block": layers_per_block, "groups": groups,
                "latent_channels": latent_channels, "image_channels": image_channels}

    @staticmethod
    def _middle(x, width, groups):
        x = ResidualConvBlock(width, groups, 1e-6, name="mid_resnet_0")(x)
        x = SpatialSelfAttention(groups, 1e-6, name="mid_attention")(x)
        return ResidualConvBlock(width, groups, 1e-6, name="mid_resnet_1")(x)

    @staticmethod
    def _out(x, filters, groups):
        return conv(filters, 3, "conv_out")(ops.silu(group_norm(groups, 1e-6, "norm_out")(x)))

    def get_config(self):
        return {**super().get_config(), **self._config}


@keras.saving.register_keras_serializable(package="kcookbook")
class VAEEncoder(_AutoencoderPart):
    """Images (batch, H, W, image_channels) in [-1, 1] → ``{"mean", "log_variance"}`` of the latents
    (batch, H/f, W/f, latent_channels), unscaled (multiply by ``scaling_factor`` for the UNet)."""

    def __init__(self, block_channels, layers_per_block=2, groups=32, latent_channels=4, image_channels=3,
                 dtype=None, name="vae_encoder", **kwargs):
        config = self._init_config(block_channels, layers_per_block, groups, latent_channels, image_channels)
        images = keras.Input(shape=(None, None, image_channels), name="images")
        with keras.name_scope(name):
            x = conv(block_channels[0], 3, "conv_in")(images)
            for level, width in enumerate(block_channels):
                for i in range(layers_per_block):
                    x = ResidualConvBlock(width, groups, 1e-6, name=f"down_{level}_resnet_{i}")(x)
                if level < len(block_channels) - 1:
                    x = Downsample(width, padding="bottom_right", name=f"down_{level}_downsample")(x)
            x = self._middle(x, block_channels[-1], groups)
            moments = conv(2 * latent_channels, 1, "quant_conv")(self._out(x, 2 * latent_channels, groups))
            mean, log_variance = ops.split(moments, 2, axis=-1)
        super().__init__(inputs=images, outputs={"mean": mean, "log_variance": log_variance}, dtype=dtype,
                         name=name, **kwargs)
        self._config = config


@keras.saving.register_keras_serializable(package="kcookbook")
class VAEDecoder(_AutoencoderPart):
    """Latents (batch, h, w, latent_channels), unscaled → images (batch, h·f, w·f, image_channels) in
    about [-1, 1]."""

    def __init__(self, block_channels, layers_per_block=2, groups=32, latent_channels=4, image_channels=3,
                 dtype=None, name="vae_decoder", **kwargs):
        config = self._init_config(block_channels, layers_per_block, groups, latent_channels, image_channels)
        latents = keras.Input(shape=(None, None, latent_channels), name="latents")
        with keras.name_scope(name):
            x = conv(latent_channels, 1, "post_quant_conv")(latents)
            x = conv(block_channels[-1], 3, "conv_in")(x)
            x = self._middle(x, block_channels[-1], groups)
            for up, width in enumerate(block_channels[::-1]):
                for i in range(layers_per_block + 1):
                    x = ResidualConvBlock(width, groups, 1e-6, name=f"up_{up}_resnet_{i}")(x)
                if up < len(block_channels) - 1:
                    x = Upsample(width, name=f"up_{up}_upsample")(x)
            images = self._out(x, image_channels, groups)
        super().__init__(inputs=latents, outputs=images, dtype=dtype, name=name, **kwargs)
        self._config = config


class AutoencoderKL:
    """The encoder and decoder of one autoencoder config (a builder: both are backbones).

    Args:
        block_channels: width of each level ([128, 256, 512, 512] in SD); the latents are
            2^(levels-1) times smaller than the image on each side.
        layers_per_block, groups, latent_channels, image_channels: as in the encoder and decoder.
        scaling_factor: what latents are multiplied by before the UNet sees them (0.18215).
    """

    def __init__(self, block_channels, layers_per_block=2, groups=32, latent_channels=4, image_channels=3,
                 scaling_factor=0.18215, dtype=None):
        config = {"block_channels": block_channels, "layers_per_block": layers_per_block, "groups": groups,
                  "latent_channels": latent_channels, "image_channels": image_channels, "dtype": dtype}
        self.encoder = VAEEncoder(**config)
        self.decoder = VAEDecoder(**config)
        self.scaling_factor = scaling_factor


def _check_tiny_config(owner, block_channels, blocks_per_level, latent_channels, image_channels):
    check_backbone_config(owner, {"blocks_per_level": blocks_per_level, "latent_channels": latent_channels,
                                  "image_channels": image_channels})
    if not isinstance(block_channels, (list, tuple)) or len(block_channels) != len(blocks_per_level) or \
            len(set(block_channels)) != 1 or isinstance(block_channels[0], bool) or \
            not isinstance(block_channels[0], int) or not 1 <= block_channels[0] <= 65_536:
        raise ValueError(f"{owner}: block_channels must be one positive width per level "
                         f"({len(blocks_per_level)} levels, as blocks_per_level), all equal (the tiny "
                         f"autoencoder's convs keep one width), got {block_channels!r}.")
    return {"block_channels": list(block_channels), "blocks_per_level": list(blocks_per_level),
            "latent_channels": latent_channels, "image_channels": image_channels}


@keras.saving.register_keras_serializable(package="kcookbook")
class TinyVAEEncoder(Backbone):
    """TAESD's encoder (diffusers' ``EncoderTiny``): images (batch, H, W, image_channels) in [-1, 1]
    → latents (batch, H/f, W/f, latent_channels), f = 2^(levels-1).

    The images are mapped to [0, 1]; level 0 is a 3×3 conv, every later level a 3×3 stride-2 conv
    without a bias; each is followed by ``blocks_per_level[level]`` :class:`TinyResidualBlock`; a
    3×3 conv gives the latents.
    """

    def __init__(self, block_channels=(64, 64, 64, 64), blocks_per_level=(1, 3, 3, 3), latent_channels=4,
                 image_channels=3, dtype=None, name="tiny_vae_encoder", **kwargs):
        config = _check_tiny_config(type(self).__name__, block_channels, blocks_per_level, latent_channels,
                                    image_channels)
        images = keras.Input(shape=(None, None, image_channels), name="images")
        with keras.name_scope(name):
            x = (images + 1.0) / 2.0
            for level, (width, blocks) in enumerate(zip(block_channels, blocks_per_level)):
                x = conv(width, 3, "conv_in")(x) if level == 0 else \
                    Downsample(width, use_bias=False, name=f"down_{level}")(x)
                for i in range(blocks):
                    x = TinyResidualBlock(width, name=f"level_{level}_block_{i}")(x)
            latents = conv(latent_channels, 3, "conv_out")(x)
        super().__init__(inputs=images, outputs=latents, dtype=dtype, name=name, **kwargs)
        self._config = config

    def get_config(self):
        return {**super().get_config(), **self._config}


@keras.saving.register_keras_serializable(package="kcookbook")
class TinyVAEDecoder(Backbone):
    """TAESD's decoder (diffusers' ``DecoderTiny``): latents (batch, h, w, latent_channels) →
    images (batch, h·f, w·f, image_channels) in about [-1, 1].

    The latents are soft-clamped to (-3, 3) (``tanh(x / 3) · 3``); a 3×3 conv and ReLU; per level,
    ``blocks_per_level[level]`` :class:`TinyResidualBlock`, then nearest ×2 and a 3×3 conv without
    a bias (the last level: a 3×3 conv to the image channels); the [0, 1] output is mapped to [-1, 1].
    """

    def __init__(self, block_channels=(64, 64, 64, 64), blocks_per_level=(3, 3, 3, 1), latent_channels=4,
                 image_channels=3, dtype=None, name="tiny_vae_decoder", **kwargs):
        config = _check_tiny_config(type(self).__name__, block_channels, blocks_per_level, latent_channels,
                                    image_channels)
        latents = keras.Input(shape=(None, None, latent_channels), name="latents")
        levels = len(block_channels)
        with keras.name_scope(name):
            x = ops.tanh(latents / 3.0) * 3.0
            x = ops.relu(conv(block_channels[0], 3, "conv_in")(x))
            for level, (width, blocks) in enumerate(zip(block_channels, blocks_per_level)):
                for i in range(blocks):
                    x = TinyResidualBlock(width, name=f"level_{level}_block_{i}")(x)
                x = Upsample(width, use_bias=False, name=f"up_{level}")(x) if level < levels - 1 else \
                    conv(image_channels, 3, "conv_out")(x)
            images = x * 2.0 - 1.0
        super().__init__(inputs=latents, outputs=images, dtype=dtype, name=name, **kwargs)
        self._config = config
        self.upsampling_factor = 2 ** (levels - 1)

    def get_config(self):
        return {**super().get_config(), **self._config}


@keras.saving.register_keras_serializable(package="kcookbook")
class AutoencoderTiny(Backbone):
    """TAESD (Ollin Boer Bohan's tiny autoencoder; diffusers' ``AutoencoderTiny``): a small encoder
    and decoder distilled to share Stable Diffusion's latent space, for fast previews.

    Inputs images (batch, H, W, image_channels) in [-1, 1]; outputs ``{"latents", "images"}``: the
    encoder's latents and the decoder's reconstruction of them. ``encode`` and ``decode`` run one
    part. A Stable Diffusion pipeline divides its latents by ``scaling_factor`` (1.0 for TAESD,
    whose latents are already the UNet's) before decoding; see
    :meth:`StableDiffusionBackbone.set_tiny_decoder`.

    Args:
        encoder: a :class:`TinyVAEEncoder` (or its config); decoder: a :class:`TinyVAEDecoder`.
        scaling_factor: what a pipeline divides latents by before ``decode``.

    >>> taesd = AutoencoderTiny(TinyVAEEncoder([8, 8], [1, 1]), TinyVAEDecoder([8, 8], [1, 1]))
    >>> tuple(taesd.decode(np.zeros((1, 4, 4, 4), "float32")).shape)
    (1, 8, 8, 3)
    """

    def __init__(self, encoder=None, decoder=None, scaling_factor=1.0, dtype=None, name="autoencoder_tiny",
                 **kwargs):
        owner = type(self).__name__
        encoder = backbone_part(encoder if encoder is not None else {}, TinyVAEEncoder, owner, "encoder", dtype)
        decoder = backbone_part(decoder if decoder is not None else {}, TinyVAEDecoder, owner, "decoder", dtype)
        check_backbone_config(owner, {"scaling_factor": scaling_factor})
        encoded, decoded = encoder.get_config(), decoder.get_config()
        if encoded["latent_channels"] != decoded["latent_channels"] or \
                len(encoded["block_channels"]) != len(decoded["block_channels"]):
            raise ValueError(f"{owner}: the encoder ({encoded['latent_channels']} latent channels, "
                             f"{len(encoded['block_channels'])} levels) and the decoder "
                             f"({decoded['latent_channels']}, {len(decoded['block_channels'])}) must agree.")
        images = keras.Input(shape=(None, None, encoded["image_channels"]), name="images")
        latents = encoder(images)
        super().__init__(inputs=images, outputs={"latents": latents, "images": decoder(latents)}, dtype=dtype,
                         name=name, **kwargs)
        self.encoder, self.decoder, self.scaling_factor = encoder, decoder, float(scaling_factor)

    @staticmethod
    def _check(value, channels, name, shape):
        if len(value.shape) != 4 or value.shape[-1] != channels:
            raise ValueError(f"{name} must be {shape} with {channels} channels (channels last), got shape "
                             f"{tuple(value.shape)}.")

    def encode(self, images):
        """Images (batch, H, W, image_channels) in [-1, 1] → the latents (diffusers' ``encode(x).latents``)."""
        images = ops.convert_to_tensor(images)
        self._check(images, self.encoder.get_config()["image_channels"], "images", "(batch, height, width, c)")
        return self.encoder(images)

    def decode(self, latents):
        """Latents (batch, h, w, latent_channels) → images in about [-1, 1] (diffusers' ``decode(z).sample``)."""
        latents = ops.convert_to_tensor(latents)
        self._check(latents, self.decoder.get_config()["latent_channels"], "latents", "(batch, h, w, c)")
        return self.decoder(latents)

    def get_config(self):
        return {**super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder), "scaling_factor": self.scaling_factor}


@keras.saving.register_keras_serializable(package="kcookbook")
class StableDiffusionBackbone(TextEncoderFields, Backbone):
    """Text encoder, UNet and autoencoder of a latent-diffusion text-to-image model.

    Inputs ``{"latents": (batch, h, w, c), "timesteps": (batch,), "token_ids": (batch, length)}``;
    output ``noise_prediction`` (batch, h, w, c): the UNet on the text encoder's ``sequence_output``.

    Args:
        text_encoder: a :class:`CLIPTextEncoder` (or its config).
        unet: a :class:`StableDiffusionUNet` (or its config).
        vae: an :class:`AutoencoderKL`, or give ``vae_encoder`` and ``vae_decoder``; neither
            (``vae=None``): pixel-space diffusion, the UNet denoises the images themselves
            (``in_channels`` = 3, "latents" = images in [-1, 1] times ``scaling_factor``).
        scaling_factor: the latent scale (taken from ``vae`` when it is given).
        tiny_decoder: an optional :class:`TinyVAEDecoder` (TAESD) for previews, and
            tiny_scaling_factor: what latents are divided by before it (1.0 for TAESD). Usually
            attached after loading with :meth:`set_tiny_decoder`. It is not trained.
    """

    def __init__(self, text_encoder, unet, vae=None, vae_encoder=None, vae_decoder=None, scaling_factor=0.18215,
                 tiny_decoder=None, tiny_scaling_factor=1.0, dtype=None, name="stable_diffusion_backbone",
                 **kwargs):
        owner = type(self).__name__
        if vae is not None:
            vae_encoder, vae_decoder, scaling_factor = vae.encoder, vae.decoder, vae.scaling_factor
        text_encoder = backbone_part(text_encoder, CLIPTextEncoder, owner, "text_encoder", dtype)
        unet = backbone_part(unet, StableDiffusionUNet, owner, "unet", dtype)
        if vae_encoder is not None or vae_decoder is not None:  # both None: pixel space
            vae_encoder = backbone_part(vae_encoder, VAEEncoder, owner, "vae_encoder", dtype)
            vae_decoder = backbone_part(vae_decoder, VAEDecoder, owner, "vae_decoder", dtype)
        elif unet.get_config()["in_channels"] != 3 or unet.get_config()["out_channels"] != 3:
            raise ValueError(f"{owner}: without a vae (pixel space) the UNet denoises RGB images, so it needs "
                             f"in_channels=3 and out_channels=3, got {unet.get_config()['in_channels']} and "
                             f"{unet.get_config()['out_channels']}.")
        if text_encoder.hidden_dim != unet.get_config()["context_dim"]:
            raise ValueError(f"StableDiffusionBackbone: the text encoder's hidden_dim={text_encoder.hidden_dim} "
                             f"must equal the UNet's context_dim={unet.get_config()['context_dim']}.")
        latents = keras.Input(shape=(None, None, unet.get_config()["in_channels"]), name="latents")
        timesteps = keras.Input(shape=(), name="timesteps")
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        context = text_encoder(token_ids)["sequence_output"]
        noise = unet({"latents": latents, "timesteps": timesteps, "context": context})
        super().__init__(inputs={"latents": latents, "timesteps": timesteps, "token_ids": token_ids},
                         outputs={"noise_prediction": noise}, dtype=dtype, name=name, **kwargs)
        self.text_encoder, self.unet = text_encoder, unet
        self.vae_encoder, self.vae_decoder = vae_encoder, vae_decoder
        self.scaling_factor = float(scaling_factor)
        self.tiny_decoder, self.tiny_scaling_factor = None, 1.0
        if tiny_decoder is not None:
            self._attach_tiny_decoder(backbone_part(tiny_decoder, TinyVAEDecoder, owner, "tiny_decoder", dtype),
                                      tiny_scaling_factor)

    @property
    def downsampling_factor(self):
        """Image pixels per latent pixel, on each side."""
        if self.vae_decoder is None:
            return 1
        return 2 ** (len(self.vae_decoder.get_config()["block_channels"]) - 1)

    def encode_text(self, token_ids):
        """(batch, length) ids → (batch, length, width) text states the UNet attends to."""
        return self.text_encoder(token_ids)["sequence_output"]

    def predict_noise(self, latents, timesteps, context):
        return self.unet({"latents": latents, "timesteps": timesteps, "context": context})

    def encode_images(self, images, sample_seed=None):
        """Images in [-1, 1] → scaled latents (the distribution's mean, or a sample with ``sample_seed``)."""
        if self.vae_encoder is None:
            return ops.convert_to_tensor(images) * self.scaling_factor
        moments = self.vae_encoder(images)
        latents = moments["mean"]
        if sample_seed is not None:
            std = ops.exp(0.5 * ops.clip(moments["log_variance"], -30.0, 20.0))
            latents = latents + std * keras.random.normal(ops.shape(latents), seed=sample_seed)
        return latents * self.scaling_factor

    def decode_latents(self, latents, decoder="vae"):
        """Scaled latents → images in about [-1, 1], by the autoencoder (``decoder="vae"``; pixel
        space: the latents are the images) or the attached TAESD decoder (``"tiny"``:
        :meth:`set_tiny_decoder`)."""
        if self.check_decoder(decoder) == "tiny":
            return self.tiny_decoder(latents / self.tiny_scaling_factor)
        latents = latents / self.scaling_factor
        return latents if self.vae_decoder is None else self.vae_decoder(latents)

    def check_decoder(self, decoder):
        """``decoder`` if ``decode_latents`` can run it, else a ``ValueError`` that says what to do."""
        if not isinstance(decoder, str) or decoder not in ("vae", "tiny"):
            raise ValueError(f"decoder must be 'vae' (the autoencoder) or 'tiny' (TAESD), got {decoder!r}.")
        if decoder == "tiny" and self.tiny_decoder is None:
            raise ValueError("decoder='tiny' needs a TAESD decoder: attach one with backbone.set_tiny_decoder("
                             "'hf://madebyollin/taesd') (any diffusers AutoencoderTiny folder, or an AutoencoderTiny).")
        return decoder

    def set_tiny_decoder(self, autoencoder):
        """Attach TAESD's decoder for ``decode_latents(latents, "tiny")`` (``generate(decoder="tiny")``).

        Args:
            autoencoder: an :class:`AutoencoderTiny`, or a preset handle of one (a diffusers
                ``AutoencoderTiny.save_pretrained`` folder such as ``hf://madebyollin/taesd``,
                built in this backbone's dtype). Its decoder must read this model's latents: the
                same channels and the same upsampling factor. It is frozen (not trained).
        """
        if isinstance(autoencoder, (str, os.PathLike)):
            autoencoder = AutoencoderTiny.from_preset(autoencoder, dtype=self.dtype_policy.name)
        if not isinstance(autoencoder, AutoencoderTiny):
            raise ValueError(f"set_tiny_decoder takes an AutoencoderTiny or a preset handle of one, got "
                             f"{type(autoencoder).__name__}.")
        self._attach_tiny_decoder(autoencoder.decoder, autoencoder.scaling_factor)

    def _attach_tiny_decoder(self, decoder, scaling_factor):
        check_backbone_config(type(self).__name__, {"scaling_factor": scaling_factor})
        if self.vae_decoder is None:
            raise ValueError("This model diffuses in pixel space (no vae): it has no latents for a tiny "
                             "decoder to preview; decode_latents already returns its images.")
        channels = self.vae_decoder.get_config()["latent_channels"]
        theirs = decoder.get_config()["latent_channels"]
        if theirs != channels or decoder.upsampling_factor != self.downsampling_factor:
            raise ValueError(f"The tiny decoder reads {theirs}-channel latents and upsamples them "
                             f"×{decoder.upsampling_factor}; this model's latents have {channels} channels at "
                             f"1/{self.downsampling_factor} of the image. Use the TAESD made for this model "
                             "(madebyollin/taesd for Stable Diffusion 1.x/2.x).")
        decoder.trainable = False
        self.tiny_decoder, self.tiny_scaling_factor = decoder, float(scaling_factor)

    def get_config(self):
        config = super().get_config()
        for part in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
            config[part] = keras.saving.serialize_keras_object(getattr(self, part))
        config["scaling_factor"] = self.scaling_factor
        if self.tiny_decoder is not None:
            config["tiny_decoder"] = keras.saving.serialize_keras_object(self.tiny_decoder)
            config["tiny_scaling_factor"] = self.tiny_scaling_factor
        return config
