"""The one door from the model classes to the format readers and writers.

``Tokenizer``, ``ImageConverter``, ``Backbone``, ``Preprocessor`` and ``Task`` build themselves from
a preset through :func:`load_preset`, and backbones, tasks and tokenizers write themselves as
transformers folders through :func:`export_to_transformers`. The formats (``kcookbook.formats``)
build and read backbones and tasks, so they sit above every model layer and are imported here only
when called.
"""


def load_preset(handle):
    """The loader of the preset at ``handle`` (a built-in name, a directory, ``kaggle://…``, ``hf://…``)."""
    # from_preset entry point: the format readers build models, so they are imported at call time.
    from kcookbook.formats import load

    return load(handle)


def export_to_transformers(obj, directory, dtype="float32"):
    """Write ``obj`` as a Hugging Face transformers folder (see ``kcookbook.formats.export``)."""
    # export entry point: the writers use the converters' name maps, so they are imported at call time.
    from kcookbook.formats.export import export_to_transformers as export

    export(obj, directory, dtype=dtype)
