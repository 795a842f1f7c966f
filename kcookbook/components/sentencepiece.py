"""SentencePiece tokenization (Gemma, Llama-2, Mistral, T5 ``.model`` files).

A SentencePiece model is one protobuf file holding the pieces, their scores, the algorithm (unigram
or BPE, with or without byte fallback) and the text normalisation. The engine is Google's
``sentencepiece`` library itself (pin ``sentencepiece==0.2.3``), so the ids are those the model was
trained with; a batch of texts is encoded in one C++ call.

The file travels inside a preset as ``assets/tokenizer/vocabulary.spm`` (KerasHub's name).

    >>> tokenizer = SentencePieceTokenizer("tokenizer.model")  # doctest: +SKIP
    >>> tokenizer("The quick brown fox.")  # doctest: +SKIP
    [415, 2936, 9060, 285, 1142, 28723]
"""

import base64
import os

import keras

from kcookbook.components.tokenizer import Tokenizer


def _import_sentencepiece():
    try:
        import sentencepiece
    except ImportError as e:
        raise ImportError(
            "SentencePieceTokenizer needs the `sentencepiece` package: pip install sentencepiece==0.2.3"
        ) from e
    return sentencepiece


def _read_proto(proto):
    """The serialized model: from bytes, a ``.model`` path, or base64 text (as in get_config)."""
    if isinstance(proto, (bytes, bytearray)):
        return bytes(proto)
    if isinstance(proto, (str, os.PathLike)):
        path = os.fspath(proto)
        if os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
        if path.startswith("base64:"):
            return base64.b64decode(path[len("base64:"):])
        raise FileNotFoundError(f"SentencePiece model file not found: {path}")
    raise TypeError(f"proto must be a .model path or its bytes, got {type(proto).__name__}.")


