"""Deprecated: moved to ``kcookbook.benchmarks.timing`` (``StepTimer`` and ``PEAK_FLOPS`` are also in
``kcookbook.benchmarks``). This module keeps old imports working for this release."""

import warnings

from kcookbook.benchmarks import timing as _timing

warnings.warn("kcookbook.benchmarking moved to kcookbook.benchmarks.timing; import it from there.",
              DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_timing, name)
