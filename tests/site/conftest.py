"""Fixtures for the recipe-site tests. They run once (`make test-site`), not once per backend: the
unit-test target ignores tests/site."""

import pytest

from site_notebooks import execution, image_output, load_builder, png_base64, stream, write_notebook


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
