"""SpeechToText: audio in, text out, on an encoder-decoder over log-mel frames (Whisper).

    >>> model = SpeechToText.from_preset("whisper_base")  # doctest: +SKIP
    >>> model.generate([waveform_16khz], language="en", task="transcribe")  # doctest: +SKIP
    ['The quick brown fox jumps over the lazy dog.']

* ``generate(audio_arrays)``: float 16 kHz waveforms → strings. Audio longer than the model's window
  (30 s) is cut into consecutive windows, transcribed in one batch, and the pieces joined. The
  decoder starts from the tokenizer's prompt (``<|startoftranscript|><|en|><|transcribe|>
  <|notimestamps|>``); the generation config's suppressed tokens are never produced and its
  begin-suppressed tokens (a space, the end) never come first. Greedy by default; every sampler of
  ``Seq2SeqLM`` works, in the same compiled loop.
* Called on preprocessed inputs — keras_hub Whisper's names: ``encoder_features`` (batch, frames,
  mel bins), ``decoder_token_ids``, ``decoder_padding_mask`` — it returns logits; ``generate`` on such
  a dict (with a ``decoder_token_ids`` prompt) returns token ids.
* ``fit((audio_arrays, texts))`` (or ``fit(audio_arrays, texts)``): teacher forcing on the prompt
  and the transcript; the loss counts the transcript and its end token only.
"""

import keras
import numpy as np
from keras import ops

from kcookbook.backbones.seq2seq import Seq2SeqBackbone
from kcookbook.components.causal_attention import MASKED
from kcookbook.components.log_mel import LogMelSpectrogram
from kcookbook.tasks.seq2seq_lm import InputsTargetsPreprocessor, Seq2SeqLM

FEATURES = "encoder_features"


@keras.saving.register_keras_serializable(package="kcookbook")
class SpeechToTextPreprocessor(InputsTargetsPreprocessor):
    """``(audio, texts)`` → log-mel ``encoder_features``, decoder ids, labels and label weights.

    The decoder reads ``prompt + text`` and learns ``text + end`` (after the prompt), packed to
    ``decoder_sequence_length``; without texts the decoder gets the prompt alone.

    Args:
        tokenizer: a ``WhisperTokenizer`` (``prompt_ids``, ``end_token_id``, suppressed tokens).
        audio_converter: a ``LogMelSpectrogram`` (default: 80 bins, 16 kHz, 30 s), or its settings.
        decoder_sequence_length: decoder tokens in training (longer transcripts are cut).
        language, task: the prompt of training and of ``generate``'s default.
    """

    output_names = (FEATURES, "decoder_token_ids", "decoder_padding_mask", "labels", "label_weights")

    def __init__(self, tokenizer, audio_converter=None, decoder_sequence_length=64, language="en",
                 task="transcribe"):
        super().__init__(tokenizer, decoder_sequence_length)
        if isinstance(audio_converter, dict):
            audio_converter = LogMelSpectrogram(**audio_converter)
        self.audio_converter = audio_converter or LogMelSpectrogram()
        self.decoder_sequence_length = decoder_sequence_length
        self.language = language
        self.task = task
        tokenizer.prompt_ids(language, task)  # refuses an unknown language or task now

    def output_spec(self, name):
        if name == FEATURES:
            return "float32", (self.audio_converter.num_frames, self.audio_converter.num_mels)
        return ("float32" if name == "label_weights" else "int32"), self.decoder_sequence_length

    def numpy_call(self, segments):
        if len(segments) not in (1, 2):
            raise ValueError("SpeechToTextPreprocessor takes (audio, texts) to learn, or audio alone; got "
                             f"{len(segments)} segments.")
        features = self.audio_converter(segments[0])
        batch = len(features)
        targets = self.encode_texts(segments[1]) if len(segments) == 2 else [[]] * batch
        if len(targets) != batch:
            raise ValueError(f"{batch} audio arrays but {len(targets)} texts: give one text per audio.")
        prompt = self.tokenizer.prompt_ids(self.language, self.task)
        end = [self.tokenizer.end_token_id] if len(segments) == 2 else []
        length = self.decoder_sequence_length + 1
        ids = np.full((batch, length), self.tokenizer.pad_token_id, "int32")
        mask = np.zeros((batch, length), "int32")
        learned = np.zeros((batch, length), "float32")
        for row, target in enumerate(targets):
            sequence = (prompt + list(target) + end)[:length]
            ids[row, :len(sequence)], mask[row, :len(sequence)] = sequence, 1
            learned[row, len(prompt):len(sequence)] = 1.0
        return {FEATURES: features, "decoder_token_ids": ids[:, :-1], "decoder_padding_mask": mask[:, :-1],
                "labels": ids[:, 1:], "label_weights": learned[:, 1:]}

    def windows(self, waveform):
        """A waveform cut into consecutive windows of the converter's length (at least one)."""
        samples = self.audio_converter.num_samples
        waveform = np.asarray(waveform)
        return [waveform[start:start + samples] for start in range(0, max(len(waveform), 1), samples)]

    def get_config(self):
        return {"tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
                "audio_converter": self.audio_converter.get_config(),
                "decoder_sequence_length": self.decoder_sequence_length, "language": self.language,
                "task": self.task}


