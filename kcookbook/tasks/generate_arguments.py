"""Checks of ``generate``'s arguments, run before anything is allocated or compiled.

A text generator (``CausalLM``, and an encoder-decoder ``Seq2SeqLM`` later) checks every argument
here first, so a bad call raises a ``ValueError`` that names the argument and the fix, allocates
nothing (``max_length=10**9`` is refused before a ``(batch, max_length)`` array exists) and leaves
the model as it was.
"""

import numbers

import numpy as np

MAX_SEED = 2**31 - 1  # seeds travel as int32 scalars into the compiled loop


def check_max_length(max_length, limit):
    """``max_length`` is an int in [2, ``limit``] (the backbone's ``max_sequence_length``)."""
    if max_length is None:
        raise ValueError("generate needs max_length (prompt + continuation, in tokens): pass "
                         f"max_length=..., at most the model's max_sequence_length={limit}.")
    if isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral):
        raise ValueError(f"max_length must be an int (prompt + continuation, in tokens), got "
                         f"{max_length!r}.")
    if max_length < 2:
        raise ValueError(f"max_length={max_length} leaves no room for a prompt and a new token: pass "
                         "max_length >= 2, more than the longest prompt.")
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length={max_length} is more than the model's max_sequence_length="
                         f"{limit}: pass max_length <= {limit}.")
    return int(max_length)


def check_token_ids(ids, name="inputs"):
    """One row (or a flat list) of token ids → a list of Python ints; integers only."""
    array = np.asarray(ids)
    if array.size == 0:
        return []
    if array.dtype == object or not (np.issubdtype(array.dtype, np.integer)
                                     or np.issubdtype(array.dtype, np.bool_)):
        raise ValueError(f"{name} must hold integer token ids, got {array.dtype} values "
                         f"(e.g. {array.reshape(-1)[0]!r}). Pass token ids, or strings with a preprocessor.")
    if np.issubdtype(array.dtype, np.bool_):
        raise ValueError(f"{name} must hold integer token ids, got booleans.")
    return [int(i) for i in array.reshape(-1)]


def check_prompt_ids(rows, vocabulary_size, from_text=False):
    """Every prompt token (lists of ints) is an id in [0, ``vocabulary_size``)."""
    outside = sorted({i for row in rows for i in row if not 0 <= i < vocabulary_size})
    if not outside:
        return
    if from_text:
        raise ValueError(
            f"The tokenizer produced token id {outside[-1]}, outside the backbone's vocabulary "
            f"[0, {vocabulary_size}): the preprocessor's tokenizer does not belong to this backbone "
            "(its vocabulary is larger). Load the tokenizer and the backbone from the same preset.")
    raise ValueError(f"inputs holds token ids outside the vocabulary [0, {vocabulary_size}): "
                     f"{outside[:5]}. Pass ids the model knows.")


def check_room_to_generate(padding_mask):
    """Every prompt (1s of ``padding_mask``) is shorter than the padded width, ``max_length``."""
    longest = int(padding_mask.sum(axis=1).max())
    max_length = padding_mask.shape[1]
    if longest >= max_length:
        raise ValueError(f"max_length={max_length} leaves no room to generate: a prompt has {longest} "
                         f"tokens. Pass max_length > {longest}.")


def check_generate_seed(seed):
    """``seed`` is an int in [0, 2**31 - 1]."""
    if (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
            or not 0 <= seed <= MAX_SEED):
        raise ValueError(f"seed must be an int in [0, {MAX_SEED}], got {seed!r}.")
    return int(seed)
