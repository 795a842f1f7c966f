"""Whisper (Radford et al., 2022): speech recognition as an encoder-decoder over log-mel spectrograms.

    encoder_features (batch, frames, num_mel_bins): 30 s of 16 kHz audio = 3000 frames
      → conv (kernel 3, stride 1) → GELU → conv (kernel 3, stride 2) → GELU   (frames / 2)
      → + sinusoidal positions (a fixed table, stored with the weights)
      → num_layers × encoder block: LayerNorm → self-attention → residual,
                                     LayerNorm → feed-forward (GELU) → residual
      → LayerNorm → encoder output (batch, frames / 2, hidden_dim)
    decoder_token_ids, decoder_padding_mask
      → token embedding + learned positions
      → num_decoder_layers × decoder block: causal self-attention, cross-attention over the encoder
                                             output, feed-forward (pre-LayerNorm, residuals)
      → LayerNorm → decoder output → logits: the token embedding transposed (tied)

Every projection has a bias except the keys (Hugging Face's ``k_proj`` has none; here keys and values
share one fused kernel whose key half of the bias stays zero on conversion — a key bias adds the same
amount to every score of a query, so softmax ignores it). Attention scores are scaled by
``head_dim ** -0.5``; the convolutions pad one frame on each side, as PyTorch's ``padding=1``.

The inputs are named as keras_hub's ``WhisperBackbone``: ``encoder_features``, ``decoder_token_ids``,
``decoder_padding_mask``. :class:`WhisperTokenizer` is the tokenizer with Whisper's special tokens
(the prompt ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``) and the tokens its
generation config suppresses. ``kcookbook.tasks.SpeechToText`` adds audio in, text out.

    >>> backbone = WhisperBackbone(vocabulary_size=60, num_layers=1, num_heads=2, hidden_dim=8,
    ...                            intermediate_dim=16, num_mel_bins=4, max_source_positions=5,
    ...                            max_sequence_length=6)
    >>> out = backbone({"encoder_features": np.zeros((1, 10, 4), "float32"),
    ...                 "decoder_token_ids": np.zeros((1, 3), "int32"),
    ...                 "decoder_padding_mask": np.ones((1, 3), "int32")})
    >>> tuple(out["encoder_sequence_output"].shape), tuple(out["decoder_sequence_output"].shape)
    ((1, 5, 8), (1, 3, 8))
"""

import json
import os

import keras
import numpy as np
from keras import ops

from kcookbook.backbones.backbone import check_backbone_config
from kcookbook.backbones.seq2seq import Seq2SeqBackbone
from kcookbook.components.embeddings import PositionEmbedding, ReversibleEmbedding
from kcookbook.components.encoder_decoder_block import EncoderDecoderBlock
from kcookbook.components.hf_tokenizer import HuggingFaceTokenizer
from kcookbook.components.torch_speedups import KERAS_CALLS


