"""Seq2SeqLM: sequence-to-sequence generation (translation, summarisation) on an encoder-decoder.

    >>> lm = Seq2SeqLM.from_preset("hf://google/flan-t5-small")  # doctest: +SKIP
    >>> lm.generate("translate English to German: The house is wonderful.", max_length=32)  # doctest: +SKIP

* Calling the model on ``{"encoder_token_ids", "encoder_padding_mask", "decoder_token_ids",
  "decoder_padding_mask"}`` gives logits ``(batch, target_length, vocab)``.
* ``fit((inputs, targets))`` (or ``fit(inputs, targets)``) on raw strings: teacher forcing, the
  decoder reads ``start + target`` and learns ``target + end``; the loss counts target tokens only.
* While the encoder is frozen (``backbone.encoder_model`` has no trainable weights), ``fit`` runs
  it once per example, in inference mode, and trains the decoder (``DecoderTrainer``: the same
  weights, loss and optimizer) on the cached encoder outputs: the same update, and every step after
  the encoding costs only the decoder. ``fit(..., cache_encoder_outputs=False)`` runs the whole
  model on every step instead (what encoder dropout needs).
* ``generate`` runs the encoder once, computes each decoder block's cross-attention keys and values
  once (``Seq2SeqBackbone.init_cache``) and the self-attention bias of every position once
  (``step_bias_table``), then hands the search to the sampler with one decoder step that reads and
  updates the self-attention key/value cache:
  ``next(token_ids, cache, index) -> (logits, hidden_states, cache)``. Greedy, top-k, top-p, beam
  and contrastive search are the ``CausalLM``'s samplers (``kcookbook.components.samplers``), in
  the same compiled loop (``GenerationLoop``).
* ``generate(..., use_cache=False)`` runs the same loop and samplers without the caches: every step
  feeds the whole decoder prefix (padded to ``max_length``) through the decoder again, recomputing
  the self-attention and the cross-attention keys and values (the encoder still runs once, as in
  transformers' ``use_cache=False``). Same tokens, more work per token: what the caches save.

The backbone is a ``Seq2SeqBackbone`` (``kcookbook.backbones.seq2seq``, where its contract is
written): a new encoder-decoder family needs no change here.
"""

import keras
import numpy as np
from keras import ops

from kcookbook.backbones.seq2seq import Seq2SeqBackbone
from kcookbook.components.inputs import is_tf_dataset, is_tf_tensor
from kcookbook.components.packers import StartEndPacker, pad_prompts
from kcookbook.components.samplers import get_sampler
from kcookbook.components.torch_speedups import cast_if_needed, layer_calls
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

ENCODER_INPUTS = ("encoder_token_ids", "encoder_padding_mask")


class InputsTargetsPreprocessor(Preprocessor):
    """Base class of encoder-decoder preprocessors: ``(inputs, targets)`` → x, labels, label weights.

    ``preprocessor(inputs, targets)`` is ``preprocessor((inputs, targets))`` (so ``fit(x, y)`` works
    with target strings); with inputs alone there is nothing to learn and ``y`` passes through.
    Subclasses' ``numpy_call`` returns the model inputs plus ``labels`` and ``label_weights``.
    """

    def __call__(self, x, y=None, sample_weight=None):
        return super().__call__(*targets_as_second_segment(x, y), sample_weight)

    def pack(self, features, y=None, sample_weight=None, num_segments=1):
        x = {name: features[name] for name in self.output_names if name not in ("labels", "label_weights")}
        if num_segments == 1:
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        return x, features["labels"], features["label_weights"]


