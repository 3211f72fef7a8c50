"""Every setting of an analysis, declared once, in one torch-free leaf module.

Each leaf setting is declared with :func:`imacs.options.setting`: its CLI flag, help, checks
and whether it changes the results live beside its default. Each stage has its own settings
class here and receives only that (plus the few shared values it names, such as the seed);
:class:`AnalysisSettings` gathers them. The CLI's ``analyze`` options are generated from
these declarations (:func:`add_cli_options`), :func:`imacs.analyze` checks its keywords
against them (:meth:`AnalysisSettings.from_keywords`), and the cache keys and the run's
fingerprint come from :meth:`AnalysisSettings.result_fields`.

This module imports only :mod:`imacs.options` and :mod:`imacs.errors` (no torch, no stage):
stages import it, never the other way round.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .options import (
    boolean,
    build,
    cli_type,
    option_of,
    optional,
    real,
    result_values,
    setting,
    size_pair,
    triple,
    validate,
    walk,
    whole,
)

#: the input side when neither the user nor a model's configuration gives one
DEFAULT_SIDE = 224
#: the ``--removal`` fills (:mod:`imacs.removal`) and the default
REMOVAL_FILLS = ("baseline", "blur", "mean", "road")
REMOVAL_DEFAULT = "road"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        import numpy as np
        from PIL import Image

        h, w = self.input_size
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.float32) / 255.0
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input: ``image_size``, else the default side."""
        return self.image_size or (DEFAULT_SIDE, DEFAULT_SIDE)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch in [0, 1] pixel space to model input space."""
        import torch  # settings are read without torch (the CLI, the web app)

        if self.mean is None or self.std is None:
            return x
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


#: attribution methods by name (:data:`imacs.methods.METHODS`), as pages and messages call
#: them; here so that the CLI and the dashboard need no torch
METHOD_TITLES = {
    "ig": "Integrated Gradients",
    "gradient-shap": "GradientSHAP",
    "deeplift": "DeepLIFT",
    "saliency": "Saliency",
    "occlusion": "Occlusion",
}


#: how slice-against-slice groups may be ranked (:mod:`imacs.shift`), and how each reads
SHIFT_RANKINGS = {
    "either": "the larger change of the two models",
    "a": "the change in A",
    "b": "the change in B",
    "gap": "B's change minus A's",
    "x": "B - A within X",
    "y": "B - A within Y",
}
#: the measures of reliance: shares of each model's attribution, or relative shares
MEASURES = ("share", "relative")


@dataclass(frozen=True)
class AttributionSettings:
    """Attribution settings.

    Args:
        algorithm (str): the attribution method (``--method``): ``"ig"`` (Integrated
            Gradients), ``"gradient-shap"``, ``"deeplift"``, ``"saliency"`` or
            ``"occlusion"`` (:mod:`imacs.methods`). Default: ``"ig"``.
        steps (int): interpolation steps from baseline to image (GradientSHAP: samples per
            image). Default: 50.
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

    algorithm: str = setting(
        "ig",
        flag="--method",
        choices=tuple(METHOD_TITLES),
        group="attribution",
        help="attribution method: Integrated Gradients, GradientSHAP, DeepLIFT (eager "
        "models only), Saliency or Occlusion",
    )
    steps: int = setting(
        50,
        flag="--steps",
        metavar="N",
        convert=whole(2, 1000),
        group="attribution",
        help="Integrated Gradients steps (GradientSHAP: samples)",
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

    def describe(self) -> str:
        """The method as pages and ``imacs info`` name it, with its steps where it takes
        them: "Integrated Gradients, 50 steps"."""
        title = METHOD_TITLES.get(self.algorithm, self.algorithm)
        if self.algorithm == "ig":
            return f"{title}, {self.steps} steps"
        if self.algorithm == "gradient-shap":
            return f"{title}, {self.steps} samples"
        return title


@dataclass(frozen=True)
class PatchSettings:
    """How salient patches are cut.

    Args:
        patch_size (int, optional): side of a square patch in model-input pixels.
            Default: None (a quarter of the shorter input side).
        per_image (int): most patches per image. Default: 4.
        max_overlap (float): largest intersection-over-union between two patches of an
            image. Default: 0.25.
        min_saliency (float): a patch must hold at least this multiple of the union mass
            a uniform map would put in it (the first patch of an image is always kept).
            Default: 1.5.
    """

    patch_size: int | None = setting(
        None,
        flag="--patch-size",
        convert=optional(whole(2)),
        metavar="PX",
        group="patches and clusters",
        help="patch side in model-input pixels (default: input side / 4)",
    )
    per_image: int = setting(
        4,
        flag="--patches-per-image",
        metavar="N",
        convert=whole(1),
        group="patches and clusters",
        help="most patches per image",
    )
    max_overlap: float = setting(0.25, convert=real(0.0, below=1.0))
    min_saliency: float = setting(1.5, convert=real(0.0))

    def __post_init__(self) -> None:
        validate(self)

    def side(self, image_size: tuple[int, int]) -> int:
        h, w = image_size
        side = self.patch_size or max(2, min(h, w) // 4)
        if side > min(h, w):
            raise InputError(f"--patch-size {side} is larger than the {h}x{w} model input")
        return side


#: the ``--embedding`` choices (``encoder:`` and ``timm:`` take a file or a name)
KINDS = ("handcrafted", "models", "encoder:FILE", "timm:NAME")


def embedding_kind(value: object) -> str:
    """Check an ``--embedding`` value."""
    text = str(value).strip()
    if text in ("models", "handcrafted"):
        return text
    for prefix in ("encoder:", "timm:"):
        if text.startswith(prefix):
            if not text[len(prefix) :]:
                raise ValueError(f"{prefix} needs a {'file' if prefix == 'encoder:' else 'name'}")
            return text
    raise ValueError(f"choose one of {', '.join(KINDS)}")


def _text(value: object) -> str:
    return str(value)


@dataclass(frozen=True)
class EmbeddingSettings:
    """The patch embedding that clusters are made in.

    Args:
        kind (str): ``handcrafted``, ``models``, ``encoder:FILE`` or ``timm:NAME``.
            Default: ``handcrafted`` (measured in BENCHMARKS.md: on the planted shortcuts
            and the demo it gives concepts as clean as ``models``, and its clusters inside
            a concept are the concept's looks).
        dims (int): most dimensions kept (PCA). Default: 32.
        encoder_weights (str, optional): weights file of a ``timm:NAME`` encoder.
        encoder_size (int, optional): side the crops are resized to for an encoder.
            Default: None (the encoder's own size, else :data:`DEFAULT_SIDE`).
    """

    kind: str = setting(
        "handcrafted",
        flag="--embedding",
        convert=embedding_kind,
        metavar="handcrafted|models|encoder:FILE|timm:NAME",
        group="patches and clusters",
        help="the space patches are clustered in: colour/texture statistics (default), the "
        "models' answers to each patch alone, or your image encoder",
    )
    dims: int = setting(32, convert=whole(1))
    encoder_weights: str | None = setting(
        None,
        flag="--encoder-weights",
        convert=optional(_text),
        metavar="FILE",
        result=False,  # its digest is part of the run's fingerprint
        group="patches and clusters",
        help="weights of a timm:NAME encoder (.safetensors or a state_dict; default: "
        "from your local Hugging Face cache, never downloaded)",
    )
    encoder_size: int | None = setting(
        None,
        flag="--encoder-size",
        convert=optional(whole(8, 4096)),
        metavar="PX",
        group="patches and clusters",
        help="side the patch crops are resized to for an encoder (default: its own, else 224)",
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ClusteringSettings:
    """How patches are clustered and mapped.

    Args:
        n_clusters (int, optional): number of clusters. Default: None (about
            sqrt(patches)/2).
        projection (str): ``umap`` or ``pca`` for the 2-D map. Default: ``umap``.
    """

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

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ComparisonSettings:
    """Settings of the comparison.

    Args:
        n_boot (int): bootstrap resamples. Default: 1000.
        n_perm (int): sign-flip permutations for the family-wise p-values. Default: 999.
        ci (float): confidence level of the intervals; significance is at ``1 - ci``.
            Default: 0.95.
        min_effect (float): the smallest difference of shares that counts: a cluster is
            ``significant`` only when its whole simultaneous interval lies beyond
            ``±min_effect`` (a difference the models surely make, larger than the bar).
            Default: 0.05 (README, "Significance": retraining alone moved the test
            models' concept shares by 0.03-0.10).
        reference_bar (float): the largest difference a reference pair (two trainings of
            one recipe, ``--reference-a/--reference-b``) surely makes; set by the analysis
            from the reference run, 0 without one. The bar is the larger of the two.
        seed (int): seed of the bootstrap and the permutations. Default: 0.
    """

    n_boot: int = setting(1000, convert=whole(10))
    n_perm: int = setting(999, convert=whole(99))
    ci: float = setting(0.95, convert=real(0.5, below=1.0))
    min_effect: float = setting(
        0.05,
        flag="--min-effect",
        metavar="D",
        convert=real(0.0, 1.0),
        group="patches and clusters",
        help="smallest difference of attribution shares (B - A) that counts as significant: "
        "the whole interval must lie beyond it",
    )
    reference_bar: float = setting(0.0, convert=real(0.0, 1.0))
    seed: int = setting(0, flag="--seed", convert=whole(0, 2**32 - 1))

    @property
    def bar(self) -> float:
        """The difference a cluster's interval must clear to be significant."""
        return max(self.min_effect, self.reference_bar)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ConceptSettings:
    """How clusters are grouped into concepts.

    Args:
        distance (float): clusters whose mean answers are nearer than this (Hellinger
            distance, 0..1, see :func:`answer_distances`) are one concept; 0 keeps every
            cluster its own concept. Default: 0.15.
    """

    distance: float = setting(
        0.15,
        flag="--concept-distance",
        convert=real(0.0, 1.0),
        metavar="D",
        group="patches and clusters",
        help="group clusters the two models answer alike (distance 0..1 between their mean "
        "answers to the patches alone) into one concept; 0 = no grouping",
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class TrustSettings:
    """How the maps are tested.

    Args:
        sample (int): images (seeded sample) tested per model; 0 turns the tests off.
            Default: 64.
        steps (int): steps of the deletion and insertion curves. Default: 16.
        infidelity_perturbations (int): noise draws per image for infidelity. Default: 8.
        noise (float): standard deviation of the infidelity noise, in [0, 1] pixel units.
            Default: 0.05.
        sensitivity_sample (int): images, of the sample, for ``sensitivity_max``. Default: 8.
        sensitivity_perturbations (int): perturbations per image for it. Default: 3.
        sensitivity_radius (float): half-width of its uniform noise. Default: 0.02.
        margin (float): deletion area below the random order's by less than this, or than
            two standard errors of the paired difference over the sample if more: no better
            than random. Default: 0.05.
        degenerate (float): a random order whose first step already takes the
            prediction this share of the way to the fully filled image's leaves nothing to
            beat: the test is "inconclusive" (:func:`imacs.trust.degenerate_control`).
            Default: 0.5.
        late (float): a random order that must remove this share of the pixels or more
            before the prediction has gone half the way to the fully filled image's shows
            that the fill restores what the model reads from the pixels kept (a texture
            under ``road``): a map that does not beat it is "inconclusive" too. Default:
            0.85.
        seed (int): seed of the sample, the random orders and the noise. Default: 0.
    """

    sample: int = setting(
        64,
        flag="--trust-sample",
        metavar="N",
        convert=whole(0, 100_000),
        group="trust",
        help="images on which each model's maps are tested against a random pixel order "
        "(deletion/insertion, infidelity, sensitivity); 0 turns it off",
    )
    steps: int = setting(16, convert=whole(2, 256))
    infidelity_perturbations: int = setting(8, convert=whole(1, 1000))
    noise: float = setting(0.05, convert=real(0.0, 1.0))
    sensitivity_sample: int = setting(8, convert=whole(0, 100_000))
    sensitivity_perturbations: int = setting(3, convert=whole(1, 100))
    sensitivity_radius: float = setting(0.02, convert=real(0.0, 1.0))
    margin: float = setting(0.05, convert=real(0.0, 1.0))
    degenerate: float = setting(0.5, convert=real(0.0, 1.0))
    late: float = setting(0.85, convert=real(0.0, 1.0))
    seed: int = setting(0, flag="--seed", convert=whole(0, 2**32 - 1))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class WhatIfSettings:
    """What-if removal settings.

    Args:
        enabled (bool): run the stage. Default: True.
        top (int): test the clusters ranked 1..top by ``|diff|``, plus every significant one.
            Default: 10.
        removal (str): how removed pixels are filled (:data:`REMOVAL_FILLS`, see
            :mod:`imacs.removal`), in what-if removal, the trust stage's curves and the
            dashboard's pictures. Default: ``road`` (the fill that disturbs the models least
            on random regions, BENCHMARKS.md).
        alpha (float): family-wise error level of the verdicts. Default: 0.05.
        min_excess (float): least excess of the flip rate over the random control that
            counts as a dependence. Default: 0.1.
        inconclusive (float): a model whose random control flips more than this share of
            the images gets no verdict ("inconclusive"). Default: 0.25.
        reach (float): a region of an image joins a cluster when it is nearer the cluster's
            centre than this quantile of the cluster's own patches' distances. Default: 0.95.
    """

    enabled: bool = setting(
        True,
        flag="--whatif",
        convert=boolean,
        group="what-if",
        help="re-run both models with each top cluster's content removed (default: on)",
    )
    top: int = setting(
        10,
        flag="--whatif-top",
        metavar="N",
        convert=whole(0, 100_000),
        group="what-if",
        help="test the N clusters with the largest |diff|, plus every significant one",
    )
    removal: str = setting(
        REMOVAL_DEFAULT,
        flag="--removal",
        choices=REMOVAL_FILLS,
        group="what-if",
        help="how removed pixels are filled (what-if, trust curves, the dashboard's "
        "pictures): the IG baseline, a blur, the kept pixels' mean colour or ROAD's "
        f"imputation from the neighbours (default: {REMOVAL_DEFAULT})",
    )
    alpha: float = setting(0.05, convert=real(0.0, below=1.0))
    min_excess: float = setting(0.1, convert=real(0.0, 1.0))
    inconclusive: float = setting(0.25, convert=real(0.0, 1.0))
    reach: float = setting(0.95, convert=real(0.5, 1.0))

    def __post_init__(self) -> None:
        validate(self)


def layer_names(value: Any) -> tuple[str, ...]:
    """``"layer3,layer4"`` (or a list of names) -> ``("layer3", "layer4")``."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(v).strip() for v in items if str(v).strip())
    if len(set(names)) != len(names):
        raise ValueError("name each layer once, e.g. layer2,layer3,layer4")
    return names


def _layers_of(role: str) -> Any:
    """The ``--layers-a`` / ``--layers-b`` setting: one model's layers, by module name."""
    return setting(
        (),
        flag=f"--layers-{role}",
        parse=str,
        convert=layer_names,
        metavar="NAME,...",
        group="inside the models",
        help=f"model {role.upper()}'s layers, by module name (default: its top-level stages)",
    )


@dataclass(frozen=True)
class LayerSettings:
    """Inside the networks (:mod:`imacs.layers`).

    Args:
        enabled (bool): run the stage. Default: True.
        layers_a (tuple[str, ...]): model A's layers to look at, by module name; empty: its
            top-level stages, found automatically. Default: ().
        layers_b (tuple[str, ...]): the same for model B. Default: ().
        top (int): the concepts ranked 1..top get their decided-at depth, CKA and channels.
            Default: 5.
        decided (float): a depth has decided a set of images when the layer's probe agrees
            with the model's final answer on at least this share of them. Default: 0.9.
        folds (int): the probes' cross-fitting folds. Default: 5.
        channels (int): the top channels per concept and layer (and the random channels of
            the ablation check). Default: 3.
        draws (int): random channel sets of the ablation check. Default: 5.
        ablation_images (int): at most this many of a concept's images in the ablation
            check (a seeded sample). Default: 200.
        top_patches (int): patches shown per channel. Default: 6.
        sample (int): at most this many images (a seeded sample) go through the stage's
            passes: the probes, CKA, channels and their patches. Default: 5000.
    """

    enabled: bool = setting(
        True,
        flag="--layers",
        convert=boolean,
        group="inside the models",
        help="probe each model's layers, compare them (CKA) and find the channels that carry "
        "each top concept (default: on; needs eager models)",
    )
    layers_a: tuple[str, ...] = _layers_of("a")
    layers_b: tuple[str, ...] = _layers_of("b")
    top: int = setting(
        5,
        flag="--layers-top",
        metavar="N",
        convert=whole(0, 1000),
        group="inside the models",
        help="look inside the models for the N top concepts (default: 5)",
    )
    decided: float = setting(0.9, convert=real(0.5, 1.0))
    folds: int = setting(5, convert=whole(2, 20))
    channels: int = setting(3, convert=whole(1, 64))
    draws: int = setting(5, convert=whole(1, 100))
    ablation_images: int = setting(200, convert=whole(1, 1_000_000))
    top_patches: int = setting(6, convert=whole(1, 100))
    sample: int = setting(5000, convert=whole(10, 10_000_000))

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class AnalysisSettings:
    """Every setting of an analysis; the defaults are the CLI's defaults. Each stage takes
    one of its parts (``patches``, ``trust``...), never the whole."""

    preprocess: Preprocess = field(default_factory=Preprocess)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    patches: PatchSettings = field(default_factory=PatchSettings)
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    clustering: ClusteringSettings = field(default_factory=ClusteringSettings)
    comparison: ComparisonSettings = field(default_factory=ComparisonSettings)
    concepts: ConceptSettings = field(default_factory=ConceptSettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    whatif: WhatIfSettings = field(default_factory=WhatIfSettings)
    layers: LayerSettings = field(default_factory=LayerSettings)
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
    def keywords(cls) -> dict[str, Any]:
        """``{keyword: default}`` of every setting the CLI and :func:`imacs.analyze` offer
        (the flag without dashes), in declaration order."""
        defaults = cls()
        out: dict[str, Any] = {}
        for path, f in walk(cls):
            opt = option_of(f)
            if opt.flag and opt.keyword not in out:
                value: Any = defaults
                for name in path:
                    value = getattr(value, name)
                out[opt.keyword] = value
        return out

    @classmethod
    def from_keywords(cls, base: AnalysisSettings | None = None, **values: Any) -> AnalysisSettings:
        """Settings from :func:`imacs.analyze`'s keywords (the CLI flags' names); the
        keywords not given keep their value in ``base`` (default: the declared defaults).

        Raises:
            TypeError: a keyword that is not a setting.
            InputError: a value is out of range; the message names the setting and flag.
        """
        unknown = sorted(set(values) - set(cls.keywords()))
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        return build(cls, values, base)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> AnalysisSettings:
        """Settings as a run's manifest stores them (``dataclasses.asdict``); keys this
        version does not know are ignored, missing ones keep their defaults."""
        return _from_dict(cls, saved)

    def result_fields(self) -> dict[str, object]:
        """Settings that change the run's content (not batch sizes, device or strictness):
        the fields declared with ``result=True``, the default."""
        return result_values(self)


def _from_dict(cls: type, saved: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in saved:
            continue
        value = saved[f.name]
        sub = f.default_factory
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            kwargs[f.name] = _from_dict(sub, value if isinstance(value, dict) else {})
        else:
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


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
    import numpy as np
    import torch
    from PIL import Image
