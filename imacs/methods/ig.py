"""Integrated Gradients (captum), the default attribution method.

Attributions are multiplied by the inputs, so over an image they sum to the target logit
at the image minus at the baseline, up to the integral's approximation error (the engine
reports it as the convergence delta). A plain function of the pixels is differentiated:
no hooks, so TorchScript and ``torch.export`` programs work.
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients

from .base import MethodBase


class IntegratedGradientsMethod(MethodBase):
    """Integrated Gradients with the run's steps and integral approximation.

    Args:
        forward_func (callable): the model as a function of [0, 1] pixels, returning
            (n, classes) logits.
        model (torch.nn.Module): the model itself (unused: no hooks).
        settings (AttributionSettings): ``steps`` and ``method`` (captum's approximation).
    """

    name = "ig"
    title = "Integrated Gradients"
    needs_hooks = False
    completeness = True

    def attribute(
        self,
        inputs: torch.Tensor,
        baselines: torch.Tensor,
        target: torch.Tensor,
        internal_batch_size: int | None = None,
    ) -> torch.Tensor:
        """Attributions of the shape of ``inputs``.

        Args:
            inputs (torch.Tensor): (n, 3, H, W) pixels in [0, 1].
            baselines (torch.Tensor): the baseline of each image, same shape.
            target (torch.Tensor): (n,) class explained per image.
            internal_batch_size (int, optional): scaled inputs per forward/backward pass.
                Default: None (all steps of all images in one pass).
        """
        ig = IntegratedGradients(self.forward_func, multiply_by_inputs=True)
        return ig.attribute(
            inputs,
            baselines=baselines,
            target=target,
            n_steps=self.settings.steps,
            method=self.settings.method,
            internal_batch_size=internal_batch_size,
        )