@keras.saving.register_keras_serializable(package="kcookbook")
class SentencePieceTokenizer(Tokenizer):
    """Tokenizer for a SentencePiece ``.model``.

    Args:
        proto: the path of the ``.model`` file, or its bytes.
        add_start_token: whether a preprocessor should put the start token (``<s>``, ``<bos>``)
            before the text; defaults to True when the model has one (Llama, Gemma), as they expect.
        chat_template: an optional Jinja2 chat template (from ``tokenizer_config.json``).
        start_token, end_token, pad_token: override the model's own ``bos``/``eos``/``pad`` pieces.
        stop_tokens: pieces besides ``end_token`` that end a generated reply (a chat model's end of
            turn, Gemma's ``<end_of_turn>``); generation stops on them too.
    """

    ASSET_CONFIG_KEYS = ("proto",)
    PROTO_FILE = "vocabulary.spm"

    def __init__(self, proto, add_start_token=None, chat_template=None, start_token=None, end_token=None,
                 pad_token=None, stop_tokens=(), name=None):
        super().__init__(name=name)
        if proto is None:
            raise ValueError("SentencePieceTokenizer needs a .model file (proto=path or bytes); a preset keeps "
                             "it in assets/tokenizer/vocabulary.spm.")
        spm = _import_sentencepiece()
        self._proto = _read_proto(proto)
        self._engine = spm.SentencePieceProcessor()
        try:
            self._engine.LoadFromSerializedProto(self._proto)
        except Exception as e:
            raise ValueError(f"Not a valid SentencePiece model ({str(e)[:200]}); the file may be corrupt.") from e
        size = self._engine.get_piece_size()

        def piece(index):
            return self._engine.id_to_piece(index) if 0 <= index < size else None

        self.start_token = start_token if start_token is not None else piece(self._engine.bos_id())
        self.end_token = end_token if end_token is not None else piece(self._engine.eos_id())
        self.pad_token = pad_token if pad_token is not None else piece(self._engine.pad_id())
        self.stop_tokens = tuple(stop_tokens or ())
        roles = [("start_token", self.start_token), ("end_token", self.end_token),
                 ("pad_token", self.pad_token)] + [("stop_tokens", t) for t in self.stop_tokens]
        for role, token in roles:
            if token is not None and self._engine.piece_to_id(token) == self._engine.unk_id() and \
                    token != piece(self._engine.unk_id()):
                raise ValueError(f"{role}={token!r} is not a piece of this SentencePiece model.")
        self.add_start_token = self.start_token is not None if add_start_token is None else bool(add_start_token)
        self.chat_template = chat_template

    # ----- the contract -----
    def encode_batch(self, texts):
        return self._engine.encode(list(texts), out_type=int)

    def decode_batch(self, ids_batch, skip_special_tokens=True):
        rows = [[int(i) for i in ids] for ids in ids_batch]
        if skip_special_tokens:
            return self._engine.decode(rows)
        # Control pieces (<s>, </s>, <pad>) decode to nothing in SentencePiece; spell them out.
        out = []
        for row in rows:
            text, segment = "", []
            for index in row:
                if self._engine.is_control(index):
                    text += self._engine.decode(segment) + self._engine.id_to_piece(index)
                    segment = []
                else:
                    segment.append(index)
            out.append(text + self._engine.decode(segment))
        return out

    def get_vocabulary(self):
        return [self._engine.id_to_piece(i) for i in range(self._engine.get_piece_size())]

    @property
    def vocabulary_size(self):
        return self._engine.get_piece_size()

    def token_to_id(self, token):
        index = self._engine.piece_to_id(token)
        if index == self._engine.unk_id() and token != self._engine.id_to_piece(index):
            raise KeyError(f"Token {token!r} is not in the vocabulary of {self.name}.")
        return index

    def id_to_token(self, token_id):
        if not 0 <= int(token_id) < self.vocabulary_size:
            raise KeyError(f"Id {token_id} is outside the vocabulary of {self.name} ({self.vocabulary_size}).")
        return self._engine.id_to_piece(int(token_id))

    @property
    def start_token_id(self):
        return None if self.start_token is None else self._engine.piece_to_id(self.start_token)

    @property
    def end_token_id(self):
        return None if self.end_token is None else self._engine.piece_to_id(self.end_token)

    @property
    def pad_token_id(self):
        if self.pad_token is not None:
            return self._engine.piece_to_id(self.pad_token)
        return 0

    # ----- training -----
    @classmethod
    def train(cls, texts, vocabulary_size, model_type="unigram", character_coverage=1.0, seed=0,
              **kwargs):
        """Train a SentencePiece model on ``texts`` with T5's special pieces and return its tokenizer.

        The ``sentencepiece`` trainer itself (single-threaded and seeded, so the same texts give the
        same model), with T5's layout: ``<pad>`` 0, ``</s>`` 1 (the end token), ``<unk>`` 2, no start
        token; ``transformers.T5Tokenizer`` reads the saved file (``save_model``) with the same ids.

        Args:
            texts: an iterable of strings (sentences or lines; each is one training sentence).
            vocabulary_size: pieces in the model, the three special ones included.
            model_type: ``"unigram"`` (T5's) or ``"bpe"``.
            character_coverage: the fraction of characters kept as pieces (the rest become
                ``<unk>``); 1.0 keeps every character seen.
            seed: the trainer's random seed.
            **kwargs: passed to the constructor (``stop_tokens``…).

        >>> tokenizer = SentencePieceTokenizer.train(["to be or not to be", "that is the question"] * 5,
        ...                                          vocabulary_size=16)
        >>> tokenizer.vocabulary_size, tokenizer.pad_token_id, tokenizer.end_token_id
        (16, 0, 1)
        >>> tokenizer.detokenize(tokenizer("not to be"))
        'not to be'
        """
        import io

        spm = _import_sentencepiece()
        if isinstance(texts, str):
            raise TypeError("SentencePieceTokenizer.train takes an iterable of strings (e.g. a list of "
                            "sentences), not one string: wrap it in a list.")
        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}.")
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=model, vocab_size=vocabulary_size,
                model_type=model_type, character_coverage=character_coverage, num_threads=1,
                minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                eos_piece="</s>", unk_piece="<unk>")
        except RuntimeError as e:
            raise ValueError(f"SentencePiece could not train a {vocabulary_size}-piece {model_type} model "
                             f"on these texts ({str(e)[:300]}); pass more text or a smaller "
                             "vocabulary_size.") from e
        return cls(model.getvalue(), **kwargs)

    def save_model(self, path):
        """Write the SentencePiece ``.model`` file (e.g. ``spiece.model`` for transformers'
        ``T5Tokenizer``, ``tokenizer.model`` for ``LlamaTokenizer``)."""
        with open(path, "wb") as f:
            f.write(self._proto)

    # ----- serialisation -----
    def get_config(self):
        config = super().get_config()
        config.update({
            "proto": "base64:" + base64.b64encode(self._proto).decode("ascii"),
            "add_start_token": self.add_start_token,
            "chat_template": self.chat_template,
            "start_token": self.start_token,
            "end_token": self.end_token,
            "pad_token": self.pad_token,
            "stop_tokens": list(self.stop_tokens),
        })
        return config

    def save_assets(self, directory):
        with open(os.path.join(directory, self.PROTO_FILE), "wb") as f:
            f.write(self._proto)

    @classmethod
    def config_with_assets(cls, config, directory):
        return dict(config, proto=os.path.join(directory, cls.PROTO_FILE))
