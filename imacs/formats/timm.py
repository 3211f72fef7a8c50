"""``timm:NAME`` plus a weights file (extra ``imacs[timm]``).

The timm architecture is built without downloading anything (``pretrained=False``), its
classifier sized from the weights (safetensors or a ``weights_only`` state dict), which are
then loaded strictly. Image size, mean and std come from the model's ``pretrained_cfg``. An
eager ``torch.nn.Module`` (``eager`` is True). The timm encoder (:mod:`imacs.encoders`)
reuses :func:`import_timm`, :func:`architecture`, :func:`classifier_heads` and
:func:`pretrained_defaults`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType

from torch import nn

from ..errors import InputError, first_line
from .common import (
    Loaded,
    ModelDefaults,
    abspath,
    apply_state_dict,
    file_sha256,
    freeze,
    read_state_dict,
    triple,
)

name = "timm"
eager = True


def recognises(source: str) -> bool:
    """True for ``timm:NAME``."""
    return source.startswith("timm:")


def load(source: str, weights: str | None, flag: str) -> Loaded:
    """Build ``timm:NAME`` with the classifier the weights have, and load them.

    Raises:
        InputError: timm is missing, has no such architecture, no weights were given, or
            they are unreadable or do not fit.
    """
    timm = import_timm(source)
    arch = architecture(timm, source, source)
    if not weights:
        raise InputError(
            f"{source}: give its weights with --weights-a/--weights-b FILE (.safetensors or a "
            "state_dict); imacs downloads nothing"
        )
    wpath = Path(weights).expanduser()
    state = read_state_dict(wpath)
    model = timm.create_model(arch, pretrained=False)
    n_classes = None
    for h in classifier_heads(model):
        w = state.get(f"{h}.weight")
        if w is not None and w.ndim >= 1:
            n_classes = int(w.shape[0])
            break
    if n_classes is not None and n_classes != getattr(model, "num_classes", n_classes):
        model = timm.create_model(arch, pretrained=False, num_classes=n_classes)
    apply_state_dict(model, state, wpath, source)
    digest = hashlib.sha256(f"{source}:{file_sha256(wpath)}".encode()).hexdigest()
    return Loaded(module=freeze(model), sha256=digest, defaults=pretrained_defaults(model))


def describe(source: str, weights: str | None) -> dict[str, object]:
    """The manifest's model entry: a name (the architecture, with the weights file's stem
    when given: ``resnet18 (finetuned)``), ``source`` as given, the weights' absolute
    path."""
    arch = source.split(":", 1)[1]
    name = f"{arch} ({Path(weights).stem})" if weights else arch
    out: dict[str, object] = {"name": name, "source": source}
    if weights:
        out["weights"] = abspath(weights)
    return out


def import_timm(source: str) -> ModuleType:
    """The ``timm`` package.

    Raises:
        InputError: timm is not installed (the message, prefixed by ``source``, names the
            extra to install).
    """
    try:
        import timm
    except ImportError as exc:
        raise InputError(
            f"{source}: timm is not installed ({first_line(exc, 200)}); install the extra: "
            "pip install 'imacs[timm]'"
        ) from None
    return timm


def architecture(timm: ModuleType, source: str, where: str) -> str:
    """The architecture name of ``timm:NAME``.

    Raises:
        InputError: timm has no architecture by that name; the message is prefixed by
            ``where`` and lists up to five close names.
    """
    arch = source.split(":", 1)[1]
    if not arch or not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:5] if arch else []
        hint = f" (close: {', '.join(close)})" if close else ""
        raise InputError(f"{where}: timm has no architecture {arch!r}{hint}")
    return arch


def classifier_heads(model: nn.Module) -> list[str]:
    """The module names of a timm model's classifier, as its ``pretrained_cfg`` says."""
    head = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier")
    return [head] if isinstance(head, str) else list(head or [])


def pretrained_defaults(model: nn.Module) -> ModelDefaults:
    """Image size, mean and std from a timm model's ``pretrained_cfg`` (``input_size`` is
    (channels, height, width))."""
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    size = cfg.get("input_size")
    return ModelDefaults(
        image_size=(int(size[1]), int(size[2])) if size and len(size) == 3 else None,
        mean=triple(cfg.get("mean")),
        std=triple(cfg.get("std")),
    )
