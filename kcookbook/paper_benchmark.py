"""Deprecated: moved to ``kcookbook.benchmarks.paper``. This module keeps old imports and
``python -m kcookbook.paper_benchmark`` working for this release."""

import warnings

from kcookbook.benchmarks import paper as _paper

if __name__ == "__main__":
    _paper.main()
else:
    warnings.warn("kcookbook.paper_benchmark moved to kcookbook.benchmarks.paper; import it from there.",
                  DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_paper, name)
