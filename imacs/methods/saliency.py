"""Saliency (captum): the absolute gradient of the target logit at the image.

One forward and one backward pass per image, so it is the cheapest method by far; it says
where a small change would move the logit most, not how much of the logit each pixel
carries (no baseline, no completeness). Maps are never negative. No hooks: TorchScript and
``torch.export`` programs work.
"""

from __future__ import annotations

import torch
from captum.attr import Saliency

from .base import MethodBase


class SaliencyMethod(MethodBase):
    """Absolute input gradients of the target logit.

    Args:
        forward_func (callable): the model as a function of [0, 1] pixels, returning
            (n, classes) logits.
        model (torch.nn.Module): the model itself (unused: no hooks).
        settings (AttributionSettings): unused (no steps, no baseline).
    """

    name = "saliency"
    title = "Saliency"
    needs_hooks = False
    completeness = False

    def attribute(
        self,
        inputs: torch.Tensor,
        baselines: torch.Tensor,
        target: torch.Tensor,
        internal_batch_size: int | None = None,
    ) -> torch.Tensor:
        """Attributions of the shape of ``inputs`` (``baselines`` and
        ``internal_batch_size`` are unused: one pass per image)."""
        x = inputs.detach().clone().requires_grad_()
        return Saliency(self.forward_func).attribute(x, target=target, abs=True)
