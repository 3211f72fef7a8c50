"""imacs: compare two image classifiers by where they look.

Python API::

    import imacs
    run = imacs.analyze("a.pt", "b.pt", "data/", "runs/ab")   # computes a run directory
    run = imacs.load_run("runs/ab")                           # opens one (no torch import)
    run.clusters.head()                                       # pandas DataFrames
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import ImacsError, InputError
from .run import Run, load_run

if TYPE_CHECKING:
    from .pipeline import AnalysisSettings


def analyze(*args: Any, **kwargs: Any) -> Run:
    """Compute a run; see :func:`imacs.pipeline.analyze` for every argument."""
    from .pipeline import analyze as _analyze  # imports torch: only when computing

    return _analyze(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "AnalysisSettings":
        from .pipeline import AnalysisSettings

        return AnalysisSettings
    raise AttributeError(name)


__all__ = [
    "AnalysisSettings",
    "ImacsError",
    "InputError",
    "Run",
    "__version__",
    "analyze",
    "load_run",
]
