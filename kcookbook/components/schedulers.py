"""Diffusion noise schedules: DDPM's forward noising (training) and DDIM / Euler sampling steps.

A schedule of ``num_train_timesteps`` betas (``"scaled_linear"``: Stable Diffusion's, ``"linear"``:
DDPM's) gives ``alphas_cumprod[t]``, the fraction of signal left at step ``t``:

    noisy = sqrt(alphas_cumprod[t]) · clean + sqrt(1 - alphas_cumprod[t]) · noise     (add_noise)

The model predicts the noise (``"epsilon"``) or ``v = sqrt(ᾱ)·noise - sqrt(1-ᾱ)·clean``
(``"v_prediction"``, SD 2.x 768 px). A sampler picks ``num_steps`` of the training timesteps
(``timesteps(num_steps)``, numpy, fixed before the loop) and walks down them; ``step(model_output,
index, sample)`` is ``keras.ops`` only, with ``index`` (the position in the walk) a tensor, so a
compiled loop runs it. ``scale_model_input`` is what the model sees at that position.

* :class:`DDPMScheduler`: the schedule and ``add_noise`` (what training needs); ``training_target``.
* :class:`DDIMScheduler`: Song et al.'s deterministic step (eta = 0).
* :class:`EulerDiscreteScheduler`: Karras et al.'s Euler step in sigma = sqrt((1-ᾱ)/ᾱ).

:func:`classifier_free_guidance` mixes the unconditional and conditional predictions.
The numbers equal diffusers' ``DDIMScheduler`` / ``EulerDiscreteScheduler`` (the tests say so).

    >>> scheduler = DDIMScheduler(num_train_timesteps=1000)
    >>> scheduler.timesteps(4).tolist()
    [750, 500, 250, 0]
"""

import inspect

import numpy as np
from keras import ops

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


def classifier_free_guidance(unconditional, conditional, guidance_scale):
    """``unconditional + guidance_scale · (conditional - unconditional)``."""
    return unconditional + guidance_scale * (conditional - unconditional)


