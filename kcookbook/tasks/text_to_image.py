"""Text-to-image with latent diffusion (Stable Diffusion): sample with DDIM or Euler, train the UNet.

``generate(prompts)`` encodes the prompts (and the negative prompts, for classifier-free guidance),
starts from Gaussian latents (or the ``latents`` given, channels last), walks ``num_steps`` of the
noise schedule down with the UNet's noise prediction and decodes the result with the autoencoder:

    for each step:  prediction = UNet(scale(latents), t, [negative; prompt] states)
                    prediction = negative + guidance_scale · (prompt - negative)
                    latents = scheduler.step(prediction, latents)
    image = (VAE decoder(latents / scaling_factor) + 1) / 2

Image-to-image (``generate(prompts, images=..., strength=0.6)``) starts the same walk part of the way
down: the images' latents, noised to the level of step ``num_steps · (1 - strength)``, as diffusers'
img2img pipeline does.

The loop and the decoder are compiled once per (scheduler, steps, first step, guidance on/off, decoder,
shapes): a jitted ``ops.fori_loop`` on jax, XLA on TensorFlow, eager under ``no_grad`` on torch.

``fit(images, captions)`` trains the UNet with DDPM's objective: each epoch draws a timestep and
noise per image, noises the (frozen) autoencoder's latents with :class:`DDPMScheduler` and regresses
the UNet's output on the noise (mean squared error). The text encoder and the autoencoder stay
frozen; ``caption_dropout`` replaces that fraction of captions with the empty prompt so the model
also learns the unconditional prediction guidance needs.
"""

import keras
import numpy as np
from keras import ops

from kcookbook.backbones.stable_diffusion import StableDiffusionBackbone
from kcookbook.components.schedulers import DDPMScheduler, classifier_free_guidance, get_scheduler
from kcookbook.components.validation import check_finite
from kcookbook.tasks.generation import GenerationLoop
from kcookbook.tasks.preprocessor import TextClassifierPreprocessor
from kcookbook.tasks.task import Task


def _texts(texts, name):
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {texts!r:.80}.")
    return texts


