"""Audio → log-mel spectrogram frames, the input of speech models (Whisper's recipe by default).

    waveform (16 kHz float) → pad with zeros or cut to ``max_audio_length`` seconds
      → short-time Fourier transform: periodic Hann window of ``num_fft`` samples every
        ``hop_length`` samples, centred (reflect-padded by ``num_fft // 2``), the last frame dropped
      → power spectrum → ``num_mels`` triangular mel filters (Slaney scale and area norm, 0-8 kHz)
      → log10 (floored at 1e-10) → floored at the maximum - 8 → ``(x + 4) / 4``
      → (frames, num_mels): 3000 × 80 for 30 s

The numbers equal transformers' ``WhisperFeatureExtractor`` (within 1e-4); numpy only, so it runs
eagerly and inside ``tf.data`` through a preprocessor's ``tf.numpy_function`` bridge.

    >>> converter = LogMelSpectrogram(max_audio_length=1)
    >>> converter([np.zeros(8000, "float32")]).shape
    (1, 100, 80)
"""

import numpy as np


def hertz_to_mel(hertz):
    """Slaney's mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    hertz = np.asarray(hertz, "float64")
    log_step = np.log(6.4) / 27.0
    return np.where(hertz < 1000.0, 3.0 * hertz / 200.0, 15.0 + np.log(np.maximum(hertz, 1e-10) / 1000.0) / log_step)


def mel_to_hertz(mels):
    mels = np.asarray(mels, "float64")
    log_step = np.log(6.4) / 27.0
    return np.where(mels < 15.0, 200.0 * mels / 3.0, 1000.0 * np.exp(log_step * (mels - 15.0)))


def mel_filter_bank(num_frequency_bins, num_mels, sampling_rate, max_frequency=None):
    """``(num_frequency_bins, num_mels)`` triangular filters, Slaney-normalised (equal area)."""
    max_frequency = sampling_rate / 2 if max_frequency is None else max_frequency
    edges = mel_to_hertz(np.linspace(hertz_to_mel(0.0), hertz_to_mel(max_frequency), num_mels + 2))
    frequencies = np.linspace(0, sampling_rate / 2, num_frequency_bins)
    slopes = edges[None, :] - frequencies[:, None]
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


class LogMelSpectrogram:
    """Waveforms → log-mel frames ``(batch, frames, num_mels)`` float32.

    Args:
        num_mels: mel bins (80; Whisper large-v3: 128).
        sampling_rate: the waveforms' rate in Hz (16,000); audio at another rate must be resampled
            first.
        num_fft, hop_length: window and stride of the short-time Fourier transform, in samples.
        max_audio_length: seconds every waveform is padded or cut to (30).
    """

    def __init__(self, num_mels=80, sampling_rate=16000, num_fft=400, hop_length=160, max_audio_length=30):
        self.num_mels = num_mels
        self.sampling_rate = sampling_rate
        self.num_fft = num_fft
        self.hop_length = hop_length
        self.max_audio_length = max_audio_length
        self.num_samples = int(max_audio_length * sampling_rate)
        self.num_frames = self.num_samples // hop_length
        self.filters = mel_filter_bank(num_fft // 2 + 1, num_mels, sampling_rate, 8000.0)
        # Periodic Hann window (torch.hann_window's default).
        self.window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(num_fft) / num_fft)

    def check_waveform(self, waveform, index=0):
        array = np.asarray(waveform)
        if array.ndim != 1 or array.dtype.kind not in "fiu":
            raise ValueError(f"Audio {index} must be a 1-D array of samples at {self.sampling_rate} Hz, got "
                             f"shape {array.shape} of {array.dtype}. Pass mono audio (average the channels).")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"Audio {index} holds NaN or infinite samples.")
        return array.astype("float64")

    def frames(self, waveform):
        """One waveform → ``(frames, num_mels)``."""
        audio = np.zeros(self.num_samples)
        samples = waveform[:self.num_samples]
        audio[:len(samples)] = samples
        half = self.num_fft // 2
        padded = np.pad(audio, (half, half), mode="reflect")
        count = 1 + (len(padded) - self.num_fft) // self.hop_length
        starts = np.arange(count) * self.hop_length
        windows = padded[starts[:, None] + np.arange(self.num_fft)[None, :]] * self.window
        power = np.abs(np.fft.rfft(windows, axis=-1)) ** 2
        log_mel = np.log10(np.maximum(power @ self.filters, 1e-10))[:-1]
        log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
        return ((log_mel + 4.0) / 4.0).astype("float32")

    def __call__(self, waveforms):
        """A waveform or a list of them → ``(batch, frames, num_mels)`` float32 (batch 1 for one)."""
        if isinstance(waveforms, np.ndarray) and waveforms.ndim == 1:
            waveforms = [waveforms]
        checked = [self.check_waveform(w, i) for i, w in enumerate(waveforms)]
        if not checked:
            return np.zeros((0, self.num_frames, self.num_mels), "float32")
        return np.stack([self.frames(w) for w in checked])

    def get_config(self):
        return {"num_mels": self.num_mels, "sampling_rate": self.sampling_rate, "num_fft": self.num_fft,
                "hop_length": self.hop_length, "max_audio_length": self.max_audio_length}
