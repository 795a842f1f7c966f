"""Speech for recipes and tests, made offline: text spoken by espeak-ng, and noise at a chosen SNR.

    >>> clip = speak("To be, or not to be.", rate=160)  # float32, 16 kHz, mono
    >>> noisy = add_noise(clip, snr_db=10, seed=0)     # white noise 10 dB below the speech
    >>> clip.dtype, noisy.shape == clip.shape
    (dtype('float32'), True)

espeak-ng is a formant synthesiser from Debian's packages (``apt-get install espeak-ng``; in Colab
``!apt-get -qq install espeak-ng``): robotic but intelligible, deterministic, with many voices
(``espeak-ng --voices=en``) and a speaking rate in words per minute.
"""

import io
import math
import shutil
import subprocess
import wave

import numpy as np

ESPEAK_INSTALL = "apt-get install espeak-ng (in Colab: !apt-get -qq install espeak-ng)"
ESPEAK_RATES = (80, 450)  # words per minute espeak-ng accepts


def speak(text, rate=160, voice="en-us", sampling_rate=16000):
    """``text`` spoken by espeak-ng, as a 1-D float32 waveform in [-1, 1] at ``sampling_rate`` Hz.

    Args:
        text: what to say (espeak-ng reads numbers as words: "1605" is "sixteen hundred and five").
        rate: speaking rate in words per minute (espeak-ng's ``-s``, 80-450; 175 is its default).
        voice: an espeak-ng voice (``en-us``, ``en-gb-scotland``, ...; ``espeak-ng --voices`` lists them).
        sampling_rate: the rate of the returned samples (espeak-ng speaks at 22,050 Hz; resampled).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"speak needs a non-empty string to say, got {text!r}.")
    if not ESPEAK_RATES[0] <= rate <= ESPEAK_RATES[1]:
        raise ValueError(f"rate={rate} words per minute is outside espeak-ng's range {ESPEAK_RATES}.")
    if shutil.which("espeak-ng") is None:
        raise RuntimeError(f"speak needs the espeak-ng program, which is not installed: {ESPEAK_INSTALL}.")
    result = subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(rate)), "--stdout"],
                            input=text.encode(), capture_output=True)  # text on stdin: never an option
    if result.returncode or not result.stdout:
        message = result.stderr.decode(errors="replace").strip()
        raise ValueError(f"espeak-ng could not speak with voice={voice!r}: {message or 'no audio'}. "
                         "`espeak-ng --voices=en` lists the English voices.")
    with wave.open(io.BytesIO(result.stdout)) as file:
        source_rate = file.getframerate()
        samples = np.frombuffer(file.readframes(file.getnframes()), "<i2").astype("float32") / 32768
    if source_rate == sampling_rate:
        return samples
    from scipy.signal import resample_poly

    divisor = math.gcd(source_rate, sampling_rate)
    return resample_poly(samples, sampling_rate // divisor, source_rate // divisor).astype("float32")


def add_noise(waveform, snr_db, seed=0):
    """``waveform`` plus white Gaussian noise whose power is ``snr_db`` decibels below the waveform's.

    The signal-to-noise ratio is ``10 * log10(mean(waveform**2) / mean(noise**2))``: 20 dB is faint
    hiss, 0 dB noise as loud as the speech. The result is float32, not clipped.
    """
    waveform = np.asarray(waveform, "float32")
    if waveform.ndim != 1 or not waveform.size:
        raise ValueError(f"add_noise takes a 1-D waveform, got shape {waveform.shape}.")
    if not np.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of decibels, got {snr_db!r}.")
    power = float(np.mean(np.square(waveform, dtype="float64")))
    if power == 0.0:
        raise ValueError("add_noise got a silent waveform (all zeros): its signal-to-noise ratio is undefined.")
    noise = np.random.default_rng(seed).standard_normal(waveform.size)
    noise *= math.sqrt(power / 10 ** (snr_db / 10) / np.mean(np.square(noise)))
    return (waveform + noise).astype("float32")
