"""Imports run one way (ARCHITECTURE.md): read every module of the package with ``ast`` and check the
import graph. No model is built, so this runs the same on every backend.

Layers, lowest first: preset storage (``kcookbook.presets``: reading and writing a preset
directory, errors, the built-in name table) < components < backbones < tasks < formats
(``kcookbook.formats``: format readers and converters). A module-level import may only point down;
``from_preset`` reaches up into the formats at call time, through at most two commented imports.

``KCOOKBOOK_ARCHITECTURE_ROOT=/path/to/checkout`` checks another checkout's ``kcookbook/``.
"""

import ast
import os
import pathlib

import pytest

pytestmark = pytest.mark.backend_independent  # imports and layering: the same on every backend

ROOT = pathlib.Path(os.environ.get("KCOOKBOOK_ARCHITECTURE_ROOT", pathlib.Path(__file__).parents[1]))
PACKAGE = ROOT / "kcookbook"
MODEL_LAYERS = ("components", "backbones", "tasks")  # lowest first
MAX_UPWARD_LOCAL_IMPORTS = 2


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


class Import:
    def __init__(self, source, target, line, local, comment):
        self.source, self.target, self.line, self.local, self.comment = source, target, line, local, comment

    def __repr__(self):
        return f"{MODULES[self.source].relative_to(ROOT)}:{self.line} imports {self.target}"


def imports_of(module):
    """Every import of a ``kcookbook`` module in ``module``: (target module, line, inside a function?)."""
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    is_package = path.name == "__init__.py"
    found = []

    def resolve(node):
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        # ``from kcookbook.presets import files`` imports the module kcookbook.presets.files
        return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                comment = " ".join(lines[max(child.lineno - 2, 0):child.end_lineno])
                for target in resolve(child):
                    if target == "kcookbook" or target.startswith("kcookbook."):
                        found.append(Import(module, target, child.lineno, local, "#" in comment))
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source, filename=str(path)), False)
    return found


IMPORTS = [i for module in MODULES for i in imports_of(module)]


def test_the_package_is_found():
    assert {"kcookbook.presets", "kcookbook.components", "kcookbook.backbones", "kcookbook.tasks"} <= set(MODULES)
    assert len(IMPORTS) > 50


def test_no_cycle_among_module_level_imports():
    graph = {m: sorted({i.target for i in IMPORTS if i.source == m and not i.local and i.target in MODULES})
             for m in MODULES}
    state, cycles = {}, []

    def walk(module, stack):
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                walk(target, stack + [target])
        state[module] = "done"

    for module in MODULES:
        if module not in state:
            walk(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_preset_storage_imports_no_model_code():
    upward = [i for i in IMPORTS if layer(i.source) == "presets"
              and layer(i.target) in MODEL_LAYERS + ("formats",)]
    assert not upward, f"preset storage must import no model or format code: {upward}"


@pytest.mark.parametrize("lower", MODEL_LAYERS)
def test_model_layers_import_only_downward_at_module_level(lower):
    above = MODEL_LAYERS[MODEL_LAYERS.index(lower) + 1:] + ("formats",)
    upward = [i for i in IMPORTS if layer(i.source) == lower and not i.local and layer(i.target) in above]
    assert not upward, f"{lower} imports from {above} at module level: {upward}"


def test_at_most_two_commented_function_local_imports_reach_the_formats():
    """The ``from_preset`` entry points load a preset through the format readers, which build models
    and so sit above every model layer: they may import them when called, nothing else may."""
    upward = [i for i in IMPORTS if layer(i.source) in MODEL_LAYERS and layer(i.target) == "formats"]
    assert all(i.local for i in upward), [i for i in upward if not i.local]
    assert len(upward) <= MAX_UPWARD_LOCAL_IMPORTS, upward
    assert all(i.comment for i in upward), f"say why in a comment: {[i for i in upward if not i.comment]}"


def test_importing_the_package_loads_no_format_reader():
    """Formats and converters are found by dotted path when a preset is loaded, not imported to
    register themselves."""
    import subprocess
    import sys

    code = ("import sys, kcookbook, kcookbook.presets; "
            "print(sorted(m for m in sys.modules if m.startswith('kcookbook.formats')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------- the converter contract

def test_every_family_converter_implements_the_contract():
    from kcookbook.formats import converters
    from kcookbook.formats.converters.base import Converter

    hf_types, keras_hub_classes = [], []
    for family in converters.CONVERTERS:
        converter = converters.for_family(family)
        assert isinstance(converter, Converter) and converter.family == family
        hf_types += converter.hf_model_types
        keras_hub_classes += converter.keras_hub_classes
    assert len(hf_types) == len(set(hf_types)) and len(keras_hub_classes) == len(set(keras_hub_classes))
    assert converters.known_hf_model_types() == sorted(hf_types)
    for model_type in hf_types:
        assert model_type in converters.for_hf_model_type(model_type).hf_model_types
    assert converters.for_hf_model_type("t6") is None and converters.for_keras_hub_class("T6Backbone") is None


def test_a_hook_a_family_lacks_has_a_default():
    from kcookbook.formats import converters
    from kcookbook.formats.converters.base import ConversionNotSupported
    from kcookbook.presets import PresetError

    bert = converters.for_family("bert")
    assert bert.image_converter_from_hf("/nowhere") is None
    assert bert.classifier_head_from_hf({}) is None
    assert bert.task_from_keras_hub(object, {}, None) is None
    assert bert.class_names_from_hf({"id2label": {"0": "neg", "1": "pos"}}) == ["neg", "pos"]
    with pytest.raises(ConversionNotSupported, match="bert converter does not read keras_hub image conv"):
        bert.image_converter_from_keras_hub({})
    with pytest.raises(PresetError, match="efficientnet_lite converter does not read Hugging Face"):
        converters.for_family("efficientnet_lite").backbone_from_hf({})
