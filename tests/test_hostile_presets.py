"""Hostile or careless presets: saving never deletes user files, loading never reads a file outside
the preset (or the hub cache it came from), malformed files are named, and the parsers of untrusted
bytes (JSON configs, GGUF and safetensors headers) fail only with PresetError (property-based)."""

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kcookbook
from kcookbook.backbones import Backbone, BertBackbone
from kcookbook.components import Tokenizer
from kcookbook.presets import PresetError, files
from kcookbook.formats.gguf import GGUFCheckpoint
from kcookbook.tasks import TextClassifier, TextClassifierPreprocessor

from test_bad_input import _tiny_hf_folder, backbone, tokenizer  # noqa: F401 (fixtures)

pytestmark = pytest.mark.backend_independent  # preset files and their errors: the same on every backend

BOUNDED = settings(max_examples=60, deadline=2000, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def classifier_preset(tmp_path_factory, backbone, tokenizer):
    """A saved TextClassifier: every file a preset save writes (task, preprocessor, assets...)."""
    task = TextClassifier(backbone, num_classes=3,
                          preprocessor=TextClassifierPreprocessor(tokenizer, sequence_length=16))
    directory = tmp_path_factory.mktemp("saved") / "classifier"
    task.save_to_preset(str(directory))
    return directory


@pytest.fixture
def preset(tmp_path, classifier_preset):
    """A fresh copy of the classifier preset, inside ``tmp_path/presets``."""
    import shutil

    directory = tmp_path / "presets" / "classifier"
    shutil.copytree(classifier_preset, directory)
    return directory


def _edit_json(path, change):
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


# ----------------------------------------------------------------------------- saving never deletes user files


def test_save_keeps_user_files_next_to_a_config_json(tmp_path, backbone):
    target = tmp_path / "p"
    (target / "data").mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "train.py").write_text("print('mine')")
    with pytest.raises(PresetError, match="choose an empty or new directory|Choose an empty or new") as error:
        backbone.save_to_preset(str(target))
    assert "train.py" in str(error.value) and "data/" in str(error.value)
    assert sorted(os.listdir(target)) == ["config.json", "data", "train.py"]
    assert (target / "train.py").read_text() == "print('mine')"


def test_save_refuses_a_user_file_inside_assets(preset, backbone):
    (preset / "assets" / "tokenizer" / "notes.txt").write_text("mine")
    (preset / "assets" / "my_plot.png").write_bytes(b"png")
    with pytest.raises(PresetError) as error:
        backbone.save_to_preset(str(preset))
    assert os.path.join("assets", "my_plot.png") in str(error.value)
    assert (preset / "assets" / "tokenizer" / "notes.txt").read_text() == "mine"


def test_save_replaces_a_folder_holding_only_what_presets_write(preset, backbone):
    for name in ("model_00000.weights.h5", "model_00001.weights.h5", "model.weights.json",
                 "image_converter.json", "audio_converter.json"):
        (preset / name).write_text("{}")
    assert files.foreign_entries(preset) == []
    backbone.save_to_preset(str(preset))
    assert sorted(os.listdir(preset)) == ["config.json", "metadata.json", "model.weights.h5"]
    assert not [n for n in os.listdir(preset.parent) if "partial" in n]


@pytest.mark.parametrize("target", ["", ".", "cwd", "home", "/"])
def test_save_refuses_empty_current_home_and_root(tmp_path, backbone, monkeypatch, target):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")  # looks like a preset: the old check let it be replaced
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HOME", str(workdir))
    path = {"cwd": str(workdir), "home": "~"}.get(target, target)
    path = os.path.expanduser(path)
    with pytest.raises(PresetError, match="empty path|filesystem root, the home folder or the current"):
        backbone.save_to_preset(path)
    assert os.listdir(workdir) == ["config.json"] and os.listdir(tmp_path) == ["work"]


def test_save_refuses_a_folder_holding_the_current_directory(tmp_path, backbone, monkeypatch):
    (tmp_path / "p" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "p" / "deeper")
    with pytest.raises(PresetError, match="holds it"):
        backbone.save_to_preset(str(tmp_path / "p"))
    assert (tmp_path / "p" / "deeper").is_dir()


def test_save_refuses_a_symlinked_target_and_leaves_both_alone(preset, backbone):
    link = preset.parent / "link"
    link.symlink_to(preset)
    before = sorted(os.listdir(preset))
    with pytest.raises(PresetError, match="symbolic link") as error:
        backbone.save_to_preset(str(link))
    assert str(link) in str(error.value) and os.path.realpath(preset) in str(error.value)
    assert link.is_symlink() and sorted(os.listdir(preset)) == before


