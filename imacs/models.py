"""Loading the two classifiers.

Five ways in:

* a **TorchScript** file (``torch.jit.save``): portable, needs no Python code of yours.
  TorchScript is code: loading one runs the graph it contains, so only load files you trust.
* a **torch.export** program (``FILE.pt2``, ``torch.export.save``), TorchScript's successor.
* ``package.module:factory`` plus a **weights** file: imacs imports the module, calls
  ``factory()`` with no arguments and loads the weights into the returned module.
* ``timm:NAME`` plus a weights file, and ``hf:DIR`` (a local Hugging Face folder): see
  :mod:`imacs.model_formats`.

Weights are read as safetensors, or as a state dict with ``torch.load(weights_only=True)``; a
pickle that would run code when loaded is refused, never retried unsafely.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .attribution import Preprocess
from .errors import InputError
from .model_formats import (
    ModelDefaults,
    Triple,
    is_exported_program,
    load_exported,
    load_hf,
    load_timm,
)

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    Args:
        source (str): a TorchScript or torch.export (``.pt2``) file,
            ``package.module:factory``, ``timm:NAME`` or ``hf:DIR``.
        weights (str, optional): weights file for a factory or a timm model
            (``.safetensors`` or a ``torch.save``'d state dict). Default: None.
        name (str, optional): display name. Default: the file or factory name.
    """

    source: str
    weights: str | None = None
    name: str | None = None

    @property
    def kind(self) -> str:
        """``timm``, ``hf``, ``factory`` or ``file`` (TorchScript or torch.export)."""
        for prefix in ("timm", "hf"):
            if self.source.startswith(f"{prefix}:"):
                return prefix
        if _FACTORY_RE.match(self.source) and not Path(self.source).exists():
            return "factory"
        return "file"

    @property
    def is_factory(self) -> bool:
        return self.kind == "factory"

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.kind in ("factory", "timm"):
            return self.source.split(":", 1)[1]
        if self.kind == "hf":
            return Path(self.source.removeprefix("hf:")).name or self.source
        return Path(self.source).stem


@dataclass
class LoadedModel:
    """A model ready for attribution: in eval mode, parameters frozen, on the CPU."""

    module: nn.Module
    spec: ModelSpec
    kind: str  #: "torchscript", "export", "factory", "timm" or "hf"
    sha256: str  #: identity of the model: file hash (and weights hash for a factory)
    #: preprocessing and class names from the model's own configuration
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    #: the normalisation applied inside the module from its own configuration, if any
    normalisation: dict[str, object] | None = None

    @property
    def name(self) -> str:
        return self.spec.display_name

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "kind": self.kind,
            "source": (
                self.spec.source
                if self.kind in ("factory", "timm")
                else _abspath(self.spec.source.removeprefix("hf:"))
            ),
            "sha256": self.sha256,
        }
        if self.spec.weights:
            out["weights"] = _abspath(self.spec.weights)
        if self.normalisation:
            out["normalisation"] = self.normalisation
        return out


def _abspath(p: str) -> str:
    return str(Path(p).expanduser().resolve())


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(spec: ModelSpec, flag: str = "--model") -> LoadedModel:
    """Load a model described by ``spec``.

    Args:
        spec (ModelSpec): where the model comes from.
        flag (str, optional): the CLI flag that named it, used in error messages.

    Raises:
        InputError: the file is missing, is not a model, is a pickle that would run code,
            or the weights do not fit the factory's module.
    """
    defaults = ModelDefaults()
    kind = spec.kind
    if kind in ("file", "hf") and spec.weights:
        raise InputError(
            f"{spec.weights}: a weights file goes with a factory ({flag} "
            "package.module:factory) or a timm model, not with a model file or folder"
        )
    if kind == "factory":
        module, digest = _load_factory(spec, flag)
    elif kind == "timm":
        wpath = Path(spec.weights).expanduser() if spec.weights else None
        state = _read_state_dict(wpath) if wpath else None
        module, defaults = load_timm(spec.source, state, wpath)
        if state is not None and wpath is not None:
            _apply_state_dict(module, state, wpath, spec.source)
            digest = hashlib.sha256(f"{spec.source}:{file_sha256(wpath)}".encode()).hexdigest()
    elif kind == "hf":
        module, defaults, digest = load_hf(spec.source, flag)
    else:
        path = Path(spec.source).expanduser()
        if path.is_file() and is_exported_program(path):
            module, defaults = load_exported(path, flag)
            kind = "export"
        else:
            module = _load_torchscript(path, flag)
            kind = "torchscript"
        digest = file_sha256(path)
    if kind != "export":  # an exported program is traced in eval mode and has no .eval()
        module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, spec=spec, kind=kind, sha256=digest, defaults=defaults)


