"""Stage 1: Integrated Gradients for both models.

:class:`PairedAttribution` runs Integrated Gradients (captum) for two models over batches of
decoded images. Work that a plain per-model captum loop repeats is done once:

* each image is decoded and preprocessed once for both models;
* predictions come from one forward pass under ``torch.inference_mode``, and the
  convergence delta is computed from those logits and the baseline's (captum's
  ``return_convergence_delta`` would run two more forward passes per batch);
* the baseline's logits are computed once per run when the baseline does not depend on
  the image;
* parameters are frozen, so backward passes only compute gradients for the inputs;
* interpolation steps are batched with the images, in passes sized for the device: on a
  CPU small passes that stay in cache are much faster than one huge pass (captum's default);
* on a CPU the model runs in channels-last memory format when a probe shows it gives the
  same logits (models that ``.view()`` a conv output fall back to the default layout).

BENCHMARKS.md has the measurements behind both choices.

Models are plain ``forward`` calls: no hooks, so TorchScript models work.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients
from torch import nn

from .errors import ImacsError, InputError, ModelFailure
from .settings import AttributionSettings, Preprocess


class DeviceOutOfMemory(ImacsError):
    """The device had no memory for a pass; the caller retries with smaller passes."""


def in_halves(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, oom: type[BaseException]
) -> torch.Tensor:
    """``fn(x)`` for forward passes without gradients; while the device runs out of memory
    (``oom`` is raised), ``fn`` on each half of the batch, concatenated. A single input
    that does not fit raises ``oom``."""
    try:
        return fn(x)
    except oom:
        if len(x) == 1:
            raise
        if x.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(x) // 2
        return torch.cat([in_halves(fn, x[:half], oom), in_halves(fn, x[half:], oom)])


def resolve_device(spec: str) -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:i`` into a device, checking that it exists."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec}: not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: no CUDA device is available; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif dev.type != "cpu":
        raise InputError(f"--device {spec}: unsupported; use auto, cpu, cuda or cuda:N")
    return dev


@dataclass
class BatchResult:
    """Attribution of one model over one batch of images."""

    maps: np.ndarray  #: (n, H, W) float32, attribution summed over colour channels
    probs: np.ndarray  #: (n, classes) float32 softmax probabilities
    pred: np.ndarray  #: (n,) int64 predicted class
    target: np.ndarray  #: (n,) int64 class that was explained
    delta: np.ndarray  #: (n,) float32 convergence delta (completeness error)


class PairedAttribution:
    """Integrated Gradients for several models over shared, decoded batches.

    Args:
        models (dict[str, torch.nn.Module]): models by role, e.g. ``{"a": m1, "b": m2}``.
        preprocess (Preprocess): resizing and normalisation.
        settings (AttributionSettings): Integrated Gradients settings.
        names (dict[str, str], optional): display names for error messages.
    """

    def __init__(
        self,
        models: dict[str, nn.Module],
        preprocess: Preprocess,
        settings: AttributionSettings,
        names: dict[str, str] | None = None,
    ) -> None:
        self.models = models
        self.preprocess = preprocess
        self.settings = settings
        self.names = names or {r: f"model {r.upper()}" for r in models}
        self.device = resolve_device(settings.device)
        self._baseline_logits: dict[str, torch.Tensor] = {}
        self._num_classes: dict[str, int] = {}
        self._channels_last: dict[str, bool] = {}
        self._pass_scale = 1.0  # halved by shrink_passes() after an out-of-memory error
        for m in models.values():
            m.to(self.device)

    @property
    def autocast_enabled(self) -> bool:
        return self.settings.precision == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast on the device when the precision is bf16, else nothing (encoders
        run under it too)."""
        return self._autocast()

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _forward(self, role: str) -> object:
        model = self.models[role]

        channels_last = self._channels_last.get(role, False)

        def forward(x: torch.Tensor) -> torch.Tensor:
            x = self.preprocess.normalize(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                out = model(x)
            return out.float()

        return forward

    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        """The Integrated Gradients baseline for a batch in [0, 1] pixel space (the
        trust tests fill removed pixels with it)."""
        return self._baseline(x)

    def logits_function(self, role: str) -> object:
        """Model ``role`` as a function of [0, 1] pixels (normalised, autocast as set),
        returning float32 logits; what Integrated Gradients differentiates."""
        return self._forward(role)

    def probabilities(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of model ``role`` for a batch of [0, 1] pixels, without
        gradients (errors as for attribution). A batch the device has no memory for is
        run in halves (what-if removal and the trust tests both come through here)."""
        return in_halves(
            lambda t: torch.softmax(self._logits(role, t), dim=1), x, DeviceOutOfMemory
        )

    def _baseline(self, x: torch.Tensor) -> torch.Tensor:
        kind = self.settings.baseline
        if kind == "black":
            return torch.zeros_like(x)
        if kind == "gray":
            return torch.full_like(x, 0.5)
        # blur: a box blur over a quarter of the image side removes shapes, keeps colour
        k = max(3, (min(x.shape[-2:]) // 4) | 1)
        return F.avg_pool2d(F.pad(x, [k // 2] * 4, mode="replicate"), k, stride=1)

    def _logits(self, role: str, x: torch.Tensor) -> torch.Tensor:
        try:
            with torch.inference_mode():
                out = self._forward(role)(x)
        except torch.OutOfMemoryError:
            raise DeviceOutOfMemory(
                f"{self.device} ran out of memory running {self.names[role]}"
            ) from None
        except Exception as exc:  # user model code: anything can come out
            h, w = x.shape[-2:]
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ModelFailure(
                f"{self.names[role]} fails on a batch of {x.shape[0]}x3x{h}x{w} inputs ({first}); "
                "check --image-size, --mean/--std and that the file is an image classifier"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(
                f"{self.names[role]} returns {shape} for a batch of {x.shape[0]}; an image "
                "classifier must return logits of shape (batch, classes)"
            )
        if out.shape[1] < 2:
            raise InputError(f"{self.names[role]} returns one output per image; need >= 2 classes")
        if not torch.isfinite(out).all():
            raise ModelFailure(
                f"{self.names[role]} returns NaN or infinite logits; check the model and "
                "--mean/--std"
            )
        if role not in self._num_classes:
            self._num_classes[role] = int(out.shape[1])
            self._choose_layout(role, x, out)
        return out

    def _choose_layout(self, role: str, x: torch.Tensor, reference: torch.Tensor) -> None:
        """Use channels-last on the CPU if the model accepts it and agrees with itself."""
        self._channels_last[role] = False
        if self.device.type != "cpu":
            return
        model = self.models[role]
        try:
            model.to(memory_format=torch.channels_last)
            self._channels_last[role] = True
            with torch.inference_mode():
                out = self._forward(role)(x)
            same = torch.allclose(out, reference, rtol=1e-3, atol=1e-4 * reference.abs().max())
        except Exception:  # e.g. .view() on a channels-last tensor inside the model
            same = False
        if not same:
            model.to(memory_format=torch.contiguous_format)
            self._channels_last[role] = False

    def shrink_passes(self) -> bool:
        """Halve the scaled inputs per pass after the device ran out of memory; False when
        passes are already down to one image's steps."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self._pass_scale < 1e-4:
            return False
        self._pass_scale /= 2
        return True

    def num_classes(self, role: str, probe: np.ndarray) -> int:
        """Number of classes ``role`` outputs, probing it on ``probe`` (n, 3, H, W)."""
        if role not in self._num_classes:
            self._logits(role, torch.from_numpy(probe).to(self.device))
        return self._num_classes[role]

    def _internal_batch_size(self, n: int, pixels: int) -> int:
        if self.settings.internal_batch_size:
            return max(n, self.settings.internal_batch_size)
        # Scaled inputs per forward/backward pass, in floats. On a CPU, passes of ~1.2 MB of
        # input (32 images of 32x32, 16 of 64x64) keep activations in cache and ran up to
        # 2x faster than captum's one pass of every step (BENCHMARKS.md); GPUs want large
        # passes.
        budget = 300_000 if self.device.type == "cpu" else 100_000_000
        per_pass = max(1, int(budget * self._pass_scale) // (3 * pixels))
        return max(n, min(n * self.settings.steps, per_pass))

    def attribute(
        self, role: str, images: np.ndarray, labels: np.ndarray | None = None
    ) -> BatchResult:
        """Integrated Gradients of model ``role`` for a batch.

        Args:
            role (str): which model.
            images (numpy.ndarray): (n, 3, H, W) float32 pixels in [0, 1].
            labels (numpy.ndarray, optional): (n,) true classes; needed for target="label".
        """
        x = torch.from_numpy(images).to(self.device)
        logits = self._logits(role, x)
        probs = torch.softmax(logits, dim=1)
        pred = logits.argmax(dim=1)
        if self.settings.target == "label":
            if labels is None:
                raise InputError("--target label needs labels for every image")
            target = torch.as_tensor(labels, device=self.device, dtype=torch.long)
            if int(target.max()) >= logits.shape[1]:
                raise InputError(
                    f"a label index ({int(target.max())}) is beyond {self.names[role]}'s "
                    f"{logits.shape[1]} outputs; check --classes"
                )
        else:
            target = pred
        baseline = self._baseline(x)
        base_logits = self._baseline_logits_for(role, baseline)
        ig = IntegratedGradients(self._forward(role), multiply_by_inputs=True)
        h, w = x.shape[-2:]
        try:
            attr = ig.attribute(
                x,
                baselines=baseline,
                target=target,
                n_steps=self.settings.steps,
                method=self.settings.method,
                internal_batch_size=self._internal_batch_size(x.shape[0], h * w),
            ).detach()
        except torch.OutOfMemoryError:
            raise DeviceOutOfMemory(
                f"{self.device} ran out of memory attributing {self.names[role]}"
            ) from None
        except Exception as exc:  # user model code, on interpolated inputs
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise ModelFailure(
                f"{self.names[role]} fails during Integrated Gradients ({first})"
            ) from None
        if not torch.isfinite(attr).all():
            raise ModelFailure(f"{self.names[role]} gives NaN or infinite gradients")
        # completeness: sum of attributions should equal f(x) - f(baseline) for the target
        idx = torch.arange(x.shape[0], device=x.device)
        expected = logits[idx, target] - base_logits[idx, target]
        delta = attr.sum(dim=(1, 2, 3)) - expected
        maps = attr.sum(dim=1)
        return BatchResult(
            maps=maps.float().cpu().numpy(),
            probs=probs.float().cpu().numpy(),
            pred=pred.cpu().numpy().astype(np.int64),
            target=target.cpu().numpy().astype(np.int64),
            delta=delta.float().cpu().numpy(),
        )

    def baseline_array(self, images: np.ndarray) -> np.ndarray:
        """:meth:`baseline` for (n, 3, H, W) numpy pixels in [0, 1], computed on the device
        (what-if removal, which imports no torch, fills boxes with it)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            return self.baseline(x).float().cpu().numpy()

    def probabilities_array(self, role: str, images: np.ndarray) -> np.ndarray:
        """:meth:`probabilities` for (n, 3, H, W) numpy pixels: (n, classes) float32."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        return self.probabilities(role, x).float().cpu().numpy()

    def _baseline_logits_for(self, role: str, baseline: torch.Tensor) -> torch.Tensor:
        if self.settings.baseline == "blur":
            return self._logits(role, baseline)
        if role not in self._baseline_logits:
            self._baseline_logits[role] = self._logits(role, baseline[:1])
        return self._baseline_logits[role].expand(baseline.shape[0], -1)
