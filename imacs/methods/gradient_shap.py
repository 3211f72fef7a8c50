"""GradientSHAP: expected gradients between the image and its baseline.

Each image's attribution is the mean, over ``steps`` samples, of the gradient of the target
logit at a random point between the noisy image (Gaussian noise of standard deviation
:data:`NOISE`) and its baseline, times the noisy image minus the baseline: captum's
``GradientShap`` with the run's baseline as the reference of each image. It approximates
SHAP values; the sum over an image equals f(x) - f(baseline) only in expectation, so no
convergence delta is reported.

The draws come from a generator seeded per image, so a map does not depend on the batch,
the chunk or the pass size the image came in (cached chunks, ``torchrun`` shares and the
out-of-memory halving give the same run). No hooks: TorchScript and ``torch.export``
programs work.
"""

from __future__ import annotations

import torch

from .base import MethodBase

#: standard deviation of the noise added to the image, in [0, 1] pixel units
NOISE = 0.05
#: seed of every image's draws
SEED = 0


class GradientShapMethod(MethodBase):
    """GradientSHAP with ``steps`` samples per image and the run's baseline.

    Args:
        forward_func (callable): the model as a function of [0, 1] pixels, returning
            (n, classes) logits.
        model (torch.nn.Module): the model itself (unused: no hooks).
        settings (AttributionSettings): ``steps`` (samples per image).
    """

    name = "gradient-shap"
    title = "GradientSHAP"
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
            baselines (torch.Tensor): the baseline of each image, same shape.
            target (torch.Tensor): (n,) class explained per image.
            internal_batch_size (int, optional): samples per forward/backward pass.
                Default: None (all samples of an image in one pass).
        """
        steps = self.settings.steps
        per_pass = max(1, min(steps, internal_batch_size or steps))
        out = torch.zeros_like(inputs)
        for i in range(len(inputs)):
            gen = torch.Generator().manual_seed(SEED)
            alphas = torch.rand(steps, generator=gen).to(inputs.device)
            noise = torch.randn((steps, *inputs.shape[1:]), generator=gen).to(inputs.device)
            for s in range(0, steps, per_pass):
                noisy = inputs[i] + NOISE * noise[s : s + per_pass]
                alpha = alphas[s : s + per_pass].view(-1, 1, 1, 1)
                points = (baselines[i] + alpha * (noisy - baselines[i])).requires_grad_()
                logits = self.forward_func(points)[:, int(target[i])]
                (grad,) = torch.autograd.grad(logits.sum(), points)
                out[i] += (grad * (noisy - baselines[i])).sum(0).detach() / steps
        return out
