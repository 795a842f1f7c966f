"""kcookbook.audio (speech from espeak-ng, noise at an SNR) and kcookbook.data.shakespeare_sentences:
what the speech recipe (recipes/audio/01_speech_to_text.ipynb) and tests/test_whisper.py build clips from.

espeak-ng is a Debian package (`make test-unit` installs it when missing)."""

import shutil

import numpy as np
import pytest

from kcookbook.audio import add_noise, speak
from kcookbook.data import shakespeare_sentences

pytestmark = pytest.mark.backend_independent  # numpy and a subprocess: no backend involved


def test_speak_gives_16khz_float32_speech_whose_length_follows_the_rate():
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: `make test-unit` installs it (apt-get install espeak-ng)")
    line = "Now is the winter of our discontent."
    slow, fast = speak(line, rate=120), speak(line, rate=360)
    assert slow.dtype == np.float32 and slow.ndim == 1
    assert 1.5 < len(slow) / len(fast) < 3.5  # three times the words per minute: about a third as long
    assert 1.0 < len(fast) / 16000 < len(slow) / 16000 < 6.0
    assert 0.05 < np.abs(slow).max() <= 1.0
    # The same speech at espeak-ng's own 22,050 Hz (not resampled): 16 kHz keeps its duration.
    native = speak(line, rate=120, sampling_rate=22050)
    assert abs(len(native) / 22050 - len(slow) / 16000) < 1e-3
    assert not np.array_equal(speak("Hello there.", voice="en-gb-scotland")[:4000],
                              speak("Hello there.", voice="en-us")[:4000])


def test_speak_names_what_is_wrong(monkeypatch):
    with pytest.raises(ValueError, match="voice='xx-nonexistent'.*espeak-ng --voices"):
        speak("hello", voice="xx-nonexistent")
    with pytest.raises(ValueError, match="rate=20 .*80"):
        speak("hello", rate=20)
    with pytest.raises(ValueError, match="non-empty string"):
        speak("  ")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="espeak-ng.*apt-get install espeak-ng"):
        speak("hello")


def test_add_noise_reaches_the_requested_signal_to_noise_ratio():
    t = np.arange(32000) / 16000
    clean = (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32")
    for snr in (20.0, 5.0, -5.0):
        noisy = add_noise(clean, snr, seed=1)
        noise = noisy.astype("float64") - clean
        measured = 10 * np.log10(np.mean(clean.astype("float64") ** 2) / np.mean(noise ** 2))
        assert noisy.dtype == np.float32 and abs(measured - snr) < 0.01
    np.testing.assert_array_equal(add_noise(clean, 10, seed=3), add_noise(clean, 10, seed=3))
    assert not np.array_equal(add_noise(clean, 10, seed=3), add_noise(clean, 10, seed=4))


def test_add_noise_refuses_silence_and_bad_arguments():
    with pytest.raises(ValueError, match="silent waveform"):
        add_noise(np.zeros(100, "float32"), 10)
    with pytest.raises(ValueError, match="1-D waveform.*shape \\(2, 3\\)"):
        add_noise(np.ones((2, 3)), 10)
    with pytest.raises(ValueError, match="snr_db.*nan"):
        add_noise(np.ones(10), float("nan"))


def test_shakespeare_sentences_are_whole_plain_sentences_in_bounds():
    sentences = shakespeare_sentences(["hamlet", "macbeth"], min_words=5, max_words=9)
    assert len(sentences) > 300 and len(set(sentences)) == len(sentences)
    assert "When shall we three meet again?" in sentences  # Macbeth, act 1 scene 1
    for sentence in sentences:
        assert 5 <= len(sentence.split()) <= 9, sentence
        assert sentence[0].isupper() and sentence[-1] in ".!?", sentence
        assert not any(c.isdigit() or c in "[]\"" for c in sentence), sentence
        assert "Ham." not in sentence and "--" not in sentence
    with pytest.raises(ValueError, match="hamlt.*hamlet"):
        shakespeare_sentences("hamlt")
