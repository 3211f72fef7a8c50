"""A TorchScript file (``torch.jit.save``): portable, needs no Python code of yours.

TorchScript is code: loading one runs the graph it contains, so only load files you trust.
A TorchScript module takes no layer hooks (``eager`` is False). This format recognises any
source the formats before it in :data:`imacs.formats.FORMATS` did not: a missing file, a
raw pickle or a ``torch.save`` checkpoint each get the error that says what to do instead.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, first_line
from .common import Loaded, abspath, file_sha256, freeze, no_weights

name = "torchscript"
eager = False


def recognises(source: str) -> bool:
    """Any source: TorchScript is the format a plain path is taken to be."""
    return True


def load(source: str, weights: str | None, flag: str) -> Loaded:
    """Load ``source`` as TorchScript, frozen in eval mode on the CPU.

    Raises:
        InputError: weights were given, the file is missing, is a raw pickle, a
            ``torch.save`` checkpoint, or not TorchScript.
    """
    no_weights(weights, flag)
    path = Path(source).expanduser()
    return Loaded(module=freeze(load_script(path, flag)), sha256=file_sha256(path))


def describe(source: str, weights: str | None) -> dict[str, object]:
    """The manifest's model entry: the file's stem as name, its absolute path as source."""
    return {"name": Path(source).stem, "source": abspath(source)}


def load_script(path: Path, flag: str) -> nn.Module:
    """``torch.jit.load`` of ``path`` on the CPU (not frozen), after checks that turn the
    usual mistakes into one-line errors naming ``flag``.

    Raises:
        InputError: the file is missing, a raw pickle, a checkpoint, or not TorchScript.
    """
    if not path.is_file():
        looks_like_factory = ":" in str(path)
        hint = (
            "; a factory is written package.module:function and the module must be importable"
            if looks_like_factory
            else ""
        )
        raise InputError(f"{path}: model file not found ({flag}){hint}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise InputError(
                f"{path}: a raw pickle, not a TorchScript file; imacs does not unpickle model "
                "files. Export with torch.jit.script(model).save(...), or save a state_dict "
                f"and pass {flag} package.module:factory with the weights"
            )
        raise InputError(
            f"{path}: not a TorchScript model file; export one with "
            "torch.jit.script(model).save(PATH) or torch.jit.trace(model, x).save(PATH)"
        )
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if not any("/code/" in n for n in names) and any(n.endswith("data.pkl") for n in names):
        if not _holds_weights_only(path):
            raise InputError(
                f"{path}: a whole pickled model (torch.save(model)), not TorchScript; imacs "
                "never unpickles code. In Python, load it and save "
                "torch.jit.script(model).save(PATH), or torch.save(model.state_dict(), PATH) "
                f"and pass {flag} package.module:factory with that file as its weights"
            )
        raise InputError(
            f"{path}: a torch.save checkpoint of weights, not TorchScript; pass {flag} "
            "package.module:factory with this file as its weights, or export the model with "
            "torch.jit.script(model).save(PATH)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates jit
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and friends with long C++ traces
        raise InputError(f"{path}: cannot load as TorchScript ({first_line(exc, 200)})") from None


def _holds_weights_only(path: Path) -> bool:
    """Whether a ``torch.save`` checkpoint loads as tensors only (a state dict), found out
    with ``weights_only=True``, which never runs the pickle's code."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # refused objects, damaged files: not weights only
        return False
    return True
