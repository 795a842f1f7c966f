"""A tokenizer defined by a Hugging Face ``tokenizer.json`` (Llama-3, SmolLM2, Mistral, Qwen... style).

``tokenizer.json`` is the Rust ``tokenizers`` library's own description of a whole pipeline
(normaliser, pre-tokenizer, model, decoder, added tokens), so the ids are those of the model's
``PreTrainedTokenizerFast`` by construction. This class adds the kcookbook contract around it: the
tf.data bridge, ``get_config`` + assets for presets, the special token ids that packers and
generation need, and ``apply_chat_template`` for chat models.

It is also the base of :class:`BytePairTokenizer` (GPT-2 ``vocab.json`` + ``merges.txt``) and of the
tokenizer the GGUF reader builds from a ``.gguf`` file: both build a ``tokenizers.Tokenizer`` and
hand it here.

    >>> from tokenizers import Tokenizer as RustTokenizer, models, pre_tokenizers
    >>> engine = RustTokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    >>> engine.pre_tokenizer = pre_tokenizers.Whitespace()
    >>> tokenizer = HuggingFaceTokenizer(engine)
    >>> tokenizer("hello world")
    [1, 2]
"""

import json
import os

import keras
from tokenizers import Tokenizer as _RustTokenizer

from kcookbook.components.tokenizer import Tokenizer


def _read_engine(tokenizer_json):
    """A ``tokenizers.Tokenizer`` from an object, a ``tokenizer.json`` path or its JSON text."""
    if isinstance(tokenizer_json, _RustTokenizer):
        return tokenizer_json
    if isinstance(tokenizer_json, (str, os.PathLike)):
        text = os.fspath(tokenizer_json)
        if text.lstrip().startswith("{"):
            try:
                return _RustTokenizer.from_str(text)
            except Exception as e:
                raise ValueError(f"The tokenizer JSON text is not a valid tokenizer.json ({e}).") from e
        if os.path.isdir(text):
            text = os.path.join(text, "tokenizer.json")
        if not os.path.exists(text):
            raise FileNotFoundError(f"No tokenizer.json at {text}.")
        try:
            return _RustTokenizer.from_file(text)
        except Exception as e:
            raise ValueError(
                f"{text} is not a tokenizer.json the `tokenizers` library can read ({e}). It may be "
                "corrupt, or written by a newer `tokenizers`: upgrade it, or re-save the file."
            ) from e
    raise TypeError(
        "HuggingFaceTokenizer takes a tokenizers.Tokenizer, a tokenizer.json path or its JSON text; got "
        f"{type(tokenizer_json).__name__}."
    )