def test_saved_preset_has_normal_permissions(tmp_path, backbone, tokenizer):
    old = os.umask(0o022)
    try:
        kcookbook.presets.save_preset(str(tmp_path / "bert"), backbone, tokenizer=tokenizer)
    finally:
        os.umask(old)
    for folder, dirs, names in os.walk(tmp_path / "bert"):
        assert os.stat(folder).st_mode & 0o777 == 0o755, folder
        for name in names:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o644, name


_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import keras
    from kcookbook.backbones import BertBackbone

    backbone = BertBackbone(**{config})
    save_weights = backbone.save_weights

    def save_then_die(path):  # kill -9 with the staging folder half written
        save_weights(path)
        os.kill(os.getpid(), signal.SIGKILL)

    backbone.save_weights = save_then_die
    backbone.save_to_preset(sys.argv[1])
""")


def test_save_killed_midway_keeps_the_old_preset_and_the_next_save_cleans_up(tmp_path, backbone,
                                                                              tiny_bert_config):
    target = tmp_path / "bert"
    backbone.save_to_preset(str(target))
    before = (target / "model.weights.h5").read_bytes()
    script = _KILLED_SAVE.format(config=repr(tiny_bert_config))
    result = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, timeout=300,
                            cwd=os.path.dirname(os.path.dirname(kcookbook.__file__)))
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    stale = [n for n in os.listdir(tmp_path) if n.startswith(".bert.partial-")]
    assert len(stale) == 1 and "model.weights.h5" in os.listdir(tmp_path / stale[0])
    assert (target / "model.weights.h5").read_bytes() == before  # the killed save changed nothing

    # Left alone: a staging folder of a live process (ours) and one holding a file saves never write.
    alive = tmp_path / f".bert.partial-{os.getpid()}-0123abcd"
    alive.mkdir()
    foreign = tmp_path / f".bert.partial-{_dead_pid()}-0123abcd.old"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    backbone.save_to_preset(str(target))
    assert sorted(os.listdir(tmp_path)) == sorted(["bert", alive.name, foreign.name])
    assert (foreign / "notes.txt").read_text() == "mine"


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ----------------------------------------------------------------------------- nothing outside the preset is read


@pytest.fixture
def outside(tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return secret


def _link_outside(path, outside):
    path.unlink()
    path.symlink_to(outside)


@pytest.mark.parametrize("name,load", [
    ("assets/tokenizer/vocabulary.txt", lambda p: Tokenizer.from_preset(p)),
    ("tokenizer.json", lambda p: Tokenizer.from_preset(p)),
    ("model.weights.h5", lambda p: Backbone.from_preset(p)),
    ("config.json", lambda p: Backbone.from_preset(p)),
    ("task.weights.h5", lambda p: TextClassifier.from_preset(p)),
    ("preprocessor.json", lambda p: TextClassifier.from_preset(p)),
    ("metadata.json", lambda p: kcookbook.presets.load(p).metadata),
])
def test_a_link_out_of_the_preset_is_refused(preset, outside, name, load):
    _link_outside(preset / name, outside)
    with pytest.raises(PresetError, match="outside the preset folder") as error:
        load(str(preset))
    assert name.split("/")[-1] in str(error.value) and os.path.realpath(outside) in str(error.value)


def test_a_linked_assets_folder_is_refused(preset, outside):
    import shutil

    shutil.rmtree(preset / "assets")
    (preset / "assets").symlink_to(outside.parent)
    with pytest.raises(PresetError, match="outside the preset folder") as error:
        Tokenizer.from_preset(str(preset))
    assert os.path.realpath(outside.parent) in str(error.value)


@pytest.mark.parametrize("name", ["vocab.txt", "config.json", "model.safetensors", "tokenizer_config.json"])
def test_a_link_out_of_a_hugging_face_folder_is_refused(tmp_path, tiny_vocabulary, outside, name):
    folder = _tiny_hf_folder(tmp_path / "hf", len(tiny_vocabulary))
    (folder / "vocab.txt").write_text("\n".join(tiny_vocabulary) + "\n")
    (folder / "tokenizer_config.json").write_text("{}")
    _link_outside(folder / name, outside)
    with pytest.raises(PresetError, match="outside the preset folder") as error:
        Backbone.from_preset(str(folder))
    assert name in str(error.value) and os.path.realpath(outside) in str(error.value)


@pytest.mark.parametrize("shard", ["../outside/model.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_safetensors_index_naming_a_file_outside_is_refused(tmp_path, tiny_vocabulary, shard):
    folder = _tiny_hf_folder(tmp_path / "hf", len(tiny_vocabulary))
    (folder / "model.safetensors").rename(tmp_path / "model-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x.weight": shard}}))
    with pytest.raises(PresetError, match="must be relative") as error:
        Backbone.from_preset(str(folder))
    assert repr(shard) in str(error.value)


def test_a_gguf_link_out_of_its_folder_is_refused(tmp_path, outside):
    outside_model = outside.parent / "model.gguf"
    outside_model.write_bytes(b"GGUF")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "model.gguf").symlink_to(outside_model)
    with pytest.raises(PresetError, match="outside the preset folder"):
        kcookbook.presets.load(str(tmp_path / "folder"))


def test_links_inside_the_preset_and_the_hub_cache_are_followed_and_saved_as_files(tmp_path, preset,
                                                                                  tokenizer, tiny_vocabulary):
    vocabulary = preset / "assets" / "tokenizer" / "vocabulary.txt"
    os.rename(vocabulary, preset / "vocabulary_copy.txt")
    vocabulary.symlink_to(os.path.join("..", "..", "vocabulary_copy.txt"))  # stays inside the preset
    loaded = Tokenizer.from_preset(str(preset))
    assert loaded.get_vocabulary() == tokenizer.get_vocabulary()
    kcookbook.presets.save_preset(str(tmp_path / "again"), BertBackbone.from_preset(str(preset)),
                                  tokenizer=loaded)
    saved = tmp_path / "again" / "assets" / "tokenizer" / "vocabulary.txt"
    assert not saved.is_symlink() and saved.read_text().split("\n")[:5] == tiny_vocabulary[:5]

    # Hugging Face's hub cache: snapshots/<revision>/<file> links to ../../blobs/<hash>.
    repository = tmp_path / "hub" / "models--org--tiny"
    snapshot = repository / "snapshots" / "0123abc"
    folder = _tiny_hf_folder(tmp_path / "plain", len(tiny_vocabulary))
    (repository / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, name in enumerate(sorted(os.listdir(folder))):
        os.rename(folder / name, repository / "blobs" / f"blob{i}")
        (snapshot / name).symlink_to(os.path.join("..", "..", "blobs", f"blob{i}"))
    assert isinstance(Backbone.from_preset(str(snapshot)), BertBackbone)


def test_asset_paths_in_tokenizer_json_are_ignored(preset, outside, tokenizer):
    _edit_json(preset / "tokenizer.json", lambda c: {**c, "config": {**c["config"], "vocabulary": str(outside)}})
    assert Tokenizer.from_preset(str(preset)).get_vocabulary() == tokenizer.get_vocabulary()


# ----------------------------------------------------------------------------- weights of another model


@pytest.mark.parametrize("num_layers,kind,group", [(1, "bigger", "the file has layer groups the model does not "
                                                                  "(transformer_encoder_block_1)"),
                                                    (3, "smaller", "the model has layer groups the file does not "
                                                                   "(transformer_encoder_block_2)")])
def test_weights_of_a_bigger_or_smaller_model_are_named(preset, num_layers, kind, group):
    _edit_json(preset / "config.json",
               lambda c: {**c, "config": {**c["config"], "num_layers": num_layers}})
    with pytest.raises(PresetError) as error:
        Backbone.from_preset(str(preset))
    message = str(error.value)
    assert group in message and f"from a {kind} model" in message and "model.weights.h5" in message


# ----------------------------------------------------------------------------- malformed JSON


@pytest.mark.parametrize("content,kind", [("null", "null"), ("[1, 2]", "list"), ('"bert"', "string"),
                                          ("3", "number")])
def test_config_json_that_is_not_an_object_is_named(preset, content, kind):
    (preset / "config.json").write_text(content)
    with pytest.raises(PresetError, match=f"holds a JSON {kind}, not an object") as error:
        Backbone.from_preset(str(preset))
    assert str(preset / "config.json") in str(error.value)


@pytest.mark.parametrize("key", ["vocab_size", "num_hidden_layers"])
def test_hugging_face_config_without_a_needed_key_is_named(tmp_path, tiny_vocabulary, key):
    folder = _tiny_hf_folder(tmp_path, len(tiny_vocabulary))
    _edit_json(folder / "config.json", lambda c: {k: v for k, v in c.items() if k != key})
    with pytest.raises(PresetError, match=f"has no entry '{key}'") as error:
        Backbone.from_preset(str(folder))
    assert str(folder / "config.json") in str(error.value)


def test_hugging_face_config_without_model_type_is_named(tmp_path, tiny_vocabulary):
    folder = _tiny_hf_folder(tmp_path, len(tiny_vocabulary))
    _edit_json(folder / "config.json", lambda c: {k: v for k, v in c.items() if k != "model_type"})
    with pytest.raises(PresetError, match="model_type") as error:
        Backbone.from_preset(str(folder))
    assert "config.json" in str(error.value)


def test_metadata_json_that_is_a_list_is_named(preset):
    (preset / "metadata.json").write_text("[]")
    with pytest.raises(PresetError, match="holds a JSON list") as error:
        TextClassifier.from_preset(str(preset), num_classes=5)  # a new head reads metadata's defaults
    assert "metadata.json" in str(error.value)


@pytest.mark.parametrize("name,drop,load", [
    ("task.json", "config", lambda p: TextClassifier.from_preset(p)),
    ("tokenizer.json", "class_name", lambda p: Tokenizer.from_preset(p)),
    ("preprocessor.json", "config", lambda p: TextClassifier.from_preset(p)),
])
def test_serialized_object_without_class_name_or_config_is_named(preset, name, drop, load):
    _edit_json(preset / name, lambda c: {k: v for k, v in c.items() if k != drop})
    with pytest.raises(PresetError, match=f"has no '{drop}'") as error:
        load(str(preset))
    assert name in str(error.value)


@pytest.mark.parametrize("name,load", [
    ("preprocessor.json", lambda p: TextClassifier.from_preset(p)),
    ("tokenizer.json", lambda p: Tokenizer.from_preset(p)),
])
def test_unknown_setting_names_the_file_and_the_key(preset, name, load):
    _edit_json(preset / name, lambda c: {**c, "config": {**c["config"], "no_such_setting": 1}})
    with pytest.raises(PresetError) as error:
        load(str(preset))
    assert name in str(error.value) and "no_such_setting" in str(error.value)


def test_deeply_nested_json_is_named(preset):
    (preset / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PresetError, match="nests JSON too deeply") as error:
        Backbone.from_preset(str(preset))
    assert "config.json" in str(error.value)


def test_huge_json_is_refused_without_reading_it(preset):
    with open(preset / "config.json", "r+b") as f:
        f.truncate(2 * 2**30)  # a sparse 2 GB file: reading it would take seconds and 2 GB of memory
    with pytest.raises(PresetError, match="2048 MB; kcookbook reads JSON files up to 64 MB") as error:
        Backbone.from_preset(str(preset))
    assert "config.json" in str(error.value)


# ----------------------------------------------------------------------------- property-based: untrusted bytes


@BOUNDED
@given(data=st.binary(max_size=300))
def test_json_reader_on_random_bytes_gives_an_object_or_a_preset_error(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_bytes(data)
    try:
        assert isinstance(files.read_json(str(path)), dict)
    except PresetError as e:
        assert str(path) in str(e)


_JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=4),
                     max_leaves=20)


@BOUNDED
@given(value=_JSON)
def test_serialized_object_reader_accepts_only_class_name_and_config(tmp_path, value):
    path = tmp_path / "task.json"
    path.write_text(json.dumps(value))
    well_formed = isinstance(value, dict) and isinstance(value.get("class_name"), str) and \
        isinstance(value.get("config"), dict)
    try:
        assert files.read_serialized(str(path), "task config") == value and well_formed
    except PresetError as e:
        assert not well_formed and str(path) in str(e)


def _gguf_string(text):
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _tiny_gguf():
    """A valid GGUF v3 file: 3 metadata fields (a string, an array of strings, an int) and one F32
    tensor, written by hand so the property tests can mutate every field."""
    header = struct.pack("<4sIQQ", b"GGUF", 3, 1, 3)
    fields = (_gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("llama")
              + _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _gguf_string("a")
              + _gguf_string("b") + _gguf_string("llama.block_count") + struct.pack("<II", 4, 2))
    tensor = _gguf_string("token_embd.weight") + struct.pack("<IQQIQ", 2, 2, 2, 0, 0)
    body = header + fields + tensor
    body += b"\0" * (-len(body) % 32)
    return body + np.arange(4, dtype="<f4").tobytes()


def test_the_hand_written_gguf_file_is_valid(tmp_path):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(_tiny_gguf())
    checkpoint = GGUFCheckpoint(str(path))
    assert checkpoint.metadata["tokenizer.ggml.tokens"] == ["a", "b"]
    np.testing.assert_array_equal(checkpoint.dequantize("token_embd.weight"), [[0, 1], [2, 3]])


def _open_gguf(path):
    try:
        GGUFCheckpoint(str(path))
    except PresetError as e:
        assert str(path) in str(e)


@BOUNDED
@given(data=st.data())
def test_gguf_reader_on_truncated_and_mutated_files_gives_a_preset_error(tmp_path, data):
    raw = bytearray(_tiny_gguf())
    raw = raw[:data.draw(st.integers(0, len(raw)), label="length")]
    for _ in range(data.draw(st.integers(0, 4), label="mutations")):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / "m.gguf"
    path.write_bytes(bytes(raw))
    _open_gguf(path)


# Offsets of the u64 counts and lengths in _tiny_gguf(): tensor count, key count, a key length, a
# string length, an array length, the tensor's dimension count and a dimension.
_GGUF_COUNTS = {"tensor count": (8, "Q"), "key count": (16, "Q"), "first key length": (24, "Q"),
                "string value length": (56, "Q"), "array length": (106, "Q"), "dimension count": (190, "I"),
                "first dimension": (194, "Q")}


@BOUNDED
@given(field=st.sampled_from(sorted(_GGUF_COUNTS)),
       value=st.sampled_from([2**64 - 1, 2**63, 2**60, 2**32, 10**9, 65536]) | st.integers(0, 2**64 - 1))
def test_gguf_reader_on_absurd_counts_and_lengths_gives_a_preset_error(tmp_path, field, value):
    offset, code = _GGUF_COUNTS[field]
    raw = bytearray(_tiny_gguf())
    value %= 2 ** (8 * struct.calcsize(code))
    struct.pack_into("<" + code, raw, offset, value)
    path = tmp_path / "absurd.gguf"
    path.write_bytes(bytes(raw))
    _open_gguf(path)


def test_the_gguf_count_offsets_point_at_the_counts():
    raw = _tiny_gguf()
    values = {name: struct.unpack_from("<" + code, raw, offset)[0] for name, (offset, code) in _GGUF_COUNTS.items()}
    assert values == {"tensor count": 1, "key count": 3, "first key length": len("general.architecture"),
                      "string value length": len("llama"), "array length": 2, "dimension count": 2,
                      "first dimension": 2}


def test_gguf_array_claiming_2_to_the_40_bytes_fails_fast(tmp_path):
    """The gguf package's reader loops once per claimed item of a byte array, for ever past the end."""
    import time

    raw = bytearray(_tiny_gguf())
    struct.pack_into("<IQ", raw, _GGUF_COUNTS["array length"][0] - 4, 0, 2**40)  # u8 items, 2**40 of them
    path = tmp_path / "huge.gguf"
    path.write_bytes(bytes(raw))
    start = time.perf_counter()
    with pytest.raises(PresetError, match="the length of metadata field 1 is 1099511627776, more than"):
        GGUFCheckpoint(str(path))
    assert time.perf_counter() - start < 2


