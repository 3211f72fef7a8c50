"""What every model format shares: the load result, hashing, weights files, freezing.

A format module (see :mod:`imacs.formats`) returns a :class:`Loaded`: the module in eval
mode with its parameters frozen, the :class:`ModelDefaults` its own configuration states,
and the SHA-256 that identifies what was loaded. Weights are read as safetensors, or as a
state dict with ``torch.load(weights_only=True)``; a pickle that would run code when loaded
is refused, never retried unsafely.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import InputError, first_line

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's own configuration says about its input and output.

    Args:
        image_size (tuple[int, int], optional): (height, width) the model was made for.
        mean (tuple[float, float, float], optional): normalisation mean on [0, 1] pixels.
        std (tuple[float, float, float], optional): normalisation std.
        class_names (tuple[str, ...], optional): class names in output order.
        fixed_size (bool): the model takes ``image_size`` and no other (a ``torch.export``
            program exported with a static height and width). Default: False.
    """

    image_size: tuple[int, int] | None = None
    mean: Triple | None = None
    std: Triple | None = None
    class_names: tuple[str, ...] | None = None
    fixed_size: bool = False


@dataclass
class Loaded:
    """What a format's ``load`` returns.

    Args:
        module (torch.nn.Module): the model, in eval mode, parameters frozen, on the CPU.
        sha256 (str): identity of what was loaded (file, folder or factory plus weights).
        defaults (ModelDefaults, optional): the model's own preprocessing and class names.
            Default: none stated.
    """

    module: nn.Module
    sha256: str
    defaults: ModelDefaults = field(default_factory=ModelDefaults)


def freeze(module: nn.Module, set_eval: bool = True) -> nn.Module:
    """Put ``module`` in eval mode (unless ``set_eval`` is False: a ``torch.export``
    program is traced in eval mode and refuses ``.eval()``) and stop gradients to its
    parameters, so backward passes only compute input gradients. Returns ``module``."""
    if set_eval:
        module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dir_sha256(root: Path) -> str:
    """SHA-256 over the names and bytes of every file under ``root``, in sorted order."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        with open(p, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def abspath(p: str) -> str:
    """``p`` with ``~`` expanded, made absolute and resolved (for the run's manifest)."""
    return str(Path(p).expanduser().resolve())


def no_weights(weights: str | None, flag: str) -> None:
    """Refuse a weights file given with a format that holds its own weights.

    Raises:
        InputError: ``weights`` is set.
    """
    if weights:
        raise InputError(
            f"{weights}: a weights file goes with a factory ({flag} "
            "package.module:factory) or a timm model, not with a model file or folder"
        )


def triple(v: object) -> Triple | None:
    """Three floats from a 3-element list or tuple (a mean or std), else None."""
    if isinstance(v, list | tuple) and len(v) == 3:
        return tuple(float(x) for x in v)  # type: ignore[return-value]
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a safetensors file or a ``torch.save``'d state dict (a
    Lightning-style ``{"state_dict": ...}`` is unwrapped), never running pickled code.

    Raises:
        InputError: the file is missing, unreadable, not a state dict, or a pickle that
            would run code when loaded.
    """
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refused an object: the file would run code if unpickled fully.
        raise InputError(
            f"{path}: refused, this pickle holds objects that would run code when loaded; "
            "save only the weights (torch.save(model.state_dict(), PATH) or safetensors)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(
            f"{path}: not a weights file ({first_line(exc, 160)}); use safetensors or a "
            "torch.save'd state_dict"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # Lightning-style checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    return obj


def apply_state_dict(
    module: nn.Module, state: dict[str, torch.Tensor], path: Path, source: str
) -> None:
    """Load ``state`` into ``module`` strictly (a ``module.`` prefix from DataParallel is
    dropped).

    Raises:
        InputError: names or shapes do not fit; the message lists the first misfits.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}  # saved from DataParallel
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        want = set(module.state_dict())
        missing = sorted(want - set(state))[:3]
        extra = sorted(set(state) - want)[:3]
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing)}")
        if extra:
            detail.append(f"unexpected {', '.join(extra)}")
        if not detail:
            detail.append(str(exc).strip().splitlines()[-1][:160])
        raise InputError(
            f"{path}: weights do not fit the module from {source} ({'; '.join(detail)})"
        ) from None


class Normalized(nn.Module):
    """A model that normalises its [0, 1] pixel input as its own configuration says.

    Args:
        model (torch.nn.Module): the model, taking normalised pixels.
        mean (tuple[float, float, float]): per-channel mean.
        std (tuple[float, float, float]): per-channel std.
    """

    def __init__(self, model: nn.Module, mean: Triple, std: Triple) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
