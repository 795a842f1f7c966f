"""Samplers: the search that turns a language model's logits into generated tokens.

A sampler runs the whole generation loop (``Sampler.__call__``): the task hands it a ``next``
function (one step of the model: the new tokens and the cache in, logits, hidden states and the
updated cache out) and the prefilled cache, and the sampler decides which tokens to feed next, when
a row stops, and how many hypotheses to keep. Most samplers only pick one token per row from the
logits: their ``next_token(logits, seed, step)`` maps ``(batch, vocab)`` float32 logits to
``(batch,)`` int32 ids with ``keras.ops`` only, and the base class's loop does the rest. Beam and
contrastive search need more than the logits and override ``__call__``. Everything runs inside the
compiled generation loop of every backend. Randomness is stateless (a function of ``seed`` and
``step``), so a compiled loop needs no random state and a seed reproduces a sample.

Select one by name or pass an instance with parameters:

========================  ============================================================
``"greedy"``              the most likely token
``"temperature"``         sample from ``softmax(logits / temperature)`` (``"random"``)
``"top_k"``               sample among the ``k`` most likely tokens
``"top_p"``               sample within the nucleus: the fewest tokens with ``p`` of the mass
``"beam"``                beam search over ``num_beams`` hypotheses
``"contrastive"``         contrastive search (Su et al., 2022): likely and not a repetition
========================  ============================================================

    >>> logits = ops.convert_to_tensor([[0.1, 3.0, 0.2, 2.9]])
    >>> int(get_sampler("greedy").next_token(logits, seed=0, step=0)[0])
    1
    >>> int(TopKSampler(k=1).next_token(logits, seed=0, step=0)[0])
    1
"""

import math
import numbers

import keras
from keras import ops

from kcookbook.components.torch_speedups import cast_if_needed, dynamic_slice, dynamic_slice_update


def stateless_uniform(shape, seed, step):
    """Uniform [0, 1) noise that depends only on ``(seed, step)``; compiles on every backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        key = jax.random.fold_in(jax.random.PRNGKey(seed), step)
        return jax.random.uniform(key, shape, dtype="float32")
    if backend == "tensorflow":
        import tensorflow as tf

        pair = tf.stack([tf.cast(seed, tf.int32), tf.cast(step, tf.int32)])
        return tf.random.stateless_uniform(shape, seed=pair, dtype=tf.float32)
    if backend == "torch":
        import torch

        generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
        return torch.rand(shape, generator=generator).to(keras.src.backend.torch.core.get_device())
    return ops.convert_to_tensor(keras.random.uniform(shape, seed=int(seed) * 1_000_003 + int(step)))


def sample_from_logits(logits, seed, step):
    """One draw from ``softmax(logits)`` per row (Gumbel-max); ``-inf`` logits are never drawn."""
    uniform = stateless_uniform(ops.shape(logits), seed, step)
    gumbel = -ops.log(-ops.log(ops.clip(uniform, 1e-20, 1.0 - 1e-7)))
    return ops.cast(ops.argmax(logits + gumbel, axis=-1), "int32")


def column(x, index):
    """``x[:, index]`` for a traced ``index`` (a ``(batch,)`` tensor)."""
    return ops.squeeze(dynamic_slice(x, (0, index), (ops.shape(x)[0], 1)), axis=1)


def stop_token_tensor(stop_token_ids):
    """Stop ids as an int32 tensor; ``[-1]`` (never generated) when there are none."""
    return ops.convert_to_tensor(list(stop_token_ids) or [-1], "int32")


def place_tokens(index, picked, token_ids, is_prompt, valid, done, stop_ids):
    """Write the picked tokens at ``index``: prompt tokens win, finished rows get padding.

    Returns the updated ``token_ids``, ``valid`` (1 where a row has a prompt or generated token)
    and ``done`` (rows that generated a stop token).
    """
    in_prompt = column(is_prompt, index)
    chosen = ops.where(in_prompt, column(token_ids, index), picked)
    keep = ops.logical_or(in_prompt, ops.logical_not(done))
    chosen = ops.where(keep, chosen, 0)
    token_ids = dynamic_slice_update(token_ids, (0, index), cast_if_needed(chosen[:, None], "int32"))
    valid = dynamic_slice_update(valid, (0, index), ops.cast(keep[:, None], "int32"))
    stopped = ops.any(ops.equal(chosen[:, None], stop_ids[None, :]), axis=1)
    generated = ops.logical_and(keep, ops.logical_not(in_prompt))
    return token_ids, valid, ops.logical_or(done, ops.logical_and(stopped, generated))


def map_cache(function, cache):
    """``function`` on every tensor of a cache (a nest of tensors whose first axis is the batch)."""
    return keras.tree.map_structure(function, cache)


def repeat_cache(cache, times):
    """Each row of every cache tensor ``times`` times in a row (beams, candidates), as new tensors:
    a gather, not ``ops.repeat``, whose torch result for one row is a broadcast view that a
    model writing its cache in place cannot write to."""
    def repeat(c):
        rows = ops.repeat(ops.arange(ops.shape(c)[0], dtype="int32"), times, axis=0)
        return ops.take(c, rows, axis=0)
    return map_cache(repeat, cache)


def _check_number(owner, name, value, low, high, low_open=False, fix=""):
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``low_open``), else ValueError."""
    bounds = f"{'(' if low_open else '['}{low}, {high}]"
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and value <= high)
    if not ok:
        raise ValueError(f"{owner}: {name} must be a finite number in {bounds}, got {value!r}. {fix}")
    return float(value)