_DTYPES = {"F32": 4, "F16": 2, "I64": 8, "U8": 1, "BOOL": 1}


@st.composite
def _safetensors_files(draw):
    """A safetensors file with a random, mostly plausible header: tensors whose offsets may overlap,
    leave gaps or run past the end, a header length that may lie, and random trailing bytes."""
    tensors = {}
    for i in range(draw(st.integers(0, 3))):
        start = draw(st.integers(0, 64) | st.sampled_from([2**40, 2**63]))
        tensors[f"t{i}"] = {"dtype": draw(st.sampled_from(sorted(_DTYPES) + ["Q9"])),
                            "shape": draw(st.lists(st.integers(0, 5), max_size=3)),
                            "data_offsets": [start, start + draw(st.integers(0, 80))]}
    header = json.dumps(tensors).encode()
    if draw(st.booleans()):
        header = draw(st.binary(max_size=40))  # not JSON at all
    length = draw(st.sampled_from([len(header), 2**60, 2**64 - 1, 0]) | st.integers(0, 200))
    body = draw(st.binary(max_size=120))
    return struct.pack("<Q", length) + header + body


@BOUNDED
@given(raw=_safetensors_files())
def test_safetensors_reader_on_hostile_headers_gives_a_preset_error(tmp_path, raw):
    path = tmp_path / "model.safetensors"
    path.write_bytes(raw)
    try:
        tensors = files.read_safetensors(str(path))
    except PresetError as e:
        assert str(path) in str(e)
    else:
        assert all(isinstance(v, np.ndarray) for v in tensors.values())
