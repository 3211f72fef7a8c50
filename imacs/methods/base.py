"""What every attribution method shares: its ``__init__`` stores its three arguments and
does nothing else (captum's style), so a method module holds only its ``attribute``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..settings import AttributionSettings


class MethodBase:
    """Stores a method's arguments.

    Args:
        forward_func (callable): the model as a function of [0, 1] pixels, returning
            (n, classes) logits.
        model (torch.nn.Module): the model itself (where a hook method finds its layers).
        settings (AttributionSettings): the run's attribution settings.
    """

    def __init__(
        self,
        forward_func: Callable[[torch.Tensor], torch.Tensor],
        model: nn.Module,
        settings: AttributionSettings,
    ) -> None:
        self.forward_func = forward_func
        self.model = model
        self.settings = settings