def _check_count(owner, name, value, fix=""):
    """An int >= 1, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{owner}: {name} must be an int >= 1, got {value!r}. {fix}")
    return int(value)


class Sampler:
    """Base class: runs the search loop; subclasses pick tokens (``next_token``) or override it.

    ``sampler(next, token_ids, padding_mask, cache, index, stop_token_ids, seed)`` generates:

    * ``next(token_ids, cache, index) -> (logits, hidden_states, cache)`` is one step of the model,
      given by the task: ``token_ids`` ``(rows, length)`` are the tokens at positions
      ``index…``; ``logits`` (float32 ``(rows, vocab)``) and ``hidden_states`` (``(rows,
      hidden)``) are those after the last of them, and ``cache`` is the updated state.
    * ``token_ids`` and ``padding_mask`` (``(batch, max_length)``, int32) hold the right-padded
      prompts, 1 on prompt tokens; rows whose prompt reaches past ``index`` keep their own tokens.
    * ``cache`` is whatever ``next`` reads: a nest (list, dict…) of tensors whose first axis is the
      batch, filled by the task for the positions before ``index - 1``. The sampler never looks
      inside; beam and contrastive search repeat and reorder the rows of every tensor in it.
    * ``index`` (int32 scalar) is the first position to generate; the first step feeds the token at
      ``index - 1``.
    * ``stop_token_ids`` (ints) end a row; ``seed`` (int32 scalar) seeds random samplers.
    * ``first_logits`` (float32 ``(batch, vocab)``, optional, eager loops only): the logits after
      the token at ``index - 1`` when the task already ran that token while filling the cache (its
      last prefill chunk); the first step then picks from them instead of calling ``next``. Only
      for samplers whose ``takes_first_logits`` is True (those that run this base loop).
    * ``hidden_states`` (``(batch, max_length, hidden)``): the prompts' final hidden states at the
      positions before ``index - 1``, for samplers whose ``uses_hidden_states`` is True (the task
      computes them only for those).

    It returns ``(token_ids, padding_mask)``: prompts and generated tokens, and 1 where a row has a
    token (the prompt, and what it generated up to and including its first stop token).

    The loop is ``keras.ops`` only (``ops.while_loop``), so the task can compile it whole (jax,
    TensorFlow) or run it eagerly (torch).

    **Encoder-decoder models** (a ``Seq2SeqLM``, e.g. T5) use the same loop with their own ``next``
    and cache: the encoder runs once before the loop; ``cache`` holds the decoder's self-attention
    cache and the encoder's cross-attention keys and values (fixed: ``next`` returns them
    unchanged), e.g. ``{"self": [...], "cross": [...]}``, plus the encoder padding mask if ``next``
    needs it — all batch-first, so beam search reorders them with the rows; ``token_ids`` is the
    decoder prompt (the decoder start token, or a forced prefix) padded to ``max_length``.

    ``key`` identifies a compiled loop: samplers with equal keys share one.
    """

    name = None
    uses_hidden_states = False

    @property
    def takes_first_logits(self):
        """True for samplers that run this class's loop, which takes ``first_logits``."""
        return type(self).__call__ is Sampler.__call__

    def next_token(self, logits, seed, step):
        """``(batch, vocab)`` float32 logits → ``(batch,)`` int32 ids; ``step`` is the position."""
        raise NotImplementedError(f"{type(self).__name__} implements neither next_token nor __call__.")

    def __call__(self, next, token_ids, padding_mask, cache, index, stop_token_ids=(), seed=0,
                 hidden_states=None, first_logits=None):
        token_ids = ops.convert_to_tensor(token_ids, "int32")
        padding_mask = ops.convert_to_tensor(padding_mask, "int32")
        batch_size, max_length = token_ids.shape
        is_prompt = ops.cast(padding_mask, "bool")
        stop_ids = stop_token_tensor(stop_token_ids)
        done = ops.zeros((batch_size,), "bool")
        valid = padding_mask
        if first_logits is not None and index < max_length:  # eager: index is a concrete number
            picked = self.next_token(first_logits, seed, index)
            token_ids, valid, done = place_tokens(index, picked, token_ids, is_prompt, valid, done,
                                                  stop_ids)
            index = index + 1

        def cond(index, token_ids, valid, cache, done):
            return ops.logical_and(index < max_length, ops.logical_not(ops.all(done)))

        def body(index, token_ids, valid, cache, done):
            previous = dynamic_slice(token_ids, (0, index - 1), (batch_size, 1))
            logits, _, cache = next(previous, cache, index - 1)
            picked = self.next_token(logits, seed, index)
            token_ids, valid, done = place_tokens(index, picked, token_ids, is_prompt, valid, done,
                                                  stop_ids)
            return index + 1, token_ids, valid, cache, done

        _, token_ids, valid, _, _ = ops.while_loop(
            cond, body, (index, token_ids, valid, cache, done))
        return token_ids, valid

    def get_config(self):
        return {}

    @property
    def key(self):
        return (type(self).__name__,) + tuple(sorted(self.get_config().items()))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class GreedySampler(Sampler):
    """The most likely token."""

    name = "greedy"

    def next_token(self, logits, seed, step):
        return ops.cast(ops.argmax(logits, axis=-1), "int32")


