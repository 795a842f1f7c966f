"""Formats: readers of other people's checkpoints and the converters that build kcookbook models from
them (KerasHub presets, Hugging Face folders, GGUF files, torch state dicts).

This layer sits above tasks: it imports components, backbones and tasks; nothing below imports it
except the ``from_preset`` entry points. Preset storage (reading and writing a preset directory, the
errors, the built-in name table) is ``kcookbook.presets``, under every layer.
"""

from kcookbook.formats.loaders import FORMATS, PresetLoader, load, register_format

__all__ = ["FORMATS", "PresetLoader", "load", "register_format"]
