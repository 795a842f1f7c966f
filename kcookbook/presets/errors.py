"""The one error type preset loading raises: it names the handle, the file and the fix."""

import contextlib


class PresetError(ValueError):
    """A preset could not be found, downloaded, read or built."""


@contextlib.contextmanager
def blaming(path):
    """Turn what a class raises when a preset file's settings do not fit it (a TypeError for an
    unknown or missing argument, a KeyError for a missing entry) into a PresetError naming ``path``.

        with blaming(preprocessor_json):
            preprocessor = cls.from_config(config)
    """
    try:
        yield
    except PresetError:
        raise
    except KeyError as e:
        raise PresetError(f"{path} has no entry {e}, which kcookbook needs to build from it; the file "
                          "is incomplete: re-download or re-save the preset.") from e
    except TypeError as e:
        raise PresetError(f"{path} does not fit the class it names ({e}): remove or rename the "
                          "setting, or re-save the preset with this version of kcookbook.") from e