class TemperatureSampler(Sampler):
    """Sample from ``softmax(logits / temperature)``; ``temperature=0`` is greedy."""

    name = "temperature"

    def __init__(self, temperature=1.0):
        self.temperature = _check_number(
            type(self).__name__, "temperature", temperature, 0, math.inf,
            fix="Use 1.0 for the model's distribution, lower (e.g. 0.7) for safer text, 0 for greedy.")

    def scaled(self, logits):
        return logits / self.temperature

    def next_token(self, logits, seed, step):
        if self.temperature == 0:
            return GreedySampler().next_token(logits, seed, step)
        return sample_from_logits(self.scaled(logits), seed, step)

    def get_config(self):
        return {"temperature": self.temperature}


class TopKSampler(TemperatureSampler):
    """Sample among the ``k`` highest logits (at ``temperature``)."""

    name = "top_k"

    def __init__(self, k=5, temperature=1.0):
        super().__init__(temperature)
        self.k = _check_count(type(self).__name__, "k", k, fix="Pass the number of candidates, e.g. k=10.")

    def next_token(self, logits, seed, step):
        values, indices = ops.top_k(logits, min(self.k, logits.shape[-1]))
        if self.temperature == 0:
            return ops.cast(indices[:, 0], "int32")
        choice = sample_from_logits(self.scaled(values), seed, step)
        return ops.cast(ops.take_along_axis(indices, choice[:, None], axis=-1)[:, 0], "int32")

    def get_config(self):
        return {"k": self.k, "temperature": self.temperature}


class TopPSampler(TemperatureSampler):
    """Nucleus sampling: the smallest set of top tokens whose probability reaches ``p``.

    ``k`` (optional) first limits the candidates to the ``k`` best, which avoids sorting the whole
    vocabulary every step.
    """

    name = "top_p"

    def __init__(self, p=0.9, temperature=1.0, k=None):
        super().__init__(temperature)
        owner = type(self).__name__
        self.p = _check_number(owner, "p", p, 0, 1, low_open=True,
                               fix="p is the probability mass kept, e.g. p=0.9; p=1 keeps every token.")
        self.k = None if k is None else _check_count(
            owner, "k", k, fix="Pass None to consider the whole vocabulary, or e.g. k=64.")

    def next_token(self, logits, seed, step):
        k = min(self.k or logits.shape[-1], logits.shape[-1])
        values, indices = ops.top_k(logits, k)  # sorted, best first
        if self.temperature == 0:
            return ops.cast(indices[:, 0], "int32")
        values = self.scaled(values)
        probabilities = ops.softmax(values, axis=-1)
        mass_before = ops.cumsum(probabilities, axis=-1) - probabilities
        values = ops.where(mass_before < self.p, values, ops.full_like(values, -float("inf")))
        choice = sample_from_logits(values, seed, step)
        return ops.cast(ops.take_along_axis(indices, choice[:, None], axis=-1)[:, 0], "int32")

    def get_config(self):
        return {"p": self.p, "temperature": self.temperature, "k": self.k}


