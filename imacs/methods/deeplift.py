"""DeepLIFT (captum, rescale rule): one backward pass with modified gradients.

Each nonlinearity's gradient is replaced by the ratio of its output's change to its input's
change between the image and the baseline, so the attributions sum to f(x) - f(baseline)
(the engine reports the remainder as the convergence delta: nonlinearities captum does not
know, or that are called as functions rather than modules, break it). It is about as fast
as Saliency and sees what Integrated Gradients sees on ReLU networks.

It works through hooks on the model's modules, so it needs an eager ``torch.nn.Module``
(factory + weights, timm, Hugging Face); a module used twice in one forward pass (one ReLU
object shared by several layers) gives wrong multipliers, as captum documents.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from captum.attr import DeepLift
from torch import nn

from .base import MethodBase


class _Pixels(nn.Module):
    """The model as a module of [0, 1] pixels: the runner's function (normalisation,
    layout, autocast) with the model registered beneath, so DeepLIFT finds its layers."""

    def __init__(self, forward_func: Callable[[torch.Tensor], torch.Tensor], model: nn.Module):
        super().__init__()
        self.forward_func = forward_func
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_func(x)


class DeepLiftMethod(MethodBase):
    """DeepLIFT's rescale rule against the run's baseline.

    Args:
        forward_func (callable): the model as a function of [0, 1] pixels, returning
            (n, classes) logits.
        model (torch.nn.Module): the eager model the function runs; its layers get hooks.
        settings (AttributionSettings): unused (no steps).
    """

    name = "deeplift"
    title = "DeepLIFT"
    needs_hooks = True
    completeness = True

    def attribute(
        self,
        inputs: torch.Tensor,
        baselines: torch.Tensor,
        target: torch.Tensor,
        internal_batch_size: int | None = None,
    ) -> torch.Tensor:
        """Attributions of the shape of ``inputs`` (``internal_batch_size`` is unused: one
        pass over the images and their baselines)."""
        lift = DeepLift(_Pixels(self.forward_func, self.model), multiply_by_inputs=True)
        x = inputs.detach().clone().requires_grad_()
        with warnings.catch_warnings():  # captum says on every call that it sets hooks
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            return lift.attribute(x, baselines=baselines, target=target)
