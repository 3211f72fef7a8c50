"""Occlusion (captum): how much the target logit drops when a square is filled with the
baseline, averaged over the squares that cover each pixel.

A perturbation method: forward passes only, no gradients, so it works on any model and
cannot be fooled by saturated or noisy gradients; it sees content at the scale of its
window (:func:`window`: an eighth of the shorter input side, moved by half a window), so a
shortcut much smaller than that is smeared over the window. Its cost is one forward pass
per window position (225 at any input size), about as much as 75 Integrated Gradients
steps. No completeness: the drops of overlapping windows do not add up to f(x) - f(b).
"""

from __future__ import annotations

import torch
from captum.attr import Occlusion

from .base import MethodBase


def window(height: int, width: int) -> tuple[int, int]:
    """(side, stride) of the occluding square for an input of ``height`` x ``width``."""
    side = max(2, min(height, width) // 8)
    return side, max(1, side // 2)


class OcclusionMethod(MethodBase):
    """Occlusion by squares of the run's baseline.

    Args:
        forward_func (callable): the model as a function of [0, 1] pixels, returning
            (n, classes) logits.
        model (torch.nn.Module): the model itself (unused: no hooks).
        settings (AttributionSettings): unused (the window follows the input size).
    """

    name = "occlusion"
    title = "Occlusion"
    needs_hooks = False
    completeness = False

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
            baselines (torch.Tensor): the baseline of each image, same shape (the fill).
            target (torch.Tensor): (n,) class explained per image.
            internal_batch_size (int, optional): occluded images per forward pass.
                Default: None (one window position of every image per pass).
        """
        side, stride = window(*inputs.shape[-2:])
        per_eval = max(1, (internal_batch_size or len(inputs)) // max(1, len(inputs)))
        with torch.no_grad():
            return Occlusion(self.forward_func).attribute(
                inputs,
                sliding_window_shapes=(inputs.shape[1], side, side),
                strides=(inputs.shape[1], stride, stride),
                baselines=baselines,
                target=target,
                perturbations_per_eval=per_eval,
            )
