"""``hf:DIR``: a local Hugging Face image-classification folder (extra ``imacs[hf]``).

Loaded offline (``local_files_only``); remote code is never run. The model is wrapped to
map pixel values to a logits tensor; image size, mean, std and class names come from its
``config.json`` and ``preprocessor_config.json``. An eager ``torch.nn.Module`` (``eager``
is True). The hash covers every file in the folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, first_line
from .common import Loaded, ModelDefaults, abspath, dir_sha256, freeze, no_weights, triple

name = "hf"
eager = True

_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


def recognises(source: str) -> bool:
    """True for ``hf:DIR``."""
    return source.startswith("hf:")


class LogitsOnly(nn.Module):
    """Wraps a Hugging Face classifier so that it maps pixel values to a logits tensor.

    Args:
        model (torch.nn.Module): a ``transformers`` image classifier.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        return out.logits if hasattr(out, "logits") else out[0]


def load(source: str, weights: str | None, flag: str) -> Loaded:
    """Load ``hf:DIR`` offline, frozen in eval mode.

    Raises:
        InputError: weights were given, the folder has no ``config.json``, transformers
            is missing, or the folder does not hold an image classifier.
    """
    no_weights(weights, flag)
    root = Path(source.split(":", 1)[1]).expanduser()
    if not (root / "config.json").is_file():
        raise InputError(
            f"{root}: not a Hugging Face model folder (no config.json) ({flag}); save one with "
            "model.save_pretrained(DIR) and image_processor.save_pretrained(DIR)"
        )
    try:
        from transformers import AutoModelForImageClassification
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise InputError(
            f"{root}: transformers is not installed ({first_line(exc, 200)}); install the "
            "extra: pip install 'imacs[hf]'"
        ) from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # transformers 5 draws bars while loading weights
    try:
        model = AutoModelForImageClassification.from_pretrained(
            str(root), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError...
        raise InputError(
            f"{root}: cannot load as a Hugging Face image classifier ({first_line(exc, 200)})"
        ) from None
    return Loaded(
        module=freeze(LogitsOnly(model)),
        sha256=dir_sha256(root),
        defaults=_hf_defaults(root, model.config),
    )


def describe(source: str, weights: str | None) -> dict[str, object]:
    """The manifest's model entry: the folder's name, its absolute path as source."""
    folder = source.removeprefix("hf:")
    return {"name": Path(folder).name or source, "source": abspath(folder)}


def _hf_defaults(root: Path, config: object) -> ModelDefaults:
    proc: dict[str, object] = {}
    path = root / "preprocessor_config.json"
    if path.is_file():
        try:
            proc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not readable JSON ({first_line(exc, 200)})") from None
    size = _hf_size(proc.get("crop_size") if proc.get("do_center_crop") else None)
    size = size or _hf_size(proc.get("size")) or _hf_size(getattr(config, "image_size", None))
    normalize = proc.get("do_normalize", True)
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)] if id2label else []
    named = bool(names) and not all(_DEFAULT_LABEL.match(n) for n in names)
    return ModelDefaults(
        image_size=size,
        mean=triple(proc.get("image_mean")) if normalize else None,
        std=triple(proc.get("image_std")) if normalize else None,
        class_names=tuple(names) if named and len(set(names)) == len(names) else None,
    )


def _hf_size(v: object) -> tuple[int, int] | None:
    if isinstance(v, int) and v > 0:
        return (v, v)
    if isinstance(v, dict):
        if "height" in v and "width" in v:
            return (int(v["height"]), int(v["width"]))
        if "shortest_edge" in v:
            return (int(v["shortest_edge"]), int(v["shortest_edge"]))
    return None
