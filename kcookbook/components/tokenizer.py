"""The tokenizer contract shared by every tokenizer in kcookbook.

A tokenizer turns text into integer ids and back. It is a plain Python object (not a Keras layer):
tokenization runs on the CPU, before the model, so it needs no backend. It works on

* a ``str`` → a ``list[int]``;
* a list (or numpy array) of strings → a list of ``list[int]``;
* a ``tf.Tensor`` of strings, e.g. inside ``tf.data.Dataset.map`` → a ``tf.RaggedTensor`` of int32.
  Every backend feeds ``fit`` through ``tf.data``, so this path is what lets a preprocessor run in a
  pipeline. It is a bridge (``tf.numpy_function``) into the same fast eager code, so the ids are the
  same by construction.

Subclasses implement ``encode_batch(list_of_str) -> list[list[int]]``, ``decode_batch``,
``get_vocabulary``, ``get_config`` and the asset hooks.
"""

import json
import os
import re

import keras
import numpy as np

from kcookbook.components.inputs import is_tf_tensor, valid_unicode
from kcookbook.components.preset_entry import export_to_transformers, load_preset
from kcookbook.presets.errors import PresetError


def _as_text(item):
    if isinstance(item, bytes):
        return item.decode("utf-8", errors="replace")
    if isinstance(item, (str, np.str_)):
        return valid_unicode(str(item))
    raise TypeError(
        f"A tokenizer takes strings, but got an element of type {type(item).__name__}: {item!r:.60}. "
        "Pass a str, a list of str, or a tf.string tensor."
    )


def render_chat_template(template, messages, add_generation_prompt=True, **variables):
    """Render a Hugging Face chat template (Jinja2) the way transformers does.

    transformers renders in a sandbox with ``trim_blocks`` and ``lstrip_blocks``, a ``tojson``
    filter, and ``raise_exception``/``strftime_now`` helpers; templates written for it rely on them.
    """
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # pragma: no cover - jinja2 ships with the project's dependencies
        raise ImportError("Chat templates need jinja2: pip install jinja2.") from e
    import datetime

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages,
                                            add_generation_prompt=add_generation_prompt, **variables)


