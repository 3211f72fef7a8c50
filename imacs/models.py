"""Loading the two classifiers.

Two ways in:

* a **TorchScript** file (``torch.jit.save``): portable, needs no Python code of yours.
  TorchScript is code: loading one runs the graph it contains, so only load files you trust.
* ``package.module:factory`` plus a **weights** file: imacs imports the module, calls
  ``factory()`` with no arguments and loads the weights into the returned module. Weights are
  read as safetensors, or as a state dict with ``torch.load(weights_only=True)``; a pickle
  that would run code when loaded is refused, never retried unsafely.
"""

from __future__ import annotations

import hashlib
import importlib
import pickle
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import InputError

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    Args:
        source (str): a TorchScript file, or ``package.module:factory``.
        weights (str, optional): weights file for a factory (``.safetensors`` or a
            ``torch.save``'d state dict). Default: None.
        name (str, optional): display name. Default: the file or factory name.
    """

    source: str
    weights: str | None = None
    name: str | None = None

    @property
    def is_factory(self) -> bool:
        return bool(_FACTORY_RE.match(self.source)) and not Path(self.source).exists()

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.is_factory:
            return self.source.split(":")[1]
        return Path(self.source).stem


@dataclass
class LoadedModel:
    """A model ready for attribution: in eval mode, parameters frozen, on the CPU."""

    module: nn.Module
    spec: ModelSpec
    kind: str  #: "torchscript" or "factory"
    sha256: str  #: identity of the model: file hash (and weights hash for a factory)

    @property
    def name(self) -> str:
        return self.spec.display_name

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "kind": self.kind,
            "source": self.spec.source if self.kind == "factory" else _abspath(self.spec.source),
            "sha256": self.sha256,
        }
        if self.spec.weights:
            out["weights"] = _abspath(self.spec.weights)
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
    if spec.is_factory:
        module, digest = _load_factory(spec, flag)
        kind = "factory"
    else:
        if spec.weights:
            raise InputError(
                f"{spec.weights}: a weights file goes with a factory "
                f"({flag} package.module:factory), not with a TorchScript file"
            )
        path = Path(spec.source).expanduser()
        module = _load_torchscript(path, flag)
        kind = "torchscript"
        digest = file_sha256(path)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return LoadedModel(module=module, spec=spec, kind=kind, sha256=digest)


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