@keras.saving.register_keras_serializable(package="kcookbook")
class HuggingFaceTokenizer(Tokenizer):
    """A tokenizer driven by a ``tokenizer.json`` pipeline.

    Args:
        tokenizer_json: a ``tokenizers.Tokenizer``, the path of a ``tokenizer.json`` (or of the folder
            holding one), or the JSON text itself.
        start_token: the beginning-of-sequence token (``<s>``, ``<|begin_of_text|>``), or None.
        end_token: the end-of-sequence token; generation stops on it.
        pad_token: the padding token; defaults to ``end_token`` (decoder models rarely have one).
        add_start_token: whether a preprocessor should put ``start_token`` before the text. Llama
            models want it; SmolLM2 and GPT-2 do not.
        chat_template: a Jinja2 chat template (the ``chat_template`` of ``tokenizer_config.json``
            or of a GGUF file), used by :meth:`apply_chat_template`.
        stop_tokens: tokens besides ``end_token`` that end a generated reply (a chat model's end
            of turn, Llama 3's ``<|eot_id|>``); generation stops on them too.

    ``__call__`` returns the ids of the text alone: no special tokens are added (packers and
    preprocessors add them), but special tokens written in the text (``<|im_start|>``) stay whole.
    """

    ASSET_CONFIG_KEYS = ("tokenizer_json",)
    TOKENIZER_JSON_FILE = "tokenizer.json"

    def __init__(self, tokenizer_json, start_token=None, end_token=None, pad_token=None,
                 add_start_token=False, chat_template=None, stop_tokens=(), name=None):
        super().__init__(name=name)
        self._engine = _read_engine(tokenizer_json)
        self.start_token = start_token
        self.end_token = end_token
        self.pad_token = pad_token
        self.add_start_token = bool(add_start_token)
        self.chat_template = chat_template
        self.stop_tokens = tuple(stop_tokens or ())
        roles = [("start_token", start_token), ("end_token", end_token),
                 ("pad_token", pad_token)] + [("stop_tokens", t) for t in self.stop_tokens]
        for role, token in roles:
            if token is not None and self._engine.token_to_id(token) is None:
                raise ValueError(f"{role}={token!r} is not in the vocabulary of this tokenizer.")
        self._vocabulary = None

    # ----- the contract -----
    def encode_batch(self, texts):
        encodings = self._engine.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encodings]

    def decode_batch(self, ids_batch, skip_special_tokens=True):
        return self._engine.decode_batch([[int(i) for i in ids] for ids in ids_batch],
                                         skip_special_tokens=skip_special_tokens)

    def get_vocabulary(self):
        if self._vocabulary is None:
            vocab = self._engine.get_vocab(with_added_tokens=True)
            tokens = [None] * (max(vocab.values()) + 1 if vocab else 0)
            for token, index in vocab.items():
                tokens[index] = token
            self._vocabulary = tokens
        return list(self._vocabulary)

    @property
    def vocabulary_size(self):
        return self._engine.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token):
        index = self._engine.token_to_id(token)
        if index is None:
            raise KeyError(f"Token {token!r} is not in the vocabulary of {self.name}.")
        return index

    def id_to_token(self, token_id):
        token = self._engine.id_to_token(int(token_id))
        if token is None:
            raise KeyError(f"Id {token_id} is outside the vocabulary of {self.name} "
                           f"({self.vocabulary_size} tokens).")
        return token

    @property
    def backend_tokenizer(self):
        """The underlying ``tokenizers.Tokenizer`` (the Rust engine)."""
        return self._engine

    # ----- special tokens, by the names packers and generation use -----
    def _id_or_none(self, token):
        return None if token is None else self._engine.token_to_id(token)

    @property
    def start_token_id(self):
        return self._id_or_none(self.start_token)

    @property
    def end_token_id(self):
        return self._id_or_none(self.end_token)

    @property
    def pad_token_id(self):
        pad = self._id_or_none(self.pad_token if self.pad_token is not None else self.end_token)
        return 0 if pad is None else pad

    @property
    def special_token_ids(self):
        """Ids of every token the pipeline treats as special (skipped when decoding)."""
        decoder = self._engine.get_added_tokens_decoder()
        return sorted(i for i, token in decoder.items() if token.special)

    # ----- serialisation -----
    def get_config(self):
        config = super().get_config()
        config.update({
            "tokenizer_json": self._engine.to_str(),
            "start_token": self.start_token,
            "end_token": self.end_token,
            "pad_token": self.pad_token,
            "add_start_token": self.add_start_token,
            "chat_template": self.chat_template,
            "stop_tokens": list(self.stop_tokens),
        })
        return config

    def save_assets(self, directory):
        self._engine.save(os.path.join(directory, self.TOKENIZER_JSON_FILE))

    @classmethod
    def config_with_assets(cls, config, directory):
        return dict(config, tokenizer_json=os.path.join(directory, cls.TOKENIZER_JSON_FILE))

    @classmethod
    def from_hf_folder(cls, folder, **kwargs):
        """Build from a Hugging Face folder: ``tokenizer.json`` + ``tokenizer_config.json``."""
        config_path = os.path.join(folder, "tokenizer_config.json")
        config = {}
        if os.path.exists(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)

        def token(value):
            return value.get("content") if isinstance(value, dict) else value

        options = {
            "start_token": token(config.get("bos_token")),
            "end_token": token(config.get("eos_token")),
            "pad_token": token(config.get("pad_token")),
            "add_start_token": config.get("add_bos_token", False),
            "chat_template": config.get("chat_template"),
        }
        if isinstance(options["chat_template"], list):  # named templates: [{"name", "template"}]
            named = {t.get("name"): t.get("template") for t in options["chat_template"]}
            options["chat_template"] = named.get("default", next(iter(named.values()), None))
        template_file = os.path.join(folder, "chat_template.jinja")
        if options["chat_template"] is None and os.path.exists(template_file):
            with open(template_file, encoding="utf-8") as f:
                options["chat_template"] = f.read()
        options.update(kwargs)
        return cls(os.path.join(folder, cls.TOKENIZER_JSON_FILE), **options)
