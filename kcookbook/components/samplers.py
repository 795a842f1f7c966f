"""Samplers: how a language model picks the next token from its logits during generation.

Each sampler is a small object whose ``next_token(logits, seed, step)`` maps ``(batch, vocab)``
float32 logits to ``(batch,)`` int32 ids with ``keras.ops`` only, so it runs inside the compiled
generation loop of every backend. Randomness is stateless (a function of ``seed`` and ``step``), so a
compiled loop needs no random state and a seed reproduces a sample.

Select one by name or pass an instance with parameters:

========================  ============================================================
``"greedy"``              the most likely token
``"temperature"``         sample from ``softmax(logits / temperature)`` (``"random"``)
``"top_k"``               sample among the ``k`` most likely tokens
``"top_p"``               sample within the nucleus: the fewest tokens with ``p`` of the mass
``"beam"``                beam search over ``num_beams`` hypotheses (run by the task's loop)
``"contrastive"``         contrastive search (Su et al., 2022): likely and not a repetition
========================  ============================================================

    >>> logits = ops.convert_to_tensor([[0.1, 3.0, 0.2, 2.9]])
    >>> int(get_sampler("greedy").next_token(logits, seed=0, step=0)[0])
    1
    >>> int(TopKSampler(k=1).next_token(logits, seed=0, step=0)[0])
    1
"""

import keras
from keras import ops


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


class Sampler:
    """Base class. Subclasses implement ``next_token``; ``key`` identifies a compiled loop."""

    name = None

    def next_token(self, logits, seed, step):
        raise NotImplementedError

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
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}.")
        self.temperature = float(temperature)

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
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        self.k = int(k)

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
        if not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1], got {p}.")
        self.p = float(p)
        self.k = k

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
    """Beam search: keep the ``num_beams`` most likely continuations; return the best.

    Needs the whole search state, so the task's generation loop runs it (``num_beams`` is read
    there); ``next_token`` is the one-beam case, greedy.
    """

    name = "beam"

    def __init__(self, num_beams=5):
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
        self.num_beams = int(num_beams)

    def next_token(self, logits, seed, step):
        return GreedySampler().next_token(logits, seed, step)

    def get_config(self):
        return {"num_beams": self.num_beams}


class ContrastiveSampler(Sampler):
    """Contrastive search (Su et al., 2022): among the ``k`` most likely tokens pick the one that
    maximises ``(1 - alpha) · probability - alpha · max cosine similarity`` of its hidden state to
    those of the previous tokens. Needs hidden states, so the task's generation loop runs it.
    """

    name = "contrastive"

    def __init__(self, k=5, alpha=0.6):
        if k < 1 or not 0 <= alpha <= 1:
            raise ValueError(f"need k >= 1 and 0 <= alpha <= 1, got k={k}, alpha={alpha}.")
        self.k = int(k)
        self.alpha = float(alpha)

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
