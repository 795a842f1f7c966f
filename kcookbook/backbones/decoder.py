"""The decoder contract: what a text generator (``CausalLM``) needs from a decoder-only backbone.

    token_ids (batch, length), padding_mask
      → embed (the family's step: token embedding, positions, scaling…)
      → blocks: a stack of ``DecoderBlock``s (causal self-attention + feed-forward)
      → final_norm → sequence output (batch, length, hidden_dim)

A family (``GPT2Backbone``, ``LlamaBackbone``…) builds its layers and hands them to
``DecoderBackbone.__init__`` with its ``embed`` step; the forward pass, the key/value cache and the
output layer are written here once:

* ``token_embedding(hidden, reverse=True)`` (or ``logits(hidden)``): logits over the vocabulary,
  through the input embedding transposed or a separate table;
* ``empty_cache(batch_size, max_length, step_length=None)``: one zero key/value cache per block,
  sized per layer kind: a global layer keeps every position, a sliding-window (local) layer whose
  calls write at most ``step_length`` tokens a ring of ``sliding_window + step_length - 1``
  (``CausalSelfAttention.cache_length``; calls then come in order of position);
* ``call_with_cache(token_ids, caches, cache_index)``: the tokens at positions ``cache_index…``
  through the model, reading and updating the caches; returns ``(hidden, caches)``;
* ``hidden_states(token_ids, padding_mask)``: the whole-sequence pass without a cache (the
  functional model's output, callable with explicit ``calls``);
* ``vocabulary_size``, ``hidden_dim`` and ``max_sequence_length`` (the longest sequence
  generation may reach).
"""

import keras
import numpy as np

from kcookbook.backbones.backbone import Backbone
from kcookbook.components import activation_smoothing
from kcookbook.components.decoder_block import run_decoder_blocks
from kcookbook.components.torch_speedups import KERAS_CALLS


def run_decoder(embed, blocks, final_norm, token_ids, padding_mask=None, caches=None, cache_index=0,
                run_block=None, calls=KERAS_CALLS):
    """Token ids → final hidden states; with ``caches`` (one per block) also the updated caches.

    ``embed(token_ids, start_index, calls)`` is the family's embedding step; ``run_block`` how a
    cached one-token step runs a block and ``calls`` how layers are called (see
    ``run_decoder_blocks`` and ``torch_speedups``).
    """
    x = embed(token_ids, cache_index, calls)
    if caches is None:
        return calls(final_norm, run_decoder_blocks(blocks, x, padding_mask, calls=calls))
    x, new_caches = run_decoder_blocks(blocks, x, padding_mask, caches, cache_index, run_block, calls)
    return calls(final_norm, x), new_caches


class DecoderBackbone(Backbone):
    """Base class of decoder-only backbones: the functional model, the cache and the output layer.

    A subclass builds its layers, then calls ``super().__init__`` with them and records its
    constructor arguments (``vocabulary_size``, ``hidden_dim`` and ``max_sequence_length`` at least)
    for ``get_config``.

    Args:
        token_embedding: a ``ReversibleEmbedding``: ids → vectors, and ``reverse=True`` hidden
            states → logits.
        embed: ``embed(token_ids, start_index, calls) → (batch, length, hidden)``, the family's
            embedding step (it calls ``token_embedding`` and whatever else the family adds:
            learned positions, a scale, dropout) with ``calls(layer, ...)``
            (``torch_speedups.LayerCalls``); ``start_index`` is the position of the first token.
        blocks: the ``DecoderBlock``s, first to last.
        final_norm: the normalization after the last block.
        **kwargs: ``name``, ``dtype`` and the rest of ``keras.Model``'s arguments.
    """

    def __init__(self, token_embedding, embed, blocks, final_norm, **kwargs):
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        sequence_output = run_decoder(embed, blocks, final_norm, token_ids, padding_mask=padding_mask)
        super().__init__(inputs={"token_ids": token_ids, "padding_mask": padding_mask},
                         outputs=sequence_output, **kwargs)
        self.token_embedding = token_embedding
        self.embed = embed
        self.blocks = blocks
        self.final_norm = final_norm

    def logits(self, hidden, calls=KERAS_CALLS):
        """Hidden states ``(..., hidden_dim)`` → logits ``(..., vocabulary_size)`` in the compute dtype."""
        return calls(self.token_embedding, hidden, reverse=True)

    def hidden_states(self, token_ids, padding_mask, calls=KERAS_CALLS):
        """The final hidden states ``(batch, length, hidden_dim)`` of whole sequences, no cache:
        the same as calling the backbone, with ``calls`` choosing how layers are called."""
        return run_decoder(self.embed, self.blocks, self.final_norm, token_ids, padding_mask,
                           calls=calls)

    def smooth_activations(self, token_ids, strength=0.5, batch_size=8):
        """Move activation outliers into the weights before ``quantize("int8")`` (SmoothQuant;
        ``components/activation_smoothing.py``): the float model's outputs stay the same, and
        Keras' default int8 (per-token activation scales) loses less.

        ``token_ids``: calibration text, ``(examples, length)`` ids with no padding (every position
        counts), e.g. a few hundred tokens of the kind of text the model will see. Returns the
        factors of each ``(producer, projections)`` pair (``DecoderBlock.smoothable_inputs``).

        >>> backbone.smooth_activations(calibration_ids)  # doctest: +SKIP
        >>> backbone.quantize("int8")  # doctest: +SKIP
        """
        token_ids = np.asarray(keras.ops.convert_to_numpy(token_ids))
        if token_ids.ndim != 2 or token_ids.shape[0] == 0 or token_ids.shape[1] == 0:
            raise ValueError("smooth_activations takes calibration token ids of shape (examples, "
                             f"length), at least one of each; got shape {token_ids.shape}.")
        pairs = [pair for block in self.blocks for pair in block.smoothable_inputs()]
        activation_smoothing.check_smoothable(pairs)  # before the calibration pass
        calls = activation_smoothing.MaximumRecordingCalls(
            [dense for _, projections in pairs for dense in projections])
        for start in range(0, len(token_ids), batch_size):
            batch = token_ids[start:start + batch_size].astype("int32")
            self.hidden_states(batch, np.ones_like(batch), calls=calls)
        return activation_smoothing.smooth(pairs, calls.maxima, strength)

    def empty_cache(self, batch_size, max_length, step_length=None):
        """One zero key/value cache per block for generation up to ``max_length`` positions: every
        position for a global layer; for a sliding-window layer, when ``step_length`` (the most
        tokens one ``call_with_cache`` writes) is given, only ``sliding_window + step_length - 1``
        (a ring, ``CausalSelfAttention.cache_length``)."""
        return [block.attention.empty_cache(batch_size, max_length, step_length=step_length)
                for block in self.blocks]

    def call_with_cache(self, token_ids, caches, cache_index, run_block=None, calls=KERAS_CALLS):
        """Run ``token_ids`` (at positions ``cache_index…``) through the model, updating ``caches``.

        Returns ``(hidden, caches)``: the final hidden states ``(batch, length, hidden_dim)`` and the
        updated caches. ``run_block`` (optional) runs a block on a one-token step (e.g.
        ``torch_speedups.compiled_block_step(run_block_with_cache)``) and ``calls`` calls the
        layers (``torch_speedups.DIRECT_CALLS`` in torch inference).
        """
        return run_decoder(self.embed, self.blocks, self.final_norm, token_ids, caches=caches,
                           cache_index=cache_index, run_block=run_block, calls=calls)
