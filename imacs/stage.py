"""The stage seam: a step of the analysis that declares what it reads and what it produces.

A stage is a plain function decorated with :func:`stage`. It is called with the values it
``reads`` (by name, from the run being built: tables, arrays, the engine, the records...)
and with its own settings (``settings=``: the parts of
:class:`~imacs.settings.AnalysisSettings` it names, passed by their field names), and
returns a dict holding exactly what it ``produces``. Names that are tables or arrays of the
run format (:mod:`imacs.runformat`) are written to the run directory, names in
:data:`SECTIONS` go to the manifest. The pipeline (:mod:`imacs.pipeline`) is the ordered
list of stages; each is timed once under its name.

Adding a stage is one module (the function, decorated) plus one line in
``imacs.pipeline.STAGES``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: produced names that become a manifest section (name on the board -> manifest key)
SECTIONS = {
    "warnings": "warnings",
    "trust": "trust",
    "whatif_info": "whatif",
    "embedding_info": "embedding",
    "layers_info": "layers",
}


@dataclass(frozen=True)
class Stage:
    """One step of the analysis.

    Args:
        name (str): the stage's name (its timer in ``run.json``).
        fn (callable): the work: keywords ``reads`` and ``settings`` -> dict of ``produces``.
        reads (tuple[str, ...]): names it needs, made by the start of the analysis or by an
            earlier stage.
        produces (tuple[str, ...]): names it returns (it may replace one it reads).
        settings (tuple[str, ...]): the parts of the analysis settings it takes.
    """

    name: str
    fn: Callable[..., dict[str, Any]]
    reads: tuple[str, ...]
    produces: tuple[str, ...]
    settings: tuple[str, ...] = ()

    def __call__(self, board: dict[str, Any], settings: object) -> dict[str, Any]:
        """Run on ``board`` (names -> values) and return what the stage produces."""
        missing = [r for r in self.reads if r not in board]
        if missing:
            raise RuntimeError(f"stage {self.name} reads {missing}, which no earlier stage made")
        kwargs = {r: board[r] for r in self.reads}
        kwargs |= {s: getattr(settings, s) for s in self.settings}
        out = self.fn(**kwargs)
        if set(out) != set(self.produces):
            raise RuntimeError(
                f"stage {self.name} declares {sorted(self.produces)} but returned {sorted(out)}"
            )
        return out


def stage(
    name: str,
    *,
    reads: Iterable[str],
    produces: Iterable[str],
    settings: Iterable[str] = (),
) -> Callable[[Callable[..., dict[str, Any]]], Stage]:
    """Declare a function as a stage (see the module's docstring)."""

    def wrap(fn: Callable[..., dict[str, Any]]) -> Stage:
        reads_, settings_ = tuple(reads), tuple(settings)
        clash = set(reads_) & set(settings_)
        if clash:
            raise ValueError(f"stage {name}: {sorted(clash)} is both read and a setting")
        return Stage(name, fn, reads_, tuple(produces), settings_)

    return wrap


def check_order(stages: Iterable[Stage], start: Iterable[str]) -> None:
    """Raise unless every stage reads only names that ``start`` or an earlier stage made."""
    known = set(start)
    for s in stages:
        missing = [r for r in s.reads if r not in known]
        if missing:
            raise RuntimeError(f"stage {s.name} reads {missing} before any stage makes them")
        known |= set(s.produces)
