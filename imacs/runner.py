"""Running the classifiers: device, precision, memory layout, out-of-memory halving.

:class:`ModelRunner` owns everything about running a model that is not an attribution
method (those are in :mod:`imacs.methods`):

* the device (``auto|cpu|cuda|cuda:i``) and bf16 autocast;
* on a CPU, channels-last memory format when a probe shows it gives the same logits
  (models that ``.view()`` a conv output fall back to the default layout);
* logits checked for shape and finiteness, probabilities, and forward passes that run in
  halves while the device runs out of memory;
* the baseline in pixel space and its logits, computed once per run when the baseline
  does not depend on the image;
* how many scaled inputs go through one forward/backward pass: on a CPU small passes that
  stay in cache are much faster than one huge pass (BENCHMARKS.md).

Models are plain ``forward`` calls: no hooks, so TorchScript and ``torch.export`` programs
run here. :func:`is_eager` tells whether a module's layers take hooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ImacsError, InputError, ModelFailure, first_line
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


def is_eager(module: nn.Module) -> bool:
    """True when ``module`` runs its layers as Python modules, so layer hooks see them.

    False for TorchScript, and for a graph that reads its layers' parameters as operator
    inputs instead of calling the layers (what ``torch.export``'s
    ``ExportedProgram.module()`` is), also inside a wrapper.
    """
    for m in module.modules():
        if isinstance(m, torch.jit.ScriptModule):
            return False
        if isinstance(m, torch.fx.GraphModule) and any(
            n.op == "get_attr" and "." in str(n.target) for n in m.graph.nodes
        ):
            return False
    return True


class ModelRunner:
    """Runs models by role on one device, with the run's preprocessing and precision.

    Args:
        models (dict[str, torch.nn.Module]): models by role, e.g. ``{"a": m1, "b": m2}``;
            moved to the device.
        preprocess (Preprocess): resizing and normalisation.
        settings (AttributionSettings): device, precision, baseline, pass size.
        names (dict[str, str], optional): display names for error messages.
            Default: ``model A``, ``model B``...
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
        #: per role, whether the model runs in channels-last memory format (set on first use)
        self.channels_last: dict[str, bool] = {}
        self._baseline_logits: dict[str, torch.Tensor] = {}
        self._num_classes: dict[str, int] = {}
        self._pass_scale = 1.0  # halved by shrink_passes() after an out-of-memory error
        for m in models.values():
            m.to(self.device)

    @property
    def autocast_enabled(self) -> bool:
        return self.settings.precision == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast on the device when the precision is bf16, else nothing."""
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def forward_function(self, role: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """Model ``role`` as a function of [0, 1] pixels (normalised, in the chosen memory
        layout, autocast as set), returning float32 logits; what attribution methods
        differentiate."""
        model = self.models[role]
        channels_last = self.channels_last.get(role, False)

        def forward(x: torch.Tensor) -> torch.Tensor:
            x = self.preprocess.normalize(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                out = model(x)
            return out.float()

        return forward

    def logits(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """Checked (n, classes) logits of model ``role`` for [0, 1] pixels, without
        gradients; the first call per role chooses its memory layout.

        Raises:
            DeviceOutOfMemory: the device has no memory for the batch.
            ModelFailure: the model raises or returns NaN or infinite logits.
            InputError: the output is not (batch, classes >= 2) logits.
        """
        try:
            with torch.inference_mode():
                out = self.forward_function(role)(x)
        except torch.OutOfMemoryError:
            raise DeviceOutOfMemory(
                f"{self.device} ran out of memory running {self.names[role]}"
            ) from None
        except Exception as exc:  # user model code: anything can come out
            h, w = x.shape[-2:]
            raise ModelFailure(
                f"{self.names[role]} fails on a batch of {x.shape[0]}x3x{h}x{w} inputs "
                f"({first_line(exc)}); check --image-size, --mean/--std and that the file is "
                "an image classifier"
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
            # every answer comes from the chosen layout, this first one too: a run whose
            # first pass is a probe and one whose first pass is real work (all attribution
            # from the cache) then give the same bytes
            out = self._choose_layout(role, x, out)
        return out

    def probabilities(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of model ``role`` for a batch of [0, 1] pixels, without
        gradients; a batch the device has no memory for is run in halves."""
        return in_halves(lambda t: torch.softmax(self.logits(role, t), dim=1), x, DeviceOutOfMemory)

    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        """The attribution baseline for a batch in [0, 1] pixel space: black, gray, or a
        box blur over a quarter of the image side (removes shapes, keeps colour)."""
        kind = self.settings.baseline
        if kind == "black":
            return torch.zeros_like(x)
        if kind == "gray":
            return torch.full_like(x, 0.5)
        k = max(3, (min(x.shape[-2:]) // 4) | 1)
        return F.avg_pool2d(F.pad(x, [k // 2] * 4, mode="replicate"), k, stride=1)

    def baseline_logits(self, role: str, baseline: torch.Tensor) -> torch.Tensor:
        """Logits of model ``role`` for ``baseline`` (one row per image); computed once per
        run when the baseline does not depend on the image."""
        if self.settings.baseline == "blur":
            return self.logits(role, baseline)
        if role not in self._baseline_logits:
            self._baseline_logits[role] = self.logits(role, baseline[:1])
        return self._baseline_logits[role].expand(baseline.shape[0], -1)

    def num_classes(self, role: str, probe: np.ndarray) -> int:
        """Number of classes ``role`` outputs, probing it on ``probe`` (n, 3, H, W)."""
        if role not in self._num_classes:
            self.logits(role, torch.from_numpy(probe).to(self.device))
        return self._num_classes[role]

    def shrink_passes(self) -> bool:
        """Halve the scaled inputs per pass after the device ran out of memory; False when
        passes are already down to one image's steps."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self._pass_scale < 1e-4:
            return False
        self._pass_scale /= 2
        return True

    def internal_batch_size(self, n: int, pixels: int) -> int:
        """Scaled inputs per forward/backward pass for ``n`` images of ``pixels`` pixels:
        the setting when given, else sized to a memory budget."""
        if self.settings.internal_batch_size:
            return max(n, self.settings.internal_batch_size)
        # Scaled inputs per forward/backward pass, in floats. On a CPU, passes of ~1.2 MB of
        # input (32 images of 32x32, 16 of 64x64) keep activations in cache and ran up to
        # 2x faster than captum's one pass of every step (BENCHMARKS.md); GPUs want large
        # passes.
        budget = 300_000 if self.device.type == "cpu" else 100_000_000
        per_pass = max(1, int(budget * self._pass_scale) // (3 * pixels))
        return max(n, min(n * self.settings.steps, per_pass))

    def _choose_layout(self, role: str, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Use channels-last on the CPU if the model accepts it and agrees with itself;
        returns the logits for ``x`` computed in the chosen layout (``reference``, computed
        in the default one, when that stays)."""
        self.channels_last[role] = False
        if self.device.type != "cpu":
            return reference
        model = self.models[role]
        out = reference
        try:
            model.to(memory_format=torch.channels_last)
            self.channels_last[role] = True
            with torch.inference_mode():
                out = self.forward_function(role)(x)
            same = torch.allclose(out, reference, rtol=1e-3, atol=1e-4 * reference.abs().max())
        except Exception:  # e.g. .view() on a channels-last tensor inside the model
            same = False
        if not same:
            model.to(memory_format=torch.contiguous_format)
            self.channels_last[role] = False
            return reference
        return out
