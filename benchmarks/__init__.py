"""activity's benchmark, run from a clone: ``python benchmarks/run.py``.

Not part of the library: the wheel ships only ``activity``, and ``activity``
imports nothing from here.
"""
