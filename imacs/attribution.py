"""Stage 1: attribution maps for both models (Integrated Gradients by default).

:class:`PairedAttribution` is the engine: a :class:`~imacs.runner.ModelRunner` (device,
precision, memory layout, out-of-memory halving, logits, probabilities, baseline) composed
with an attribution method from :mod:`imacs.methods` (captum's Integrated Gradients unless
another is named). Work that a plain per-model captum loop repeats is done once:

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

Integrated Gradients calls the models' ``forward`` only: no hooks, so TorchScript and
``torch.export`` models work. A method that needs layer hooks is refused for those.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import InputError, ModelFailure, first_line
from .methods import AttributionMethod, find_method
from .runner import DeviceOutOfMemory, ModelRunner, in_halves, is_eager, resolve_device
from .settings import AttributionSettings, Preprocess

__all__ = [
    "AttributionSettings",
    "BatchResult",
    "DeviceOutOfMemory",
    "PairedAttribution",
    "Preprocess",
    "in_halves",
    "resolve_device",
]


@dataclass
class BatchResult:
    """Attribution of one model over one batch of images."""

    maps: np.ndarray  #: (n, H, W) float32, attribution summed over colour channels
    probs: np.ndarray  #: (n, classes) float32 softmax probabilities
    pred: np.ndarray  #: (n,) int64 predicted class
    target: np.ndarray  #: (n,) int64 class that was explained
    #: (n,) float32 convergence delta (completeness error); NaN for a method without
    #: completeness (see :mod:`imacs.methods`)
    delta: np.ndarray


class PairedAttribution:
    """Attribution maps for several models over shared, decoded batches.

    Args:
        models (dict[str, torch.nn.Module]): models by role, e.g. ``{"a": m1, "b": m2}``.
        preprocess (Preprocess): resizing and normalisation.
        settings (AttributionSettings): device, precision, baseline, target and the
            method's settings (Integrated Gradients: steps, integral approximation).
        names (dict[str, str], optional): display names for error messages.
        method (str, optional): the attribution method's name in
            :data:`imacs.methods.METHODS`. Default: None (``settings.algorithm``,
            Integrated Gradients unless set).
        eager (dict[str, bool], optional): per role, whether the model is an eager
            ``torch.nn.Module`` (:attr:`imacs.models.LoadedModel.eager`). Default: told
            from each module (:func:`imacs.runner.is_eager`).

    Raises:
        InputError: the device does not exist, the method is unknown, or it needs layer
            hooks and a model is a TorchScript or ``torch.export`` program.
    """

    def __init__(
        self,
        models: dict[str, nn.Module],
        preprocess: Preprocess,
        settings: AttributionSettings,
        names: dict[str, str] | None = None,
        method: str | None = None,
        eager: dict[str, bool] | None = None,
    ) -> None:
        names = names or {r: f"model {r.upper()}" for r in models}
        self.method: type[AttributionMethod] = find_method(method or settings.algorithm)
        if self.method.needs_hooks:
            told = eager or {}
            for role, model in models.items():
                if not (told[role] if role in told else is_eager(model)):
                    raise InputError(
                        f"{names[role]} is a TorchScript or torch.export program; "
                        f"{self.method.title} attributes through layer hooks, which need an "
                        "eager torch.nn.Module: pass package.module:factory with its weights "
                        "(or a timm or Hugging Face model), or choose --method ig"
                    )
        self.runner = ModelRunner(models, preprocess, settings, names)

    @property
    def models(self) -> dict[str, nn.Module]:
        return self.runner.models

    @property
    def preprocess(self) -> Preprocess:
        return self.runner.preprocess

    @property
    def settings(self) -> AttributionSettings:
        return self.runner.settings

    @property
    def names(self) -> dict[str, str]:
        return self.runner.names

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def _channels_last(self) -> dict[str, bool]:
        return self.runner.channels_last

    @property
    def autocast_enabled(self) -> bool:
        return self.runner.autocast_enabled

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast on the device when the precision is bf16, else nothing (encoders
        run under it too)."""
        return self.runner.autocast()

    def baseline(self, x: torch.Tensor) -> torch.Tensor:
        """The attribution baseline for a batch in [0, 1] pixel space (the trust tests
        fill removed pixels with it)."""
        return self.runner.baseline(x)

    def logits_function(self, role: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """Model ``role`` as a function of [0, 1] pixels (normalised, autocast as set),
        returning float32 logits; what the attribution method differentiates."""
        return self.runner.forward_function(role)

    def probabilities(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities of model ``role`` for a batch of [0, 1] pixels, without
        gradients (errors as for attribution). A batch the device has no memory for is
        run in halves (what-if removal and the trust tests both come through here)."""
        return self.runner.probabilities(role, x)

    def shrink_passes(self) -> bool:
        """Halve the scaled inputs per pass after the device ran out of memory; False when
        passes are already down to one image's steps."""
        return self.runner.shrink_passes()

    def num_classes(self, role: str, probe: np.ndarray) -> int:
        """Number of classes ``role`` outputs, probing it on ``probe`` (n, 3, H, W)."""
        return self.runner.num_classes(role, probe)

    def attribute(
        self, role: str, images: np.ndarray, labels: np.ndarray | None = None
    ) -> BatchResult:
        """Attribution maps of model ``role`` for a batch.

        Args:
            role (str): which model.
            images (numpy.ndarray): (n, 3, H, W) float32 pixels in [0, 1].
            labels (numpy.ndarray, optional): (n,) true classes; needed for target="label".
        """
        run = self.runner
        x = torch.from_numpy(images).to(self.device)
        logits = run.logits(role, x)
        probs = torch.softmax(logits, dim=1)
        pred = logits.argmax(dim=1)
        target = self._target(role, logits, pred, labels)
        baseline = run.baseline(x)
        complete = self.method.completeness
        base_logits = run.baseline_logits(role, baseline) if complete else None
        attr = self._attribute(role, x, baseline, target)
        if base_logits is not None:
            # completeness: sum of attributions should equal f(x) - f(baseline) for the target
            idx = torch.arange(x.shape[0], device=x.device)
            expected = logits[idx, target] - base_logits[idx, target]
            delta = attr.sum(dim=tuple(range(1, attr.ndim))) - expected
        else:
            delta = torch.full((x.shape[0],), float("nan"))
        maps = attr.sum(dim=1)
        return BatchResult(
            maps=maps.float().cpu().numpy(),
            probs=probs.float().cpu().numpy(),
            pred=pred.cpu().numpy().astype(np.int64),
            target=target.cpu().numpy().astype(np.int64),
            delta=delta.float().cpu().numpy(),
        )

    def _target(
        self, role: str, logits: torch.Tensor, pred: torch.Tensor, labels: np.ndarray | None
    ) -> torch.Tensor:
        if self.settings.target != "label":
            return pred
        if labels is None:
            raise InputError("--target label needs labels for every image")
        target = torch.as_tensor(labels, device=self.device, dtype=torch.long)
        if int(target.max()) >= logits.shape[1]:
            raise InputError(
                f"a label index ({int(target.max())}) is beyond {self.names[role]}'s "
                f"{logits.shape[1]} outputs; check --classes"
            )
        return target

    def _attribute(
        self, role: str, x: torch.Tensor, baseline: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """The method's attributions of model ``role``, checked finite."""
        run = self.runner
        h, w = x.shape[-2:]
        method = self.explainer(role)
        try:
            attr = method.attribute(
                x,
                baselines=baseline,
                target=target,
                internal_batch_size=run.internal_batch_size(x.shape[0], h * w),
            ).detach()
        except torch.OutOfMemoryError:
            raise DeviceOutOfMemory(
                f"{self.device} ran out of memory attributing {self.names[role]}"
            ) from None
        except Exception as exc:  # user model code, on interpolated inputs
            raise ModelFailure(
                f"{self.names[role]} fails during {self.method.title} ({first_line(exc)})"
            ) from None
        if not torch.isfinite(attr).all():
            raise ModelFailure(f"{self.names[role]} gives NaN or infinite gradients")
        return attr

    def explainer(self, role: str) -> AttributionMethod:
        """The run's attribution method bound to model ``role`` (the trust tests re-run
        it on perturbed images)."""
        return self.method(self.runner.forward_function(role), self.models[role], self.settings)

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
