"""Tools for measuring speed, not model code.

* ``kcookbook.benchmarks.timing``: ``StepTimer`` (ms/step of fit/predict), ``time_calls``,
  ``time_jit_compile`` (fit/predict with jit_compile off and on), ``time_greedy_generation``
  (tokens/s of a causal LM per weight format), ``weight_bytes``, model FLOPs
  utilisation (``PEAK_FLOPS``, ``measure_peak_flops``) and one worker process per backend.
* ``kcookbook.benchmarks.paper``: the paper's benchmark table (``run_table``;
  ``python -m kcookbook.benchmarks.paper``).

The scripts that compare kcookbook with keras_hub and transformers, and their dated results, are in the
repository's ``benchmarks/`` folder (``benchmarks/README.md``).
"""

from kcookbook.benchmarks.timing import (PEAK_FLOPS, WEIGHT_FORMATS, StepTimer, time_calls,
                                         time_greedy_generation, time_jit_compile, weight_bytes)

__all__ = ["PEAK_FLOPS", "WEIGHT_FORMATS", "StepTimer", "time_calls", "time_greedy_generation",
           "time_jit_compile", "weight_bytes"]
