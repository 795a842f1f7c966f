"""CausalLM: next-token prediction and text generation on a decoder backbone.

    >>> lm = CausalLM.from_preset("smollm2_135m_instruct")  # doctest: +SKIP
    >>> lm.generate("The capital of France is", max_length=32)  # doctest: +SKIP

* Calling the model on ``{"token_ids", "padding_mask"}`` gives logits ``(batch, length, vocab)``.
* ``fit`` on raw strings learns to predict each next token; padding is not counted in the loss.
  ``fit((prompts, responses))`` learns the responses only: the prompt tokens are inputs, not targets.
  With a large vocabulary, ``answer_token_model(lm, answer_tokens)`` (``causal_lm_answers``) trains
  on the same loss with the output layer run only at the answer positions.
* ``score`` gives log-likelihoods: per token, or summed over a continuation after a prompt (compare
  the log-likelihood of label words to classify with a generative model).
* ``generate`` continues prompts with a key/value cache inside one compiled loop: ``jax.jit`` of
  a stateless function on jax, ``tf.function(jit_compile=True)`` on TensorFlow. On torch the loop
  runs eagerly under ``no_grad``, writes the cache in place and calls layers directly
  (``torch_speedups.DIRECT_CALLS``), skipping Keras' per-call bookkeeping. ``lm.jit_compile = True`` (or
  ``compile(jit_compile=True)``) also runs each one-token step through one ``torch.compile``d
  decoder block that every layer shares (``compiled_block_step``): seconds of compilation on a
  CPU, once per process and block configuration. Off by default, as Keras leaves ``torch.compile``
  off; on this project's CPU the eager loop, whose products take ``torch_speedups.inference_product``'s
  kernels, is the faster one (SmolLM2-135M: 48.6 against 36.3 tokens/s at batch 1, 279 against 150
  at batch 8; ``benchmarks/README.md``, 2026-12-07). The compiled loop is kept per
  (batch size, max_length, sampler, stop tokens), so calling again with the same shapes does not
  compile again (``generate_trace_count`` counts compilations).

Prompts are right-padded. Generation starts at the end of the shortest prompt; for rows whose
prompt is longer the model's picks are replaced by the prompt's own tokens, so one batch holds
prompts of any length.

The backbone is a ``DecoderBackbone`` (``kcookbook.backbones.decoder``, where its contract is
written). ``generate`` fills its cache with the prompts (``_prefill``) and hands the search to the
sampler with one model step, ``next(token_ids, cache, index) -> (logits, hidden_states, cache)``:
greedy, random, beam and contrastive search all run in the sampler's loop
(``kcookbook.components.samplers.Sampler``), and the task never looks at the sampler's type.
"""

import keras
import numpy as np
from keras import ops

from kcookbook.backbones.decoder import DecoderBackbone
from kcookbook.components.decoder_block import run_block_with_cache
from kcookbook.components.packers import StartEndPacker, pad_prompts
from kcookbook.components.samplers import get_sampler
from kcookbook.components.torch_speedups import cast_if_needed, compiled_block_step, layer_calls
from kcookbook.tasks.causal_lm_scoring import LogLikelihoodScoring
from kcookbook.tasks.generate_arguments import (
    check_generate_seed,
    check_max_length,
    check_prompt_ids,
    check_room_to_generate,
    check_token_ids,
)
from kcookbook.tasks.generation import GenerationLoop
from kcookbook.tasks.preprocessor import Preprocessor
from kcookbook.tasks.task import Task