def sinusoids(length, channels, max_timescale=10000):
    """Whisper's fixed encoder positions ``(length, channels)``: sines then cosines of
    ``position / max_timescale ** (i / (channels / 2 - 1))``."""
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inverse = np.exp(-increment * np.arange(channels // 2))
    angles = np.arange(length)[:, None] * inverse[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype("float32")


@keras.saving.register_keras_serializable(package="kcookbook")
class SinusoidInitializer(keras.initializers.Initializer):
    """Initialises a ``(length, channels)`` table with :func:`sinusoids`."""

    def __call__(self, shape, dtype=None):
        return ops.convert_to_tensor(sinusoids(*shape), dtype=dtype)


@keras.saving.register_keras_serializable(package="kcookbook")
class WhisperBackbone(Seq2SeqBackbone):
    """Whisper encoder-decoder.

    Args:
        vocabulary_size: rows of the token embedding (51,865 multilingual, 51,864 English-only).
        num_layers: encoder blocks; ``num_decoder_layers``: decoder blocks (default: the same).
        num_heads: attention heads (encoder and decoder); head width ``hidden_dim // num_heads``.
        hidden_dim: width of the hidden states (``d_model``).
        intermediate_dim: feed-forward width.
        num_mel_bins: channels of ``encoder_features`` (80; 128 for large-v3).
        max_source_positions: the encoder position table (1500: 3000 frames after the stride-2 conv).
        max_sequence_length: the decoder position table (448), the longest decoder sequence.
        decoder_start_token_id: ``<|startoftranscript|>`` (50258).
        layer_norm_epsilon: epsilon of every LayerNorm.
        dropout: dropout rate in training.
        dtype: dtype policy.
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 num_decoder_layers=None, num_mel_bins=80, max_source_positions=1500,
                 max_sequence_length=448, decoder_start_token_id=50258, layer_norm_epsilon=1e-5,
                 dropout=0.0, dtype=None, name="whisper_backbone", **kwargs):
        check_backbone_config(self, locals())
        num_decoder_layers = num_decoder_layers or num_layers
        block = {"num_heads": num_heads, "head_dim": hidden_dim // num_heads,
                 "intermediate_dim": intermediate_dim, "activation": "gelu", "normalization": "layer",
                 "norm_epsilon": layer_norm_epsilon, "use_bias": True, "dropout": dropout,
                 "dtype": dtype}

        def conv(name, strides):
            return keras.layers.Conv1D(hidden_dim, 3, strides=strides, padding="valid", dtype=dtype,
                                       name=name)

        def norm(name):
            return keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype, name=name)

        layers = {
            "conv1": conv("conv1", 1),
            "conv2": conv("conv2", 2),
            "encoder_position_embedding": PositionEmbedding(
                max_source_positions, initializer=SinusoidInitializer(), trainable=False, dtype=dtype,
                name="encoder_position_embedding"),
            "token_embedding": ReversibleEmbedding(vocabulary_size, hidden_dim, dtype=dtype,
                                                   name="token_embedding"),
            "decoder_position_embedding": PositionEmbedding(max_sequence_length, dtype=dtype,
                                                            name="decoder_position_embedding"),
            "encoder_blocks": [EncoderDecoderBlock(name=f"encoder_layer_{i}", **block)
                               for i in range(num_layers)],
            "decoder_blocks": [EncoderDecoderBlock(cross_attention=True, name=f"decoder_layer_{i}",
                                                   **block) for i in range(num_decoder_layers)],
            "encoder_final_norm": norm("encoder_final_norm"),
            "decoder_final_norm": norm("decoder_final_norm"),
            "dropout_layer": keras.layers.Dropout(dropout, dtype=dtype, name="dropout"),
        }
        encoder_inputs = {"encoder_features": keras.Input(shape=(None, num_mel_bins), dtype="float32",
                                                          name="encoder_features")}
        super().__init__(encoder_inputs, layers, dtype=dtype, name=name, **kwargs)

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.num_mel_bins = num_mel_bins
        self.max_source_positions = max_source_positions
        self.max_sequence_length = max_sequence_length
        self.decoder_start_token_id = decoder_start_token_id
        self.layer_norm_epsilon = layer_norm_epsilon
        self.dropout = dropout

    # ----- the family's steps of the Seq2SeqBackbone contract -----
    def encode(self, encoder_inputs, calls=KERAS_CALLS):
        x = encoder_inputs["encoder_features"]
        for conv in (self.conv1, self.conv2):  # PyTorch's padding=1 on both sides
            x = keras.activations.gelu(calls(conv, ops.pad(x, ((0, 0), (1, 1), (0, 0)))),
                                       approximate=False)
        x = calls(self.dropout_layer, x + calls(self.encoder_position_embedding, x))
        for block in self.encoder_blocks:
            x = calls.nested(block, x)
        x = calls(self.encoder_final_norm, x)
        return x, ops.ones_like(x[..., 0], dtype="int32")

    def embed_decoder(self, token_ids, start_index, calls=KERAS_CALLS):
        x = calls(self.token_embedding, token_ids)
        x = x + calls(self.decoder_position_embedding, x, start_index=start_index)
        return calls(self.dropout_layer, x)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers, "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim, "intermediate_dim": self.intermediate_dim,
            "num_mel_bins": self.num_mel_bins, "max_source_positions": self.max_source_positions,
            "max_sequence_length": self.max_sequence_length,
            "decoder_start_token_id": self.decoder_start_token_id,
            "layer_norm_epsilon": self.layer_norm_epsilon, "dropout": self.dropout,
        })
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class WhisperTokenizer(HuggingFaceTokenizer):
    """Whisper's byte-level BPE (``tokenizer.json``) with its special tokens and suppressed tokens.

    Ids equal ``WhisperTokenizerFast``'s. A transcript is prompted with :meth:`prompt_ids`
    (``<|startoftranscript|>``, the language, the task, ``<|notimestamps|>``) and ends with
    ``<|endoftext|>``.

    Args:
        tokenizer_json: ``tokenizer.json`` (path, folder, text or a ``tokenizers.Tokenizer``).
        suppress_token_ids: ids generation never produces (the generation config's
            ``suppress_tokens``: symbols, speaker tags…).
        begin_suppress_token_ids: ids not allowed as the first generated token (a space, the end).
    """

    START = "<|startoftranscript|>"
    NO_TIMESTAMPS = "<|notimestamps|>"
    TASKS = ("transcribe", "translate")

    def __init__(self, tokenizer_json, suppress_token_ids=(), begin_suppress_token_ids=(), **kwargs):
        kwargs = {"start_token": self.START, "end_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                  **kwargs}
        super().__init__(tokenizer_json, **kwargs)
        self.suppress_token_ids = tuple(int(i) for i in suppress_token_ids)
        self.begin_suppress_token_ids = tuple(int(i) for i in begin_suppress_token_ids)

    @property
    def languages(self):
        """The language codes the vocabulary has a token for (``"en"``, ``"de"``…)."""
        codes = []
        for token in self.get_vocabulary()[self.token_to_id(self.START) + 1:]:
            code = (token or "")[2:-2]
            if not (token or "").startswith("<|") or not code.isalpha() or code in self.TASKS:
                break
            codes.append(code)
        return codes

    def prompt_ids(self, language="en", task="transcribe", timestamps=False):
        """The decoder prompt: ``<|startoftranscript|>`` [``<|language|>`` ``<|task|>``]
        [``<|notimestamps|>``]; ``language=None`` leaves language and task to the model
        (an English-only model has neither)."""
        if task not in self.TASKS:
            raise ValueError(f"task={task!r}; Whisper's tasks are {self.TASKS}.")
        ids = [self.token_to_id(self.START)]
        if language is not None:
            if self._engine.token_to_id(f"<|{language}|>") is None:
                raise ValueError(f"language={language!r} has no token in this vocabulary; use a code "
                                 f"such as {', '.join(self.languages[:8])}… or None.")
            ids += [self.token_to_id(f"<|{language}|>"), self.token_to_id(f"<|{task}|>")]
        if not timestamps:
            ids.append(self.token_to_id(self.NO_TIMESTAMPS))
        return ids

    @classmethod
    def from_hf_folder(cls, folder, **kwargs):
        """``tokenizer.json`` plus the suppressed tokens of ``generation_config.json`` (Hugging Face)
        or ``config.json`` (``suppress_tokens``; CTranslate2's ``suppress_ids``)."""
        settings = {}
        for name in ("config.json", "generation_config.json"):
            path = os.path.join(folder, name)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    settings.update({k: v for k, v in json.load(f).items() if v is not None})
        suppress = settings.get("suppress_tokens", settings.get("suppress_ids", ()))
        begin = settings.get("begin_suppress_tokens", settings.get("suppress_ids_begin", ()))
        return cls(os.path.join(folder, "tokenizer.json"), suppress_token_ids=suppress,
                   begin_suppress_token_ids=begin, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({"suppress_token_ids": list(self.suppress_token_ids),
                       "begin_suppress_token_ids": list(self.begin_suppress_token_ids)})
        return config
