"""kcookbook: executable Keras 3 recipes backed by a slim multi-backend package.

Layers, in the one direction imports go:
``presets`` (preset storage: resolves a handle — a built-in name, a local directory, ``kaggle://…``
or ``hf://…`` — and reads and writes preset files) → ``components`` (layers, tokenizers) →
``backbones`` (one file per model family) → ``tasks`` (generic task models with built-in
preprocessing) → ``formats`` (checkpoint readers and per-family converters, imported when a preset is
loaded), which build any of them from files.

    >>> import kcookbook
    >>> kcookbook.presets.list_presets()  # doctest: +SKIP
"""

__version__ = "0.1.0"
# The repository's address, named once for code (pyproject.toml's [project.urls] repeats it; a test keeps
# them in step). A placeholder until the project has a public home.
REPOSITORY_URL = "https://github.com/kcookbook/kcookbook"

from kcookbook import components, backbones, tasks, presets  # noqa: E402,F401
