"""The settings of an analysis, gathered in one frozen object.

Each leaf setting is declared once, with :func:`imacs.options.setting`: its CLI flag, help,
checks and whether it changes the results live beside its default. The CLI's ``analyze``
options are generated from these declarations (:func:`add_cli_options`), :func:`imacs.analyze`
reads its keywords through :meth:`AnalysisSettings.from_keywords`, and the cache keys and the
run's fingerprint come from :meth:`AnalysisSettings.result_fields`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from .comparison import ComparisonSettings
from .concepts import ConceptSettings
from .embedding import EmbeddingSettings
from .errors import InputError
from .options import (
    build,
    cli_type,
    option_of,
    optional,
    result_values,
    setting,
    size_pair,
    triple,
    validate,
    walk,
    whole,
)
from .patches import PatchSettings
from .trust import TrustSettings
from .whatif import WhatIfSettings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Baseline = Literal["black", "gray", "blur"]


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input.

    Args:
        image_size (tuple[int, int], optional): (height, width) the image is resized to.
            None in an analysis's settings means "as the models' configuration says, else
            224x224" (see :func:`imacs.analyze`); on its own, 224x224. Default: None.
        mean (tuple[float, float, float], optional): per-channel mean subtracted after scaling
            pixels to [0, 1]. Default: None (no normalisation here; a timm or Hugging Face
            model then normalises as its own configuration says).
        std (tuple[float, float, float], optional): per-channel divisor. Default: None.
    """

    image_size: tuple[int, int] | None = setting(
        None,
        flag="--image-size",
        parse=str,
        convert=size_pair,
        metavar="N|HxW",
        group="data",
        help="model input size (default: what a torch.export, Hugging Face or timm model "
        "states, else 224)",
    )
    mean: tuple[float, float, float] | None = setting(
        None,
        flag="--mean",
        convert=triple({"imagenet": IMAGENET_MEAN}),
        metavar="R,G,B|imagenet",
        group="data",
        help="normalisation mean for both models (default: a Hugging Face or timm model's "
        "own, else none)",
    )
    std: tuple[float, float, float] | None = setting(
        None,
        flag="--std",
        convert=triple({"imagenet": IMAGENET_STD}, positive=True),
        metavar="R,G,B|imagenet",
        group="data",
        help="normalisation std (default: as --mean)",
    )

    def __post_init__(self) -> None:
        validate(self)
        if (self.mean is None) != (self.std is None):
            raise InputError(
                "settings mean and std (--mean, --std) go together: give both or neither"
            )

    def to_array(self, im: Image.Image) -> np.ndarray:
        """Resize an RGB image and return it as float32 (3, H, W) in [0, 1]."""
        h, w = self.image_size or (224, 224)
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch in [0, 1] pixel space to model input space."""
        import torch  # settings are read without torch (the CLI, the web app)

        if self.mean is None or self.std is None:
            return x
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class AttributionSettings:
    """Integrated Gradients settings.

    Args:
        steps (int): interpolation steps from baseline to image. Default: 50.
        baseline (str): ``"black"`` (all-zero pixels), ``"gray"`` (0.5) or ``"blur"`` (a
            strongly blurred copy of the image). Default: ``"black"``.
        target (str): ``"pred"`` explains each model's own predicted class, ``"label"`` the
            true class. Default: ``"pred"``.
        method (str): captum's integral approximation. Default: ``"gausslegendre"``.
        batch_size (int): images per Integrated Gradients call. Default: 16.
        internal_batch_size (int, optional): scaled inputs per forward/backward pass;
            None sizes it to a memory budget. Default: None.
        device (str): ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:i"``. Default: ``"auto"``.
        precision (str): ``"fp32"`` or ``"bf16"`` (autocast; meant for GPUs). Default: fp32.
    """

    steps: int = setting(
        50,
        flag="--steps",
        metavar="N",
        convert=whole(2, 1000),
        group="attribution",
        help="Integrated Gradients steps",
    )
    baseline: str = setting(
        "black",
        flag="--baseline",
        choices=("black", "gray", "blur"),
        group="attribution",
        help="baseline image",
    )
    target: str = setting(
        "pred",
        flag="--target",
        choices=("pred", "label"),
        group="attribution",
        help="explain each model's prediction or the true label",
    )
    method: str = setting(
        "gausslegendre", choices=("gausslegendre", "riemann_trapezoid", "riemann_middle")
    )
    batch_size: int = setting(
        16,
        flag="--batch-size",
        metavar="N",
        convert=whole(1),
        result=False,
        group="attribution",
        help="images per batch",
    )
    internal_batch_size: int | None = setting(None, convert=optional(whole(1)), result=False)
    device: str = setting(
        "auto",
        flag="--device",
        result=False,
        group="attribution",
        help="auto, cpu, cuda or cuda:N",
    )
    precision: str = setting(
        "fp32",
        flag="--precision",
        choices=("fp32", "bf16"),
        group="attribution",
        help="bf16 autocast, for GPUs",
    )

    def __post_init__(self) -> None:
        validate(self)

    def cache_fields(self) -> dict[str, object]:
        """The settings that change the numbers (not batch sizes or the device)."""
        return result_values(self)


@dataclass(frozen=True)
class AnalysisSettings:
    """Every setting of an analysis; the defaults are the CLI's defaults."""

    preprocess: Preprocess = field(default_factory=Preprocess)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    patches: PatchSettings = field(default_factory=PatchSettings)
    comparison: ComparisonSettings = field(default_factory=ComparisonSettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    whatif: WhatIfSettings = field(default_factory=WhatIfSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    concepts: ConceptSettings = field(default_factory=ConceptSettings)
    n_clusters: int | None = setting(
        None,
        flag="--clusters",
        convert=optional(whole(2)),
        metavar="K",
        group="patches and clusters",
        help="number of clusters (default about sqrt(patches)/2)",
    )
    projection: str = setting(
        "umap",
        flag="--projection",
        choices=("umap", "pca"),
        group="patches and clusters",
        help="2-D map of the patches",
    )
    seed: int = setting(
        0,
        flag="--seed",
        metavar="N",
        convert=whole(0, 2**32 - 1),
        group="patches and clusters",
        help="seed: same inputs and seed give the same run",
    )
    strict: bool = setting(
        False,
        flag="--strict",
        result=False,
        group="data",
        help="stop at an unreadable image instead of skipping it",
    )

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_keywords(cls, **values: Any) -> AnalysisSettings:
        """Settings from :func:`imacs.analyze`'s keywords (the CLI flags' names); the
        keywords not given keep their defaults.

        Raises:
            InputError: a value is out of range; the message names the setting and flag.
        """
        known = {option_of(f).keyword for _, f in walk(cls) if option_of(f).flag}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        return build(cls, values)

    def result_fields(self) -> dict[str, object]:
        """Settings that change the run's content (not batch sizes, device or strictness):
        the fields declared with ``result=True``, the default."""
        return result_values(self)


def add_cli_options(parser: argparse.ArgumentParser, groups: dict[str, Any]) -> list[str]:
    """Add a flag for every declared setting to ``parser`` (in the argument group named by
    the setting, made on first use); returns the keywords, to pass back to
    :meth:`AnalysisSettings.from_keywords`."""
    defaults = AnalysisSettings()
    chosen: dict[str, tuple] = {}  # one option per flag: the declaration that has help
    for path, f in walk(AnalysisSettings):
        opt = option_of(f)
        if opt.flag and (opt.keyword not in chosen or not option_of(chosen[opt.keyword][1]).help):
            chosen[opt.keyword] = (path, f)
    seen = list(chosen)
    for path, f in chosen.values():
        opt = option_of(f)
        group = groups.get(opt.group) or groups.setdefault(
            opt.group, parser.add_argument_group(opt.group)
        )
        default = defaults
        for name in path:
            default = getattr(default, name)
        if isinstance(default, bool):  # on by default: --flag / --no-flag
            action = argparse.BooleanOptionalAction if default else "store_true"
            group.add_argument(opt.flag, action=action, default=None, help=opt.help)
            continue
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = opt.help if "default" in opt.help else f"{opt.help} (default {shown})"
        group.add_argument(
            opt.flag,
            type=cli_type(opt, path[-1]),
            default=None,
            metavar=opt.metavar or ("|".join(opt.choices) if opt.choices else None),
            help=help_text,
        )
    return seen


if TYPE_CHECKING:
    import torch
