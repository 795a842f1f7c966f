"""The one door from a ``from_preset`` classmethod to the format readers.

``Tokenizer``, ``ImageConverter``, ``Backbone``, ``Preprocessor`` and ``Task`` build themselves from
a preset through :func:`load_preset`. The readers (``kcookbook.formats``) build backbones and tasks,
so they sit above every model layer and are imported here only when a preset is loaded.
"""


def load_preset(handle):
    """The loader of the preset at ``handle`` (a built-in name, a directory, ``kaggle://…``, ``hf://…``)."""
    # from_preset entry point: the format readers build models, so they are imported at call time.
    from kcookbook.formats import load

    return load(handle)
