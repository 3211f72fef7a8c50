"""Attribution methods: strategies with captum's ``attribute`` call shape.

A method is a class built as ``Method(forward_func, model, settings)`` (``forward_func``:
the model as a function of [0, 1] pixels returning float32 logits, from
:class:`~imacs.runner.ModelRunner`; ``model``: the module itself, where a layer method
finds its layer; ``settings``: the run's :class:`~imacs.settings.AttributionSettings`),
with

* ``name`` (str): how it is chosen; ``title`` (str): how messages call it;
* ``needs_hooks`` (bool): it attributes through layer hooks (captum's layer methods), so
  the models must be eager ``torch.nn.Module``\\ s; the engine refuses TorchScript and
  ``torch.export`` programs for it with a one-line error;
* ``completeness`` (bool): its attributions sum to the target logit at the image minus
  at the baseline, so the engine reports the difference as the convergence delta (NaN
  otherwise);
* ``attribute(inputs, baselines=..., target=..., internal_batch_size=...)``: attributions
  of shape (n, C, H, W) for (n, 3, H, W) inputs (C may be 1 for a layer map upsampled to
  the image); the engine sums them over C into one map per image.

:class:`~imacs.methods.base.MethodBase` gives a method its ``__init__``.
:data:`METHODS` lists them; adding one is one module plus one line there (and its name
in :data:`imacs.settings.METHOD_TITLES`, which the torch-free CLI and dashboard read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from ..errors import InputError
from ..settings import AttributionSettings
from .deeplift import DeepLiftMethod
from .gradient_shap import GradientShapMethod
from .ig import IntegratedGradientsMethod
from .occlusion import OcclusionMethod
from .saliency import SaliencyMethod


class AttributionMethod(Protocol):
    """The interface of an entry of :data:`METHODS` (see the module's docstring)."""

    name: str
    title: str
    needs_hooks: bool
    completeness: bool

    def __init__(
        self,
        forward_func: Callable[[torch.Tensor], torch.Tensor],
        model: nn.Module,
        settings: AttributionSettings,
    ) -> None: ...

    def attribute(
        self,
        inputs: torch.Tensor,
        baselines: torch.Tensor,
        target: torch.Tensor,
        internal_batch_size: int | None = None,
    ) -> torch.Tensor: ...


#: Attribution methods, chosen by ``name``.
METHODS: tuple[type[AttributionMethod], ...] = (
    IntegratedGradientsMethod,
    GradientShapMethod,
    DeepLiftMethod,
    SaliencyMethod,
    OcclusionMethod,
)


def find_method(name: str) -> type[AttributionMethod]:
    """The entry of :data:`METHODS` called ``name``.

    Raises:
        InputError: no method has that name.
    """
    for method in METHODS:
        if method.name == name:
            return method
    known = ", ".join(m.name for m in METHODS)
    raise InputError(f"attribution method {name!r}: unknown; choose one of {known}")


__all__ = [
    "METHODS",
    "AttributionMethod",
    "DeepLiftMethod",
    "GradientShapMethod",
    "IntegratedGradientsMethod",
    "OcclusionMethod",
    "SaliencyMethod",
    "find_method",
]
