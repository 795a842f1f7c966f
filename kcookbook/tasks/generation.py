"""What every text generator shares (``CausalLM``, ``Seq2SeqLM``): stop tokens, and the generation
loop compiled once per backend and kept per shapes and options.

* jax: ``jax.jit`` of a stateless function of the variables' values;
* TensorFlow: ``tf.function(jit_compile=True)``;
* torch: eager under ``no_grad`` (the loop writes its caches in place).

Arguments may be arrays or dicts of arrays (an encoder's inputs). ``generate_trace_count`` counts
compilations (traces on jax/TensorFlow, loops built on torch).
"""

import keras
from keras import ops

from kcookbook.tasks.generate_arguments import check_token_ids


class GenerationLoop:
    """Mixin of a ``Task`` that generates: ``_stop_token_ids``, ``_generate_function`` and the
    token-level ``compile`` defaults (``_compile_token_loss``)."""

    def _compile_token_loss(self, learning_rate, optimizer="auto", loss="auto", weighted_metrics="auto",
                            **kwargs):
        """``"auto"``: Adam(learning_rate); cross-entropy over the vocabulary averaged over the
        weighted (learned) tokens; accuracy weighted the same way."""
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(learning_rate)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction="mean_with_sample_weight")
        if weighted_metrics == "auto":
            weighted_metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        keras.Model.compile(self, optimizer=optimizer, loss=loss, weighted_metrics=weighted_metrics,
                            **kwargs)

    def _stop_token_ids(self, stop_token_ids):
        """``"auto"``: the tokenizer's ``stop_token_ids`` (none without a preprocessor); None: none;
        else the ids, each inside the vocabulary."""
        if isinstance(stop_token_ids, str) and stop_token_ids == "auto":
            return () if self.preprocessor is None else self.preprocessor.tokenizer.stop_token_ids
        if stop_token_ids is None:
            return ()
        ids = check_token_ids(stop_token_ids, "stop_token_ids")
        vocabulary_size = self.backbone.vocabulary_size
        outside = [i for i in ids if not 0 <= i < vocabulary_size]
        if outside:
            raise ValueError(f"stop_token_ids has ids outside the vocabulary [0, {vocabulary_size}): "
                             f"{outside[:5]}. Pass ids the model can generate, or None.")
        return tuple(ids)

    def _generate_function(self, key, loop):
        """The compiled ``loop`` for ``key`` (shapes and options), built once, then reused. The
        variable set is part of the key: enable_lora/merge_lora add or remove variables, and a loop
        compiled before that would keep running the old weights."""
        if not hasattr(self, "_generate_functions"):
            self._generate_functions = {}
        key = tuple(key) + (tuple(id(v) for v in self.variables),)
        if key not in self._generate_functions:
            self._generate_functions[key] = self._compile_loop(loop)
        return self._generate_functions[key]

    def _compile_loop(self, loop):
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            variables = list(self.variables)

            def stateless(values, *args):
                self.generate_trace_count += 1
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return loop(*args)

            compiled = jax.jit(stateless)
            return lambda *args: compiled([v.value for v in variables], *args)
        if backend == "tensorflow":
            import tensorflow as tf

            def traced(*args):
                self.generate_trace_count += 1
                return loop(*args)

            compiled = tf.function(traced, jit_compile=True)
            return lambda *args: compiled(*keras.tree.map_structure(tf.convert_to_tensor, list(args)))
        if backend == "torch":
            import torch

            self.generate_trace_count += 1

            def eager(*args):
                with torch.no_grad():
                    return loop(*keras.tree.map_structure(ops.convert_to_tensor, list(args)))

            return eager
        raise NotImplementedError(f"generate does not support the {backend} backend.")
