"""Image encoders for the patch embedding: ``encoder:FILE`` and ``timm:NAME``.

* ``encoder:FILE``: a TorchScript file or a ``torch.export`` program (``.pt2``) that maps a
  batch of (n, 3, S, S) float RGB pixels in [0, 1] to (n, d) vectors: a user's exported
  DINOv2, CLIP image tower or in-house backbone, with its normalisation inside. ``S`` is
  ``--encoder-size`` (default: the program's own input size, else 224).
* ``timm:NAME`` (extra ``imacs[timm]``): a timm backbone without its classifier head, with
  weights from ``--encoder-weights FILE`` (safetensors or a state dict; a classifier
  checkpoint's head is dropped) or, without a file, from the user's local Hugging Face cache
  only (offline: imacs downloads nothing). Normalised and sized as timm's configuration says.

Outputs of shape (n, C, H, W) are averaged over space, (n, T, C) over tokens.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .errors import InputError, first_line
from .formats import export, torchscript
from .formats import timm as timm_format
from .formats.common import (
    Normalized,
    apply_state_dict,
    file_sha256,
    freeze,
    read_state_dict,
)
from .runner import in_halves
from .settings import DEFAULT_SIDE

if TYPE_CHECKING:
    from .attribution import PairedAttribution

DEFAULT_SIZE = DEFAULT_SIDE


@dataclass
class LoadedEncoder:
    """An image encoder ready to embed patch crops."""

    module: nn.Module
    source: str  #: ``encoder:/abs/path`` or ``timm:NAME``
    size: tuple[int, int]  #: (height, width) the crops are resized to
    sha256: str  #: identity of the encoder and its weights (part of the run's fingerprint)

    def describe(self) -> dict[str, object]:
        return {"source": self.source, "size": list(self.size), "sha256": self.sha256}

    def encode(self, crops: torch.Tensor, engine: PairedAttribution) -> np.ndarray:
        """(n, d) float32 vectors of (n, 3, h, w) [0, 1] crops, on the engine's device and
        precision; a batch the device has no memory for is encoded in halves."""
        device = engine.device
        if next(iter(self.module.parameters()), torch.zeros(0)).device != device:
            self.module.to(device)

        def run(x: torch.Tensor) -> torch.Tensor:
            x = x.to(device)
            if tuple(x.shape[-2:]) != self.size:
                x = nn.functional.interpolate(
                    x, size=self.size, mode="bilinear", align_corners=False, antialias=True
                )
            try:
                with torch.inference_mode(), engine.autocast():
                    out = self.module(x.clamp(0.0, 1.0))
            except torch.OutOfMemoryError:
                raise  # in_halves retries smaller batches
            except Exception as exc:  # user code: anything can come out
                raise InputError(
                    f"{self.source}: the encoder fails on a batch of {tuple(x.shape)} crops "
                    f"({first_line(exc)}); it must map (n, 3, H, W) [0, 1] pixels to (n, d) "
                    "vectors (--encoder-size sets H and W)"
                ) from None
            return self._vectors(out, len(x))

        try:
            return in_halves(run, crops, torch.OutOfMemoryError).cpu().numpy()
        except torch.OutOfMemoryError:
            raise InputError("the device ran out of memory encoding one patch") from None

    def _vectors(self, out: object, n: int) -> torch.Tensor:
        if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim < 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"{self.source}: the encoder returns {shape} for a batch of {n}; it must "
                "return (n, d) vectors"
            )
        if out.ndim == 4:  # a feature map: average over space
            out = out.mean(dim=(2, 3))
        elif out.ndim == 3:  # tokens: average them
            out = out.mean(dim=1)
        elif out.ndim != 2:
            raise InputError(
                f"{self.source}: the encoder returns {tuple(out.shape)}; it must return "
                "(n, d) vectors"
            )
        out = out.float()
        if not torch.isfinite(out).all():
            raise InputError(f"{self.source}: the encoder returns NaN or infinite values")
        return out


def load_encoder(kind: str, weights: str | None, size: int | None) -> LoadedEncoder | None:
    """The encoder named by an ``--embedding`` value (None for ``handcrafted`` and
    ``models``, which need none).

    Raises:
        InputError: the file is not an encoder, timm is missing, or no weights are at hand.
    """
    if not kind.startswith(("encoder:", "timm:")):
        if weights:
            raise InputError(
                f"{weights}: --encoder-weights goes with --embedding timm:NAME, not {kind}"
            )
        return None
    if kind.startswith("encoder:"):
        if weights:
            raise InputError(
                f"{weights}: --encoder-weights goes with --embedding timm:NAME; an "
                "encoder file holds its own weights"
            )
        return _load_file(kind, size)
    return _load_timm(kind, weights, size)


def _load_file(kind: str, size_override: int | None) -> LoadedEncoder:
    path = Path(kind.split(":", 1)[1]).expanduser().absolute()
    if not path.is_file():
        raise InputError(f"{path}: encoder file not found (--embedding encoder:FILE)")
    fmt = export if export.recognises(str(path)) else torchscript
    loaded = fmt.load(str(path), None, "--embedding")
    own = loaded.defaults.image_size
    return LoadedEncoder(
        module=loaded.module,
        source=f"encoder:{path}",
        size=(size_override, size_override)
        if size_override
        else own or (DEFAULT_SIZE, DEFAULT_SIZE),
        sha256=loaded.sha256,
    )


def _load_timm(kind: str, weights: str | None, size: int | None) -> LoadedEncoder:
    timm = timm_format.import_timm(kind)
    name = timm_format.architecture(timm, kind, f"--embedding {kind}")
    digest = hashlib.sha256(kind.encode())
    if weights:
        wpath = Path(weights).expanduser()
        state = read_state_dict(wpath)
        model = timm.create_model(name, pretrained=False, num_classes=0)
        heads = timm_format.classifier_heads(model)
        state = {k: v for k, v in state.items() if not any(k.startswith(f"{h}.") for h in heads)}
        apply_state_dict(model, state, wpath, kind)
        digest.update(file_sha256(wpath).encode())
    else:
        model = _timm_from_cache(timm, name, kind)
        digest.update(b"hf-cache")
    own = timm_format.pretrained_defaults(model)
    mean, std = own.mean, own.std
    module = freeze(Normalized(model, mean, std) if mean and std else model)
    return LoadedEncoder(
        module=module,
        source=kind,
        size=(size, size) if size else own.image_size or (DEFAULT_SIZE, DEFAULT_SIZE),
        sha256=digest.hexdigest(),
    )


def _timm_from_cache(timm: ModuleType, name: str, kind: str) -> nn.Module:
    """timm's pretrained ``name`` from the user's Hugging Face cache only (offline)."""
    offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # the user's cache, never the network
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except Exception:
        raise InputError(
            f"--embedding {kind}: no weights at hand; give --encoder-weights FILE "
            "(.safetensors or a state_dict), or put the model in your Hugging Face cache "
            "first (imacs downloads nothing)"
        ) from None
    finally:
        if offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = offline