@keras.saving.register_keras_serializable(package="kcookbook")
class CausalLMPreprocessor(Preprocessor):
    """Strings → ``(x, y, sample_weight)`` for next-token training, and prompts for generation.

    A text is tokenized, given the start token (when the tokenizer asks for one, or
    ``add_start_token=True``) and the end token, and packed to ``sequence_length + 1`` ids; ``x`` is
    all but the last, ``y`` all but the first, ``sample_weight`` is 0 on padding.

    Two segments, ``(prompts, responses)``, are joined as ``start + prompt + response + end`` and
    ``sample_weight`` is 1 only where ``y`` is a response token (or the end token): instruction
    tuning learns the answers, not the questions. Text past ``sequence_length`` is cut from the end
    (the response first), so keep prompts short enough to leave room for the answer.

        >>> from kcookbook.components import WordPieceTokenizer
        >>> pre = CausalLMPreprocessor(WordPieceTokenizer(
        ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film", "yes"]), sequence_length=6)
        >>> x, y, weights = pre((["good film"], ["yes"]))
        >>> x["token_ids"].tolist(), y.tolist(), weights.tolist()
        ([[2, 4, 5, 6, 3, 0]], [[4, 5, 6, 3, 0, 0]], [[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]])

    Args:
        tokenizer: with ``start_token_id``, ``end_token_id``, ``pad_token_id``.
        sequence_length: length of the model inputs (longer texts are truncated at the end).
        add_start_token: prepend the start token; None follows ``tokenizer.add_start_token``
            (Hugging Face's ``add_bos_token``) and defaults to True when the tokenizer has a start
            token.
        add_end_token: append the end token in training.
    """

    output_names = ("token_ids", "padding_mask", "labels", "label_weights")

    def output_spec(self, name):
        return ("float32" if name == "label_weights" else "int32"), self.sequence_length

    def __init__(self, tokenizer, sequence_length=1024, add_start_token=None, add_end_token=True):
        super().__init__(tokenizer, sequence_length)
        if add_start_token is None:
            add_start_token = getattr(tokenizer, "add_start_token", True)
        self.add_start_token = bool(add_start_token) and tokenizer.start_token_id is not None
        self.add_end_token = bool(add_end_token) and tokenizer.end_token_id is not None
        self.packer = StartEndPacker(
            start_value=tokenizer.start_token_id if self.add_start_token else None,
            end_value=tokenizer.end_token_id if self.add_end_token else None,
            pad_value=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    def numpy_call(self, segments):
        if len(segments) not in (1, 2):
            raise ValueError("CausalLMPreprocessor takes one text segment (strings to learn), or two: "
                             f"(prompts, responses) to learn the responses only. Got {len(segments)}.")
        ids = self.encode_texts(segments[0])
        if len(segments) == 2:
            responses = self.encode_texts(segments[1])
            if len(responses) != len(ids):
                raise ValueError(f"{len(ids)} prompts but {len(responses)} responses: give one response "
                                 "per prompt.")
            prompt_lengths = np.array([len(p) + int(self.add_start_token) for p in ids])
            ids = [list(p) + list(r) for p, r in zip(ids, responses)]
        packed = self.packer(ids, sequence_length=self.sequence_length + 1)
        token_ids, mask = packed["token_ids"], packed["padding_mask"]
        label_weights = mask[:, 1:].astype("float32")
        if len(segments) == 2:  # y[t] is token t + 1: a target only when it is past the prompt
            positions = np.arange(1, self.sequence_length + 1)
            label_weights *= positions[None, :] >= prompt_lengths[:, None]
        return {"token_ids": token_ids[:, :-1], "padding_mask": mask[:, :-1],
                "labels": token_ids[:, 1:], "label_weights": label_weights}

    def pack(self, features, y=None, sample_weight=None, num_segments=1):
        x = {"token_ids": features["token_ids"], "padding_mask": features["padding_mask"]}
        return x, features["labels"], features["label_weights"]

    # ----- generation -----
    def generate_preprocess(self, prompts, sequence_length):
        """Prompts → right-padded ``token_ids`` and ``padding_mask`` of ``sequence_length``, no end token."""
        return pad_prompts(self.prompt_ids(prompts), sequence_length, self.packer.pad_value)

    def prompt_ids(self, prompts):
        """Prompts → lists of ids as the model sees them before continuing (start token, no end)."""
        start = [self.tokenizer.start_token_id] if self.add_start_token else []
        return [start + list(row) for row in self.encode_texts(prompts)]

    def generate_postprocess(self, token_ids, mask):
        """Generated ids (where ``mask``) → strings, special tokens dropped."""
        rows = [[int(t) for t, keep in zip(ids, row_mask) if keep] for ids, row_mask in zip(token_ids, mask)]
        return self.tokenizer.decode_batch(rows, skip_special_tokens=True)

    def get_config(self):
        config = super().get_config()
        config.update({"add_start_token": self.add_start_token, "add_end_token": self.add_end_token})
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class CausalLM(GenerationLoop, LogLikelihoodScoring, Task):
    """A decoder backbone with its (tied or separate) output layer: logits over the vocabulary.

    Args:
        backbone: a ``DecoderBackbone`` (``LlamaBackbone``, ``GPT2Backbone``…): its contract is all
            this task relies on.
        preprocessor: a ``CausalLMPreprocessor``, or None to feed and generate token ids.
    """

    preprocessor_cls = CausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, name="causal_lm", **kwargs):
        if not isinstance(backbone, DecoderBackbone):
            raise TypeError(f"CausalLM needs a decoder backbone (a DecoderBackbone: LlamaBackbone, "
                            f"GPT2Backbone…), got {type(backbone).__name__}.")
        inputs = dict(backbone.input)
        hidden = backbone(inputs)
        logits = backbone.logits(hidden)
        super().__init__(inputs=inputs, outputs=logits, name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.generate_trace_count = 0  # how many times a generation loop was traced/compiled
        self.compile()

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        """Defaults: Adam(2e-5); next-token cross-entropy averaged over the real (non-padding)
        tokens; accuracy weighted the same way."""
        self._compile_token_loss(2e-5, optimizer, loss, weighted_metrics, **kwargs)

    # ----- generation -----
    def generate(self, inputs, max_length=None, sampler="greedy", stop_token_ids="auto",
                 strip_prompt=False, seed=0):
        """Continue prompts until ``max_length`` tokens (prompt included) or a stop token.

        Args:
            inputs: a string or a list of strings (needs a preprocessor), or token ids: a dict
                ``{"token_ids", "padding_mask"}`` of right-padded arrays, or a list of id lists.
            max_length: total length of prompt + continuation, at most the backbone's
                ``max_sequence_length`` and more than the longest prompt; defaults to the
                preprocessor's ``sequence_length`` (or the width of ``token_ids``). Longer prompts
                are an error.
            sampler: a name (``"greedy"``, ``"top_k"``, ``"top_p"``, ``"temperature"``, ``"beam"``,
                ``"contrastive"``) or a ``Sampler`` with parameters. The sampler runs the search;
                this task gives it one model step (``next``) and the prefilled cache.
            stop_token_ids: ids that end a row; ``"auto"`` is the tokenizer's ``stop_token_ids``
                (its end token and its ``stop_tokens``, e.g. a chat model's end of turn); None
                never stops early.
            strip_prompt: return only the continuation.
            seed: seed of the random samplers (an int in [0, 2**31 - 1]).

        Every argument is checked before anything is allocated or compiled, and a failed call
        leaves the model as it was.

        Returns strings for string input (one string for one string), else a dict of numpy
        ``token_ids`` and ``padding_mask`` (1 on prompt and generated tokens).
        """
        sampler = get_sampler(sampler)
        stop = self._stop_token_ids(stop_token_ids)
        seed = check_generate_seed(seed)
        if not isinstance(strip_prompt, (bool, np.bool_)):
            raise ValueError(f"strip_prompt must be True or False, got {strip_prompt!r}.")
        limit = self.backbone.max_sequence_length
        if max_length is not None:
            check_max_length(max_length, limit)
        single = isinstance(inputs, str)
        if not single and len(inputs["token_ids"] if isinstance(inputs, dict) else inputs) == 0:
            raise ValueError("generate got no prompts (inputs is empty): pass a string, a list of "
                             "strings, or token ids with at least one row.")
        texts = single or (isinstance(inputs, (list, tuple)) and isinstance(inputs[0], str))
        if texts and self.preprocessor is None:
            raise ValueError(f"{type(self).__name__} has no preprocessor, so generate takes token ids "
                             "(a dict with token_ids and padding_mask, or a list of id lists), not text.")
        pad_value = 0
        if texts:
            rows = self.preprocessor.prompt_ids(inputs)
            pad_value = self.preprocessor.packer.pad_value
        elif isinstance(inputs, dict):
            token_ids = np.asarray(inputs["token_ids"])
            padding_mask = np.asarray(inputs.get("padding_mask", np.ones(token_ids.shape, "int32")))
            if token_ids.ndim != 2 or padding_mask.shape != token_ids.shape:
                raise ValueError("inputs['token_ids'] and inputs['padding_mask'] must be 2-D arrays of "
                                 f"one shape (batch, length), got {token_ids.shape} and "
                                 f"{padding_mask.shape}.")
            rows = [check_token_ids(row[m.astype(bool)]) for row, m in zip(token_ids, padding_mask)]
            widest = token_ids.shape[1]
        else:
            rows = [check_token_ids(row) for row in inputs]
            widest = max(len(r) for r in rows)
        if max_length is None:  # the preprocessor's sequence_length, or the prompts' width
            max_length = self.preprocessor.sequence_length if self.preprocessor is not None else widest
        max_length = check_max_length(max_length, limit)
        check_prompt_ids(rows, self.backbone.vocabulary_size, from_text=texts)
        token_ids, padding_mask = pad_prompts(rows, max_length, pad_value)
        check_room_to_generate(padding_mask)
        chunk = self.prefill_chunk_length
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"prefill_chunk_length must be a positive int (prompt tokens per prefill "
                             f"call; the default is 16), got {chunk!r}.")
        run = self._loop_for(token_ids.shape[0], max_length, sampler, stop)
        out_ids, out_mask = run(token_ids, padding_mask, np.asarray(seed, "int32"))
        out_ids = ops.convert_to_numpy(out_ids).astype("int32")
        out_mask = ops.convert_to_numpy(out_mask).astype("int32")
        if strip_prompt:
            out_mask = out_mask * (1 - padding_mask)
        if not texts:
            return {"token_ids": out_ids, "padding_mask": out_mask}
        strings = self.preprocessor.generate_postprocess(out_ids, out_mask)
        return strings[0] if single else strings

    def _loop_for(self, batch_size, max_length, sampler, stop):
        """The compiled loop for these shapes and options (``GenerationLoop._generate_function``)."""
        def loop(token_ids, padding_mask, seed):
            return self._search(token_ids, padding_mask, seed, sampler, stop)
        key = (batch_size, max_length, sampler.key, stop, self.prefill_chunk_length)
        return self._generate_function(key, loop)

    def _search(self, token_ids, padding_mask, seed, sampler, stop):
        """Prefill the cache with the prompts, then let the sampler run the search with ``next``."""
        token_ids = ops.convert_to_tensor(token_ids, "int32")
        padding_mask = ops.convert_to_tensor(padding_mask, "int32")
        # torch: layers called directly, and with jit_compile one-token steps through one compiled
        # decoder block (None elsewhere).
        calls = layer_calls()
        run_block = compiled_block_step(run_block_with_cache) if self.jit_compile else None
        hidden_states = None
        if sampler.uses_hidden_states:
            batch_size, max_length = token_ids.shape
            hidden_states = ops.zeros((batch_size, max_length, self.backbone.hidden_dim),
                                      self.backbone.compute_dtype)
        # eager torch: the last prefill chunk also runs the token the sampler's first step would
        # (at start - 1), as one more row of a wide product instead of one more one-token step
        through_start = keras.config.backend() == "torch" and sampler.takes_first_logits
        cache, start, last, *hidden_states = self._prefill(token_ids, padding_mask, hidden_states,
                                                           run_block, calls, through_start)

        def logits_of(hidden):
            return cast_if_needed(self.backbone.logits(hidden, calls), "float32")

        def next(token_ids, cache, index):
            hidden, cache = self.backbone.call_with_cache(token_ids, cache, index, run_block, calls)
            hidden = hidden[:, -1]
            return logits_of(hidden), hidden, cache

        extra = {"first_logits": logits_of(last)} if through_start else {}
        return sampler(next, token_ids, padding_mask, cache, start, stop, seed,
                       hidden_states=hidden_states[0] if hidden_states else None, **extra)

    # Prompt tokens the cache is filled with per prefill call; a multiple of it is the most a prompt
    # costs beyond its own length (the width stays static, so compiled loops do not depend on it).
    prefill_chunk_length = 16

    def _prefill(self, token_ids, padding_mask, hiddens, run_block, calls, through_start=False):
        """Fill the caches with the prompts, in chunks of ``prefill_chunk_length`` tokens.

        Decoding starts at ``start``, the shortest prompt's length, and its first step processes the
        token at ``start - 1``; the caches need positions ``[0, start - 1)`` only, not the whole
        padded width (``max_length``). Each chunk has a static width, so compiled loops need no new
        shape per prompt length; the last chunk is moved back to end at ``max_length``, and the
        positions it repeats get the same keys and values again. On torch, which runs the loop
        eagerly, the chunks also run the token at ``start - 1`` (``through_start``, below) and are
        no wider than the ``start`` positions they fill (an 8-token prompt: 8, not 16). Cache
        entries past what the chunks fill
        hold whatever the chunk saw there; decoding overwrites each before any query reads it. A
        sliding-window layer's cache is a ring of ``window + width - 1`` slots, so a prompt longer
        than the window keeps only its last positions there, and the entries past ``start - 1``
        sit in slots whose positions are out of every later query's window.

        ``hiddens`` (``(batch, max_length, hidden)``, for samplers that use hidden states) is filled
        with the final hidden states of the same positions; then ``(caches, start, last, *hiddens)``
        is returned. ``last`` is None, or with ``through_start`` (eager loops only: ``start`` is
        read on the host) the final hidden states ``(batch, hidden)`` of the token at ``start - 1``:
        the chunks then fill ``[0, start)``, the last one ending at ``start - 1``, and the sampler's
        first step takes its logits (``first_logits``) instead of running the model on that token.
        ``run_block`` and ``calls`` are passed on to ``call_with_cache``.
        """
        batch_size, max_length = token_ids.shape
        start = ops.cast(ops.maximum(ops.min(ops.sum(padding_mask, axis=1)), 1), "int32")
        end = start if through_start else start - 1  # the chunks fill positions [0, end)
        width = min(self.prefill_chunk_length, max_length)
        if keras.config.backend() == "torch":  # eager: no chunk wider than the prompts need
            width = min(width, max(int(end), 1))
        # no call writes more than a chunk: sliding-window layers keep window + width - 1 positions
        caches = self.backbone.empty_cache(batch_size, max_length, step_length=width)
        last_chunk = end if through_start else max_length  # where the last chunk ends

        def cond(offset, caches, *hiddens):
            return offset < end

        def body(offset, caches, *hiddens):
            first = ops.minimum(offset, last_chunk - width)
            chunk = ops.slice(token_ids, (0, first), (batch_size, width))
            hidden, caches = self.backbone.call_with_cache(chunk, caches, first, run_block, calls)
            hiddens = [ops.slice_update(h, (0, first, 0), ops.cast(hidden, h.dtype)) for h in hiddens]
            if through_start:  # an eager loop: the last call's is the one at start - 1
                nonlocal last
                last = hidden[:, -1]
            return (offset + width, caches, *hiddens)

        last = None
        state = (ops.zeros((), "int32"), caches) + (() if hiddens is None else (hiddens,))
        _, caches, *hiddens = ops.while_loop(cond, body, state)
        return (caches, start, last, *hiddens)
