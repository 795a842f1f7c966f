"""The encoder-decoder contract: what a sequence-to-sequence generator (``Seq2SeqLM``) needs.

    encoder inputs (token ids and padding mask for T5; audio features for Whisper)
      → encode: the family's encoder → encoder output (batch, source_length, hidden_dim)
                                       and the encoder padding mask (batch, source_length)
    decoder_token_ids, decoder_padding_mask
      → embed_decoder (the family's step) → decoder blocks (``EncoderDecoderBlock``: causal
        self-attention, cross-attention over the encoder output, feed-forward)
      → decoder_final_norm → decoder output (batch, target_length, hidden_dim)
      → logits (the output layer: the token embedding transposed, a scale, a separate table…)

A family (``T5Backbone``…) builds its layers, implements the two family steps below and calls
``Seq2SeqBackbone.__init__`` with its encoder ``keras.Input``s and its layers by attribute name
(``token_embedding``, ``decoder_blocks`` and ``decoder_final_norm`` at least); the functional model (outputs
``encoder_sequence_output`` and ``decoder_sequence_output``, as keras_hub's encoder-decoders), the
decoder pass, the caches and the one-token step are written here once:

* ``encode(encoder_inputs, calls)`` (family): ``(encoder_output, encoder_padding_mask)``;
* ``embed_decoder(token_ids, start_index, calls)`` (family): decoder input vectors;
* ``decoder_self_attention_bias(x, key_length, start_index, calls)`` (optional): a float32 bias
  ``(1, heads, queries, keys)`` added to every decoder self-attention (T5's relative positions);
  None by default;
* ``logits(hidden, calls)``: hidden states → vocabulary logits (default: the token embedding
  transposed);
* ``decode(token_ids, padding_mask, encoder_output, encoder_padding_mask, calls)``: the whole
  decoder pass (teacher forcing);
* ``init_cache(encoder_output, encoder_padding_mask, max_length, calls)``: the generation state,
  ``{"self": [zero self-attention cache per block], "cross": [cross-attention keys/values per
  block], "cross_bias": encoder padding as a bias}`` — every tensor batch-first, so a sampler's
  beam search repeats and reorders them with the rows;
* ``decode_step(token_ids, cache, index, calls, bias_table)``: the tokens at positions ``index…``
  through the decoder, reading and updating the cache: ``(hidden, cache)``; ``bias_table`` is
  ``step_bias_table(max_length, calls)`` (the self-attention bias of every position: causal mask
  and relative positions), computed once per generation by the caller;
* ``encoder_model``: the encoder alone as a functional model on the same layers (encoder inputs →
  ``{"encoder_output", "encoder_padding_mask"}``); its ``trainable_weights`` are empty while the
  encoder is frozen, which is when ``Seq2SeqLM.fit`` trains the decoder on cached encoder outputs.

Set ``vocabulary_size``, ``hidden_dim``, ``max_sequence_length`` (the longest decoder sequence
generation may reach) and ``decoder_start_token_id`` (the first decoder token) on the instance.
"""

import keras
from keras import ops

from kcookbook.backbones.backbone import Backbone
from kcookbook.components.causal_attention import MASKED, causal_attention_mask
from kcookbook.components.encoder_decoder_block import padding_bias
from kcookbook.components.torch_speedups import KERAS_CALLS, dynamic_slice


