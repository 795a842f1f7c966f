"""Bounds checks of untrusted binary headers before a third-party parser reads them.

``gguf.GGUFReader`` trusts the counts and lengths in a GGUF header: an array that claims 2**60
items past the end of the file makes it loop for ever, a key count of 2**60 fails with an
IndexError. :func:`check_gguf_header` walks the header (metadata and tensor descriptions) with
every count and length checked against the bytes that remain, so a corrupt, truncated or hostile
file is a PresetError naming it, in time proportional to the file's header.
"""

import mmap
import os
import struct

from kcookbook.presets.errors import PresetError

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # what the gguf package reads
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_MAX_ARRAY_NESTING = 4
_MAX_TENSOR_DIMS = 8  # ggml uses 4


class _Cursor:
    """Reads little- or big-endian values from ``data``, never past its end."""

    def __init__(self, data, path):
        self.data, self.path, self.offset, self.order = data, path, 0, "<"

    def fail(self, problem):
        raise PresetError(f"GGUF file {self.path} is corrupt or truncated, or not a GGUF file: {problem} "
                          f"(at byte {self.offset} of {len(self.data)}). Re-download it.")

    def remaining(self):
        return len(self.data) - self.offset

    def skip(self, n, what):
        if n > self.remaining():
            self.fail(f"{what} needs {n} bytes, {self.remaining()} remain")
        self.offset += n

    def unpack(self, code, what):
        size = struct.calcsize(code)
        start = self.offset
        self.skip(size, what)
        return struct.unpack_from(self.order + code, self.data, start)[0]

    def count(self, what, item_bytes):
        """A u64 count of items of at least ``item_bytes`` bytes each, checked against what remains."""
        n = self.unpack("Q", what)
        if n * item_bytes > self.remaining():
            self.fail(f"{what} is {n}, more than the {self.remaining()} remaining bytes can hold")
        return n

    def string(self, what):
        self.skip(self.count(f"the length of {what}", 1), what)


def _gguf_value(cursor, kind, what, depth=0):
    if kind in _GGUF_SCALARS:
        cursor.skip(struct.calcsize(_GGUF_SCALARS[kind]), what)
    elif kind == _GGUF_STRING:
        cursor.string(what)
    elif kind == _GGUF_ARRAY:
        if depth >= _MAX_ARRAY_NESTING:
            cursor.fail(f"{what} nests arrays more than {_MAX_ARRAY_NESTING} deep")
        item = cursor.unpack("I", f"the item type of {what}")
        if item in _GGUF_SCALARS:
            size = struct.calcsize(_GGUF_SCALARS[item])
            cursor.skip(cursor.count(f"the length of {what}", size) * size, what)
        elif item in (_GGUF_STRING, _GGUF_ARRAY):
            for _ in range(cursor.count(f"the length of {what}", 8 if item == _GGUF_STRING else 12)):
                _gguf_value(cursor, item, what, depth + 1)
        else:
            cursor.fail(f"{what} has items of unknown type {item}")
    else:
        cursor.fail(f"{what} has unknown value type {kind}")


def check_gguf_header(path):
    """Walk a GGUF file's header (magic, version, metadata, tensor descriptions) with every count and
    length bounded by the file's size; a PresetError names the file and the first bad field."""
    size = os.path.getsize(path)
    if size < 24:
        raise PresetError(f"GGUF file {path} is corrupt or truncated, or not a GGUF file: {size} bytes, "
                          "shorter than a GGUF header (24 bytes). Re-download it.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        cursor = _Cursor(data, path)
        if data[:4] != GGUF_MAGIC:
            cursor.fail(f"it starts with {bytes(data[:4])!r}, not {GGUF_MAGIC!r}")
        cursor.offset = 4
        version = cursor.unpack("I", "the version")
        if version & 0xFFFF == 0:  # written on a big-endian machine
            cursor.order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in GGUF_VERSIONS:
            cursor.fail(f"version {version}; kcookbook reads GGUF versions {GGUF_VERSIONS}")
        tensors = cursor.count("the tensor count", 8 + 4 + 4 + 8)
        fields = cursor.count("the metadata key count", 8 + 4)
        for i in range(fields):
            cursor.string(f"metadata key {i}")
            _gguf_value(cursor, cursor.unpack("I", f"the type of metadata field {i}"), f"metadata field {i}")
        for i in range(tensors):
            cursor.string(f"the name of tensor {i}")
            dims = cursor.unpack("I", f"the dimension count of tensor {i}")
            if dims > _MAX_TENSOR_DIMS:
                cursor.fail(f"tensor {i} has {dims} dimensions")
            cursor.skip(8 * dims + 4, f"the shape and type of tensor {i}")
            if cursor.unpack("Q", f"the data offset of tensor {i}") > size:
                cursor.fail(f"tensor {i}'s data starts past the end of the file")
