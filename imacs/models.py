"""Loading the two classifiers.

Five ways in, each a module of :mod:`imacs.formats` (recognised in that package's order):

* a **TorchScript** file (``torch.jit.save``): portable, needs no Python code of yours.
  TorchScript is code: loading one runs the graph it contains, so only load files you trust.
* a **torch.export** program (``FILE.pt2``, ``torch.export.save``), TorchScript's successor.
* ``package.module:factory`` plus a **weights** file: imacs imports the module, calls
  ``factory()`` with no arguments and loads the weights into the returned module.
* ``timm:NAME`` plus a weights file, and ``hf:DIR`` (a local Hugging Face folder).

Weights are read as safetensors, or as a state dict with ``torch.load(weights_only=True)``; a
pickle that would run code when loaded is refused, never retried unsafely.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

from . import formats
from .errors import InputError
from .formats.common import ModelDefaults, Normalized, file_sha256
from .settings import DEFAULT_SIDE, Preprocess

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "Normalized",
    "file_sha256",
    "load_model",
    "model_class_names",
    "model_preprocess",
]

#: kinds of :attr:`ModelSpec.kind` that are a model file (TorchScript or torch.export)
_FILE_KINDS = ("torchscript", "export")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from.

    Args:
        source (str): a TorchScript or torch.export (``.pt2``) file,
            ``package.module:factory``, ``timm:NAME`` or ``hf:DIR``.
        weights (str, optional): weights file for a factory or a timm model
            (``.safetensors`` or a ``torch.save``'d state dict). Default: None.
        name (str, optional): display name. Default: the file or factory name.
    """

    source: str
    weights: str | None = None
    name: str | None = None

    @property
    def format(self) -> formats.ModelFormat:
        """The entry of :data:`imacs.formats.FORMATS` that recognises :attr:`source`."""
        return formats.find_format(self.source)

    @property
    def kind(self) -> str:
        """``timm``, ``hf``, ``factory``, ``file`` (TorchScript or torch.export), or the
        name of a format added to :data:`imacs.formats.FORMATS`."""
        name = self.format.name
        return "file" if name in _FILE_KINDS else name

    @property
    def is_factory(self) -> bool:
        return self.kind == "factory"

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        return str(self.format.describe(self.source, self.weights)["name"])


@dataclass
class LoadedModel:
    """A model ready for attribution: in eval mode, parameters frozen, on the CPU."""

    module: nn.Module
    spec: ModelSpec
    kind: str  #: the format's name: "torchscript", "export", "factory", "timm" or "hf"
    sha256: str  #: identity of the model: file hash (and weights hash for a factory)
    #: preprocessing and class names from the model's own configuration
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    #: the normalisation applied inside the module from its own configuration, if any
    normalisation: dict[str, object] | None = None
    #: an eager torch.nn.Module whose layers take hooks (False for TorchScript and
    #: torch.export programs); load_model takes it from the format
    eager: bool = True
    #: the format's manifest entry (name, source, weights); load_model fills it
    entry: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.entry:
            self.entry = self.spec.format.describe(self.spec.source, self.spec.weights)

    @property
    def name(self) -> str:
        return self.spec.name or str(self.entry["name"])

    def describe(self) -> dict[str, object]:
        """The run manifest's entry for this model: name, kind, eager, source, sha256,
        weights (when given) and the normalisation applied inside the module (if any)."""
        entry = self.entry
        out: dict[str, object] = {
            "name": self.name,
            "kind": self.kind,
            "eager": self.eager,
            "source": entry["source"],
            "sha256": self.sha256,
        }
        if "weights" in entry:
            out["weights"] = entry["weights"]
        if self.normalisation:
            out["normalisation"] = self.normalisation
        return out


def load_model(spec: ModelSpec, flag: str = "--model") -> LoadedModel:
    """Load a model described by ``spec`` through the first format that recognises it.

    Args:
        spec (ModelSpec): where the model comes from.
        flag (str, optional): the CLI flag that named it, used in error messages.
            Default: ``"--model"``.

    Raises:
        InputError: the file is missing, is not a model, is a pickle that would run code,
            or the weights do not fit the factory's module.
    """
    fmt = spec.format
    loaded = fmt.load(spec.source, spec.weights, flag)
    return LoadedModel(
        module=loaded.module,
        spec=spec,
        kind=fmt.name,
        sha256=loaded.sha256,
        defaults=loaded.defaults,
        eager=bool(fmt.eager),
        entry=fmt.describe(spec.source, spec.weights),
    )


def model_preprocess(pre: Preprocess, models: dict[str, LoadedModel]) -> Preprocess:
    """Fill what the user left unset from the models' own configuration.

    The image size (None in ``pre``) becomes the size the models state (they must agree),
    else 224x224. When ``pre`` has no mean/std, a model whose configuration states its
    normalisation (timm, Hugging Face) is wrapped to apply it itself, so two models with
    different normalisations each get their own. Mutates ``models``' modules.

    Raises:
        InputError: the two models state different input sizes and none was given, or a
            model that takes one size only is given another.
    """
    size = pre.image_size
    for r, m in models.items():  # before any work: it would fail after the attribution
        fixed = m.defaults.image_size
        if size is not None and m.defaults.fixed_size and fixed and tuple(size) != tuple(fixed):
            h, w = fixed
            raise InputError(
                f"model {r.upper()} ({m.name}) takes only {h}x{w} images (it was exported with "
                f"a fixed height and width), not --image-size {size[0]}x{size[1]}: pass "
                f"--image-size {h}x{w}, or export it with dynamic height and width"
            )
    if size is None:
        stated = {r: m.defaults.image_size for r, m in models.items() if m.defaults.image_size}
        if len(set(stated.values())) > 1:
            a, b = (f"{h}x{w}" for h, w in stated.values())
            raise InputError(
                f"model A is made for {a} images and model B for {b}; pass --image-size to "
                "attribute both at one size"
            )
        size = next(iter(stated.values()), (DEFAULT_SIDE, DEFAULT_SIDE))
    if pre.mean is None:
        for m in models.values():
            d = m.defaults
            if d.mean is not None and d.std is not None and m.normalisation is None:
                m.module = Normalized(m.module, d.mean, d.std)
                m.normalisation = {"mean": list(d.mean), "std": list(d.std), "from": "model"}
    return replace(pre, image_size=size)


def model_class_names(models: dict[str, LoadedModel]) -> list[str] | None:
    """The class names the models state (Hugging Face ``id2label``), or None.

    Raises:
        InputError: both models state class names and they differ.
    """
    named = {r: m.defaults.class_names for r, m in models.items() if m.defaults.class_names}
    if len(named) == 2 and named["a"] != named["b"]:
        a, b = named["a"], named["b"]
        i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
        first = f"class {i} is {a[i]!r} in A and {b[i]!r} in B" if i < min(len(a), len(b)) else ""
        raise InputError(
            f"models A and B name their classes differently ({first or 'different counts'}); "
            "both must classify the same classes in the same order, or pass --classes FILE"
        )
    names = next(iter(named.values()), None)
    return list(names) if names else None
