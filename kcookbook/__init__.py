"""kcookbook: executable Keras 3 recipes backed by a slim multi-backend package.

Layers, in the one direction imports go:
``components`` (layers, tokenizers) → ``backbones`` (one file per model family) → ``tasks``
(generic task models with built-in preprocessing). ``presets`` resolves a handle (a built-in name,
a local directory, ``kaggle://…`` or ``hf://…``) and builds any of them from files.

    >>> import kcookbook
    >>> kcookbook.presets.list_presets()  # doctest: +SKIP
"""

__version__ = "0.1.0"
# The repository's address, named once for code (pyproject.toml's [project.urls] repeats it; a test keeps
# them in step). A placeholder until the project has a public home.
REPOSITORY_URL = "https://github.com/kcookbook/kcookbook"

from kcookbook import components, backbones, tasks, presets  # noqa: E402,F401