@keras.saving.register_keras_serializable(package="kcookbook")
class Seq2SeqLMPreprocessor(InputsTargetsPreprocessor):
    """``(inputs, targets)`` strings → encoder and decoder arrays, labels and label weights.

    The encoder reads ``input + end`` (T5's tokenizer appends ``</s>``), packed to
    ``encoder_sequence_length``; the decoder reads ``decoder_start + target`` and its labels are
    ``target + end``, both ``decoder_sequence_length`` long, weighted 1 on target tokens and 0 on
    padding. Without targets the decoder gets the start token alone.

        >>> from kcookbook.components import WordPieceTokenizer
        >>> pre = Seq2SeqLMPreprocessor(WordPieceTokenizer(
        ...     ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "film", "yes"]),
        ...     encoder_sequence_length=4, decoder_sequence_length=3)
        >>> x, y, weights = pre((["good film"], ["yes"]))
        >>> x["encoder_token_ids"].tolist(), x["decoder_token_ids"].tolist(), y.tolist()
        ([[4, 5, 3, 0]], [[0, 6, 3]], [[6, 3, 0]])

    Args:
        tokenizer: with ``end_token_id`` and ``pad_token_id``.
        encoder_sequence_length, decoder_sequence_length: lengths of the packed inputs (longer
            texts are cut at the end).
        decoder_start_token_id: the decoder's first token; None is the padding id (T5's choice).
    """

    output_names = ENCODER_INPUTS + ("decoder_token_ids", "decoder_padding_mask", "labels",
                                     "label_weights")

    def output_spec(self, name):
        if name in ENCODER_INPUTS:
            return "int32", self.encoder_sequence_length
        return ("float32" if name == "label_weights" else "int32"), self.decoder_sequence_length

    def __init__(self, tokenizer, encoder_sequence_length=512, decoder_sequence_length=128,
                 decoder_start_token_id=None):
        super().__init__(tokenizer, encoder_sequence_length)
        self.encoder_sequence_length = encoder_sequence_length
        self.decoder_sequence_length = decoder_sequence_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.decoder_start_token_id = pad if decoder_start_token_id is None else decoder_start_token_id
        self.encoder_packer = StartEndPacker(end_value=tokenizer.end_token_id, pad_value=pad)
        self.decoder_packer = StartEndPacker(start_value=self.decoder_start_token_id,
                                             end_value=tokenizer.end_token_id, pad_value=pad)

    def numpy_call(self, segments):
        if len(segments) not in (1, 2):
            raise ValueError("Seq2SeqLMPreprocessor takes (inputs, targets) to learn, or inputs alone; "
                             f"got {len(segments)} segments.")
        encoder = self.encoder_packer(self.encode_texts(segments[0]), self.encoder_sequence_length)
        targets = [[]] * len(encoder["token_ids"])
        if len(segments) == 2:
            targets = self.encode_texts(segments[1])
            if len(targets) != len(encoder["token_ids"]):
                raise ValueError(f"{len(encoder['token_ids'])} inputs but {len(targets)} targets: give "
                                 "one target per input.")
        decoder = self.decoder_packer(targets, self.decoder_sequence_length + 1,
                                      add_end_value=len(segments) == 2)
        ids, mask = decoder["token_ids"], decoder["padding_mask"]
        return {"encoder_token_ids": encoder["token_ids"], "encoder_padding_mask": encoder["padding_mask"],
                "decoder_token_ids": ids[:, :-1], "decoder_padding_mask": mask[:, :-1],
                "labels": ids[:, 1:], "label_weights": mask[:, 1:].astype("float32")}

    # ----- generation -----
    def generate_preprocess(self, inputs):
        """Input strings → ``encoder_token_ids`` and ``encoder_padding_mask`` (with the end token)."""
        encoder = self.encoder_packer(self.encode_texts(inputs), self.encoder_sequence_length)
        return {"encoder_token_ids": encoder["token_ids"], "encoder_padding_mask": encoder["padding_mask"]}

    def generate_postprocess(self, token_ids, mask):
        """Generated decoder ids (where ``mask``) → strings, special tokens dropped."""
        rows = [[int(t) for t, keep in zip(ids, row_mask) if keep] for ids, row_mask in zip(token_ids, mask)]
        return self.tokenizer.decode_batch(rows, skip_special_tokens=True)

    def get_config(self):
        config = super().get_config()
        del config["sequence_length"]
        config.update({"encoder_sequence_length": self.encoder_sequence_length,
                       "decoder_sequence_length": self.decoder_sequence_length,
                       "decoder_start_token_id": self.decoder_start_token_id})
        return config


def targets_as_second_segment(x, y):
    """``fit(inputs, targets)`` with target strings: ``((x, y), None)``, the targets as the second
    segment (``fit((inputs, targets))``'s form); otherwise ``(x, y)`` unchanged. Target strings
    are a str, a list or array of them, or a ``tf.string`` tensor (a ``tf.data`` element of
    ``(input, target)`` pairs)."""
    if y is not None and not isinstance(x, tuple) and (_are_texts(y) or _is_string_tensor(y)):
        return (x, y), None
    return x, y


def _is_string_tensor(y):
    return is_tf_tensor(y) and getattr(y.dtype, "name", None) == "string"


def _are_texts(y):
    if isinstance(y, str):
        return True
    array = np.asarray(y) if isinstance(y, (list, tuple, np.ndarray)) else None
    return array is not None and array.dtype.kind in "USO" and array.size > 0 and isinstance(
        array.reshape(-1)[0], (str, np.str_))


