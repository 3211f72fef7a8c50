"""Model formats: one module per way a classifier comes in.

Each format is a module (or any object) with the same small interface:

* ``name`` (str): the kind recorded in the run's manifest (``"torchscript"``, ...);
* ``eager`` (bool): whether what it loads is an eager ``torch.nn.Module`` whose layers take
  hooks (a factory, timm or Hugging Face model), or a TorchScript / ``torch.export``
  program (hook-based attribution methods refuse those);
* ``recognises(source) -> bool``: whether a ``--model`` value is in this format;
* ``load(source, weights, flag) -> Loaded``: the module (eval mode, parameters frozen, on
  the CPU), the defaults its configuration states and the SHA-256 of what was loaded;
  errors are :class:`~imacs.errors.InputError` naming the file, ``flag`` and the fix;
* ``describe(source, weights) -> dict``: the manifest's model entry (``name``,
  ``source``, and ``weights`` where there are some).

:data:`FORMATS` lists them in recognition order; the first that recognises a source loads
it. TorchScript comes last and takes whatever is left, so a missing or wrong file gets its
error. Adding a format is one module plus one line in :data:`FORMATS`.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import InputError
from . import export, factory, hf, timm, torchscript
from .common import Loaded, ModelDefaults


class ModelFormat(Protocol):
    """The interface every entry of :data:`FORMATS` has (see the module's docstring)."""

    name: str
    eager: bool

    def recognises(self, source: str) -> bool: ...

    def load(self, source: str, weights: str | None, flag: str) -> Loaded: ...

    def describe(self, source: str, weights: str | None) -> dict[str, object]: ...


#: Model formats in recognition order; the first whose ``recognises`` is true loads a source.
FORMATS: tuple[ModelFormat, ...] = (timm, hf, factory, export, torchscript)  # type: ignore[assignment]


def find_format(source: str) -> ModelFormat:
    """The first format in :data:`FORMATS` that recognises ``source``.

    Raises:
        InputError: none does.
    """
    for fmt in FORMATS:
        if fmt.recognises(source):
            return fmt
    known = ", ".join(f.name for f in FORMATS)
    raise InputError(f"{source}: not a model imacs can load (formats: {known})")


__all__ = ["FORMATS", "Loaded", "ModelDefaults", "ModelFormat", "find_format"]
