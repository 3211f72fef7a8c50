"""imacs: compare two image classifiers by where they look.

Python API::

    import imacs
    run = imacs.analyze("a.pt", "b.pt", "data/", "runs/ab", steps=32)  # computes a run
    run = imacs.load_run("runs/ab")                                   # opens one (no torch)
    run.concepts.head()                                               # pandas DataFrames

Importing imacs does not import torch: :func:`analyze` reaches the pipeline lazily.
"""

from __future__ import annotations

from ._version import __version__
from .api import analyze
from .errors import ImacsError, InputError
from .run import Run, load_run
from .settings import AnalysisSettings

__all__ = [
    "AnalysisSettings",
    "ImacsError",
    "InputError",
    "Run",
    "__version__",
    "analyze",
    "load_run",
]
