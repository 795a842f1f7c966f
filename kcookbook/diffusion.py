"""What the diffusion recipes look at besides the final image: the denoising trajectory.

``TextToImage.generate`` runs its whole sampling loop compiled and returns only the end.
:func:`denoising_trajectory` walks the same loop one step at a time, eagerly: the same
``TextToImage.denoising_step`` with the task's scheduler config, text encoder and decoder. It
keeps the decoded image before every step and after the last one, so a recipe can show noise
turning into a picture. Its last frame is what ``generate`` returns for the same arguments (the
tests check it).
"""

import numpy as np
from keras import ops

from kcookbook.components.schedulers import get_scheduler


def denoising_trajectory(model, prompts, num_steps=10, guidance_scale=1.0, seed=None, scheduler="ddim",
                         height=None, width=None):
    """Images along the sampling walk of a :class:`~kcookbook.tasks.TextToImage` ``model``.

    Args:
        model: a ``TextToImage`` (with its preprocessor).
        prompts: a string or a list of strings.
        num_steps, guidance_scale, seed, scheduler, height, width: as in ``model.generate`` (the
            negative prompt is the empty one).

    Returns:
        float32 numpy (num_steps + 1, batch, height, width, 3) in [0, 1]: frame ``i`` is the
        decoded sample before step ``i`` (frame 0: the starting noise), the last frame the result.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    sampler = get_scheduler(scheduler, model.scheduler_config)
    sampler.check_steps(num_steps)
    guided = float(guidance_scale) > 1.0
    texts = ([""] * len(prompts) if guided else []) + prompts
    context = model.backbone.encode_text(np.asarray(model.preprocessor(texts)["token_ids"], "int32"))
    height, width = height or model.image_size[0], width or model.image_size[1]
    factor = model.backbone.downsampling_factor
    channels = model.backbone.unet.get_config()["in_channels"]
    latents = np.random.default_rng(seed).standard_normal(  # the noise generate draws for this seed
        (len(prompts), height // factor, width // factor, channels)).astype("float32")
    latents = ops.convert_to_tensor(latents * sampler.initial_noise_scale(num_steps))

    def decoded(latents):
        return ops.convert_to_numpy(ops.clip((model.backbone.decode_latents(latents) + 1.0) / 2.0, 0.0, 1.0))

    frames = [decoded(latents / sampler.initial_noise_scale(num_steps))]
    for index in range(num_steps):
        latents = model.denoising_step(sampler, index, num_steps, latents, context,
                                       guidance_scale if guided else None)
        frames.append(decoded(latents))
    return np.stack(frames).astype("float32")
