"""Writing what the stages made into a run directory: every table and array of the run
format (:mod:`imacs.runformat`) found on the board, and the manifest."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._version import __version__
from .agreement import agreement_summary
from .runformat import ROLES, TABLES, Manifest
from .settings import AnalysisSettings
from .stage import SECTIONS
from .store import write_array, write_scaled_maps, write_table

_LIBRARIES = ("torch", "captum", "numpy", "scikit-learn", "umap-learn", "pandas", "pyarrow")


def versions() -> dict[str, str]:
    """The versions of Python, imacs and the libraries that shape a run's numbers."""
    out = {"python": platform.python_version(), "imacs": __version__}
    for dist in (*_LIBRARIES, "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def write_run_files(tmp: Path, board: dict[str, Any]) -> dict[str, str]:
    """Write the run format's tables found on ``board``, the embedding, both models' scaled
    maps and probabilities into ``tmp``; returns the manifest's ``files`` entry."""
    files = {name: write_table(tmp, name, board[name]) for name in TABLES if name in board}
    files["embedding"] = write_array(tmp, "embedding", board["embedding"])
    att, images = board["att"], board["images"]
    for r in ROLES:
        scale = images[f"attr_scale_{r}"].to_numpy(np.float32)
        files[f"attr_{r}"] = write_scaled_maps(tmp, f"attr_{r}", att.maps[r], scale)
        files[f"probs_{r}"] = write_array(tmp, f"probs_{r}", att.per_role[r]["probs"])
    return files


def summary(board: dict[str, Any]) -> dict[str, Any]:
    """The manifest's summary: counts, accuracies, map agreement, the top cluster."""
    images: pd.DataFrame = board["images"]
    top = board["clusters"].iloc[0]
    return {
        "n_images": len(images),
        "n_skipped": len(board["skipped"]),
        "n_patches": len(board["patches"]),
        "n_clusters": int(board["clusterer"].n_clusters_),
        "n_concepts": len(board["concepts"]),
        "accuracy_a": float(images["correct_a"].mean()),
        "accuracy_b": float(images["correct_b"].mean()),
        "agreement": float((images["pred_a"] == images["pred_b"]).mean()),
        "median_abs_delta_a": float(images["delta_a"].abs().median()),
        "median_abs_delta_b": float(images["delta_b"].abs().median()),
        **agreement_summary(images),
        "top_cluster": {
            "cluster": int(top["cluster"]),
            "diff": float(top["diff"]),
            "diff_lo": float(top["diff_lo"]),
            "diff_hi": float(top["diff_hi"]),
            "n_patches": int(top["n_patches"]),
            "top_class": str(top["top_class"]),
        },
    }


def build_manifest(
    board: dict[str, Any],
    settings: AnalysisSettings,
    fingerprint: str,
    timings: dict[str, float],
    files: dict[str, str],
) -> Manifest:
    """The run's manifest from what the stages made (``board``)."""
    dataset, names = board["dataset"], board["names"]
    models = {}
    for r in ROLES:
        models[r] = {**board["models"][r].describe(), "name": names[r]}
        models[r]["num_classes"] = len(dataset.classes)
    command = " ".join(sys.argv) if sys.argv and sys.argv[0].endswith("imacs") else None
    sections = {key: board[name] for name, key in SECTIONS.items() if name in board}
    return Manifest(
        fingerprint=fingerprint,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        command=command,
        models=models,
        data={
            "root": str(dataset.root),
            "labels_csv": str(dataset.labels_csv) if dataset.labels_csv else None,
            "classes": dataset.classes,
            "meta_columns": [str(c) for c in dataset.meta.columns],
            "n_listed": len(dataset.records) + len(dataset.missing),
            "fingerprint": dataset.fingerprint(),
        },
        settings=asdict(settings),
        device=str(board["engine"].device),
        versions=versions(),
        timings=timings,
        skipped=board["skipped"],
        summary=summary(board),
        files=files,
        **sections,
    )
