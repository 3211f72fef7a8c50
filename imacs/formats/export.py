"""A ``torch.export`` program (``FILE.pt2``, ``torch.export.save``), TorchScript's successor.

It holds a graph of torch operators and its weights, no Python code of yours; it is
attributed through ``ExportedProgram.module()``, whose layers run as operators in one graph
and take no layer hooks (``eager`` is False). Export it with a dynamic batch dimension; its
input shape gives the default image size.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, first_line
from .common import Loaded, ModelDefaults, abspath, file_sha256, freeze, no_weights

name = "export"
eager = False


def recognises(source: str) -> bool:
    """True for an existing ``torch.export.save`` archive."""
    path = Path(source).expanduser()
    return path.is_file() and is_exported_program(path)


def load(source: str, weights: str | None, flag: str) -> Loaded:
    """Load the program in ``source``, its parameters frozen.

    Raises:
        InputError: weights were given, the archive is damaged, or the program does not
            take one (N, 3, H, W) batch with a dynamic N.
    """
    no_weights(weights, flag)
    path = Path(source).expanduser()
    module, defaults = load_program(path, flag)
    return Loaded(
        module=freeze(module, set_eval=False), sha256=file_sha256(path), defaults=defaults
    )


def describe(source: str, weights: str | None) -> dict[str, object]:
    """The manifest's model entry: the file's stem as name, its absolute path as source."""
    return {"name": Path(source).stem, "source": abspath(source)}


def is_exported_program(path: Path) -> bool:
    """True for a ``torch.export.save`` archive (a zip with an ``archive_format`` entry)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "archive_format" or n.endswith("/archive_format") for n in zf.namelist())


def load_program(path: Path, flag: str) -> tuple[nn.Module, ModelDefaults]:
    """``torch.export.load(path).module()`` (not frozen) and the image size its input
    shape states.

    Raises:
        InputError: the archive is damaged, or the program does not take one (N, 3, H, W)
            batch with a dynamic N (the message names ``flag`` and the export call to use).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many kinds for damaged archives
        raise InputError(
            f"{path}: cannot load as a torch.export program ({first_line(exc, 200)}); save "
            "one with torch.export.save(torch.export.export(model, (x,)), PATH)"
        ) from None
    users = set(program.graph_signature.user_inputs)
    shapes = [
        n.meta["val"].shape
        for n in program.graph.nodes
        if n.op == "placeholder" and n.name in users and "val" in n.meta
    ]
    if len(shapes) != 1 or len(shapes[0]) != 4:
        raise InputError(
            f"{path}: the exported program takes {len(shapes)} input(s); imacs needs one image "
            f"batch of shape (N, 3, H, W) ({flag})"
        )
    shape = shapes[0]
    if isinstance(shape[0], int):
        raise InputError(
            f"{path}: exported with a fixed batch size of {shape[0]}; export it with a dynamic "
            "batch dimension: torch.export.export(model, (x,), "
            "dynamic_shapes=({0: torch.export.Dim('batch')},))"
        )
    if isinstance(shape[1], int) and shape[1] != 3:
        raise InputError(f"{path}: the program takes {shape[1]} channels; imacs feeds RGB (3)")
    size = (shape[2], shape[3]) if all(isinstance(s, int) for s in shape[2:]) else None
    defaults = ModelDefaults(image_size=size, fixed_size=size is not None)  # type: ignore[arg-type]
    return program.module(), defaults