class DecoderTrainer(keras.Model):
    """The decoder of a ``Seq2SeqLM`` and its output layer (its backbone's layers, the same
    weights) on cached encoder outputs: ``{"encoder_output", "encoder_padding_mask",
    "decoder_token_ids", "decoder_padding_mask"}`` → logits; what ``Seq2SeqLM.fit`` trains while
    the encoder is frozen."""

    def __init__(self, lm):
        super().__init__(name=f"{lm.name}_decoder_trainer")
        self.backbone = lm.backbone
        self.built = True

    def call(self, inputs, training=False):
        hidden = self.backbone.decode(inputs["decoder_token_ids"], inputs["decoder_padding_mask"],
                                      inputs["encoder_output"], inputs["encoder_padding_mask"])
        return self.backbone.logits(hidden)


@keras.saving.register_keras_serializable(package="kcookbook")
class Seq2SeqLM(GenerationLoop, Task):
    """An encoder-decoder backbone with its output layer: decoder logits over the vocabulary.

    Args:
        backbone: a ``Seq2SeqBackbone`` (``T5Backbone``…): its contract is all this task relies on.
        preprocessor: a ``Seq2SeqLMPreprocessor``, or None to feed and generate token ids.
    """

    preprocessor_cls = Seq2SeqLMPreprocessor

    def __init__(self, backbone, preprocessor=None, name="seq2seq_lm", **kwargs):
        if not isinstance(backbone, Seq2SeqBackbone):
            raise TypeError(f"Seq2SeqLM needs an encoder-decoder backbone (a Seq2SeqBackbone: "
                            f"T5Backbone…), got {type(backbone).__name__}.")
        inputs = dict(backbone.input)
        logits = backbone.logits(backbone(inputs)["decoder_sequence_output"])
        super().__init__(inputs=inputs, outputs=logits, name=name, **kwargs)
        self._init_task(backbone, preprocessor)
        self.generate_trace_count = 0
        self.compile()

    def compile(self, optimizer="auto", loss="auto", weighted_metrics="auto", **kwargs):
        """Defaults: Adam(1e-4); cross-entropy averaged over the target tokens; accuracy weighted
        the same way."""
        self._compile_token_loss(1e-4, optimizer, loss, weighted_metrics, **kwargs)

    # ----- training -----
    def encode(self, x, batch_size=8):
        """Model inputs (or raw inputs, through the preprocessor) → the same dict with the encoder
        inputs replaced by the encoder's ``encoder_output`` and ``encoder_padding_mask`` (numpy),
        the encoder run ``batch_size`` examples at a time in inference mode."""
        names = list(self.backbone.encoder_model.input)
        if not (isinstance(x, dict) and all(name in x for name in names)):
            x, _, _ = self._prepare(x)
        size = len(x[names[0]])
        parts = [self.backbone.encoder_model.predict_on_batch({n: x[n][i:i + batch_size] for n in names})
                 for i in range(0, size, batch_size)]
        encoded = {key: np.concatenate([ops.convert_to_numpy(p[key]) for p in parts])
                   for key in ("encoder_output", "encoder_padding_mask")}
        return {**{k: v for k, v in x.items() if k not in names}, **encoded}

    def decoder_trainer(self):
        """The ``DecoderTrainer`` of this model, compiled with its current optimizer and loss."""
        return self._shared_trainer(DecoderTrainer, loss=self.loss)

    def fit(self, x=None, y=None, batch_size=None, validation_data=None, sample_weight=None,
            cache_encoder_outputs=True, **kwargs):
        """Teacher forcing (see the module). With the encoder frozen and ``cache_encoder_outputs``
        (the default), ``encode`` runs it once and ``decoder_trainer()`` fits the decoder on its
        outputs; the history holds the loss alone. Otherwise (or on a ``tf.data.Dataset``) every
        step runs the whole model."""
        frozen = not self.backbone.encoder_model.trainable_weights
        if not (frozen and cache_encoder_outputs) or is_tf_dataset(x) or is_tf_dataset(validation_data):
            return super().fit(x, y, batch_size=batch_size, validation_data=validation_data,
                               sample_weight=sample_weight, **kwargs)
        encode_batch = batch_size or 8
        x, y, sample_weight = self._prepare(x, y, sample_weight, labelled=True)
        x = self.encode(x, encode_batch)
        if validation_data is not None:
            val_x, val_y, val_weight = self._prepare(*validation_data, labelled=True)
            validation_data = keras.utils.pack_x_y_sample_weight(self.encode(val_x, encode_batch), val_y,
                                                                 val_weight)
        with self._keeps_state_on_failure():
            return self.decoder_trainer().fit(x, y, batch_size=batch_size, validation_data=validation_data,
                                              sample_weight=sample_weight, **kwargs)

    # ----- generation -----
    def generate(self, inputs, max_length=None, sampler="greedy", stop_token_ids="auto", seed=0,
                 use_cache=True):
        """Generate decoder sequences for encoder inputs.

        Args:
            inputs: a string or a list of strings (needs a preprocessor), or a dict of the
                backbone's encoder inputs (``encoder_token_ids`` and ``encoder_padding_mask``,
                right-padded, for T5), optionally with
                ``decoder_token_ids`` (+ ``decoder_padding_mask``): a forced decoder prefix, which
                must start with the decoder start token.
            max_length: decoder length (start token included), at most the backbone's
                ``max_sequence_length``; defaults to the preprocessor's ``decoder_sequence_length``
                (without one: the encoder inputs' width). A decoder prefix longer is an error.
            sampler: a name (``"greedy"``, ``"top_k"``, ``"top_p"``, ``"beam"``…) or a ``Sampler``.
            stop_token_ids: ids that end a row; ``"auto"`` is the tokenizer's ``stop_token_ids``
                (none without a preprocessor); None generates to ``max_length``.
            seed: seed of the random samplers.
            use_cache: True (the default) keeps the decoder's self-attention cache and the
                cross-attention keys/values; False re-runs the decoder on the whole prefix at every
                step (the same tokens, slower: to measure what the cache buys).

        Returns strings for string input (one for one), else a dict of numpy
        ``decoder_token_ids`` (starting with the decoder start token) and ``decoder_padding_mask``.
        """
        sampler = get_sampler(sampler)
        stop = self._stop_token_ids(stop_token_ids)
        seed = check_generate_seed(seed)
        if not isinstance(use_cache, bool):
            raise ValueError(f"use_cache must be True or False, got {use_cache!r}.")
        limit = self.backbone.max_sequence_length
        if max_length is not None:
            check_max_length(max_length, limit)
        single = isinstance(inputs, str)
        texts = single or (isinstance(inputs, (list, tuple)) and len(inputs) and isinstance(inputs[0], str))
        if texts and self.preprocessor is None:
            raise ValueError("Seq2SeqLM has no preprocessor, so generate takes token ids (a dict with "
                             "encoder_token_ids and encoder_padding_mask), not text.")
        if not texts and not isinstance(inputs, dict):
            raise ValueError("generate takes a string, a list of strings, or a dict with "
                             f"encoder_token_ids and encoder_padding_mask; got {type(inputs).__name__}.")
        encoder = self.preprocessor.generate_preprocess([inputs] if single else inputs) if texts else \
            self._encoder_arrays(inputs)
        first = next(iter(encoder.values()))
        batch_size = first.shape[0]
        if batch_size == 0:
            raise ValueError("generate got no inputs: pass at least one.")
        if max_length is None:
            max_length = self.preprocessor.decoder_sequence_length if self.preprocessor is not None \
                else first.shape[1]
        max_length = check_max_length(max_length, limit)
        rows = self._decoder_prefix(inputs if not texts else {}, batch_size)
        check_prompt_ids(rows, self.backbone.vocabulary_size)
        token_ids, padding_mask = pad_prompts(rows, max_length, 0)
        check_room_to_generate(padding_mask)
        self.backbone.check_inputs({**encoder, "decoder_token_ids": token_ids,
                                    "decoder_padding_mask": padding_mask})
        shapes = tuple(sorted((name, value.shape) for name, value in encoder.items()))
        key = (shapes, max_length, sampler.key, stop, use_cache)
        run = self._generate_function(key, lambda *args: self._search(*args, sampler, stop, use_cache))
        out_ids, out_mask = run(encoder, token_ids, padding_mask, np.asarray(seed, "int32"))
        out_ids = ops.convert_to_numpy(out_ids).astype("int32")
        out_mask = ops.convert_to_numpy(out_mask).astype("int32")
        if not texts:
            return {"decoder_token_ids": out_ids, "decoder_padding_mask": out_mask}
        strings = self.preprocessor.generate_postprocess(out_ids, out_mask * (1 - padding_mask))
        return strings[0] if single else strings

    def _encoder_arrays(self, inputs):
        """The backbone's encoder inputs (every input not named ``decoder_…``) from ``inputs``."""
        names = sorted(name for name in self.backbone.input if not name.startswith("decoder_"))
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValueError(f"generate's inputs dict needs {names}; missing {missing}.")
        arrays = {name: np.asarray(inputs[name]) for name in names}
        shapes = {name: array.shape[:2] for name, array in arrays.items()}
        if any(array.ndim < 2 for array in arrays.values()) or len(set(shapes.values())) != 1:
            raise ValueError(f"The encoder inputs must be arrays of one (batch, length), got {shapes}.")
        return arrays

    def _decoder_prefix(self, inputs, batch_size):
        """Rows of decoder ids to start from: the start token, or the given ``decoder_token_ids``."""
        start = self.backbone.decoder_start_token_id
        if "decoder_token_ids" not in inputs:
            return [[start]] * batch_size
        ids = np.asarray(inputs["decoder_token_ids"])
        mask = np.asarray(inputs.get("decoder_padding_mask", np.ones(ids.shape, "int32")))
        if ids.ndim != 2 or mask.shape != ids.shape or ids.shape[0] != batch_size:
            raise ValueError(f"decoder_token_ids and decoder_padding_mask must be ({batch_size}, length) "
                             f"arrays, got {ids.shape} and {mask.shape}.")
        rows = [check_token_ids(row[m.astype(bool)], "decoder_token_ids") for row, m in zip(ids, mask)]
        if any(not row or row[0] != start for row in rows):
            raise ValueError(f"Every decoder_token_ids row must start with the decoder start token "
                             f"({start}); the model was trained to read it first.")
        return rows

    def next_token_logits(self, logits, index):
        """The logits ``(batch, vocab)`` of the token after position ``index``, before the sampler
        picks: a task that rules tokens out (``SpeechToText``'s suppressed tokens) masks them here."""
        return logits

    def _search(self, encoder_inputs, token_ids, padding_mask, seed, sampler, stop, use_cache=True):
        """Encode once, compute the cross-attention keys/values once, then let the sampler search
        with one cached decoder step (``next``); without the cache, ``next`` re-runs the decoder."""
        calls = layer_calls()
        encoder_inputs = {name: ops.convert_to_tensor(value, self.backbone.input[name].dtype)
                          for name, value in encoder_inputs.items()}
        token_ids = ops.convert_to_tensor(token_ids, "int32")
        padding_mask = ops.convert_to_tensor(padding_mask, "int32")
        encoder_output, encoder_mask = self.backbone.encode(encoder_inputs, calls)
        max_length = token_ids.shape[1]
        if not use_cache:
            return self._search_without_cache(encoder_output, encoder_mask, token_ids, padding_mask,
                                              seed, sampler, stop, calls)
        cache = self.backbone.init_cache(encoder_output, encoder_mask, max_length, calls)
        hidden_states = None
        if sampler.uses_hidden_states:
            hidden_states = ops.zeros((token_ids.shape[0], max_length, self.backbone.hidden_dim),
                                      self.backbone.compute_dtype)

        bias_table = self.backbone.step_bias_table(max_length, calls)  # a function of the position

        def step(token_ids, cache, index):
            hidden, cache = self.backbone.decode_step(token_ids, cache, index, calls, bias_table)
            hidden = hidden[:, -1]
            logits = cast_if_needed(self.backbone.logits(hidden, calls), "float32")
            return self.next_token_logits(logits, index), hidden, cache

        # Decoding starts after the first token; rows with a longer prefix keep their own tokens.
        start = ops.ones((), "int32")
        return sampler(step, token_ids, padding_mask, cache, start, stop, seed,
                       hidden_states=hidden_states)

    def _search_without_cache(self, encoder_output, encoder_mask, token_ids, padding_mask, seed,
                              sampler, stop, calls):
        """The sampler's search with a step that keeps no cache: the "cache" it hands on is the
        decoder prefix so far and the encoder output, and each step runs ``backbone.decode`` on
        the whole ``(batch, max_length)`` prefix (positions after ``index`` masked) and reads the
        hidden state at ``index``."""
        max_length = token_ids.shape[1]
        positions = ops.arange(max_length, dtype="int32")[None, :]

        def step(token, state, index):
            prefix = ops.where(positions == index, token, state["prefix"])
            mask = ops.cast(positions <= index, "int32") * ops.ones_like(prefix)
            hidden = self.backbone.decode(prefix, mask, state["encoder_output"], state["encoder_mask"],
                                          calls)
            hidden = ops.take(hidden, index, axis=1)
            logits = cast_if_needed(self.backbone.logits(hidden, calls), "float32")
            return self.next_token_logits(logits, index), hidden, {**state, "prefix": prefix}

        state = {"prefix": token_ids, "encoder_output": encoder_output, "encoder_mask": encoder_mask}
        hidden_states = None
        if sampler.uses_hidden_states:
            hidden_states = ops.zeros((token_ids.shape[0], max_length, self.backbone.hidden_dim),
                                      self.backbone.compute_dtype)
        return sampler(step, token_ids, padding_mask, state, ops.ones((), "int32"), stop, seed,
                       hidden_states=hidden_states)