def _load_torchscript(path: Path, flag: str) -> nn.Module:
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
        raise InputError(
            f"{path}: a torch.save checkpoint, not TorchScript; pass {flag} "
            "package.module:factory with this file as its weights, or export the model with "
            "torch.jit.script(model).save(PATH)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates jit
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and friends with long C++ traces
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot load as TorchScript ({first[:200]})") from None


def _load_factory(spec: ModelSpec, flag: str) -> tuple[nn.Module, str]:
    modname, fname = spec.source.split(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` does
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise InputError(
            f"{spec.source}: cannot import module {modname!r} ({exc}); make it importable "
            "(install it, or run from the folder that holds it)"
        ) from None
    factory = getattr(mod, fname, None)
    if not callable(factory):
        raise InputError(f"{spec.source}: module {modname!r} has no callable {fname!r}")
    module = factory()
    if not isinstance(module, nn.Module):
        raise InputError(
            f"{spec.source}: the factory returned {type(module).__name__}, not a torch.nn.Module"
        )
    digest = hashlib.sha256(spec.source.encode())
    if spec.weights:
        wpath = Path(spec.weights).expanduser()
        state = _read_state_dict(wpath)
        _apply_state_dict(module, state, wpath, spec.source)
        digest.update(file_sha256(wpath).encode())
    else:
        src = getattr(mod, "__file__", None)
        if src and Path(src).is_file():
            digest.update(file_sha256(src).encode())
    return module, digest.hexdigest()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path}: not a weights file ({first[:160]}); use safetensors or a torch.save'd "
            "state_dict"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # Lightning-style checkpoint
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: does not hold a state_dict (a mapping of names to tensors)")
    return obj


def _apply_state_dict(
    module: nn.Module, state: dict[str, torch.Tensor], path: Path, source: str
) -> None:
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
    """A model that normalises its [0, 1] pixel input as its own configuration says."""

    def __init__(self, model: nn.Module, mean: Triple, std: Triple) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def model_preprocess(pre: Preprocess, models: dict[str, LoadedModel]) -> Preprocess:
    """Fill what the user left unset from the models' own configuration.

    The image size (None in ``pre``) becomes the size the models state (they must agree),
    else 224x224. When ``pre`` has no mean/std, a model whose configuration states its
    normalisation (timm, Hugging Face) is wrapped to apply it itself, so two models with
    different normalisations each get their own. Mutates ``models``' modules.

    Raises:
        InputError: the two models state different input sizes and none was given.
    """
    size = pre.image_size
    if size is None:
        stated = {r: m.defaults.image_size for r, m in models.items() if m.defaults.image_size}
        if len(set(stated.values())) > 1:
            a, b = (f"{h}x{w}" for h, w in stated.values())
            raise InputError(
                f"model A is made for {a} images and model B for {b}; pass --image-size to "
                "attribute both at one size"
            )
        size = next(iter(stated.values()), (224, 224))
    if pre.mean is None:
        for m in models.values():
            d = m.defaults
            if d.mean is not None and d.std is not None and m.normalisation is None:
                m.module = Normalized(m.module, d.mean, d.std)
                m.normalisation = {"mean": list(d.mean), "std": list(d.std), "from": "model"}
    return replace(pre, image_size=size)


def model_class_names(models: dict[str, LoadedModel]) -> list[str] | None:
    """The class names the models state (Hugging Face ``id2label``), or None.

    Raises:
        InputError: both models state class names and they differ.
    """
    named = {r: m.defaults.class_names for r, m in models.items() if m.defaults.class_names}
    if len(named) == 2 and named["a"] != named["b"]:
        a, b = named["a"], named["b"]
        i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
        first = f"class {i} is {a[i]!r} in A and {b[i]!r} in B" if i < min(len(a), len(b)) else ""
        raise InputError(
            f"models A and B name their classes differently ({first or 'different counts'}); "
            "both must classify the same classes in the same order, or pass --classes FILE"
        )
    names = next(iter(named.values()), None)
    return list(names) if names else None
