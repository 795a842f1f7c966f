"""Instruction tuning with the output layer run only where the loss is: the answer tokens.

``CausalLM.fit((prompts, answers))`` computes logits ``(batch, length, vocabulary)`` at every
position and then weights all but the answer tokens to zero. With a large vocabulary (Gemma's
262,144 words) that output layer is most of a training step on a CPU, and it is wasted on the
prompt. Here the hidden states are gathered at the few positions that predict an answer token
(the prompt's last token for the first one, then each answer token for the next), and only those
go through the output layer. The loss is the same number ``fit`` minimises, to float rounding:
the cross-entropy over the whole vocabulary, averaged over the answer (and end) tokens.

    >>> lm = CausalLM.from_preset("gemma3_270m")  # doctest: +SKIP
    >>> lm.backbone.enable_lora(8)  # doctest: +SKIP
    >>> trainer = answer_token_model(lm, answer_tokens=2)  # doctest: +SKIP
    >>> x, y, weights = answer_token_data(lm.preprocessor, prompts, answers, answer_tokens=2)  # doctest: +SKIP
    >>> trainer.fit(x, y, sample_weight=weights, batch_size=8)  # doctest: +SKIP

The model shares ``lm``'s layers (and LoRA weights): training it trains ``lm``, which then
generates and scores as usual.
"""

import keras
import numpy as np
from keras import ops


def answer_token_data(preprocessor, prompts, answers, answer_tokens):
    """Pack ``prompt + answer (+ end token)`` as ``CausalLM.fit`` does and list where the answer is.

    Returns ``(x, y, sample_weight)`` of numpy arrays: ``x`` has ``token_ids`` and ``padding_mask``
    ``(n, sequence_length)`` and ``positions`` ``(n, answer_tokens)``, the input positions whose
    next token is an answer token; ``y`` ``(n, answer_tokens)`` those tokens; ``sample_weight`` 1
    where a row has that many answer tokens, 0 on the filler (which repeats the last position).

    Raises ``ValueError`` when an answer (with its end token) has more than ``answer_tokens`` tokens
    or none fit in ``sequence_length``: nothing is dropped silently.
    """
    if not isinstance(answer_tokens, int) or isinstance(answer_tokens, bool) or answer_tokens < 1:
        raise ValueError(f"answer_tokens must be a positive int, got {answer_tokens!r}.")
    packed = preprocessor.numpy_call((list(prompts), list(answers)))
    weights = np.asarray(packed["label_weights"])
    counts = (weights > 0).sum(axis=1)
    if counts.min(initial=1) == 0:
        row = int(np.argmin(counts))
        raise ValueError(f"Example {row}: no answer token fits in sequence_length="
                         f"{preprocessor.sequence_length} after its prompt; shorten the prompt.")
    if counts.max(initial=0) > answer_tokens:
        row = int(np.argmax(counts))
        raise ValueError(f"Example {row} has {int(counts[row])} answer tokens (end token included), "
                         f"more than answer_tokens={answer_tokens}; raise answer_tokens.")
    positions = np.zeros((len(weights), answer_tokens), "int32")
    sample_weight = np.zeros((len(weights), answer_tokens), "float32")
    for i, row in enumerate(weights):
        where = np.flatnonzero(row > 0)
        positions[i, :len(where)] = where
        positions[i, len(where):] = where[-1]
        sample_weight[i, :len(where)] = row[where]
    labels = np.take_along_axis(np.asarray(packed["labels"]), positions, axis=1).astype("int32")
    x = {"token_ids": np.asarray(packed["token_ids"], "int32"),
         "padding_mask": np.asarray(packed["padding_mask"], "int32"), "positions": positions}
    return x, labels, sample_weight


def answer_token_model(lm, answer_tokens, learning_rate=2e-5, optimizer="auto"):
    """A Keras model sharing ``lm``'s backbone: ``{token_ids, padding_mask, positions}`` → logits
    ``(batch, answer_tokens, vocabulary)`` at ``positions`` only (``answer_token_data`` makes the
    inputs). Compiled with ``CausalLM``'s loss (cross-entropy from logits averaged over the weighted
    tokens) and ``optimizer`` (``"auto"``: Adam(``learning_rate``)). Enable LoRA on ``lm.backbone``
    before building it."""
    backbone = lm.backbone
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
    positions = keras.Input(shape=(answer_tokens,), dtype="int32", name="positions")
    hidden = backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    picked = ops.take_along_axis(hidden, ops.expand_dims(positions, -1), axis=1)
    logits = backbone.logits(picked)
    model = keras.Model({"token_ids": token_ids, "padding_mask": padding_mask, "positions": positions},
                        logits, name=f"{lm.name}_answer_tokens")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate) if optimizer == "auto" else optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                        reduction="mean_with_sample_weight"),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model
