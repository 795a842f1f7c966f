"""The one error type preset loading raises: it names the handle, the file and the fix."""


class PresetError(ValueError):
    """A preset could not be found, downloaded, read or built."""
