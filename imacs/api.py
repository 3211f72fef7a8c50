"""The public entry point :func:`analyze` (no torch import until it runs).

Its settings keywords are not written here: they are the declared settings of
:mod:`imacs.settings`, checked against those declarations, and shown by ``help()`` through
the function's signature and docstring, which are generated from them. The analysis itself
(:mod:`imacs.pipeline`, which imports torch) is reached by a documented lazy import inside
:func:`analyze`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .options import option_of, walk
from .run import Run
from .settings import AnalysisSettings

if TYPE_CHECKING:
    from .models import ModelSpec


def analyze(
    model_a: str | Path,
    model_b: str | Path,
    data: str | Path,
    out: str | Path,
    settings: AnalysisSettings | None = None,
    *,
    weights_a: str | Path | None = None,
    weights_b: str | Path | None = None,
    name_a: str | None = None,
    name_b: str | None = None,
    reference: tuple[str | Path, str | Path] | None = None,
    reference_weights: tuple[str | Path | None, str | Path | None] | None = None,
    labels_csv: str | Path | None = None,
    classes: str | Path | None = None,
    overwrite: bool = False,
    rebuild: bool = False,
    cache_dir: str | Path | bool | None = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **keywords: Any,
) -> Run:
    """Compare where two image classifiers look, and write a run directory.

    Args:
        model_a (str or Path): model A: a TorchScript or torch.export (``.pt2``) file,
            ``package.module:factory``, ``timm:NAME`` (with ``weights_a``) or ``hf:DIR``.
        model_b (str or Path): model B, likewise.
        data (str or Path): evaluation images: an ImageFolder tree, or a folder of images
            listed by ``labels_csv``.
        out (str or Path): the run directory to write.
        settings (AnalysisSettings, optional): every setting at once; keywords below
            override it. Default: the declared defaults.
        weights_a (str or Path, optional): weights for a factory or timm model A.
        weights_b (str or Path, optional): weights for a factory or timm model B.
        name_a (str, optional): display name of model A. Default: from its file name.
        name_b (str, optional): display name of model B. Default: from its file name.
        reference (tuple, optional): two trainings of one recipe ``(R1, R2)``, compared
            first (into ``OUT-reference``): what they surely differ by is the bar.
        reference_weights (tuple, optional): their weights ``(W1, W2)``, if needed.
        labels_csv (str or Path, optional): CSV with ``path,label`` and meta columns.
        classes (str or Path, optional): file of class names in output order. Default: a
            Hugging Face model's ``id2label`` when the data's class names are among them.
        overwrite (bool): replace a different run already in ``out``. Default: False.
        rebuild (bool): recompute even when ``out`` already holds this very run (otherwise
            it is reused). Cached attribution is still used. Default: False.
        cache_dir (str, Path, bool or None): attribution cache; True for the default
            folder (``$IMACS_CACHE_DIR`` or ``~/.cache/imacs``), None/False for none.
        progress (bool): show progress. Default: True.
        log (callable, optional): receives one-line status messages.
        **keywords: settings by their CLI flag's name (``steps=32`` for ``--steps``), listed
            below with their defaults.

    Returns:
        Run: the finished run, read back from ``out``.

    Raises:
        InputError: bad input (the message names the file and the fix).
        TypeError: a keyword that is not a setting.
    """
    from .cache import StageCache
    from .models import ModelSpec
    from .pipeline import run_analysis  # the documented lazy entry point: imports torch

    settings = AnalysisSettings.from_keywords(settings, **keywords)
    return run_analysis(
        ModelSpec(str(model_a), str(weights_a) if weights_a else None, name_a),
        ModelSpec(str(model_b), str(weights_b) if weights_b else None, name_b),
        data,
        Path(out),
        settings,
        labels_csv=labels_csv,
        classes_file=classes,
        overwrite=overwrite,
        rebuild=rebuild,
        cache=StageCache(_cache_root(cache_dir)),
        progress=progress,
        log=log,
        reference=_reference_specs(reference, reference_weights),
    )


def _reference_specs(
    reference: tuple | None, weights: tuple | None
) -> tuple[ModelSpec, ModelSpec] | None:
    """The reference pair as model specs (InputError unless it is two models)."""
    from .errors import InputError
    from .models import ModelSpec

    if reference is None:
        return None
    ws = tuple(weights or (None, None))
    if len(reference) != 2 or len(ws) != 2:
        raise InputError("a reference pair takes two models (and two weights, or none)")
    a, b = (ModelSpec(str(m), str(w) if w else None) for m, w in zip(reference, ws, strict=True))
    return a, b


def _cache_root(cache_dir: str | Path | bool | None) -> Path | None:
    """The attribution cache folder ``analyze`` was given (True: the default one)."""
    from .cache import default_cache_dir

    if cache_dir is True:
        return default_cache_dir()
    if cache_dir in (None, False):
        return None
    return Path(cache_dir)  # type: ignore[arg-type]


def _settings_help() -> dict[str, str]:
    """``{keyword: help}`` of every declared setting (the declaration that has help)."""
    out: dict[str, str] = {}
    for _, f in walk(AnalysisSettings):
        opt = option_of(f)
        if opt.flag and not out.get(opt.keyword):
            out[opt.keyword] = opt.help
    return out


def _document(fn: Callable[..., Run]) -> None:
    """Give ``fn`` a signature and a docstring that list every declared setting."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    helps = _settings_help()
    lines = ["", "    Settings (keywords; defaults as declared in :mod:`imacs.settings`):"]
    for key, default in AnalysisSettings.keywords().items():
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default))
        lines.append(f"        {key} (default {default!r}): {helps.get(key, '')}")
    fn.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    fn.__doc__ = (fn.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"


_document(analyze)