class Seq2SeqBackbone(Backbone):
    """Base class of encoder-decoder backbones; see the module docstring for the contract.

    Args:
        encoder_inputs: ``{name: keras.Input}`` of the encoder (``encoder_token_ids``,
            ``encoder_padding_mask`` for text).
        layers: ``{attribute name: layer, list of layers or value}`` the family's steps read
            (``self.token_embedding``…); they are attributes while the graph is built and tracked
            as the model's own afterwards.
        **kwargs: ``name``, ``dtype`` and the rest of ``keras.Model``'s arguments.
    """

    decoder_start_token_id = 0

    def __init__(self, encoder_inputs, layers, **kwargs):
        for attribute, value in layers.items():  # readable by encode()/decode() before Model init
            object.__setattr__(self, attribute, value)
        decoder_token_ids = keras.Input(shape=(None,), dtype="int32", name="decoder_token_ids")
        decoder_padding_mask = keras.Input(shape=(None,), dtype="int32", name="decoder_padding_mask")
        encoder_output, encoder_padding_mask = self.encode(encoder_inputs)
        decoder_output = self.decode(decoder_token_ids, decoder_padding_mask, encoder_output,
                                     encoder_padding_mask)
        super().__init__(
            inputs={**encoder_inputs, "decoder_token_ids": decoder_token_ids,
                    "decoder_padding_mask": decoder_padding_mask},
            outputs={"encoder_sequence_output": encoder_output,
                     "decoder_sequence_output": decoder_output}, **kwargs)
        for attribute, value in layers.items():  # now tracked (weights, torch modules)
            setattr(self, attribute, value)

    # ----- the family's steps -----
    def encode(self, encoder_inputs, calls=KERAS_CALLS):
        """``(encoder_output, encoder_padding_mask)`` of the encoder inputs (a dict)."""
        raise NotImplementedError(f"{type(self).__name__} must implement encode().")

    def embed_decoder(self, token_ids, start_index, calls=KERAS_CALLS):
        """Decoder token ids at positions ``start_index…`` → ``(batch, length, hidden_dim)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement embed_decoder().")

    def decoder_self_attention_bias(self, x, key_length=None, start_index=0, calls=KERAS_CALLS):
        """A float32 bias ``(1, heads, queries, keys)`` for the decoder self-attention, or None."""
        return None

    def logits(self, hidden, calls=KERAS_CALLS):
        """Hidden states ``(..., hidden_dim)`` → logits ``(..., vocabulary_size)``."""
        return calls(self.token_embedding, hidden, reverse=True)

    # ----- written once for every family -----
    @property
    def encoder_model(self):
        """The encoder as a functional model sharing this backbone's layers and weights: the encoder
        inputs → ``{"encoder_output", "encoder_padding_mask"}`` (built once, not tracked)."""
        if self.__dict__.get("_encoder_model") is None:
            inputs = {name: keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=name)
                      for name, tensor in self.input.items() if not name.startswith("decoder_")}
            output, mask = self.encode(inputs)
            model = keras.Model(inputs, {"encoder_output": output, "encoder_padding_mask": mask},
                                name=f"{self.name}_encoder")
            object.__setattr__(self, "_encoder_model", model)
        return self.__dict__["_encoder_model"]

    def decode(self, token_ids, padding_mask, encoder_output, encoder_padding_mask, calls=KERAS_CALLS):
        """The decoder output ``(batch, length, hidden_dim)`` of whole target sequences."""
        x = self.embed_decoder(token_ids, 0, calls)
        self_bias = padding_bias(padding_mask)
        relative = self.decoder_self_attention_bias(x, calls=calls)
        if relative is not None:
            self_bias = self_bias + relative
        cross_bias = padding_bias(encoder_padding_mask)
        for block in self.decoder_blocks:
            x = calls.nested(block, x, self_attention_bias=self_bias, causal=True,
                             encoder_output=encoder_output, cross_attention_bias=cross_bias)
        return calls(self.decoder_final_norm, x)

    def init_cache(self, encoder_output, encoder_padding_mask, max_length, calls=KERAS_CALLS):
        """The generation state for ``max_length`` decoder positions (see the module docstring)."""
        batch_size = encoder_output.shape[0]
        return {
            "self": [block.self_attention.empty_cache(batch_size, max_length)
                     for block in self.decoder_blocks],
            "cross": [block.cross_attention.key_value(encoder_output, calls)
                      for block in self.decoder_blocks],
            "cross_bias": padding_bias(encoder_padding_mask),
        }

    def step_bias_table(self, max_length, calls=KERAS_CALLS):
        """The decoder self-attention bias of every position over a cache of ``max_length``: float32
        ``(1, heads or 1, max_length, max_length)``, row ``i`` for a query at position ``i`` (the
        causal mask plus ``decoder_self_attention_bias``). A function of the position alone, so
        generation computes it once, before its loop, and ``decode_step`` reads its rows instead of
        recomputing the mask and the family's bias (T5's relative buckets: ~20 ops) at every step."""
        positions = ops.arange(max_length, dtype="int32")
        allowed = causal_attention_mask(positions, positions)
        bias = ops.where(allowed, ops.zeros((), "float32"), ops.full((), MASKED, "float32"))
        queries = ops.zeros((1, max_length, 1), self.compute_dtype)  # the bias reads its length
        relative = self.decoder_self_attention_bias(queries, max_length, 0, calls)
        return bias if relative is None else bias + relative

    def decode_step(self, token_ids, cache, index, calls=KERAS_CALLS, bias_table=None):
        """Decoder tokens at positions ``index…`` → ``(hidden, cache)`` (hidden after the final norm).
        ``bias_table``: ``step_bias_table(max_length)`` for this cache, if the caller keeps it."""
        x = self.embed_decoder(token_ids, index, calls)
        max_length = cache["self"][0].shape[3]  # (batch, heads, 2, max_length, head_dim)
        # The causal mask over the cache and the family's bias, once for every block.
        if bias_table is None:
            bias_table = self.step_bias_table(max_length, calls)
        self_bias = dynamic_slice(bias_table, (0, 0, index, 0),
                                  (1, bias_table.shape[1], ops.shape(x)[1], max_length))
        caches = []
        for block, self_cache, cross in zip(self.decoder_blocks, cache["self"], cache["cross"]):
            x, self_cache = calls.nested(
                block, x, self_attention_bias=self_bias, cross_key_value=cross,
                cross_attention_bias=cache["cross_bias"], cache=self_cache, cache_index=index)
            caches.append(self_cache)
        return calls(self.decoder_final_norm, x), {**cache, "self": caches}
