"""Log-likelihood scoring for causal language models (``CausalLM.score``).

Kept apart from generation: scoring runs the whole sequence through the backbone once and reads
``log p(token | the tokens before it)``, no cache and no sampling. It is what classification with a
generative model needs (compare the log-likelihood of label words after a prompt), and what
perplexity is made of.
"""

import numpy as np
from keras import ops

from kcookbook.components.packers import pad_prompts
from kcookbook.components.torch_speedups import layer_calls


class LogLikelihoodScoring:
    """Mixin for ``CausalLM``: needs ``backbone``, ``preprocessor`` and ``_compile_loop``."""

    def score(self, prompts, continuations=None, batch_size=16):
        """Log-likelihoods under the model: per token, or of continuations after prompts.

        * ``score(texts)`` returns a dict of numpy arrays ``token_ids``, ``padding_mask`` and
          ``log_probabilities`` (float32, right-padded to the longest text): entry ``[i, t]`` is
          ``log p(token t | the tokens before it)``; 0 on the first token and on padding.
        * ``score(prompts, continuations)`` returns the summed log-probability of each
          continuation's tokens after its prompt (the prompt's own tokens are not counted).
          ``continuations`` holds one continuation per prompt (result ``(n,)``) or a list of
          candidates per prompt (result ``(n, k)``): the argmax over label words classifies.

        Inputs are strings (needs a preprocessor; prompts get the start token as in ``generate``,
        continuations are tokenized on their own and appended, no end token) or lists of token ids.
        Sequences are batched ``batch_size`` at a time and padded to a multiple of 16 tokens; one
        compiled function is kept per padded shape. A candidate of one token costs no extra pass:
        its log-probability is read from the prompt's last position.

            >>> lm = CausalLM.from_preset("smollm2_135m_instruct")  # doctest: +SKIP
            >>> lm.score(["The capital of France is"], [[" Paris", " Rome"]])  # doctest: +SKIP
            array([[ -2.1, -9.7]], dtype=float32)
        """
        single = isinstance(prompts, str)
        prompt_ids, is_text = self._score_ids([prompts] if single else prompts, start=True)
        if continuations is None:
            rows = self._token_log_probabilities(prompt_ids, batch_size)
            token_ids, padding_mask = pad_prompts(prompt_ids, max(len(r) for r in prompt_ids))
            log_probabilities = np.zeros(token_ids.shape, "float32")
            for i, values in enumerate(rows):
                log_probabilities[i, :len(values)] = values
            return {"token_ids": token_ids, "padding_mask": padding_mask,
                    "log_probabilities": log_probabilities}
        if single:
            continuations = [continuations]
        if len(continuations) != len(prompt_ids):
            raise ValueError(f"{len(prompt_ids)} prompts but {len(continuations)} continuations: give one "
                             "continuation (or one list of candidates) per prompt.")
        first = continuations[0] if len(continuations) else None
        per_prompt = (isinstance(first, (list, tuple)) and len(first) > 0
                      and (is_text or isinstance(first[0], (list, tuple, np.ndarray))))
        candidates = continuations if per_prompt else [[c] for c in continuations]
        counts = {len(c) for c in candidates}
        if len(counts) > 1:
            raise ValueError(f"Every prompt needs the same number of candidates, got {sorted(counts)}.")
        candidate_ids = [self._score_ids(c, start=False)[0] for c in candidates]
        scores = np.zeros((len(prompt_ids), counts.pop()), "float32")
        # One-token candidates: read from the prompt's last position (one pass per prompt).
        short = sorted({i for i, cands in enumerate(candidate_ids) if any(len(c) == 1 for c in cands)})
        if short:
            last = self._token_log_probabilities([prompt_ids[i] for i in short], batch_size, last=True)
            for i, values in zip(short, last):
                for j, ids in enumerate(candidate_ids[i]):
                    if len(ids) == 1:
                        scores[i, j] = values[ids[0]]
        # Longer candidates: the whole prompt + continuation, summed over the continuation.
        pairs = [(i, j) for i, cands in enumerate(candidate_ids) for j, ids in enumerate(cands) if len(ids) > 1]
        if pairs:
            rows = self._token_log_probabilities(
                [prompt_ids[i] + candidate_ids[i][j] for i, j in pairs], batch_size)
            for (i, j), values in zip(pairs, rows):
                scores[i, j] = values[-len(candidate_ids[i][j]):].sum()
        if not per_prompt:
            scores = scores[:, 0]
        return scores[0] if single else scores

    def _score_ids(self, inputs, start):
        """Strings or id lists → (lists of ids, whether the input was text)."""
        inputs = list(inputs)
        if not inputs:
            raise ValueError("score got no input: pass at least one prompt.")
        is_text = isinstance(inputs[0], (str, bytes))
        if is_text:
            if self.preprocessor is None:
                raise ValueError(f"{type(self).__name__} has no preprocessor, so score takes lists of "
                                 "token ids, not text.")
            pre = self.preprocessor
            ids = pre.prompt_ids(inputs) if start else pre.encode_texts(inputs)
        else:
            ids = [[int(t) for t in np.asarray(row).reshape(-1)] for row in inputs]
        if any(len(row) == 0 for row in ids):
            raise ValueError("score got an empty prompt or continuation: a prompt needs at least one token "
                             "(e.g. the start token) and a continuation at least one token to score.")
        return ids, is_text

    def _token_log_probabilities(self, rows, batch_size, last=False):
        """Per row: log p of each token given the ones before (first entry 0), or with ``last``
        the log-softmax over the vocabulary after the row's last token. Rows are sorted by length
        so each batch is padded little; results come back in the input order."""
        limit = getattr(self.backbone, "max_sequence_length", None)
        longest = max(len(r) for r in rows)
        if limit and longest > limit:
            raise ValueError(f"A sequence to score has {longest} tokens, more than the model's "
                             f"max_sequence_length={limit}. Shorten the prompt or continuation.")
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        results = [None] * len(rows)
        for begin in range(0, len(rows), batch_size):
            chosen = order[begin:begin + batch_size]
            width = -(-max(len(rows[i]) for i in chosen) // 16) * 16
            width = min(width, limit) if limit else width
            batch = [rows[i] for i in chosen] + [rows[chosen[0]][:1]] * (batch_size - len(chosen))
            token_ids, padding_mask = pad_prompts(batch, width)
            run = self._score_function(batch_size, width, last)
            out = ops.convert_to_numpy(run(token_ids, padding_mask, np.asarray(0, "int32")))
            for k, i in enumerate(chosen):
                results[i] = out[k] if last else out[k, :len(rows[i])]
        return results

    def _score_function(self, batch_size, length, last):
        if not hasattr(self, "_score_functions"):
            self._score_functions = {}
        key = (batch_size, length, last, tuple(id(v) for v in self.variables))
        if key not in self._score_functions:
            def loop(token_ids, padding_mask, seed):
                calls = layer_calls()  # torch: layers called directly (see torch_speedups)
                hidden = self.backbone.hidden_states(token_ids, padding_mask, calls)
                if last:
                    index = ops.sum(padding_mask, axis=1) - 1
                    hidden = ops.take_along_axis(hidden, ops.reshape(index, (-1, 1, 1)), axis=1)[:, 0]
                    logits = ops.cast(self.backbone.logits(hidden, calls), "float32")
                    return ops.log_softmax(logits, axis=-1)
                logits = ops.cast(self.backbone.logits(hidden, calls), "float32")
                following = ops.take_along_axis(logits[:, :-1], token_ids[:, 1:, None], axis=-1)[..., 0]
                log_p = following - ops.logsumexp(logits[:, :-1], axis=-1)
                log_p = ops.concatenate([ops.zeros_like(log_p[:, :1]), log_p], axis=1)
                return log_p * ops.cast(padding_mask, "float32")
            self._score_functions[key] = self._compile_loop(loop)
        return self._score_functions[key]
