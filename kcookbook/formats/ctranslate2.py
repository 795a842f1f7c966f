"""CTranslate2 checkpoints (``model.bin``, binary spec version 6): a small numpy reader and its loader.

faster-whisper and CTranslate2 store a model as one file of named variables:

    uint32 version (6) · string spec name ("WhisperSpec") · uint32 spec revision
    uint32 variable count, then per variable:
        string name · uint8 rank · uint32 × rank dims · uint8 dtype · uint32 byte count · bytes
    uint32 alias count, then per alias: string alias · string variable it names

(strings: uint16 length including a final NUL, then the bytes; little-endian throughout). Variables
hold weights (``encoder/layer_0/self_attention/linear_0/weight``…) and scalar settings
(``decoder/num_heads``). :func:`read_ctranslate2` returns them as numpy arrays; the family's converter
(``Converter.hf_from_ctranslate2``) turns them into a Hugging Face config and tensors, so
:class:`CTranslate2Loader` builds the model exactly as from a ``save_pretrained`` folder.

    >>> model = read_ctranslate2("model.bin")  # doctest: +SKIP
    >>> model.spec, model.variables["decoder/num_heads"]  # doctest: +SKIP
    ('WhisperSpec', array(8, dtype=int16))
"""

import dataclasses
import os
import struct

import numpy as np

from kcookbook.formats import converters
from kcookbook.formats.loaders import HuggingFaceLoader, PresetLoader
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

MODEL_FILE = "model.bin"
BINARY_VERSION = 6
# CTranslate2's DataType enum, in its order.
DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
# The spec name in the file → the converter family that reads it.
SPECS = {"WhisperSpec": "whisper"}


@dataclasses.dataclass
class CTranslate2Model:
    """What a ``model.bin`` holds: the spec it was written for and ``{name: array}`` (aliases resolved)."""

    path: str
    spec: str
    revision: int
    variables: dict


class _Reader:
    def __init__(self, data, path):
        self.data, self.path, self.offset = data, path, 0

    def take(self, size, what):
        if self.offset + size > len(self.data):
            raise PresetError(
                f"{self.path} is truncated: reading {what} needs {size} bytes at offset {self.offset}, "
                f"but the file is {len(self.data)} bytes long. The file is incomplete (an interrupted "
                "download or a missing part): get the whole model.bin again.")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def unpack(self, fmt, what):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))[0]

    def string(self, what):
        length = self.unpack("H", what)
        return bytes(self.take(length, what)).rstrip(b"\0").decode("utf-8")


def read_ctranslate2(path):
    """Read a CTranslate2 ``model.bin`` (spec version 6) into a :class:`CTranslate2Model`.

    Raises ``PresetError`` naming the file for another version, an unknown data type, a truncated
    file or bytes left over at its end."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PresetError(f"No CTranslate2 model file at {path}.")
    data = memoryview(np.memmap(path, dtype=np.uint8, mode="r")) if os.path.getsize(path) else b""
    reader = _Reader(data, path)
    version = reader.unpack("I", "the version")
    if version != BINARY_VERSION:
        raise PresetError(f"{path} is a CTranslate2 model.bin of binary version {version}; kcookbook reads "
                          f"version {BINARY_VERSION} (CTranslate2 >= 3). Convert the model again with a "
                          "recent ct2-transformers-converter.")
    spec = reader.string("the spec name")
    revision = reader.unpack("I", "the spec revision")
    variables = {}
    for _ in range(reader.unpack("I", "the variable count")):
        name = reader.string("a variable name")
        shape = tuple(reader.unpack("I", f"the shape of {name}") for _ in range(reader.unpack("B", name)))
        dtype_id = reader.unpack("B", f"the dtype of {name}")
        if dtype_id not in DTYPES:
            raise PresetError(f"{path}: variable {name} has CTranslate2 data type {dtype_id}, which "
                              f"kcookbook does not read (it reads {sorted(DTYPES)}: float32, int8, "
                              "int16, int32, float16). Convert the model with --quantization float16.")
        size = reader.unpack("I", f"the size of {name}")
        dtype = np.dtype(DTYPES[dtype_id]).newbyteorder("<")
        if size != dtype.itemsize * int(np.prod(shape)):
            raise PresetError(f"{path}: variable {name} declares {size} bytes for shape {shape} of "
                              f"{dtype.name}; the file is corrupt: get it again.")
        variables[name] = np.frombuffer(reader.take(size, name), dtype).reshape(shape)
    for _ in range(reader.unpack("I", "the alias count")):
        alias, target = reader.string("an alias"), reader.string("an alias target")
        if target not in variables:
            raise PresetError(f"{path}: alias {alias} names {target}, which the file does not hold.")
        variables[alias] = variables[target]
    if reader.offset != len(data):
        raise PresetError(f"{path} has {len(data) - reader.offset} bytes after its last entry: it is not "
                          "one CTranslate2 model (two parts joined twice, or a wrong part?).")
    return CTranslate2Model(path, spec, revision, variables)


def find_model_file(path):
    """``path`` itself when it is a ``model.bin`` file, ``path/model.bin`` for a folder that holds one
    without a Hugging Face ``model_type`` in its config; else None."""
    if os.path.isfile(path):
        return path if os.path.basename(path) == MODEL_FILE else None
    candidate = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(candidate):
        return None
    config = os.path.join(path, files.CONFIG_FILE)
    if os.path.exists(config):
        try:
            if "model_type" in files.read_json(config):
                return None  # a Hugging Face folder that happens to hold a model.bin
        except PresetError:
            return candidate
    return candidate


class CTranslate2Loader(HuggingFaceLoader):
    """A CTranslate2 ``model.bin`` (or its folder, with ``config.json`` and ``tokenizer.json``): read
    as the Hugging Face checkpoint its family's converter makes of it."""

    format = "ctranslate2"

    @staticmethod
    def detect(path):
        return find_model_file(path) is not None

    def __init__(self, path, handle, info=None):
        PresetLoader.__init__(self, path, handle, info)
        model_file = find_model_file(path)
        self.path = os.path.dirname(os.path.abspath(model_file))
        files.check_links(self.path)
        self.model = read_ctranslate2(model_file)
        family = SPECS.get(self.model.spec)
        if family is None:
            raise PresetError(f"{model_file} is a CTranslate2 {self.model.spec!r} model; kcookbook reads "
                              f"these CTranslate2 specs: {', '.join(SPECS)}.")
        self.converter = converters.for_family(family)
        config_path = self.file(files.CONFIG_FILE)
        ct2_config = files.read_json(config_path) if os.path.exists(config_path) else {}
        self.config, self._tensors = self.converter.hf_from_ctranslate2(self.model.variables, ct2_config)

    def read_tensors(self):
        return dict(self._tensors)

    def task_defaults(self):
        return {}

    @property
    def metadata(self):
        return {"source": f"CTranslate2 {self.model.spec} (revision {self.model.revision}) at "
                          f"{self.model.path}"}
