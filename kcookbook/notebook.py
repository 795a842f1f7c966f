"""What a recipe's first and last code cells call: say where the run happens, and how long it took.

    >>> from kcookbook.notebook import start_recipe
    >>> run = start_recipe()       # prints the date, Keras backend and devices; starts the clock
    >>> run.print_wall_time()      # last cell: "Wall time: 2.4 minutes (jax on cpu:0)"

The first cell's install logic cannot live here (kcookbook is not importable yet when it runs); the
recipe rules in CONTRIBUTING.md show that cell, and tests/test_notebooks.py checks every recipe's copy.
"""

import contextlib
import datetime
import importlib.util
import os
import sys
import time
import warnings

import keras


def list_devices():
    """The devices Keras computes on, e.g. ``['cpu:0']`` or ``['cuda:0', 'cuda:1']``.

    ``keras.distribution.list_devices()`` on jax and tensorflow; the torch backend has no distribution
    library, so there the answer comes from torch itself.
    """
    if keras.config.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        return ["cpu:0"]
    return [str(device).lower() for device in keras.distribution.list_devices()]


@contextlib.contextmanager
def _stderr_discarded():
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up notices bypass Python's logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_tensorflow():
    """Import TensorFlow (where installed) without its C++ start-up notices on stderr.

    TensorFlow prints absl and oneDNN notices when it is first imported (tf.data pipelines import it on
    every backend), and ``TF_CPP_MIN_LOG_LEVEL`` no longer silences them. Importing it once here, with
    stderr discarded for the import only, keeps them out of saved notebook outputs; later warnings and
    errors still show.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    with _stderr_discarded():
        import tensorflow  # noqa: F401


class RecipeRun:
    """The clock of one notebook run, started by :func:`start_recipe`."""

    def __init__(self):
        self.started_at = datetime.datetime.now(datetime.timezone.utc)
        self.backend = keras.config.backend()
        self.devices = list_devices()
        self._start = time.perf_counter()

    def wall_time(self):
        """Seconds since :func:`start_recipe`."""
        return time.perf_counter() - self._start

    def print_wall_time(self):
        """Print the run's wall time in minutes (the number a recipe's header quotes)."""
        print(f"Wall time: {self.wall_time() / 60:.1f} minutes ({self.backend} on {', '.join(self.devices)})")


def start_recipe():
    """Print the run's date, Keras version, backend and devices, and start its clock.

    Call it in a recipe's first code cell, after setting ``KERAS_BACKEND``; end the recipe with
    ``run.print_wall_time()``. It also keeps two kinds of noise out of the saved outputs: TensorFlow's
    import notices (see :func:`quiet_tensorflow`) and JAX's warning that int64 arrays become int32.
    """
    quiet_tensorflow()
    warnings.filterwarnings("ignore", message=r"Explicitly requested dtype int64")
    run = RecipeRun()
    print(f"Executed {run.started_at:%Y-%m-%d %H:%M} UTC | Keras {keras.__version__} | "
          f"backend: {keras.config.backend()} | devices: {', '.join(run.devices)}")
    return run
