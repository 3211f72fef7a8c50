"""Loading models in the formats the field uses, beside TorchScript and factories.

* ``FILE.pt2``: a ``torch.export`` program (``torch.export.save``), attributed through
  ``ExportedProgram.module()``. It holds a graph of torch operators and its weights, no Python
  code of yours; export it with a dynamic batch dimension.
* ``timm:NAME`` (extra ``imacs[timm]``): the timm architecture built without downloading
  anything, with the user's weights (safetensors or a ``weights_only`` state dict).
* ``hf:DIR`` (extra ``imacs[hf]``): a local Hugging Face image-classification folder, loaded
  offline; remote code is never run.

Each loader returns the module and :class:`ModelDefaults`: the preprocessing and class names
the model's own configuration states, used where the user gives none.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's own configuration says about its input and output.

    Args:
        image_size (tuple[int, int], optional): (height, width) the model was made for.
        mean (tuple[float, float, float], optional): normalisation mean on [0, 1] pixels.
        std (tuple[float, float, float], optional): normalisation std.
        class_names (tuple[str, ...], optional): class names in output order.
    """

    image_size: tuple[int, int] | None = None
    mean: Triple | None = None
    std: Triple | None = None
    class_names: tuple[str, ...] | None = None


def is_exported_program(path: Path) -> bool:
    """True for a ``torch.export.save`` archive (a zip with an ``archive_format`` entry)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n == "archive_format" or n.endswith("/archive_format") for n in zf.namelist())


def dir_sha256(root: Path) -> str:
    """SHA-256 over the names and bytes of every file under ``root``, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# --- torch.export ------------------------------------------------------------------------


def load_exported(path: Path, flag: str) -> tuple[nn.Module, ModelDefaults]:
    """Load a ``torch.export`` program; its input shape gives the default image size."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many kinds for damaged archives
        raise InputError(
            f"{path}: cannot load as a torch.export program ({_first_line(exc)}); save one "
            "with torch.export.save(torch.export.export(model, (x,)), PATH)"
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
    return program.module(), ModelDefaults(image_size=size)  # type: ignore[arg-type]


# --- timm --------------------------------------------------------------------------------


def _import_timm(source: str):
    try:
        import timm
    except ImportError as exc:
        raise InputError(
            f"{source}: timm is not installed ({_first_line(exc)}); install the extra: "
            "pip install 'imacs[timm]'"
        ) from None
    return timm


def load_timm(
    source: str, state: dict[str, torch.Tensor] | None, weights: Path | None
) -> tuple[nn.Module, ModelDefaults]:
    """Build ``timm:NAME`` without downloading; the head is sized from the weights."""
    timm = _import_timm(source)
    name = timm_architecture(timm, source, source)
    if state is None or weights is None:
        raise InputError(
            f"{source}: give its weights with --weights-a/--weights-b FILE (.safetensors or a "
            "state_dict); imacs downloads nothing"
        )
    model = timm.create_model(name, pretrained=False)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    n_classes = None
    for h in classifier_heads(model):
        w = state.get(f"{h}.weight")
        if w is not None and w.ndim >= 1:
            n_classes = int(w.shape[0])
            break
    if n_classes is not None and n_classes != getattr(model, "num_classes", n_classes):
        model = timm.create_model(name, pretrained=False, num_classes=n_classes)
    size = cfg.get("input_size")
    return model, ModelDefaults(
        image_size=(int(size[1]), int(size[2])) if size and len(size) == 3 else None,
        mean=_triple(cfg.get("mean")),
        std=_triple(cfg.get("std")),
    )


def timm_architecture(timm: object, source: str, where: str) -> str:
    """The architecture name of ``timm:NAME``; InputError (prefixed by ``where``) with the
    closest names when timm has none by that name."""
    name = source.split(":", 1)[1]
    if not name or not timm.is_model(name):  # type: ignore[attr-defined]
        close = timm.list_models(f"*{name}*")[:5] if name else []  # type: ignore[attr-defined]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise InputError(f"{where}: timm has no architecture {name!r}{hint}")
    return name


def classifier_heads(model: nn.Module) -> list[str]:
    """The module names of a timm model's classifier, as its ``pretrained_cfg`` says."""
    head = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier")
    return [head] if isinstance(head, str) else list(head or [])


def _triple(v: object) -> Triple | None:
    if isinstance(v, list | tuple) and len(v) == 3:
        return tuple(float(x) for x in v)  # type: ignore[return-value]
    return None


# --- Hugging Face ------------------------------------------------------------------------

_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


class LogitsOnly(nn.Module):
    """Wraps a Hugging Face classifier so that it maps pixel values to a logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        return out.logits if hasattr(out, "logits") else out[0]


def load_hf(source: str, flag: str) -> tuple[nn.Module, ModelDefaults, str]:
    """Load ``hf:DIR`` offline; returns the module, its defaults and a hash of the folder."""
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
            f"{root}: transformers is not installed ({_first_line(exc)}); install the extra: "
            "pip install 'imacs[hf]'"
        ) from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # transformers 5 draws bars while loading weights
    try:
        model = AutoModelForImageClassification.from_pretrained(
            str(root), local_files_only=True, trust_remote_code=False
        )
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError...
        raise InputError(
            f"{root}: cannot load as a Hugging Face image classifier ({_first_line(exc)})"
        ) from None
    return LogitsOnly(model), _hf_defaults(root, model.config), dir_sha256(root)


def _hf_defaults(root: Path, config: object) -> ModelDefaults:
    proc: dict[str, object] = {}
    path = root / "preprocessor_config.json"
    if path.is_file():
        try:
            proc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not readable JSON ({_first_line(exc)})") from None
    size = _hf_size(proc.get("crop_size") if proc.get("do_center_crop") else None)
    size = size or _hf_size(proc.get("size")) or _hf_size(getattr(config, "image_size", None))
    normalize = proc.get("do_normalize", True)
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)] if id2label else []
    named = bool(names) and not all(_DEFAULT_LABEL.match(n) for n in names)
    return ModelDefaults(
        image_size=size,
        mean=_triple(proc.get("image_mean")) if normalize else None,
        std=_triple(proc.get("image_std")) if normalize else None,
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