@keras.saving.register_keras_serializable(package="kcookbook")
class SpeechToText(Seq2SeqLM):
    """An encoder-decoder over audio features with its output layer: decoder logits.

    Args:
        backbone: a ``Seq2SeqBackbone`` whose encoder reads ``encoder_features`` (``WhisperBackbone``).
        preprocessor: a ``SpeechToTextPreprocessor``, or None to feed features and token ids.
    """

    preprocessor_cls = SpeechToTextPreprocessor

    def __init__(self, backbone, preprocessor=None, name="speech_to_text", **kwargs):
        if not isinstance(backbone, Seq2SeqBackbone) or FEATURES not in backbone.input:
            raise TypeError(f"SpeechToText needs an encoder-decoder backbone reading {FEATURES} "
                            f"(WhisperBackbone), got {type(backbone).__name__}.")
        super().__init__(backbone, preprocessor, name=name, **kwargs)
        self._first_generated = None

    def generate(self, inputs, language=None, task=None, max_length=None, sampler="greedy",
                 stop_token_ids="auto", seed=0):
        """Transcribe (or translate) audio.

        Args:
            inputs: a list of 1-D float waveforms at 16 kHz (one waveform alone gives one string),
                or a dict of ``encoder_features`` and a ``decoder_token_ids`` prompt (ids back).
            language, task: the prompt (default: the preprocessor's, ``"en"``/``"transcribe"``);
                ``language=None`` with ``task=None`` keeps the preprocessor's.
            max_length: decoder length per 30 s window, prompt included (default: the backbone's
                ``max_sequence_length``, 448 for Whisper).
            sampler, stop_token_ids, seed: as ``Seq2SeqLM.generate``.
        """
        max_length = self.backbone.max_sequence_length if max_length is None else max_length
        if isinstance(inputs, dict):
            prompt = np.asarray(inputs.get("decoder_token_ids", [[0]]))
            self._first_generated = prompt.shape[1] if self.preprocessor is not None else None
            return super().generate(inputs, max_length, sampler, stop_token_ids, seed)
        if self.preprocessor is None:
            raise ValueError("SpeechToText has no preprocessor, so generate takes a dict of "
                             f"{FEATURES} and decoder_token_ids, not audio.")
        single = isinstance(inputs, np.ndarray) and inputs.ndim == 1
        waveforms = [inputs] if single else list(inputs)
        if not waveforms:
            raise ValueError("generate got no audio: pass at least one waveform.")
        pre = self.preprocessor
        for index, waveform in enumerate(waveforms):
            pre.audio_converter.check_waveform(waveform, index)
        windows = [pre.windows(w) for w in waveforms]
        features = pre.audio_converter([piece for pieces in windows for piece in pieces])
        prompt = pre.tokenizer.prompt_ids(language or pre.language, task or pre.task)
        self._first_generated = len(prompt)
        out = super().generate({FEATURES: features, "decoder_token_ids": [prompt] * len(features)},
                               max_length, sampler, stop_token_ids, seed)
        mask = out["decoder_padding_mask"].astype(bool)
        mask[:, :len(prompt)] = False
        pieces = pre.tokenizer.decode_batch([ids[keep] for ids, keep in zip(out["decoder_token_ids"], mask)],
                                            skip_special_tokens=True)
        texts, start = [], 0
        for count in map(len, windows):
            texts.append(" ".join(p.strip() for p in pieces[start:start + count] if p.strip()))
            start += count
        return texts[0] if single else texts

    def _generate_function(self, key, loop):
        return super()._generate_function(tuple(key) + (self._first_generated,), loop)

    def next_token_logits(self, logits, index):
        """The tokenizer's suppressed tokens get no probability; its begin-suppressed tokens none as
        the first token after the prompt."""
        tokenizer = None if self.preprocessor is None else self.preprocessor.tokenizer
        if tokenizer is None:
            return logits
        vocabulary = logits.shape[-1]

        def mask(ids):
            ids = [i for i in ids if i < vocabulary]
            hits = np.zeros((vocabulary,), "float32")
            hits[ids] = MASKED
            return ops.convert_to_tensor(hits)

        logits = logits + mask(tokenizer.suppress_token_ids)[None, :]
        if self._first_generated is not None and tokenizer.begin_suppress_token_ids:
            first = ops.equal(ops.cast(index, "int32") + 1, self._first_generated)
            logits = logits + ops.where(first, mask(tokenizer.begin_suppress_token_ids), 0.0)[None, :]
        return logits