class Tokenizer:
    """Base class: text → token ids. See the module docstring for the input forms."""

    # Config entries that live in asset files inside a preset (``assets/tokenizer/``), not in JSON.
    ASSET_CONFIG_KEYS = ()

    def __init__(self, name=None):
        self.name = name or re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()

    # ----- what subclasses implement -----
    def encode_batch(self, texts):
        raise NotImplementedError

    def decode_batch(self, ids_batch, skip_special_tokens=True):
        raise NotImplementedError

    def get_vocabulary(self):
        raise NotImplementedError

    def save_assets(self, directory):
        """Write the files the tokenizer needs (vocabulary, merges...) into ``directory``."""
        raise NotImplementedError

    @classmethod
    def config_with_assets(cls, config, directory):
        """Return ``config`` pointing at the asset files in ``directory`` (the inverse of save_assets)."""
        raise NotImplementedError

    def get_config(self):
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # ----- shared behaviour -----
    # A Jinja2 chat template (tokenizer_config.json's or a GGUF file's), set by the tokenizers whose
    # models chat; apply_chat_template renders it with the tokenizer's start, end and pad tokens.
    chat_template = None
    start_token = end_token = pad_token = None

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False, **variables):
        """Format a conversation with the model's chat template.

        ``messages`` is a list of ``{"role": ..., "content": ...}`` dicts (or one such list per
        conversation). Returns the prompt text, or its ids with ``tokenize=True``.
        """
        if not self.chat_template:
            raise ValueError(
                f"{self.name} has no chat template: its source (tokenizer_config.json or GGUF file) "
                "did not provide one. Pass chat_template=... when building the tokenizer."
            )
        batched = bool(messages) and isinstance(messages[0], (list, tuple))
        conversations = messages if batched else [messages]
        specials = {"bos_token": self.start_token or "", "eos_token": self.end_token or "",
                    "pad_token": self.pad_token or ""}
        texts = [render_chat_template(self.chat_template, list(c), add_generation_prompt,
                                      **{**specials, **variables}) for c in conversations]
        out = self(texts) if tokenize else texts
        return out if batched else out[0]

    @property
    def stop_token_ids(self):
        """Ids that end a generated reply (``CausalLM.generate(stop_token_ids="auto")``): the end
        token, then the tokenizer's ``stop_tokens``: the tokens chat models end a reply with instead
        (Gemma's ``<end_of_turn>``, Llama 3's ``<|eot_id|>``)."""
        ids = [getattr(self, "end_token_id", None)]
        ids += [self.token_to_id(token) for token in getattr(self, "stop_tokens", ())]
        return tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    @property
    def vocabulary_size(self):
        return len(self.get_vocabulary())

    def token_to_id(self, token):
        raise NotImplementedError

    def id_to_token(self, token_id):
        return self.get_vocabulary()[int(token_id)]

    def __call__(self, inputs):
        if isinstance(inputs, (str, bytes, np.str_)):
            return self.encode_batch([_as_text(inputs)])[0]
        if is_tf_tensor(inputs):
            return self._tf_call(inputs)
        if isinstance(inputs, np.ndarray) and inputs.ndim == 0:
            return self(inputs.item())
        try:
            items = list(inputs)
        except TypeError:
            raise TypeError(
                f"A tokenizer takes a str, a list of str or a tf.string tensor; got "
                f"{type(inputs).__name__}."
            ) from None
        return self.encode_batch([_as_text(t) for t in items])

    tokenize = __call__

    def detokenize(self, ids, skip_special_tokens=True):
        """Ids → text. A flat sequence of ints gives a str; a batch gives a list of str."""
        ids = ids.numpy() if hasattr(ids, "numpy") and not isinstance(ids, np.ndarray) else ids
        ids = keras.ops.convert_to_numpy(ids) if not isinstance(ids, (list, tuple, np.ndarray)) else ids
        if len(ids) == 0:
            return ""
        first = ids[0]
        if np.ndim(first) == 0:
            return self.decode_batch([[int(i) for i in ids]], skip_special_tokens)[0]
        return self.decode_batch([[int(i) for i in row] for row in ids], skip_special_tokens)

    def _tf_call(self, inputs):
        import tensorflow as tf

        def encode_flat(strings):
            # A scalar tf.string arrives as bytes, a batch as an object array.
            flat = np.asarray(strings, dtype=object).reshape(-1)
            ids = self.encode_batch([_as_text(s) for s in flat])
            lengths = np.array([len(r) for r in ids], dtype=np.int64)
            values = np.fromiter((i for r in ids for i in r), dtype=np.int32, count=int(lengths.sum()))
            return values, lengths

        values, lengths = tf.numpy_function(encode_flat, [inputs], [tf.int32, tf.int64], stateful=False)
        values.set_shape([None])
        lengths.set_shape([None])
        ragged = tf.RaggedTensor.from_row_lengths(values, lengths)
        if inputs.shape.rank == 0:
            return ragged[0]
        return ragged

    @classmethod
    def from_preset(cls, handle, **kwargs):
        """The tokenizer of a preset (built-in name, directory, ``kaggle://`` or ``hf://``).

        >>> tokenizer = Tokenizer.from_preset("all_minilm_l6_v2")  # doctest: +SKIP
        >>> tokenizer("The quick brown fox.")  # doctest: +SKIP
        [1996, 4248, 2829, 4419, 1012]
        """
        loader = load_preset(handle)
        tokenizer = loader.load_tokenizer(**kwargs)
        if tokenizer is None:
            raise PresetError(
                f"Preset {handle!r} ({loader.path}) has no tokenizer: it holds no tokenizer.json + "
                "assets/tokenizer/ (KerasHub layout) nor vocab.txt/tokenizer.json (Hugging Face). Save "
                "the preset with its tokenizer, or build the tokenizer from a vocabulary yourself."
            )
        if not isinstance(tokenizer, cls):
            raise TypeError(
                f"Preset {handle!r} has a {type(tokenizer).__name__}, which is not a {cls.__name__}. "
                f"Call {type(tokenizer).__name__}.from_preset or Tokenizer.from_preset instead."
            )
        return tokenizer

    def export_to_transformers(self, directory):
        """Write Hugging Face tokenizer files (``tokenizer.json`` or ``tokenizer.model``, and
        ``tokenizer_config.json``) that ``transformers.AutoTokenizer.from_pretrained`` loads."""
        export_to_transformers(self, directory)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} vocabulary_size={self.vocabulary_size}>"


def read_vocabulary_file(path):
    """One token a line, as in BERT's ``vocab.txt``; the line number is the id."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"Vocabulary file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]