class BeamSampler(Sampler):
    """Beam search: keep the ``num_beams`` continuations with the highest total log-probability per
    row; return the best.

    Every beam has the same length (``max_length``), so no length penalty is needed. Stop tokens
    end a row's returned ``padding_mask`` after the first one in its best beam. One beam is greedy
    search (``next_token``).
    """

    name = "beam"

    def __init__(self, num_beams=5):
        self.num_beams = _check_count(type(self).__name__, "num_beams", num_beams,
                                      fix="num_beams=1 is greedy search; 3-5 is usual.")

    def next_token(self, logits, seed, step):
        return GreedySampler().next_token(logits, seed, step)

    def __call__(self, next, token_ids, padding_mask, cache, index, stop_token_ids=(), seed=0,
                 hidden_states=None):
        if self.num_beams == 1:
            return super().__call__(next, token_ids, padding_mask, cache, index, stop_token_ids, seed)
        beams = self.num_beams
        padding_mask = ops.convert_to_tensor(padding_mask, "int32")
        batch_size, max_length = padding_mask.shape
        token_ids = ops.repeat(ops.convert_to_tensor(token_ids, "int32"), beams, axis=0)
        is_prompt = ops.repeat(ops.cast(padding_mask, "bool"), beams, axis=0)
        cache = repeat_cache(cache, beams)
        first_beam_only = ops.convert_to_tensor([0.0] + [-float("inf")] * (beams - 1), "float32")
        scores = ops.tile(first_beam_only[None, :], (batch_size, 1))
        rows = ops.arange(batch_size, dtype="int32")[:, None] * beams

        def cond(index, token_ids, cache, scores):
            return index < max_length

        def body(index, token_ids, cache, scores):
            previous = dynamic_slice(token_ids, (0, index - 1), (batch_size * beams, 1))
            logits, _, cache = next(previous, cache, index - 1)
            vocabulary = logits.shape[-1]
            log_probabilities = ops.log_softmax(logits, axis=-1)
            prompt_token = ops.one_hot(column(token_ids, index), vocabulary, dtype="float32")
            forced = ops.where(prompt_token > 0, 0.0, -float("inf"))
            log_probabilities = ops.where(column(is_prompt, index)[:, None], forced,
                                          log_probabilities)
            candidates = ops.reshape(scores, (-1, 1)) + log_probabilities
            scores, best = ops.top_k(ops.reshape(candidates, (batch_size, beams * vocabulary)), beams)
            source = ops.reshape(rows + ops.cast(best // vocabulary, "int32"), (-1,))
            token_ids = ops.take(token_ids, source, axis=0)
            cache = map_cache(lambda c: ops.take(c, source, axis=0), cache)
            next_tokens = ops.reshape(ops.cast(best % vocabulary, "int32"), (-1, 1))
            token_ids = dynamic_slice_update(token_ids, (0, index), next_tokens)
            return index + 1, token_ids, cache, scores

        _, token_ids, _, scores = ops.while_loop(cond, body, (index, token_ids, cache, scores))
        best = ops.argmax(scores, axis=1)
        token_ids = ops.reshape(token_ids, (batch_size, beams, max_length))
        token_ids = ops.take_along_axis(token_ids, ops.reshape(best, (-1, 1, 1)), axis=1)[:, 0]
        valid = ops.ones_like(token_ids)
        if stop_token_ids:
            stop_ids = stop_token_tensor(stop_token_ids)
            is_stop = ops.logical_and(ops.any(token_ids[..., None] == stop_ids, axis=-1),
                                      ops.logical_not(ops.cast(padding_mask, "bool")))
            stops_before = ops.cumsum(ops.cast(is_stop, "int32"), axis=1) - ops.cast(is_stop, "int32")
            valid = ops.cast(stops_before == 0, "int32")
        return token_ids, valid

    def get_config(self):
        return {"num_beams": self.num_beams}


class ContrastiveSampler(Sampler):
    """Contrastive search (Su et al., 2022): among the ``k`` most likely tokens pick the one that
    maximises ``(1 - alpha) · probability - alpha · max cosine similarity`` of its hidden state to
    those of the previous tokens.

    Each step runs the ``k`` candidates one token further (``next`` on ``k`` copies of the cache)
    to get their hidden states; the chosen candidate's logits and cache are the next step's, so a
    step costs one model call on ``batch · k`` tokens. Needs the prompts' hidden states
    (``uses_hidden_states``). ``alpha=0`` is greedy search.
    """

    name = "contrastive"
    uses_hidden_states = True

    def __init__(self, k=5, alpha=0.6):
        owner = type(self).__name__
        self.k = _check_count(owner, "k", k, fix="Pass the number of candidates, e.g. k=5.")
        self.alpha = _check_number(owner, "alpha", alpha, 0, 1,
                                   fix="alpha weighs the repetition penalty: 0 is greedy, 0.6 usual.")

    def __call__(self, next, token_ids, padding_mask, cache, index, stop_token_ids=(), seed=0,
                 hidden_states=None):
        if hidden_states is None:
            raise ValueError("ContrastiveSampler needs the prompts' hidden_states (batch, max_length, "
                             "hidden): a task computes them for samplers with uses_hidden_states.")
        token_ids = ops.convert_to_tensor(token_ids, "int32")
        padding_mask = ops.convert_to_tensor(padding_mask, "int32")
        batch_size, max_length = token_ids.shape
        k, alpha = self.k, self.alpha
        is_prompt = ops.cast(padding_mask, "bool")
        stop_ids = stop_token_tensor(stop_token_ids)
        positions = ops.arange(max_length, dtype="int32")
        rows = ops.arange(batch_size, dtype="int32") * k

        def normalize(x):
            return x / ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + 1e-12)

        def remember(hidden_states, hidden, index):
            return dynamic_slice_update(hidden_states, (0, index, 0),
                                        ops.cast(hidden[:, None], hidden_states.dtype))

        previous = dynamic_slice(token_ids, (0, index - 1), (batch_size, 1))
        logits, hidden, cache = next(previous, cache, index - 1)
        hidden_states = remember(hidden_states, hidden, index - 1)

        def cond(index, token_ids, valid, cache, hidden_states, logits, done):
            return ops.logical_and(index < max_length, ops.logical_not(ops.all(done)))

        def body(index, token_ids, valid, cache, hidden_states, logits, done):
            top_probabilities, candidates = ops.top_k(ops.softmax(logits, axis=-1), k)
            # A row still inside its prompt continues with its prompt token, whichever is chosen.
            candidates = ops.where(column(is_prompt, index)[:, None],
                                   column(token_ids, index)[:, None], ops.cast(candidates, "int32"))
            candidate_cache = repeat_cache(cache, k)
            candidate_logits, candidate_hidden, candidate_cache = next(
                ops.reshape(candidates, (batch_size * k, 1)), candidate_cache, index)
            similarity = ops.einsum(
                "bkh,blh->bkl",
                normalize(ops.cast(ops.reshape(candidate_hidden, (batch_size, k, -1)), "float32")),
                normalize(ops.cast(hidden_states, "float32")))
            earlier = (positions < index)[None, None, :]
            similarity = ops.where(earlier, similarity, ops.full_like(similarity, -1.0))
            degeneration = ops.max(similarity, axis=-1)
            score = (1.0 - alpha) * top_probabilities - alpha * degeneration
            best = ops.cast(ops.argmax(score, axis=-1), "int32")
            picked = ops.take_along_axis(candidates, best[:, None], axis=1)[:, 0]
            source = rows + best
            cache = map_cache(lambda c: ops.take(c, source, axis=0), candidate_cache)
            logits = ops.take(candidate_logits, source, axis=0)
            hidden_states = remember(hidden_states, ops.take(candidate_hidden, source, axis=0), index)
            token_ids, valid, done = place_tokens(index, picked, token_ids, is_prompt, valid, done,
                                                  stop_ids)
            return index + 1, token_ids, valid, cache, hidden_states, logits, done

        done = ops.zeros((batch_size,), "bool")
        _, token_ids, valid, *_ = ops.while_loop(
            cond, body, (index, token_ids, padding_mask, cache, hidden_states, logits, done))
        return token_ids, valid

    def get_config(self):
        return {"k": self.k, "alpha": self.alpha}


SAMPLERS = {
    "greedy": GreedySampler, "temperature": TemperatureSampler, "random": TemperatureSampler,
    "top_k": TopKSampler, "top_p": TopPSampler, "beam": BeamSampler,
    "contrastive": ContrastiveSampler,
}


def get_sampler(identifier, **kwargs):
    """A sampler from a name (``"top_k"``; ``kwargs`` are its parameters) or an instance."""
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str) and identifier in SAMPLERS:
        return SAMPLERS[identifier](**kwargs)
    raise ValueError(
        f"Unknown sampler {identifier!r}. Valid names: {', '.join(sorted(SAMPLERS))}; or pass a "
        "Sampler instance, e.g. TopKSampler(k=10)."
    )
