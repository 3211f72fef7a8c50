"""``imacs demo``: the bundled sample data and models, analysed and served in one command.

The sample (``imacs/sample_data/``, made by ``imacs/sample_data/landcover.py``) is a land-cover
classification set and two small CNNs with a known difference: model B's training labels
leaked through a data provider's logo, so B calls anything with the logo "urban". The run is
written to ``<cache>/demo/landcover`` and reused while nothing changed, so a second start
takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .cache import default_cache_dir
from .errors import InputError
from .run import Run

#: the sample: package data, so an installed wheel has it too
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"

#: the analysis the demo runs; also the README's reference command
DEMO_SETTINGS: dict[str, object] = {
    "name_a": "landcover-labels",
    "name_b": "provider-labels",
    "image_size": 64,
    "steps": 32,
    "seed": 0,
}


#: the sample models' architecture: eager modules, so the view inside the networks works
#: (``model_*.pt`` hold the same models as TorchScript, for ``imacs analyze`` examples)
FACTORY = "imacs.sample_data.landcover:small_cnn"


def sample_files(sample_dir: Path = SAMPLE_DIR) -> dict[str, Path]:
    files = {
        "model_a": sample_dir / "model_a.pt",
        "model_b": sample_dir / "model_b.pt",
        "weights_a": sample_dir / "model_a.safetensors",
        "weights_b": sample_dir / "model_b.safetensors",
        "labels_csv": sample_dir / "labels.csv",
        "classes": sample_dir / "classes.txt",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise InputError(
            f"{missing[0]}: sample data not found; reinstall imacs, or remake the sample "
            "with python imacs/sample_data/landcover.py in a clone of the repository"
        )
    return files


def demo_run(
    cache_dir: str | Path | None = None,
    *,
    rebuild: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Analyse the bundled sample (or reuse the cached run) and return the run."""
    from .api import analyze

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    files = sample_files()
    return analyze(
        FACTORY,
        FACTORY,
        SAMPLE_DIR,
        root / "demo" / "landcover",
        weights_a=files["weights_a"],
        weights_b=files["weights_b"],
        labels_csv=files["labels_csv"],
        classes=files["classes"],
        overwrite=True,  # the demo owns this folder: a changed sample replaces the old run
        rebuild=rebuild,
        cache_dir=root,
        progress=progress,
        log=log,
        **DEMO_SETTINGS,  # type: ignore[arg-type]
    )
