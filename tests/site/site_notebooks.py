"""Helpers for the recipe-site tests: the builder (docs/build_site.py, a tool, not part of the package)
loaded as a module, small synthetic notebooks written the way Jupyter stores executed ones, and the
fixtures the test files import (a conftest.py here would shadow tests/conftest.py, which other test
files import as ``conftest``).

These tests run once (`make test-site`), not once per backend: the unit-test target ignores tests/site."""

import base64
import importlib.util
import io
import sys
from pathlib import Path

import nbformat
import pytest

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
BUILDER = REPOSITORY_ROOT / "docs" / "build_site.py"
TEST_REPOSITORY = "https://github.com/example/cookbook"


def load_builder():
    """docs/build_site.py as a module (one instance per process)."""
    if "build_site" not in sys.modules:
        spec = importlib.util.spec_from_file_location("build_site", BUILDER)
        module = importlib.util.module_from_spec(spec)
        sys.modules["build_site"] = module
        spec.loader.exec_module(module)
    return sys.modules["build_site"]


def png_base64(width, height, photo=False, seed=0):
    """A PNG as notebooks store it: a plot-like image (few colours) or a photo-like one (noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    if photo:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        pixels = np.full((height, width, 4), 255, np.uint8)
        pixels[height // 3: height // 2, :, :3] = (31, 119, 180)   # a blue band, like a bar
        pixels[:, width // 4: width // 4 + 3, :3] = 0             # an axis
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def execution(start, end):
    return {"iopub.execute_input": start, "iopub.status.busy": start, "iopub.status.idle": end,
            "shell.execute_reply": end}


def write_notebook(path, cells):
    """cells: ("markdown", text) or ("code", source, [outputs], execution metadata or None)."""
    notebook = nbformat.v4.new_notebook()
    for cell in cells:
        if cell[0] == "markdown":
            notebook.cells.append(nbformat.v4.new_markdown_cell(cell[1]))
        else:
            _, source, outputs, timing = (*cell, None, None)[:4]
            code = nbformat.v4.new_code_cell(source, outputs=[nbformat.from_dict(o) for o in outputs or []])
            if timing:
                code.metadata["execution"] = timing
            notebook.cells.append(code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    return path


def stream(text, name="stdout"):
    return {"output_type": "stream", "name": name, "text": text}


def image_output(data, mime="image/png"):
    return {"output_type": "display_data", "data": {mime: data, "text/plain": "<Figure>"},
            "metadata": {}}


@pytest.fixture(scope="session")
def site():
    """docs/build_site.py as a module."""
    return load_builder()


@pytest.fixture
def recipes(tmp_path):
    """Three small executed-looking notebooks under tmp_path/recipes: nlp, cv and a benchmark."""
    root = tmp_path / "recipes"
    write_notebook(root / "nlp" / "01_hello.ipynb", [
        ("markdown", "# Hello *text*\n\nA first recipe about `tokens`,\nin two lines.\n\n## Next\nmore"),
        ("code", "import os\nprint('KERAS_BACKEND =', os.environ['KERAS_BACKEND'])",
         [stream("KERAS_BACKEND = torch\n")],
         execution("2026-01-01T10:00:00.000Z", "2026-01-01T10:00:05.000Z")),
        ("code", "# NBVAL_CHECK_OUTPUT\nplot()", [image_output(png_base64(3000, 600))],
         execution("2026-01-01T10:00:05.010Z", "2026-01-01T10:01:10.000Z")),
    ])
    write_notebook(root / "cv" / "01_photos.ipynb", [
        ("markdown", "# Photos\n\nLook at a photo."),
        ("code", "show()", [image_output(png_base64(1600, 900, photo=True))]),
        ("code", "warn()", [stream("a library warning\n", "stderr")]),
    ])
    write_notebook(root / "nlp" / "02_reproduce_the_benchmark.ipynb", [
        ("markdown", "Some words before the title.\n\n# The benchmark\n\nTimes, measured."),
        ("code", "1 + 1", [{"output_type": "execute_result", "execution_count": 1,
                            "data": {"text/plain": "2"}, "metadata": {}}]),
    ])
    return root