class DDPMScheduler:
    """The noise schedule shared by every sampler, and DDPM's forward process for training.

    Args:
        num_train_timesteps: steps of the training schedule (1000).
        beta_start, beta_end: first and last beta.
        beta_schedule: ``"scaled_linear"`` (linear in sqrt(beta): Stable Diffusion) or ``"linear"``.
        prediction_type: what the model predicts, ``"epsilon"`` or ``"v_prediction"``.
        timestep_spacing: how sampling picks timesteps: ``"leading"`` (0, k, 2k…, plus
            ``steps_offset``), ``"linspace"`` (evenly from 0 to T-1) or ``"trailing"`` (from T-1 down).
        steps_offset: added to ``"leading"`` timesteps (1 in Stable Diffusion's config).
    """

    default_spacing = "leading"

    def __init__(self, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", prediction_type="epsilon", timestep_spacing=None,
                 steps_offset=0):
        timestep_spacing = timestep_spacing or self.default_spacing
        for name, value, allowed in (("beta_schedule", beta_schedule, BETA_SCHEDULES),
                                     ("prediction_type", prediction_type, PREDICTION_TYPES),
                                     ("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)):
            if value not in allowed:
                raise ValueError(f"{type(self).__name__}: {name}={value!r} is not supported; use one of "
                                 f"{', '.join(allowed)}.")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or \
                not 1 <= num_train_timesteps <= 100_000:
            raise ValueError(f"{type(self).__name__}: num_train_timesteps must be an integer in [1, 100000], "
                             f"got {num_train_timesteps!r}.")
        self.num_train_timesteps = num_train_timesteps
        self.beta_start, self.beta_end, self.beta_schedule = beta_start, beta_end, beta_schedule
        self.prediction_type, self.timestep_spacing, self.steps_offset = prediction_type, timestep_spacing, steps_offset
        if beta_schedule == "linear":
            betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
        else:
            betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float32) ** 2
        self.alphas_cumprod = np.cumprod(1.0 - betas, axis=0).astype(np.float32)

    def get_config(self):
        return {"num_train_timesteps": self.num_train_timesteps, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "beta_schedule": self.beta_schedule,
                "prediction_type": self.prediction_type, "timestep_spacing": self.timestep_spacing,
                "steps_offset": self.steps_offset}

    # ----- training -----
    def _signal_and_noise_scales(self, timesteps, like):
        alphas = ops.take(ops.convert_to_tensor(self.alphas_cumprod), ops.cast(timesteps, "int32"))
        alphas = ops.reshape(ops.cast(alphas, like.dtype), (-1,) + (1,) * (len(like.shape) - 1))
        return ops.sqrt(alphas), ops.sqrt(1.0 - alphas)

    def add_noise(self, clean, noise, timesteps):
        """``sqrt(ᾱ_t)·clean + sqrt(1-ᾱ_t)·noise`` for integer ``timesteps`` (batch,)."""
        signal, noise_scale = self._signal_and_noise_scales(timesteps, clean)
        return signal * clean + noise_scale * noise

    def training_target(self, clean, noise, timesteps):
        """What the model should predict: the noise, or v."""
        if self.prediction_type == "epsilon":
            return noise
        signal, noise_scale = self._signal_and_noise_scales(timesteps, clean)
        return signal * noise - noise_scale * clean

    # ----- sampling -----
    def check_steps(self, num_steps):
        """Refuse a number of sampling steps the schedule cannot give."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or \
                not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"num_steps must be an integer in [1, {self.num_train_timesteps}] (the training "
                             f"schedule's length), got {num_steps!r}.")

    def _spaced_timesteps(self, num_steps):
        self.check_steps(num_steps)
        total = self.num_train_timesteps
        if self.timestep_spacing == "leading":
            return (np.arange(num_steps) * (total // num_steps)).round()[::-1] + self.steps_offset
        if self.timestep_spacing == "linspace":
            return np.linspace(0, total - 1, num_steps)[::-1]
        return np.round(np.arange(total, 0, -total / num_steps)) - 1

    def initial_noise_scale(self, num_steps):
        """What unit Gaussian noise is multiplied by to start sampling."""
        return 1.0

    def scale_model_input(self, sample, index, num_steps):
        return sample

    def noise_to_step(self, clean, noise, index, num_steps):
        """``clean`` noised to the level of the walk's step ``index`` (image-to-image's starting point)."""
        clean, noise = ops.convert_to_tensor(clean), ops.convert_to_tensor(noise)
        return self.add_noise(clean, noise, np.full((clean.shape[0],), self.timesteps(num_steps)[index]))


class DDIMScheduler(DDPMScheduler):
    """Deterministic DDIM sampling (eta = 0).

    Args (beyond :class:`DDPMScheduler`'s):
        clip_sample: clip the predicted clean sample to ``[-clip_sample_range, clip_sample_range]``.
        set_alpha_to_one: the last step lands on ᾱ = 1 (else on ᾱ_0).
    """

    def __init__(self, num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", timestep_spacing=None, steps_offset=0, clip_sample=True,
                 clip_sample_range=1.0, set_alpha_to_one=True):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type,
                         timestep_spacing, steps_offset)
        self.clip_sample, self.clip_sample_range, self.set_alpha_to_one = clip_sample, clip_sample_range, set_alpha_to_one

    def get_config(self):
        return {**super().get_config(), "clip_sample": self.clip_sample,
                "clip_sample_range": self.clip_sample_range, "set_alpha_to_one": self.set_alpha_to_one}

    def timesteps(self, num_steps):
        """The ``num_steps`` training timesteps the walk visits, from noisiest (int64 numpy)."""
        return np.round(self._spaced_timesteps(num_steps)).astype(np.int64)

    def _alpha_tables(self, num_steps):
        """ᾱ at each visited timestep and at the one after it (numpy float32, (num_steps,) each)."""
        timesteps = self.timesteps(num_steps)
        previous = timesteps - self.num_train_timesteps // num_steps
        final = 1.0 if self.set_alpha_to_one else self.alphas_cumprod[0]
        alpha_previous = np.where(previous >= 0, self.alphas_cumprod[np.clip(previous, 0, None)], final)
        return self.alphas_cumprod[timesteps], alpha_previous.astype(np.float32)

    def step(self, model_output, index, sample, num_steps):
        """The sample at the next timestep, from the model's output at position ``index``."""
        model_output, sample = ops.convert_to_tensor(model_output), ops.convert_to_tensor(sample)
        alpha_table, previous_table = self._alpha_tables(num_steps)
        alpha = ops.cast(ops.take(ops.convert_to_tensor(alpha_table), index), sample.dtype)
        alpha_previous = ops.cast(ops.take(ops.convert_to_tensor(previous_table), index), sample.dtype)
        beta = 1.0 - alpha
        if self.prediction_type == "epsilon":
            clean = (sample - ops.sqrt(beta) * model_output) / ops.sqrt(alpha)
            noise = model_output
        else:
            clean = ops.sqrt(alpha) * sample - ops.sqrt(beta) * model_output
            noise = ops.sqrt(alpha) * model_output + ops.sqrt(beta) * sample
        if self.clip_sample:
            clean = ops.clip(clean, -self.clip_sample_range, self.clip_sample_range)
        return ops.sqrt(alpha_previous) * clean + ops.sqrt(1.0 - alpha_previous) * noise


class EulerDiscreteScheduler(DDPMScheduler):
    """Euler steps in sigma = sqrt((1-ᾱ)/ᾱ), sigmas interpolated at the visited timesteps, ending at 0."""

    default_spacing = "linspace"

    def timesteps(self, num_steps):
        """The (float) training timesteps the walk visits, from noisiest (float32 numpy)."""
        return self._spaced_timesteps(num_steps).astype(np.float32)

    def sigmas(self, num_steps):
        """(num_steps + 1,) float32: sigma at each visited timestep, then 0."""
        table = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        sigmas = np.interp(self.timesteps(num_steps), np.arange(len(table)), table)
        return np.concatenate([sigmas, [0.0]]).astype(np.float32)

    def initial_noise_scale(self, num_steps):
        largest = float(self.sigmas(num_steps).max())
        return largest if self.timestep_spacing in ("linspace", "trailing") else (largest ** 2 + 1) ** 0.5

    def _sigma(self, index, num_steps, dtype, offset=0):
        return ops.cast(ops.take(ops.convert_to_tensor(self.sigmas(num_steps)), index + offset), dtype)

    def scale_model_input(self, sample, index, num_steps):
        """``sample / sqrt(sigma² + 1)``: the variance-preserving input the model was trained on."""
        sample = ops.convert_to_tensor(sample)
        sigma = self._sigma(index, num_steps, sample.dtype)
        return sample / ops.sqrt(sigma ** 2 + 1.0)

    def noise_to_step(self, clean, noise, index, num_steps):
        """``clean + sigma·noise`` with the sigma of the walk's step ``index``."""
        return clean + float(self.sigmas(num_steps)[index]) * noise

    def step(self, model_output, index, sample, num_steps):
        model_output, sample = ops.convert_to_tensor(model_output), ops.convert_to_tensor(sample)
        sigma = self._sigma(index, num_steps, sample.dtype)
        sigma_next = self._sigma(index, num_steps, sample.dtype, offset=1)
        if self.prediction_type == "epsilon":
            clean = sample - sigma * model_output
        else:
            clean = model_output * (-sigma / ops.sqrt(sigma ** 2 + 1)) + sample / (sigma ** 2 + 1)
        derivative = (sample - clean) / sigma
        return sample + derivative * (sigma_next - sigma)


SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}


def get_scheduler(name, config):
    """The sampling scheduler ``name`` (``"ddim"``, ``"euler"``) on a schedule ``config`` (a dict of
    :class:`DDPMScheduler`'s fields and the sampler's own; fields the sampler lacks are ignored)."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not one kcookbook has; use one of {', '.join(SCHEDULERS)}.")
    cls = SCHEDULERS[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in config.items() if k in accepted})
