"""Paired-seed experiments: ``bninit compare`` (run every seed x arm as child processes), ``bninit report`` (the
paper's one-sided paired t-test), seeding, and the run recorder the children load.

May import the standard library and, in the parent, PyYAML, NumPy, SciPy, rich and matplotlib (the
``[experiments]`` extra); never torch or Lightning, so the ``bninit`` command starts fast. Only ``recorder`` (loaded
by the child processes) imports Lightning.
"""