@keras.saving.register_keras_serializable(package="kcookbook")
class TextToImage(GenerationLoop, Task):
    """A latent-diffusion text-to-image model (Stable Diffusion 1.x/2.x).

    Args:
        backbone: a :class:`~kcookbook.backbones.StableDiffusionBackbone`.
        preprocessor: a ``TextClassifierPreprocessor`` with CLIP's tokenizer (77 tokens in SD).
        scheduler_config: the noise schedule (``DDPMScheduler``'s fields and the samplers' own:
            ``clip_sample``, ``set_alpha_to_one``…), from the pipeline's ``scheduler_config.json``.
        image_size: ``(height, width)`` generated when neither ``latents`` nor a size is given.
    """

    preprocessor_cls = TextClassifierPreprocessor

    def __init__(self, backbone, preprocessor=None, scheduler_config=None, image_size=(512, 512),
                 name="text_to_image", **kwargs):
        if not isinstance(backbone, StableDiffusionBackbone):
            raise ValueError(f"TextToImage needs a StableDiffusionBackbone, got {type(backbone).__name__}.")
        inputs = dict(backbone.input)
        super().__init__(inputs=inputs, outputs=backbone(inputs)["noise_prediction"], name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.scheduler_config = dict(scheduler_config or {})
        get_scheduler("ddim", self.scheduler_config)  # refuses a schedule it cannot run, now
        self.image_size = tuple(image_size)
        for frozen in (backbone.text_encoder, backbone.vae_encoder, backbone.vae_decoder):
            if frozen is not None:  # no autoencoder: pixel space
                frozen.trainable = False
        self.generate_trace_count = 0

    # ----- sampling -----
    def _token_ids(self, texts):
        if self.preprocessor is None:
            raise ValueError("TextToImage has no preprocessor, so it cannot read prompts. Build it with "
                             "preprocessor=TextClassifierPreprocessor(clip tokenizer) (from_preset does).")
        return np.asarray(self.preprocessor(texts)["token_ids"], "int32")

    def _check_noise(self, latents, shape):
        latents = np.asarray(ops.convert_to_numpy(latents), "float32")
        if latents.shape != tuple(shape):
            factor = self.backbone.downsampling_factor
            raise ValueError(f"latents must be (batch={shape[0]}, height/{factor}, width/{factor}, "
                             f"channels={shape[-1]}) (channels last) = {tuple(shape)}, got {latents.shape}.")
        check_finite("latents", latents)
        return latents

    def _check_size(self, height, width):
        multiple = 8 * self.backbone.downsampling_factor
        if height % multiple or width % multiple or height < 1 or width < 1:
            raise ValueError(f"height and width must be positive multiples of {multiple}, got {height}×{width}.")

    def _initial_latents(self, batch, latents, seed, height, width):
        channels = self.backbone.unet.get_config()["in_channels"]
        factor = self.backbone.downsampling_factor
        if latents is not None:
            latents = np.asarray(ops.convert_to_numpy(latents))
            if latents.ndim != 4:
                raise ValueError(f"latents must be (batch={batch}, height/{factor}, width/{factor}, "
                                 f"channels={channels}) (channels last), got {latents.shape}.")
            return self._check_noise(latents, (batch,) + latents.shape[1:3] + (channels,))
        height, width = (height or self.image_size[0]), (width or self.image_size[1])
        self._check_size(height, width)
        generator = np.random.default_rng(seed)
        return generator.standard_normal((batch, height // factor, width // factor, channels)).astype("float32")

    def _image_start(self, sampler, images, strength, num_steps, batch, noise, seed):
        """Image-to-image: the images' latents noised to the step ``strength`` of the walk goes back to.

        As diffusers' img2img: ``int(num_steps · strength)`` steps run, from step ``num_steps`` minus
        that; the latents are the autoencoder's mean (diffusers samples its posterior).
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be a number in (0, 1] (1 ignores the image), got {strength!r}.")
        steps_run = min(int(num_steps * strength), num_steps)
        if steps_run < 1:
            raise ValueError(f"strength={strength} of num_steps={num_steps} runs no step; raise strength to "
                             f"at least {1 / num_steps:.3g} or num_steps.")
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) not in (1, batch):
            raise ValueError(f"images must be (batch, height, width, 3) with 1 or {batch} images (one per prompt), "
                             f"got shape {images.shape}.")
        self._check_size(images.shape[1], images.shape[2])
        clean = self.image_latents(images)
        clean = np.repeat(clean, batch // len(clean), axis=0)
        noise = (np.random.default_rng(seed).standard_normal(clean.shape).astype("float32") if noise is None
                 else self._check_noise(noise, clean.shape))
        first_step = num_steps - steps_run
        return ops.convert_to_numpy(sampler.noise_to_step(clean, noise, first_step, num_steps)), first_step

    def denoising_step(self, scheduler, index, num_steps, latents, context, guidance_scale=None):
        """One step of the sampling walk: ``latents`` before step ``index`` of ``num_steps`` → after it.

        ``context`` is the encoded prompts; with a ``guidance_scale``, the encoded negative prompts
        followed by the prompts, and classifier-free guidance mixes the two predictions. ``generate``
        runs this step in its compiled loop; :func:`kcookbook.diffusion.denoising_trajectory` eagerly.
        """
        guided = guidance_scale is not None
        model_input = ops.concatenate([latents, latents], axis=0) if guided else latents
        model_input = scheduler.scale_model_input(model_input, index, num_steps)
        timestep = ops.take(ops.convert_to_tensor(scheduler.timesteps(num_steps).astype("float32")), index)
        prediction = self.backbone.predict_noise(
            model_input, ops.broadcast_to(timestep, (ops.shape(model_input)[0],)), context)
        if guided:
            unconditional, conditional = ops.split(prediction, 2, axis=0)
            prediction = classifier_free_guidance(unconditional, conditional, guidance_scale)
        return scheduler.step(prediction, index, latents, num_steps)

    def _sampling_loop(self, scheduler, num_steps, guided, first_step=0, decoder="vae"):
        backbone = self.backbone

        def loop(latents, context, guidance_scale):
            def body(index, latents):
                return self.denoising_step(scheduler, index, num_steps, latents, context,
                                           guidance_scale if guided else None)

            latents = ops.fori_loop(first_step, num_steps, body, latents)
            return ops.clip((backbone.decode_latents(latents, decoder) + 1.0) / 2.0, 0.0, 1.0)

        return loop

    def generate(self, prompts, num_steps=25, guidance_scale=7.5, seed=None, negative_prompts=None,
                 latents=None, scheduler="ddim", height=None, width=None, output="uint8", images=None,
                 strength=0.8, decoder="vae"):
        """Images for ``prompts``: uint8 (batch, height, width, 3) (``output="float"``: floats in [0, 1]).

        With ``images`` (image-to-image), each image's latents are noised part of the way (``strength``)
        and denoised towards its prompt: low strength keeps the picture, 1 ignores it.

        Args:
            prompts: a string or a list of strings.
            num_steps: denoising steps.
            guidance_scale: classifier-free guidance weight; at most 1 runs the prompt alone.
            seed: seed of the initial noise (numpy's generator) when ``latents`` is None.
            negative_prompts: what guidance steers away from (default: the empty prompt), one per prompt.
            latents: the initial noise, (batch, height/f, width/f, channels), channels last (with
                ``images``: the unit noise mixed into their latents).
            scheduler: ``"ddim"`` or ``"euler"``.
            height, width: image size when ``latents`` and ``images`` are None (default ``image_size``).
            images: uint8 (or 0-255 float) starting images (batch or 1, height, width, 3).
            strength: with ``images``, the fraction of the ``num_steps`` walk that runs, in (0, 1].
            decoder: ``"vae"``, or ``"tiny"``: TAESD for fast previews (``backbone.set_tiny_decoder``).
        """
        prompts = _texts(prompts, "prompts")
        if output not in ("uint8", "float"):
            raise ValueError(f"output must be 'uint8' or 'float', got {output!r}.")
        sampler = get_scheduler(scheduler, self.scheduler_config)
        sampler.check_steps(num_steps)
        self.backbone.check_decoder(decoder)
        guided = float(guidance_scale) > 1.0
        token_ids = self._token_ids(prompts)
        if guided:
            negative = _texts(negative_prompts if negative_prompts is not None else [""] * len(prompts),
                              "negative_prompts")
            if len(negative) != len(prompts):
                raise ValueError(f"negative_prompts has {len(negative)} entries for {len(prompts)} prompts; "
                                 "give one per prompt.")
            token_ids = np.concatenate([self._token_ids(negative), token_ids])
        context = self.backbone.encode_text(token_ids)
        if images is not None:
            if height is not None or width is not None:
                raise ValueError("height and width come from images in image-to-image; leave them None.")
            start, first_step = self._image_start(sampler, images, strength, num_steps, len(prompts), latents, seed)
        else:
            start = self._initial_latents(len(prompts), latents, seed, height, width)
            start, first_step = start * sampler.initial_noise_scale(num_steps), 0
        key = ("sample", scheduler, num_steps, first_step, guided, start.shape, tuple(token_ids.shape), decoder)
        run = self._generate_function(key, self._sampling_loop(sampler, num_steps, guided, first_step, decoder))
        images = ops.convert_to_numpy(run(start, context, np.float32(guidance_scale)))
        return images if output == "float" else np.round(images * 255).astype("uint8")

    # ----- training -----
    def compile(self, optimizer="auto", loss="auto", learning_rate=1e-4, **kwargs):
        """Adam(learning_rate) and mean squared error on the noise prediction by default."""
        optimizer = keras.optimizers.Adam(learning_rate) if optimizer == "auto" else optimizer
        super().compile(optimizer=optimizer, loss="mean_squared_error" if loss == "auto" else loss, **kwargs)

    def image_latents(self, images, batch_size=16):
        """uint8 (or 0-255 float) images (batch, H, W, 3) → scaled latents (the autoencoder's mean)."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (batch, height, width, 3), got shape {images.shape}.")
        check_finite("images", images)
        images = images.astype("float32") / 127.5 - 1.0
        return np.concatenate([ops.convert_to_numpy(self.backbone.encode_images(images[i:i + batch_size]))
                               for i in range(0, len(images), batch_size)])

    def fit(self, x=None, y=None, batch_size=8, epochs=1, caption_dropout=0.1, seed=None, **kwargs):
        """Train the UNet on ``x`` images (batch, H, W, 3) in 0-255 and ``y`` their captions (strings).

        Each epoch draws fresh timesteps and noise; ``caption_dropout`` of the captions become "".
        Returns a History whose ``history["loss"]`` has one value per epoch.
        """
        if y is None:
            raise ValueError("TextToImage.fit needs images as x and their captions as y.")
        captions = _texts(y, "y (the captions)")
        if not 0.0 <= caption_dropout < 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout!r}.")
        latents = self.image_latents(x)
        if len(latents) != len(captions):
            raise ValueError(f"{len(latents)} images but {len(captions)} captions; give one caption per image.")
        token_ids = self._token_ids(captions)
        empty = self._token_ids([""])[0]
        schedule = DDPMScheduler(**{k: v for k, v in self.scheduler_config.items()
                                    if k in DDPMScheduler().get_config()})
        rng = np.random.default_rng(seed)
        losses, history = [], None
        for _ in range(epochs):
            timesteps = rng.integers(0, schedule.num_train_timesteps, len(latents))
            noise = rng.standard_normal(latents.shape).astype("float32")
            noisy = ops.convert_to_numpy(schedule.add_noise(latents, noise, timesteps))
            target = ops.convert_to_numpy(schedule.training_target(latents, noise, timesteps))
            dropped = rng.random(len(latents)) < caption_dropout
            ids = np.where(dropped[:, None], empty[None, :], token_ids)
            inputs = {"latents": noisy, "timesteps": timesteps.astype("float32"), "token_ids": ids}
            history = super().fit(inputs, target, batch_size=batch_size, epochs=1, **kwargs)
            losses += history.history["loss"]
        history.history["loss"] = losses
        return history

    def get_config(self):
        return {**super().get_config(), "scheduler_config": dict(self.scheduler_config),
                "image_size": list(self.image_size)}
