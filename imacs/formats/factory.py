"""``package.module:factory``, optionally with a weights file.

imacs imports the module, calls ``factory()`` with no arguments and loads the weights
(safetensors, or a state dict read with ``torch.load(weights_only=True)``) into the returned
module: an eager ``torch.nn.Module``, so layer hooks work (``eager`` is True).
"""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
from pathlib import Path

from torch import nn

from ..errors import InputError, first_line
from .common import Loaded, abspath, apply_state_dict, file_sha256, freeze, read_state_dict

name = "factory"
eager = True

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def recognises(source: str) -> bool:
    """True for ``package.module:function`` that is not an existing file's name."""
    return bool(_FACTORY_RE.match(source)) and not Path(source).exists()


def load(source: str, weights: str | None, flag: str) -> Loaded:
    """Import the module, call the factory and load ``weights`` into what it returns.

    The hash covers ``source`` and the weights file (without one, the module's source
    file).

    Raises:
        InputError: the module does not import, has no such callable, the factory returns
            no ``torch.nn.Module``, or the weights are unreadable or do not fit.
    """
    modname, fname = source.split(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` does
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise InputError(
            f"{source}: cannot import module {modname!r} ({exc}); make it importable "
            "(install it, or run from the folder that holds it)"
        ) from None
    except Exception as exc:  # the user's module fails while it is imported
        raise InputError(
            f"{flag} {source}: importing module {modname!r} raised {type(exc).__name__} "
            f"({first_line(exc)}); fix the module so that it imports"
        ) from None
    factory = getattr(mod, fname, None)
    if not callable(factory):
        raise InputError(f"{source}: module {modname!r} has no callable {fname!r}")
    try:
        module = factory()
    except Exception as exc:  # user code: anything can come out
        raise InputError(
            f"{flag} {source}: the factory {fname}() raised {type(exc).__name__} "
            f"({first_line(exc)}); {flag} needs package.module:function where function() "
            "takes no arguments and returns a torch.nn.Module"
        ) from None
    if not isinstance(module, nn.Module):
        raise InputError(
            f"{source}: the factory returned {type(module).__name__}, not a torch.nn.Module"
        )
    digest = hashlib.sha256(source.encode())
    if weights:
        wpath = Path(weights).expanduser()
        apply_state_dict(module, read_state_dict(wpath), wpath, source)
        digest.update(file_sha256(wpath).encode())
    else:
        src = getattr(mod, "__file__", None)
        if src and Path(src).is_file():
            digest.update(file_sha256(src).encode())
    return Loaded(module=freeze(module), sha256=digest.hexdigest())


def describe(source: str, weights: str | None) -> dict[str, object]:
    """The manifest's model entry: a name (the weights file's stem, which tells two
    trainings of one factory apart, else the factory's module and function, ``resnet.build``
    for ``models.resnet:build``), ``source`` as given, the weights' absolute path."""
    module, _, fn = source.partition(":")
    name = Path(weights).stem if weights else f"{module.rsplit('.', 1)[-1]}.{fn}"
    out: dict[str, object] = {"name": name, "source": source}
    if weights:
        out["weights"] = abspath(weights)
    return out
